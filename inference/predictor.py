"""Predictor and Prediction: one input in, the model run once, all that pictures and pages need out.

    p = predictor.predict(x, maps=True)   # x from inference.inputs.read
    p.top / p.text / p.embedding          # what the model says (classifier / translator / encoder)
    p.maps                                # {layer: (1, heads, queries, keys)} of that same run

A classifier's maps come from the forward pass that gave its logits; a translator decodes once and,
for maps, re-runs its decoder once with teacher forcing on its own output (the numbers the cached
decoding computed, without a cache to read them from); a text encoder's maps come from the pass that
embeds."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from inference.complete import (Sampling, context_of, continue_ids, cut_at_stop, prompt_ids,
                                repeated_random_tokens, token_texts)
from inference.contacts import encode_chains
from inference.inputs import input_kind
from inference import speech_words
from inference.protein import ProteinInput, check_length, head_fitted, pseudo_perplexity, read_proteins
from inference.speech_audio import note_silence, transcribe_windows
from models.attention import AttentionRecorder, attention_maps, select_attention_layers
from models.tokenizer import UNK_ID, decode
from utils.errors import UserError, note


MAX_MAP_TOKENS = 512  # a causal LM's maps: the last tokens kept (heads x tokens^2 weights a layer)
INDUCTION_LENGTH = 50  # random tokens repeated in the induction test (fewer when the context is short)
CROSS = "decoder.*.cross_attn"  # a transcriber's cross-attention layers (all that word timestamps read)


@dataclass
class Prediction:
    """One input's prediction.

    input: the model input as read (batch of 1) or the sentence; shown: what people see of it
    (picture, spectrogram or (T, C, H, W) frames). Classifiers: logits (classes,) and top [(class,
    probability)]. Text: source_ids (1, S) as the model read them and their tokens; a translator
    adds its text, the generated ids (up to EOS) and their tokens, and the decoder's input tokens; a
    text encoder its embedding (dim,). maps: per layer, per head attention (1, H, T, S) when asked
    for; heads: the heads pictures average (None: all). net: the network that made it (its geometry:
    patch grid, frontend). A backbone (no classifier head) has no logits or top but its pooled
    features (dim,); tokens: the encoder's output (1, T, dim) of the pass that recorded the maps.

    A causal LM (task "complete"): input the prompt, text its continuation (cut before a stop string:
    `stopped`), source_ids (1, P) the prompt's ids (after a cut), ids the new ids (up to the stop / EOS
    token); maps: its causal self-attention over context_tokens (prompt + new tokens; the last
    MAX_MAP_TOKENS of them), prompt_length of those being the prompt's; repeat_maps: the maps of
    `repeat_start` tokens then repeat_length random tokens twice (the induction test)."""

    net: nn.Module
    modality: str
    input: Tensor | str
    shown: Tensor | None = None
    logits: Tensor | None = None
    top: list[tuple[str, float]] = field(default_factory=list)
    text: str | None = None
    source_ids: Tensor | None = None
    source_tokens: list[str] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    target_tokens: list[str] = field(default_factory=list)
    input_tokens: list[str] = field(default_factory=list)
    embedding: Tensor | None = None
    maps: dict[str, Tensor] = field(default_factory=dict)
    heads: list[int] | None = None
    features: Tensor | None = None
    tokens: Tensor | None = None
    context_tokens: list[str] = field(default_factory=list)
    prompt_length: int = 0
    stopped: str | None = None
    repeat_maps: dict[str, Tensor] = field(default_factory=dict)
    repeat_length: int = 0
    repeat_start: int = 0
    frame_seconds: float = 0.0  # a transcriber's seconds per log-mel frame (shown: (n_mels, frames))
    # A transcriber asked for words (inference/speech_words.py): its Words, the start (s) of each generated token,
    # the audio positions the input covers (the columns aligned over; 0: not computed), the (layer, head) pairs used.
    words: list[Any] = field(default_factory=list)
    token_starts: list[float] = field(default_factory=list)
    covered: int = 0
    alignment_heads: list[tuple[int, int]] = field(default_factory=list)
    # A protein (task "unmask"): input its residues, name its name, source_tokens <cls> residues <eos>;
    # perplexity the pseudo-perplexity; contact_probs (L, L) the contact head's probabilities (None: the head is
    # not fitted); true_contacts (L, L) bool from a structure file (None: unknown).
    name: str = ""
    perplexity: float | None = None
    contact_probs: Tensor | None = None
    true_contacts: Tensor | None = None


def shown_layers(net: nn.Module) -> list[str]:
    """The globs of `net.attention_layers` that match a layer of this network (a video network names
    both its divided and its joint layers; a built one has one kind)."""
    names = [n for n, _ in select_attention_layers(net, None)]
    return [g for g in net.attention_layers if any(fnmatch.fnmatchcase(n, g) for n in names)]


def record(net: nn.Module, *inputs: Any) -> tuple[Any, dict[str, Tensor]]:
    """One forward pass of `net` and the per-head maps of the layers it shows."""
    with torch.no_grad():
        return attention_maps(net, *inputs, layers=shown_layers(net))


def teacher_forced(
    net: nn.Module, src: Tensor, out: list[int]
) -> tuple[list[int], dict[str, Tensor]]:
    """(decoder input ids, per-head maps) of a sequence-to-sequence net re-run on its own output
    `out` (EOS included, no start token): with teacher forcing it computes what the cached decoding
    computed."""
    if not out:
        raise ValueError("the output is empty: nothing to align")
    tgt_in = [net.bos_id] + list(out[:-1])  # the model's start token (Marian: pad)
    _, maps = record(net, src, torch.tensor([tgt_in], device=src.device))
    return tgt_in, maps


def encoder_maps(net: nn.Module, ids: Tensor, pad: Tensor | None = None) -> Tensor:
    """(layers, B, H, L, L) self-attention maps of a text encoder on a batch of ids, one forward
    pass."""
    with torch.no_grad():
        _, maps = attention_maps(net, ids, pad, layers=shown_layers(net))
    return torch.stack(list(maps.values()))


def has_head(net: nn.Module) -> bool:
    """Whether a classifier network ends in a classifier head; a backbone's head is nn.Identity
    (num_classes=0) and its output is its pooled features."""
    return not isinstance(getattr(net, "head", None), nn.Identity)


def record_tokens(net: nn.Module, *inputs: Any) -> tuple[Any, dict[str, Tensor], Tensor | None]:
    """`record`, plus the output (B, T, dim) of the network's `encoder` module in that same pass
    (None for a network without one)."""
    encoder = getattr(net, "encoder", None)
    kept: list[Tensor] = []
    hook = None
    if isinstance(encoder, nn.Module):
        hook = encoder.register_forward_hook(lambda m, args, out: kept.append(out))
    try:
        out, maps = record(net, *inputs)
    finally:
        if hook is not None:
            hook.remove()
    tokens = kept[-1] if kept and isinstance(kept[-1], Tensor) else None
    return out, maps, tokens


def top_classes(logits: Tensor, names: list[str], k: int = 5) -> list[tuple[str, float]]:
    """The k most probable classes of one row of logits, as (name, probability)."""
    probs = logits.float().softmax(-1)
    p, i = probs.topk(min(k, probs.numel()))
    return [
        (names[j] if j < len(names) else f"class {j}", float(q))
        for q, j in zip(p.tolist(), i.tolist())
    ]


def shorten(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def source_ids(
    tokenizer: Any,
    sentence: str,
    max_len: int,
    notes: list[str] | None = None,
    specials: bool = False,
) -> list[int]:
    """Token ids of a sentence as the model reads it (at most max_len; specials: with the
    tokenizer's own [CLS] / [SEP]). Refuses an empty sentence and one none of whose characters the
    tokenizer knows (the model would read [UNK]s with confidence); notes the unknown characters of a
    partly known one, and a truncation."""
    verb = "encode" if specials else "translate"
    if not sentence.strip():
        raise UserError(f"the sentence is empty; give text to {verb}")
    enc = tokenizer.encode(sentence, add_special_tokens=specials)  # offsets point into `sentence`
    ids, offsets = list(enc.ids), list(enc.offsets)
    if not ids:
        raise UserError(f"{shorten(sentence)!r} gives no tokens to {verb}")
    unknown = _unknown(tokenizer, sentence, ids, offsets)
    if unknown and len(unknown) == sum(not c.isspace() for c in sentence):
        raise UserError(
            f"none of the characters of {shorten(sentence)!r} is known to the model's tokenizer "
            f"(it knows the characters of its training text); nothing to {verb}"
        )
    if unknown and notes is not None:
        shown = "".join(dict.fromkeys(unknown))[:10]
        notes.append(
            f"{len(unknown)} character(s) unknown to the tokenizer ({shown!r}) read as [UNK]"
        )
    if len(ids) > max_len:
        ids = _truncated(sentence, ids, offsets, max_len, notes)
    return ids


def _unknown(tokenizer: Any, sentence: str, ids: list[int], offsets: list[tuple[int, int]]) -> str:
    """The characters of `sentence` read as the unknown token (whitespace left out)."""
    unk = getattr(tokenizer, "unk_id", None)
    if unk is None:  # a `tokenizers` tokenizer names its unknown token; the zoo's BPE uses UNK_ID
        unk = tokenizer.token_to_id("[UNK]") if hasattr(tokenizer, "token_to_id") else None
        unk = UNK_ID if unk is None else unk
    unknown = "".join(sentence[a:b] for i, (a, b) in zip(ids, offsets) if i == unk)
    return "".join(c for c in unknown if not c.isspace())


def _truncated(
    sentence: str,
    ids: list[int],
    offsets: list[tuple[int, int]],
    max_len: int,
    notes: list[str] | None,
) -> list[int]:
    end = offsets[max_len - 1][1]
    tail = sentence[max(0, end - 30) : end]
    tail = "..." + (tail.split(" ", 1)[-1] if " " in tail else tail) if end > 30 else tail
    if notes is not None:
        notes.append(
            f"{len(ids)} tokens, more than the model's max_len={max_len}: truncated to the first "
            f"{max_len} tokens ({end} of {len(sentence)} characters, up to {tail!r})"
        )
    return ids[:max_len]


@dataclass
class Predictor:
    """A network ready to predict: its LightningModule (None for a bare text encoder), where it
    came from (checkpoint file or source spec), its run config, and what prepares its inputs: the
    data module of a trained run or the `preprocess` of a pretrained source; class names or a
    tokenizer."""

    net: nn.Module
    module: L.LightningModule | None
    source: Path | str
    cfg: DictConfig | None = None
    datamodule: L.LightningDataModule | None = None
    preprocess: dict[str, Any] | None = None
    class_names: list[str] = field(default_factory=list)
    tokenizer: Any = None
    image_size: int | tuple[int, int] | str | None = None  # images: None = as the model was trained
    generation: dict[str, Any] = field(default_factory=dict)  # a causal LM's decoding defaults

    @property
    def modality(self) -> str:
        return str(self.net.modality)

    @property
    def task(self) -> str:
        """What the network says a prediction is: "classify", "generate", "embed", "complete",
        "transcribe" or "unmask" (a protein masked LM)."""
        return str(self.net.task)

    @property
    def kind(self) -> str:
        """What it takes or does, for people and for the app's tab names: the modality of a
        classifier ("image"), the network's name otherwise ("translator", "text_encoder")."""
        return self.modality if self.task == "classify" else str(self.net.name)

    def check_heads(self, heads: list[int] | None) -> None:
        """`heads` within the network's heads per layer (--heads)."""
        n = self.num_heads()
        if any(not 0 <= h < n for h in heads or []):
            raise UserError(
                f"--heads {','.join(map(str, heads or []))}: this model has {n} heads per layer "
                f"(0..{n - 1})"
            )

    def num_heads(self) -> int:
        """Heads per attention layer (the first layer the pictures show)."""
        return int(select_attention_layers(self.net, shown_layers(self.net))[0][1].num_heads)

    def depth(self, pattern: str) -> int:
        """How many layers match the `*` of an attention_layers glob ("decoder.*.cross_attn")."""
        head, _, _ = pattern.partition("*")
        names = {
            n[len(head) :].split(".")[0]
            for n, _ in self.net.named_modules()
            if n.startswith(head) and fnmatch.fnmatchcase(n, pattern)
        }
        return len(names)

    def predict(
        self,
        x: Tensor | str,
        *,
        maps: bool = False,
        heads: list[int] | None = None,
        beam_size: int | None = None,
        notes: list[str] | None = None,
        top_k: int = 5,
        sampling: Sampling | None = None,
        words: bool = False,
    ) -> Prediction:
        """The prediction for one input (inputs.read's tensor or sentence); maps: the per-head
        attention of that run too. notes: what was done to odd text input (truncated, unknown
        characters). sampling: a causal LM's decoding options (None: the model's own). words: a
        transcriber's word timestamps (inference/speech_words.py; other tasks have none)."""
        self.check_heads(heads)
        task = self.task
        if task == "complete":
            p = self._complete(str(x), maps, sampling or Sampling(), notes)
        elif task == "generate":
            p = self._generate(str(x), maps, beam_size, notes)
        elif task == "embed":
            p = self._embed(str(x), notes)
        elif task == "transcribe":
            p = self._transcribe(x, maps, beam_size, notes, words)  # type: ignore[arg-type]
        elif task == "unmask":
            p = self._unmask(x, maps, notes)  # type: ignore[arg-type]
        else:
            p = self._classify(x, maps, top_k)  # type: ignore[arg-type]
        p.heads = heads
        return p

    @torch.no_grad()
    def _classify(self, x: Tensor, maps: bool, top_k: int) -> Prediction:
        out, recorded, tokens = record_tokens(self.net, x) if maps else (self.net(x), {}, None)
        shown = input_kind(self.modality).show(self, x[0])
        p = Prediction(self.net, self.modality, x, shown, maps=recorded, tokens=tokens)
        if has_head(self.net):
            p.logits = out[0]
            p.top = top_classes(out[0], self.class_names, top_k)
        else:  # a backbone: its output is its pooled features, no classes to rank
            p.features = out[0]
        return p

    @torch.no_grad()
    def _generate(
        self, sentence: str, maps: bool, beam_size: int | None, notes: list[str] | None
    ) -> Prediction:
        net = self.net
        src = torch.tensor([source_ids(self.tokenizer, sentence, net.max_len, notes)])
        out = self.module.decode_ids(src, beam_size)[0].tolist()
        text = decode(self.tokenizer, out)
        out = (
            out[: out.index(net.eos_id) + 1]
            if net.eos_id in out
            else [t for t in out if t != net.pad_id]
        )
        tgt_in, recorded = teacher_forced(net, src, out) if maps and out else ([], {})
        return Prediction(
            net,
            self.modality,
            sentence,
            text=text,
            source_ids=src,
            source_tokens=self._tokens(src[0]),
            ids=out,
            target_tokens=self._tokens(out),
            input_tokens=self._tokens(tgt_in),
            maps=recorded,
        )

    @torch.no_grad()
    def _embed(self, sentence: str, notes: list[str] | None) -> Prediction:
        """Always with maps: what a word attends to is the point of asking a text encoder."""
        net = self.net
        src = torch.tensor(
            [source_ids(self.tokenizer, sentence, net.max_len, notes, specials=True)]
        )
        with AttentionRecorder(net, shown_layers(net)) as rec:
            embedding = net.embed(src)
        return Prediction(
            net,
            self.modality,
            sentence,
            source_ids=src,
            source_tokens=self._tokens(src[0]),
            embedding=embedding[0],
            maps=rec.maps,
        )

    @torch.no_grad()
    def _complete(self, prompt: str, maps: bool, sampling: Sampling, notes: list[str] | None) -> Prediction:
        """Continue a prompt; with maps, one teacher-forced pass over prompt + continuation records the
        causal self-attention the generation computed, and one pass over a repeated random sequence
        the induction test's."""
        net, tok, settings = self.net, self.tokenizer, self.generation
        options = sampling.resolved(settings)
        ids = prompt_ids(tok, prompt, context_of(net), notes)
        eos = list(settings.get("eos_ids") or [])
        starts_with_bos = settings.get("bos_id") is not None and bool(ids) and ids[0] == settings.get("bos_id")
        new = continue_ids(net, ids, options, eos_ids=eos, pad_id=int(settings.get("pad_id") or 0),
                           notes=notes, keep=int(starts_with_bos))
        kept, text, stopped = cut_at_stop(tok, new, options.stop, eos, prompt=ids)
        p = Prediction(net, self.modality, prompt, text=text, source_ids=torch.tensor([ids]),
                       source_tokens=token_texts(tok, ids), ids=kept, target_tokens=token_texts(tok, kept),
                       stopped=stopped)
        if maps:
            seq = (ids + kept)[-min(MAX_MAP_TOKENS, context_of(net)):]
            if len(seq) < len(ids) + len(kept) and notes is not None:
                notes.append(f"the attention maps show the last {len(seq)} of the "
                             f"{len(ids) + len(kept)} tokens")
            device = next(net.parameters()).device
            _, p.maps = record(net, torch.tensor([seq], device=device))
            p.context_tokens = token_texts(tok, seq)
            p.prompt_length = max(0, len(seq) - len(kept))
            self._induction(p, ids[:1] if starts_with_bos else [])
        return p

    @torch.no_grad()
    def _transcribe(self, wave: Tensor, maps: bool, beam_size: int | None,
                    notes: list[str] | None, words: bool = False) -> Prediction:
        """Speech -> text: the waveform (1, samples) at the source's rate (inputs.read resamples and
        mixes to mono, saying so); longer than its chunk length (preprocess chunk_seconds: the one window the model
        hears), in consecutive windows (inference/speech_audio.py);
        the network's front end (log-mel), its `transcribe` with the source's decoding settings, the
        new tokens decoded without special tokens. With maps, one teacher-forced pass over prompt +
        new tokens + EOS records the decoder's attention; ids, target_tokens: the new tokens, EOS
        kept when generated (the rows of the cross-attention pictures). words: that pass (the cross-attention
        only, when no maps were asked for) aligned to the audio (inference/speech_words.py)."""
        net, settings = self.net, self.generation
        pre = self.preprocess or {}
        rate = int(pre.get("sample_rate", 16000))
        limit = int(float(pre.get("chunk_seconds", 30)) * rate)
        note_silence(wave, notes)
        if wave.shape[-1] > limit:  # consecutive windows, each through this method (inference/speech_audio.py)
            return transcribe_windows(self, wave, rate, limit, maps, beam_size, notes, words)
        device = next(net.parameters()).device
        full = net.features(wave.to(device))  # (1, n_mels, frames of the whole window)
        frame_seconds = float(pre.get("chunk_seconds", 30)) / full.shape[-1]
        mel = full[..., : 2 * int(net.audio_len)]  # what the encoder's positions hold
        options = {k: settings[k] for k in ("suppress_tokens", "begin_suppress_tokens", "length_penalty")
                   if k in settings}
        prompt = list(settings.get("prompt") or [net.bos_id])
        max_new = min(int(settings.get("max_new_tokens", 224)), int(net.max_len) - len(prompt))
        new = net.transcribe(mel, prompt=prompt, max_new_tokens=max(1, max_new),
                             beam_size=int(beam_size or settings.get("beam_size") or 1), **options)[0]
        text = self.tokenizer.decode(new, skip_special_tokens=True).strip()
        shown = mel[0].float().cpu()
        p = Prediction(net, self.modality, wave, shown, text=text, source_ids=torch.tensor([prompt]),
                       source_tokens=self._tokens(prompt), ids=list(new), frame_seconds=frame_seconds)
        if maps or words:
            seq = prompt + list(new)
            ended = len(new) < max(1, max_new)
            if ended:  # it stopped at EOS: the step that chose EOS attended too
                seq = seq + [int(net.eos_id)]
            tgt = torch.tensor([seq[:-1]], device=device)
            _, p.maps = record(net, mel, tgt) if maps else attention_maps(net, mel, tgt, layers=[CROSS])
            p.input_tokens = self._tokens(seq[:-1])
            p.target_tokens = self._tokens(seq[len(prompt):])
            p.prompt_length = len(prompt)
            if words:
                speech_words.add_words(p, self.tokenizer, settings.get("alignment_heads"), ended=ended,
                                       samples=wave.shape[-1], hop=round(frame_seconds * rate))
        return p

    @torch.no_grad()
    def _unmask(self, protein: ProteinInput | str, maps: bool, notes: list[str] | None) -> Prediction:
        """A protein (inference/protein.py's ProteinInput; a string is read as predict.py reads an argument, its
        first protein kept): its pseudo-perplexity (one masked copy per residue), the contact head's
        probabilities when it is fitted (net.contacts), and with maps the per-head self-attention of one pass
        over the whole sequence."""
        net = self.net
        if not isinstance(protein, ProteinInput):  # the notebook and the app pass the text or file as given
            protein = read_proteins([str(protein)], net.alphabet, notes)[0]
        check_length(net, protein, notes)
        device = next(net.parameters()).device
        ids = torch.tensor([net.alphabet.encode(protein.sequence)], device=device)
        p = Prediction(net, self.modality, protein.sequence, source_ids=ids.cpu(), name=protein.name,
                       source_tokens=[net.alphabet.tokens[int(i)] for i in ids[0]],
                       perplexity=pseudo_perplexity(net, ids))
        if head_fitted(net):
            p.contact_probs = net.contacts(ids)[0].float().cpu()
        if protein.true_contacts is not None:
            p.true_contacts = torch.as_tensor(protein.true_contacts)
        if maps:
            _, p.maps = record(net, ids)
        return p

    def _induction(self, p: Prediction, prefix: list[int], n: int = INDUCTION_LENGTH) -> None:
        """The maps of `prefix` + n random tokens twice (n at most what the context holds)."""
        n = max(1, min(n, (context_of(self.net) - len(prefix)) // 2))
        seq = repeated_random_tokens(self.tokenizer, int(self.net.vocab_size), n, prefix)
        _, p.repeat_maps = record(self.net, seq.to(next(self.net.parameters()).device))
        p.repeat_length, p.repeat_start = n, len(prefix)

    def _tokens(self, ids: Tensor | list[int]) -> list[str]:
        return [self.tokenizer.id_to_token(int(i)) for i in ids]


def test_examples(predictor: Predictor, n: int) -> list[tuple[Any, Any, str]]:
    """The first n test examples as (input, label, name): sentences + references for a generating model,
    prompts + the text that followed them for a causal LM, recordings + their transcripts for a transcriber
    (read as predict.py reads a file), test proteins (`_test_proteins`: with their true contacts from a structure
    set) + their names for a protein LM, (1, ...) model inputs + class names for classifiers. name: what the pictures and
    printed lines call the example."""
    dm = predictor.datamodule
    dm.setup("test")
    if predictor.task == "generate":
        return [(s, r, s) for s, r in zip(dm.sources("test"), dm.references("test"))][:n]
    if predictor.task == "transcribe":
        from inference.inputs import read

        pairs = dm.splits["test"][:n]
        return [(read(predictor, str(u.audio)), u.text, u.audio.name) for u in pairs]
    if predictor.task == "unmask":
        return _test_proteins(predictor, n)
    parts: list[tuple[Tensor, Tensor]] = []
    for xs, ys in dm.test_dataloader():  # as many batches as the n examples need
        parts.append((xs, ys))
        if sum(len(y) for _, y in parts) >= n:
            break
    if not parts:
        return []
    xs, ys = torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])
    if predictor.task == "complete":  # a test block's first half as the prompt, its second half the reference
        half = xs.shape[1] // 2
        decode = predictor.tokenizer.decode
        prompts = [(decode(x[:half].tolist()), decode(x[half:].tolist())) for x in xs[:n]]
        return [(prompt, rest, prompt) for prompt, rest in prompts]
    return [(xs[i : i + 1], predictor.class_names[int(ys[i])], f"test example {i}") for i in range(min(n, len(ys)))]


def _test_proteins(predictor: Predictor, n: int) -> list[tuple[ProteinInput, str, str]]:
    """The first n test proteins the model can read, as the contact evaluation reads them (inference/contacts.py
    encode_chains: longer than max_len - 2 residues cropped with their contacts, letters the alphabet lacks
    skipped, both in a note): a structure set's chains with their true contact maps, a FASTA set's records
    without. Label and name: the protein's name."""
    dm, net = predictor.datamodule, predictor.net
    if hasattr(dm, "chains"):  # data=protein_structures: coordinates known
        records = dm.chains("test")
    else:
        records = [SimpleNamespace(name=name, sequence=seq) for name, seq in dm.sequences("test")]
    notes: list[str] = []
    chains = encode_chains(net, records, "test", notes, limit=n)
    for line in notes:
        note(f"save_attention: {line}")
    return [(ProteinInput(c.name, net.alphabet.decode(c.ids[0].tolist()), c.contacts), c.name, c.name)
            for c in chains]
