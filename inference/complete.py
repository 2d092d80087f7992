"""Prompt in, continuation out, for a network whose task is "complete" (a decoder-only LM): the prompt
encoded as its tokenizer encodes it, the decoding options checked, stop strings, the context limit.

    options = Sampling(max_new_tokens=200, temperature=0.8, top_k=40).resolved(model_defaults)
    ids = prompt_ids(tokenizer, "ROMEO:", context=256, notes=notes)
    new = continue_ids(net, ids, options, eos_ids=eos_ids, notes=notes)
    kept, text, stopped = cut_at_stop(tokenizer, new, options.stop, eos_ids, prompt=ids)

The tokenizer is a Hugging Face `tokenizers.Tokenizer` (a trained run's char / BPE tokenizer, a pretrained
source's tokenizer.json): its post-processor decides whether a BOS token starts the prompt. Every bad value
is a UserError naming it (predict.py prints it as one line, exit 2); odd but usable input runs and is said in
`notes`."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from models.generate import generate
from utils.errors import UserError

DEFAULT_NEW_TOKENS = 100  # when neither the command nor the model's generation settings say
# The smallest temperature sampled with: float32 logits divided by less overflow to inf (softmax: NaN); anything
# this cold picks the most likely token anyway (0 = greedy says so exactly).
MIN_TEMPERATURE = 1e-6


def _shorten(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class Sampling:
    """How to continue a prompt. None: the model's own setting (a pretrained source's generation_config;
    a trained run: greedy, DEFAULT_NEW_TOKENS). temperature 0: greedy; > 0: sampled, with top_k (0 / None:
    no cut) and top_p in (0, 1]. seed: of the sampling generator (None: not reproducible). stop: the
    continuation ends before the first of these strings."""

    max_new_tokens: int | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def resolved(self, defaults: dict[str, Any] | None = None) -> Sampling:
        """The options with the model's defaults filled in, checked: a UserError names a bad value.
        top-k / top-p / seed given here with greedy decoding are refused (they would be ignored)."""
        defaults = dict(defaults or {})
        self.check()
        greedy = (self.temperature if self.temperature is not None else defaults.get("temperature") or 0) == 0
        if greedy and (self.top_k is not None or self.top_p is not None or self.seed is not None):
            flag = "--top-k" if self.top_k is not None else "--top-p" if self.top_p is not None else "--seed"
            raise UserError(f"{flag} is for sampled decoding, but decoding is greedy (temperature 0); "
                            f"give --temperature > 0 (e.g. 0.8) to sample, or leave {flag} out")
        pick = lambda mine, key: mine if mine is not None else defaults.get(key)  # noqa: E731
        new = pick(self.max_new_tokens, "max_new_tokens") or DEFAULT_NEW_TOKENS
        temperature = float(pick(self.temperature, "temperature") or 0.0)
        top_k = pick(self.top_k, "top_k") if temperature > 0 else None
        top_p = pick(self.top_p, "top_p") if temperature > 0 else None
        return replace(self, max_new_tokens=int(new), temperature=temperature, top_k=top_k or None,
                       top_p=None if top_p is None or float(top_p) >= 1 else float(top_p))

    def check(self) -> None:
        """Each given value within its range (a UserError naming the flag, the value and the range)."""
        if self.max_new_tokens is not None and (not isinstance(self.max_new_tokens, int)
                                                or self.max_new_tokens < 1):
            raise UserError(f"--max-new-tokens {self.max_new_tokens}: expected an integer >= 1 "
                            f"(how many tokens to add to the prompt)")
        if self.temperature is not None and not (self.temperature == 0 or MIN_TEMPERATURE <= self.temperature
                                                 < float("inf")):  # NaN and inf too
            raise UserError(f"--temperature {self.temperature}: expected 0 (greedy) or a finite number >= "
                            f"{MIN_TEMPERATURE:g} (sampled; 1 = the model's own distribution)")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
            raise UserError(f"--top-k {self.top_k}: expected an integer >= 1 (sample among the k most "
                            f"likely tokens)")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise UserError(f"--top-p {self.top_p}: expected a probability in (0, 1] (sample among the "
                            f"most likely tokens holding that much probability)")
        if self.seed is not None and not 0 <= self.seed < 2**64:
            raise UserError(f"--seed {self.seed}: expected an integer in 0 .. 2**64 - 1")
        if any(s == "" for s in self.stop):
            raise UserError("--stop '': expected a non-empty string (the continuation ends before it)")

    @property
    def sampled(self) -> bool:
        return bool(self.temperature)


def unknown_token_id(tokenizer: Any) -> int | None:
    """The id a tokenizer reads an unknown character as ([UNK] of the char tokenizer), or None (byte-level
    BPE knows every input)."""
    unk = getattr(getattr(tokenizer, "model", None), "unk_token", None)
    return tokenizer.token_to_id(unk) if unk else None


def prompt_ids(tokenizer: Any, prompt: str, context: int, notes: list[str] | None = None) -> list[int]:
    """Token ids of a prompt exactly as the tokenizer encodes it (special tokens as its post-processor adds
    them), at most context - 1 (a place left for the first new token): a longer prompt keeps its end
    (nanoGPT's crop) and says what was cut. An empty prompt and one that gives no token are refused;
    characters read as the unknown token, or dropped by the tokenizer, are said."""
    if not prompt.strip():
        raise UserError("the prompt is empty; give text to continue (e.g. \"ROMEO:\")")
    enc = tokenizer.encode(prompt, add_special_tokens=True)
    ids, offsets = list(enc.ids), list(enc.offsets)
    special = list(getattr(enc, "special_tokens_mask", [0] * len(ids)))
    if not any(not s for s in special):
        raise UserError(f"{_shorten(prompt)!r} gives no tokens for this model's tokenizer; nothing to continue")
    unk = unknown_token_id(tokenizer)
    replaced = "".join(prompt[a:b] for i, (a, b), s in zip(ids, offsets, special) if i == unk and not s)
    covered = [False] * len(prompt)
    for (a, b), s in zip(offsets, special):
        if not s:
            covered[a:b] = [True] * (b - a)
    dropped = "".join(c for c, seen in zip(prompt, covered) if not seen and not c.isspace())
    if notes is not None and replaced.strip():
        chars = "".join(dict.fromkeys(c for c in replaced if not c.isspace()))
        notes.append(f"{sum(not c.isspace() for c in replaced)} character(s) of the prompt unknown to the "
                     f"tokenizer ({chars[:10]!r}) read as {tokenizer.id_to_token(unk)}")
    if notes is not None and dropped:
        notes.append(f"{len(dropped)} character(s) of the prompt unknown to the tokenizer "
                     f"({''.join(dict.fromkeys(dropped))[:10]!r}) dropped")
    limit = context - 1
    if len(ids) > limit:
        lead = next((k for k, s in enumerate(special) if not s), 0)  # a BOS the post-processor added stays
        cut = len(ids) - limit
        start = next((a for (a, _), s in zip(offsets[lead + cut:], special[lead + cut:]) if not s), len(prompt))
        if notes is not None:
            notes.append(f"the prompt is {len(ids)} tokens; the model's context of {context} tokens "
                         f"leaves room for {limit}: its first {cut} tokens were cut "
                         f"({start} of {len(prompt)} characters, up to {_shorten(prompt[:start][-30:])!r}); "
                         f"it now starts {_shorten(prompt[start:], 30)!r}")
        ids = ids[:lead] + ids[lead + cut:]
    return ids


def context_of(net: nn.Module) -> int:
    """The longest sequence the network takes (block_size: its position table, or what it was trained /
    converted for)."""
    return int(net.block_size)


@torch.no_grad()
def continue_ids(net: nn.Module, ids: list[int], options: Sampling, *, eos_ids: Sequence[int] = (),
                 pad_id: int = 0, notes: list[str] | None = None, keep: int = 0) -> list[int]:
    """The new token ids after `ids` (cut after an EOS). Within the context: models.generate in one call
    (one KV cache). Past it: nanoGPT's crop, each further token predicted from the last context - 1 tokens
    (said in `notes`); the first `keep` ids (a BOS the tokenizer added: a pretrained model's attention sink)
    stay in front of that window, as prompt_ids keeps them when it crops."""
    context = context_of(net)
    device = next(net.parameters()).device
    generator = None
    if options.sampled and options.seed is not None:
        generator = torch.Generator(device=device).manual_seed(int(options.seed))
    sample = dict(temperature=options.temperature, top_k=options.top_k, top_p=options.top_p,
                  generator=generator, eos_ids=list(eos_ids), pad_id=pad_id)
    total = options.max_new_tokens
    first = min(total, context - len(ids))
    out = generate(net, [ids], max_new_tokens=first, **sample)[0].tolist()
    ended = _eos_at(out, eos_ids)
    if ended is not None:
        return out[: ended + 1]
    if first < total and notes is not None:
        last = f"the BOS and the last {context - 1 - keep}" if keep else f"the last {context - 1}"
        notes.append(f"prompt + {total} new tokens are more than the model's context ({context} tokens): "
                     f"past it, each new token is predicted from {last} tokens")
    seq = list(ids) + out
    while len(out) < total:
        window = seq[:keep] + seq[len(seq) - max(1, context - 1 - keep):]  # never the whole sequence
        nxt = int(generate(net, [window], max_new_tokens=1, **sample)[0, 0])
        out.append(nxt)
        seq.append(nxt)
        if nxt in eos_ids:
            break
    return out


def _eos_at(out: list[int], eos_ids: Sequence[int]) -> int | None:
    return next((i for i, t in enumerate(out) if t in eos_ids), None)


def continuation_text(tokenizer: Any, prompt: Sequence[int], new: Sequence[int]) -> str:
    """The text `new` adds after `prompt`: decode(prompt + new) less decode(prompt), so a decoder that
    strips a word's leading space when it starts the text (SentencePiece's Metaspace) still gives the
    space between the prompt and the first new word."""
    before = tokenizer.decode(list(prompt), skip_special_tokens=True)
    whole = tokenizer.decode(list(prompt) + list(new), skip_special_tokens=True)
    return whole[len(before):] if whole.startswith(before) else tokenizer.decode(list(new), skip_special_tokens=True)


def cut_at_stop(tokenizer: Any, new: list[int], stops: Sequence[str], eos_ids: Sequence[int] = (),
                prompt: Sequence[int] = ()) -> tuple[list[int], str, str | None]:
    """(the new ids kept, the continuation text after `prompt`, the stop string met or None). The text ends
    before the first stop string (or EOS); the ids kept run up to the token that completed the stop string
    (the maps show what the model generated until it stopped)."""
    end = _eos_at(new, eos_ids)
    body = new if end is None else new[:end]
    text = continuation_text(tokenizer, prompt, body)
    found = [(text.find(s), s) for s in stops if s in text]
    if not found:
        return new if end is None else new[: end + 1], text, None
    at, stop = min(found)
    for k in range(1, len(body) + 1):  # the fewest tokens whose text holds that stop string
        if continuation_text(tokenizer, prompt, body[:k]).find(stop) == at:
            return body[:k], text[:at], stop
    return body, text[:at], stop


def shown_token(text: str) -> str:
    """A token as people read it in a picture or a page: newlines and tabs escaped, a lone space as ␣."""
    text = text.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    return text.replace(" ", "␣") if text and not text.strip() else text


def token_texts(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Each id as the text it stands for (decoded alone; special tokens by name), shown_token'd."""
    out = []
    for i in ids:
        text = tokenizer.decode([int(i)], skip_special_tokens=False)
        out.append(shown_token(text if text else str(tokenizer.id_to_token(int(i)))))
    return out


def repeated_random_tokens(tokenizer: Any, vocab_size: int, n: int, prefix: Sequence[int] = (),
                           seed: int = 0) -> Tensor:
    """(1, len(prefix) + 2 n) ids: `prefix` then n random ordinary tokens twice (the induction test's input;
    the special and unknown tokens left out)."""
    skip = set()
    unk = unknown_token_id(tokenizer)
    if unk is not None:
        skip.add(unk)
    added = getattr(tokenizer, "get_added_tokens_decoder", None)
    if callable(added):
        skip |= {int(i) for i, t in added().items() if getattr(t, "special", True)}
    pool = torch.tensor([i for i in range(vocab_size) if i not in skip])
    g = torch.Generator().manual_seed(seed)
    r = pool[torch.randperm(len(pool), generator=g)[:n]] if n <= len(pool) else \
        pool[torch.randint(len(pool), (n,), generator=g)]
    return torch.cat([torch.tensor(list(prefix), dtype=torch.long), r, r])[None]
