"""Decoding for decoder-only LMs: greedy or sampled, batched prompts of any lengths, a KV cache allocated once.

Sampling follows Hugging Face's order (temperature, top-k, top-p, then one torch.multinomial draw per step), so
with the same seed a zoo model and its reference draw the same tokens. Prompts of different lengths are padded
on the left: every row's next token then sits in the last column, and each row keeps its own positions (a key
padding mask hides the pads), so a batch gives what each prompt alone gives.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from models.checks import require_bool, require_int, require_number

SLOT_BUCKET = 128  # fixed caches hold a multiple of this many slots (one compiled trace per bucket)
CHECK_EVERY = 8  # `done` is read back (a host sync on a GPU) every this many steps, not every step


def filter_logits(logits: Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None) -> Tensor:
    """(B, V) logits -> scaled logits with the tokens outside top-k / top-p at -inf (Hugging Face's warpers:
    top-p keeps the smallest set whose probability reaches top_p, and always the most likely token)."""
    if temperature != 1.0:
        logits = logits / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]))[0][..., -1, None]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=False)
        drop = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= 1 - top_p  # (B, V), ascending
        drop[..., -1:] = False
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return logits


def next_token(logits: Tensor, *, temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
               generator: torch.Generator | None = None) -> Tensor:
    """(B, V) logits -> (B,) ids: argmax when temperature == 0, else one draw from the filtered distribution."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p).softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device: torch.device | str | None = None
             ) -> tuple[Tensor, Tensor, Tensor]:
    """Prompts -> ids (B, P) padded on the left, pad (B, P) True at pads, and each row's length (B,)."""
    lengths = [len(p) for p in prompts]
    if not prompts or min(lengths) < 1:
        raise ValueError(f"prompts: expected one or more non-empty lists of token ids, got lengths {lengths}")
    P = max(lengths)
    ids = torch.full((len(prompts), P), pad_id, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, P - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
    pad = torch.arange(P)[None] < (P - torch.tensor(lengths))[:, None]
    return ids.to(device), pad.to(device), torch.tensor(lengths, device=device)


def cache_capacity(prompt_len: int, max_new_tokens: int, window: int | None) -> int:
    """Keys a layer's cache holds at most: the whole sequence, or for a window its last window - 1 keys plus
    the longest write (the prompt), so memory stays constant however long the generation runs."""
    total = prompt_len + max_new_tokens
    return total if window is None else min(total, window - 1 + prompt_len)


def _fixed_step(net: Any, caches: list[Any], ids: Tensor, write: Tensor, pad: Tensor, shift: Tensor,
                slots: Tensor) -> Tensor:
    """One decoding step on fixed caches, every shape the same at every step: ids (B, 1) go to slot `write` (1,),
    the keys hidden are the pads and the slots not written yet, each row's position is write + shift (its pads
    before it). -> (B, V) logits."""
    mask = pad | (slots > write)[None]  # (B, capacity), True = hidden
    return net(ids, key_padding_mask=mask, positions=write[None] + shift, caches=caches, last_only=True)[:, -1]


_compiled_step: Any = None  # torch.compile(_fixed_step), made on first use


def compiled_step() -> Any:
    """The compiled fixed-cache decode step (inductor; static shapes: one trace per model, batch size and
    SLOT_BUCKET of prompt + new tokens, none per step)."""
    global _compiled_step
    if _compiled_step is None:
        _compiled_step = torch.compile(_fixed_step, dynamic=False)
    return _compiled_step


@torch.no_grad()
def generate(net: Any, prompts: Sequence[Sequence[int]], *, max_new_tokens: int = 32, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, generator: torch.Generator | None = None,
             eos_ids: Sequence[int] = (), pad_id: int = 0, use_cache: bool = True, compile: bool = False) -> Tensor:
    """Continue every prompt by up to max_new_tokens: (B, n) new ids, a row's tokens after its EOS are pad_id,
    n < max_new_tokens when every row has ended. `net`: a CausalLM (forward with key_padding_mask / positions /
    caches / last_only, new_caches, attn_window). temperature 0: greedy; > 0: sampled (top_k, top_p, generator).
    compile: decode on fixed caches (every step the same shapes, gpt-fast's static cache) with a step compiled
    by torch.compile, traced once per model, batch size and SLOT_BUCKET (128) of prompt + new tokens (the first
    call of each pays the compilation; past dynamo's recompile limit, 8, the step runs eagerly); not for a
    windowed model (its rolling cache already keeps memory constant) or use_cache=False."""
    require_int("max_new_tokens", max_new_tokens)
    require_number("temperature", temperature, low=0)
    require_int("top_k", top_k, at_least=0, optional=True)
    require_number("top_p", top_p, low=0, low_open=True, high=1, optional=True)
    require_bool("compile", compile)
    if compile and (not use_cache or net.attn_window is not None):
        raise ValueError("compile=True decodes on fixed caches: it needs use_cache=True and a model without "
                         f"attn_window (got use_cache={use_cache}, attn_window={net.attn_window})")
    device = next(net.parameters()).device
    ids, pad, lengths = left_pad(prompts, pad_id, device)
    B, P = ids.shape
    if net.pos_embed is not None and P + max_new_tokens > net.block_size:
        raise ValueError(f"max_new_tokens={max_new_tokens}: a prompt of {P} tokens plus these is longer than "
                         f"block_size={net.block_size} (learned positions)")
    padded = bool(pad.any())  # from the prompt lengths: no read of device values
    keys = torch.cat([pad, pad.new_zeros(B, max_new_tokens)], dim=1) if padded else None  # (B, P + new)
    positions = ((~pad).long().cumsum(-1) - 1).clamp(min=0) if padded else None  # (B, P); pads: 0, unused
    sample = dict(temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
    eos = torch.tensor(list(eos_ids), dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    alive = torch.zeros((), dtype=torch.long, device=device)  # steps after which some row was still running
    if compile:
        logits, decode = fixed_decoder(net, ids, pad, lengths, max_new_tokens, positions, compiled_step())
    else:
        caches = net.new_caches(cache_capacity(P, max_new_tokens, net.attn_window)) if use_cache else None
        logits = net(ids, key_padding_mask=None if keys is None else keys[:, :P], positions=positions,
                     caches=caches, last_only=True)[:, -1]
    seq, out = ids, []
    for t in range(max_new_tokens):
        nxt = next_token(logits.float(), **sample)  # (B,)
        nxt = nxt.masked_fill(done, pad_id)
        out.append(nxt)
        done |= torch.isin(nxt, eos)
        alive += ~done.all()
        if t == max_new_tokens - 1:
            break
        if len(eos_ids) and (t + 1) % CHECK_EVERY == 0 and int(alive) < t + 1:
            break  # every row has ended; the steps run since add only pad and are cut below
        step = nxt[:, None]  # (B, 1)
        if compile:
            logits = decode(step)
            continue
        if padded:
            positions = lengths[:, None] + t if use_cache else torch.cat([positions, lengths[:, None] + t], 1)
        mask = None if keys is None else keys[:, :P + t + 1]
        if use_cache:
            logits = net(step, key_padding_mask=mask, positions=positions, caches=caches, last_only=True)[:, -1]
        else:  # the whole sequence again: the reference the cached path is tested against
            seq = torch.cat([seq, step], dim=1)
            logits = net(seq, key_padding_mask=mask, positions=positions, last_only=True)[:, -1]
    return torch.stack(out, dim=1)[:, :int(alive) + 1]  # up to the step that ended the last row


def fixed_decoder(net: Any, ids: Tensor, pad: Tensor, lengths: Tensor, max_new_tokens: int,
                  positions: Tensor | None, step_fn: Any = _fixed_step) -> tuple[Tensor, Any]:
    """Run the prompt (eager) on new fixed caches: its (B, V) next-token logits, and decode(ids (B, 1)) -> (B, V)
    logits, each call one step_fn (_fixed_step, compiled or not) that writes its keys at the next slot.
    ids, pad, lengths: from left_pad; positions: the padded prompt's, None when nothing is padded."""
    B, P = ids.shape
    # Rounded up to a multiple of SLOT_BUCKET: the step's shapes depend on the capacity, so generations whose
    # prompt + new tokens fall in one bucket share one trace (the extra slots stay masked).
    capacity = -(-(P + max_new_tokens) // SLOT_BUCKET) * SLOT_BUCKET
    caches = net.new_caches(capacity, fixed=True)
    all_pad = torch.cat([pad, pad.new_zeros(B, capacity - P)], dim=1)  # (B, capacity)
    slots = torch.arange(capacity, device=ids.device)
    # The prompt: slots 0..P-1, causal, the slots after it hidden.
    for cache in caches:
        cache.write_at = slots[:P]
    rows = positions if positions is not None else slots[None, :P].expand(B, P)
    logits = net(ids, key_padding_mask=all_pad | (slots >= P)[None], positions=rows, caches=caches,
                 last_only=True)[:, -1]
    write = torch.full((1,), P, dtype=torch.long, device=ids.device)  # the next step's slot, advanced in place
    for cache in caches:
        cache.write_at = write
    shift = (lengths - P)[:, None]  # (B, 1): a row's position = its slot minus the pads before it

    def decode(step: Tensor) -> Tensor:
        out = step_fn(net, caches, step, write, all_pad, shift, slots)
        write.add_(1)
        return out

    return logits, decode
