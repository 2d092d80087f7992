"""The attention core: every model in the zoo computes attention here and nowhere else.

`MultiHeadAttention` is one class for self- and cross-attention (keys/values come from
`context` when given), with padding / causal / custom masks, grouped-query attention,
a key/value cache for incremental decoding, and two interchangeable kernels:

* fused: `torch.nn.functional.scaled_dot_product_attention` (memory linear in length)
* explicit: `softmax(Q K^T / sqrt(d_k)) V` written out, the reference the tests check against.

The default, "auto", picks per call: explicit on CPU for short sequences of narrow heads (faster
there), fused otherwise (see KERNELS below).

Sliding-window attention (`window=W`, Longformer / Mistral) and global tokens (`num_global=G`)
are options of the same class: each query sees the keys less than W positions away (with
`causal=True`: itself and the W - 1 before it), and the first G tokens see and are seen by all.
Long inputs run blocked (queries in blocks of W against their own and neighbouring key blocks
through the same kernels), so time and memory grow as N * W, not N^2, forward and backward; a
windowed self-attention cache keeps only the last W - 1 keys (a rolling cache).

Attention weights can be requested per layer (`need_weights=True` or `store_weights=True`);
the output still comes from the selected kernel, so asking for maps never changes the output.
"""

from __future__ import annotations

import fnmatch
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Which kernel modules built with `fused=None` run: "fused" (SDPA), "explicit" (the formula written out),
# or "auto": on CPU, explicit when keys x head_dim <= AUTO_EXPLICIT_MAX (short sequences of narrow heads,
# where SDPA's fixed cost per call outweighs its savings), fused otherwise and always on GPUs. One layer,
# forward + backward, 2 threads (bench/bench_kernels.py): explicit 1.8x / 1.35x / 1.18x faster at 8 / 16 /
# 32 keys with head_dim 24, a tie at 64; with head_dim 64 1.11x at 8 keys, a tie at 16, 8 % slower at 32.
# Under torch.compile the same rule holds for static lengths; dynamic ones (the compiled translator) take
# fused. "auto" is the default; env ZOO_FUSED_ATTN=1 / 0 / auto or the config key `attention_kernel` picks another.
KERNELS = ("fused", "explicit", "auto")
AUTO_EXPLICIT_MAX = 768  # keys x head_dim: <= 32 keys at head_dim 24, <= 12 at head_dim 64


def parse_kernel(value: object) -> str:
    """"fused" / "explicit" / "auto" from a config or environment value (true / 1 = fused, false / 0 = explicit)."""
    text = str(value).strip().lower()
    kernel = {"1": "fused", "true": "fused", "0": "explicit", "false": "explicit"}.get(text, text)
    if kernel not in KERNELS:
        raise ValueError(f"attention kernel {value!r}: expected one of {', '.join(KERNELS)}")
    return kernel


try:
    DEFAULT_KERNEL = parse_kernel(os.environ.get("ZOO_FUSED_ATTN", "auto"))  # what `attention_kernel: null` means
except ValueError as err:
    raise ValueError(f"environment variable ZOO_FUSED_ATTN: {err}") from None
_KERNEL = DEFAULT_KERNEL


def attention_kernel() -> str:
    """The process-wide kernel choice for modules with `fused=None`: "fused", "explicit" or "auto"."""
    return _KERNEL


def set_attention_kernel(kernel: str | bool) -> None:
    """Switch the process-wide kernel at run time (modules with an explicit `fused` keep theirs)."""
    global _KERNEL
    _KERNEL = parse_kernel(kernel)


def use_fused_attn(keys: int | None = None, head_dim: int | None = None, device: torch.device | None = None) -> bool:
    """Whether a module with `fused=None` runs SDPA for `keys` keys of `head_dim` on `device` (None: not known)."""
    if _KERNEL == "auto":
        if torch.compiler.is_compiling() and not isinstance(keys, int):
            return True  # a dynamic length (SymInt): a branch on it would guard, and recompile when crossed
        on_cpu = device is None or device.type == "cpu"
        return not (on_cpu and keys is not None and head_dim is not None and keys * head_dim <= AUTO_EXPLICIT_MAX)
    return _KERNEL == "fused"


@contextmanager
def fused_attn(enabled: bool | str) -> Iterator[None]:
    """Temporarily select the fused (True) or explicit (False) kernel, or "auto", for modules with `fused=None`."""
    previous = _KERNEL
    set_attention_kernel(enabled)
    try:
        yield
    finally:
        set_attention_kernel(previous)


@dataclass
class KVCache:
    """Keys/values kept between decoding steps, shaped (B, num_kv_heads, S, head_dim).

    Self-attention appends the new step's keys/values; cross-attention (`static=True`) computes
    them once from the source and reuses them for every later step.
    """

    static: bool = False
    k: Tensor | None = None
    v: Tensor | None = None
    offset: int = 0  # keys a windowed layer dropped from the front (rolling cache)

    @property
    def length(self) -> int:
        """Keys held now."""
        return 0 if self.k is None else self.k.shape[-2]

    @property
    def position(self) -> int:
        """Keys seen so far: the absolute position of the next step."""
        return self.offset + self.length

    def reorder(self, index: Tensor) -> None:
        """Select batch rows (beam search keeps the surviving hypotheses)."""
        if self.k is not None:
            self.k = self.k.index_select(0, index)
            self.v = self.v.index_select(0, index)


def build_mask(
    batch: int,
    q_len: int,
    k_len: int,
    *,
    key_padding_mask: Tensor | None = None,
    attn_mask: Tensor | None = None,
    causal: bool = False,
    q_offset: int = 0,
    device: torch.device | None = None,
    window: int | None = None,
    num_global: int = 0,
    k_offset: int = 0,
) -> Tensor | None:
    """Combine all masks into one boolean (B, 1|H, T, S) mask, True = query may attend to key.

    key_padding_mask: (B, S) bool, True marks padding (ignored keys), as in nn.MultiheadAttention.
    attn_mask: bool (True = attend) broadcastable to (B, H, T, S), or (T, S).
    causal: query i (at absolute position q_offset + i) sees keys at positions <= q_offset + i;
    key j sits at absolute position k_offset + j (k_offset > 0 after a rolling cache dropped keys).
    window / num_global: the band of `band_mask`, dense (for short inputs and for maps).
    Returns None when nothing is masked, which keeps the fused kernel on its fastest path.
    """
    mask: Tensor | None = None
    if window is not None:
        mask = band_mask(q_len, k_len, window, causal=causal, num_global=num_global,
                         q_offset=q_offset, k_offset=k_offset, device=device)[None, None]
    elif causal:
        q_pos = torch.arange(q_offset, q_offset + q_len, device=device)[:, None]
        mask = torch.arange(k_offset, k_offset + k_len, device=device)[None, :] <= q_pos  # (T, S)
        mask = mask[None, None]
    if key_padding_mask is not None:
        if key_padding_mask.shape != (batch, k_len):
            raise ValueError(
                f"key_padding_mask must have shape (batch, keys) = {(batch, k_len)}, "
                f"got {tuple(key_padding_mask.shape)}"
            )
        keep = ~key_padding_mask.bool()[:, None, None, :]  # (B, 1, 1, S)
        mask = keep if mask is None else mask & keep
    if attn_mask is not None:
        if attn_mask.dtype != torch.bool:
            raise ValueError(f"attn_mask must be boolean (True = attend), got dtype {attn_mask.dtype}")
        extra = attn_mask if attn_mask.dim() == 4 else attn_mask.reshape(1, 1, *attn_mask.shape[-2:])
        mask = extra if mask is None else mask & extra
    return mask


def band_mask(q_len: int, k_len: int, window: int, *, causal: bool = False, num_global: int = 0,
              q_offset: int = 0, k_offset: int = 0, device: torch.device | None = None) -> Tensor:
    """(T, S) bool, True = attend: query at position p sees the key at position j when |p - j| < window
    (causal: 0 <= p - j < window), and every query sees / is seen by the first `num_global` positions
    (causal still holds for those). Positions are q_offset + i and k_offset + j."""
    q_pos = torch.arange(q_offset, q_offset + q_len, device=device)[:, None]
    k_pos = torch.arange(k_offset, k_offset + k_len, device=device)[None, :]
    dist = q_pos - k_pos
    mask = (dist < window) & (dist >= 0 if causal else dist > -window)
    if num_global:
        glob = (q_pos < num_global) | (k_pos < num_global)
        mask |= glob & (dist >= 0) if causal else glob
    return mask


def attention_weights(q: Tensor, k: Tensor, mask: Tensor | None, scale: float) -> Tensor:
    """softmax(Q K^T * scale) with masked keys at exactly 0 and fully masked rows all 0 (not NaN).

    q: (B, H, T, hd), k: (B, H, S, hd) -> (B, H, T, S)
    """
    scores = (q @ k.transpose(-2, -1)) * scale
    if mask is None:
        return scores.softmax(dim=-1)
    scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    # A row with no visible key is all -inf -> NaN; such a query attends to nothing.
    return weights.nan_to_num(0.0)


def _blocks(t: Tensor, window: int, num: int, causal: bool) -> Tensor:
    """(B, H, L, ...) -> (B, num, H, 2W or 3W, ...): for query block b, the key blocks b-1, b (and b+1).

    Pads W in front (and W + whatever completes the last block behind), so block b's keys cover
    positions b*W - W ... b*W + 2W - 1 (causal: ... b*W + W - 1). A copy of 2-3x the input: O(N W).
    """
    after = num * window - t.shape[2] + (0 if causal else window)
    pad = [0, 0] * (t.dim() - 3) + [window, after]
    blocks = F.pad(t, pad).unflatten(2, (-1, window))  # (B, H, num + 1|2, W, ...)
    parts = [blocks[:, :, :num], blocks[:, :, 1 : num + 1]] + ([] if causal else [blocks[:, :, 2:]])
    return torch.cat(parts, dim=3).transpose(1, 2)


def windowed_attention(
    q: Tensor, k: Tensor, v: Tensor, *, window: int, causal: bool, num_global: int,
    key_padding_mask: Tensor | None, dropout_p: float, fused: bool, scale: float,
) -> Tensor:
    """Banded self-attention in O(N W) time and memory: queries in blocks of W, each against the keys of
    its own and neighbouring blocks (2W causal, 3W bidirectional) plus the G global keys, through SDPA
    (fused) or the formula (explicit), masked to the exact band; then the G global queries against all
    keys. Equal to the dense kernel with `band_mask` (tested). q: (B, H, N, hd), k, v: (B, Hkv, N, hd)."""
    B, H, N, hd = q.shape
    Hkv, G, W = k.shape[1], num_global, window
    num = -(-N // W)  # query blocks
    qb = F.pad(q, [0, 0, 0, num * W - N]).unflatten(2, (num, W)).transpose(1, 2)  # (B, nb, H, W, hd)
    kb, vb = _blocks(k, W, num, causal), _blocks(v, W, num, causal)  # (B, nb, Hkv, nk, hd)
    nk = kb.shape[3]
    # Which block keys are real: inside the sequence, not padding, not a global key (those come once, below).
    keep = torch.ones(1, 1, N, dtype=torch.bool, device=q.device)  # (B|1, 1, N): _blocks wants a head dim
    keep[..., :G] = False
    if key_padding_mask is not None:
        keep = keep & ~key_padding_mask.bool()[:, None]
    keep = _blocks(keep, W, num, causal)[:, :, 0]  # (B|1, nb, nk); the zero padding reads as False
    i = torch.arange(W, device=q.device)[:, None]
    dist = i - torch.arange(nk, device=q.device)[None, :] + W  # query i of a block vs its key j
    band = (dist < W) & (dist >= 0 if causal else dist > -W)  # (W, nk), the same for every block
    mask = band & keep[:, :, None, :]  # (B|1, nb, W, nk)
    if G:
        gkeep = torch.ones(1, G, dtype=torch.bool, device=q.device)
        if key_padding_mask is not None:
            gkeep = gkeep & ~key_padding_mask[:, :G].bool()
        # Causal needs no test here: every non-global query sits after all global keys.
        mask = torch.cat([gkeep[:, None, None, :].expand(*mask.shape[:3], G), mask], dim=-1)
        kb = torch.cat([k[:, None, :, :G].expand(B, num, Hkv, G, hd), kb], dim=3)
        vb = torch.cat([v[:, None, :, :G].expand(B, num, Hkv, G, hd), vb], dim=3)
    mask = mask.expand(B, *mask.shape[1:]).reshape(B * num, 1, W, -1)
    qb, kb, vb = qb.reshape(B * num, H, W, hd), kb.flatten(0, 1), vb.flatten(0, 1)
    out = _attend(qb, kb, vb, mask, dropout_p, fused, scale)  # (B * nb, H, W, hd)
    out = out.unflatten(0, (B, num)).transpose(1, 2).flatten(2, 3)[:, :, :N]  # (B, H, N, hd)
    if G:  # the global queries see every key: G rows of dense attention, O(G N)
        gmask = build_mask(B, G, N, key_padding_mask=key_padding_mask, causal=causal, device=q.device)
        out = torch.cat([_attend(q[:, :, :G], k, v, gmask, dropout_p, fused, scale), out[:, :, G:]], dim=2)
    return out


def _attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float, fused: bool,
            scale: float) -> Tensor:
    """One kernel call on (B, H, T, hd) x (B, Hkv, S, hd); rows with no visible key give 0."""
    rep = q.shape[1] // k.shape[1]
    if fused:
        if mask is None:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, enable_gqa=rep > 1)
        # Queries with no visible key (common in windows over padding) attend to nothing: 0. They are let see
        # every key inside the kernel, so no backend meets an all-masked row (NaN in its backward), then zeroed.
        empty = ~mask.any(-1, keepdim=True)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask | empty, dropout_p=dropout_p, enable_gqa=rep > 1)
        return out.masked_fill(empty, 0.0)
    if rep > 1:
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    weights = attention_weights(q, k, mask, scale)
    return (F.dropout(weights, p=dropout_p) if dropout_p > 0 else weights) @ v


class MultiHeadAttention(nn.Module):
    """Multi-head (grouped-query) attention for self- and cross-attention.

    Args:
        dim: model width (queries, and keys/values when they come from `context`).
        num_heads: query heads; `dim` must be divisible by it.
        num_kv_heads: key/value heads (GQA / MQA); defaults to `num_heads`, must divide it.
        qkv_bias: bias in the input projections.
        attn_drop: dropout on attention weights, applied only in training.
        proj_drop: dropout after the output projection, applied only in training.
        fused: True/False pins the kernel; None follows the process-wide switch.
        window: sliding-window self-attention: each query sees the keys less than `window` positions
            away (causal: itself and the window - 1 before it); None = every key. O(N window).
        num_global: with a window, the first tokens (e.g. a class token) attend to and are attended
            by every token, as in Longformer.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_kv_heads: int | None = None,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        fused: bool | None = None,
        window: int | None = None,
        num_global: int = 0,
    ) -> None:
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if dim < 1 or num_heads < 1:
            raise ValueError(f"dim ({dim}) and num_heads ({num_heads}) must be >= 1")
        if window is not None and (not isinstance(window, int) or isinstance(window, bool) or window < 1):
            raise ValueError(f"window must be a positive number of positions or None, got {window!r}")
        if not isinstance(num_global, int) or num_global < 0 or (num_global and window is None):
            raise ValueError(f"num_global ({num_global}) must be >= 0, and > 0 only with a window "
                             f"(without one every token already sees every token)")
        if dim % num_heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        if num_kv_heads < 1 or num_heads % num_kv_heads != 0:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
        if not 0.0 <= attn_drop < 1.0:
            raise ValueError(f"attn_drop must be in [0, 1), got {attn_drop}")
        self.dim, self.num_heads, self.num_kv_heads = dim, num_heads, num_kv_heads
        self.head_dim = dim // num_heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.q_size = num_heads * self.head_dim
        self.kv_size = num_kv_heads * self.head_dim
        # One weight for q, k, v (nanoGPT / timm style): self-attention is a single matmul,
        # cross-attention multiplies slices of the same weight with the two sequences.
        self.qkv = nn.Linear(dim, self.q_size + 2 * self.kv_size, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)
        self.fused = fused
        self.window, self.num_global = window, num_global
        # Set by AttentionRecorder: keep this layer's weights after each forward.
        self.store_weights = False
        self.last_weights: Tensor | None = None

    def _project(self, x: Tensor, part: slice) -> Tensor:
        b = self.qkv.bias
        return F.linear(x, self.qkv.weight[part], None if b is None else b[part])

    def _project_qkv(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        if context is None:
            return self.qkv(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = self._project(x, slice(0, self.q_size))
        k, v = self._project(context, slice(self.q_size, None)).split([self.kv_size, self.kv_size], dim=-1)
        return q, k, v

    def _heads(self, t: Tensor, n: int) -> Tensor:
        B, L, _ = t.shape
        return t.view(B, L, n, self.head_dim).transpose(1, 2)  # (B, n, L, hd)

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        key_padding_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        causal: bool = False,
        cache: KVCache | None = None,
        need_weights: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """x: (B, T, dim) queries; context: (B, S, dim) keys/values source (None = self-attention).

        key_padding_mask (B, S_total) marks padded keys with True; with a self-attention cache,
        S_total counts the cached keys too. Returns (B, T, dim), and the (B, H, T, S) weights
        as a second value when need_weights=True.
        """
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be (batch, length, {self.dim}), got {tuple(x.shape)}")
        if context is not None and (context.dim() != 3 or context.shape[-1] != self.dim):
            raise ValueError(f"context must be (batch, length, {self.dim}), got {tuple(context.shape)}")
        B, T, _ = x.shape
        if cache is not None and cache.static and cache.k is None and context is None:
            raise ValueError("a cross-attention (static) cache needs `context` on the first decoding step")
        if self.window is not None:
            self._check_window_inputs(T, context, attn_mask, cache)
        past = k_offset = 0
        if cache is not None and cache.static and cache.k is not None:
            # Cross-attention while decoding: source keys/values were computed on the first step.
            q = self._heads(self._project(x, slice(0, self.q_size)), self.num_heads)
            k, v = cache.k, cache.v
        else:
            q, k, v = self._project_qkv(x, context)
            q, k, v = self._heads(q, self.num_heads), self._heads(k, self.num_kv_heads), self._heads(v, self.num_kv_heads)
            if cache is not None:
                if not cache.static and cache.k is not None:
                    past, k_offset = cache.position, cache.offset
                    k, v = torch.cat([cache.k, k], dim=2), torch.cat([cache.v, v], dim=2)
                cache.k, cache.v = k, v
                if self.window is not None:
                    self._roll(cache)
        S = k.shape[2]
        if key_padding_mask is not None and k_offset and key_padding_mask.shape[-1] == past + T:
            key_padding_mask = key_padding_mask[:, -S:]  # a rolling cache dropped the oldest keys
        if key_padding_mask is not None and key_padding_mask.shape != (B, S):  # (the blocked path broadcasts)
            raise ValueError(f"key_padding_mask must have shape (batch, keys) = {(B, S)}, "
                             f"got {tuple(key_padding_mask.shape)}")
        if causal and T == 1 and self.window is None:
            causal = False  # one new query at the end of the sequence sees every key anyway
        want_weights = need_weights or self.store_weights
        # Long windowed self-attention runs blocked; short inputs take the dense kernel with the band mask.
        blocked = self.window is not None and past == 0 and T == S and S > (2 if causal else 3) * self.window
        keys = min(S, (2 if causal else 3) * self.window + self.num_global) if blocked else S
        fused = use_fused_attn(keys, self.head_dim, x.device) if self.fused is None else self.fused
        dropout_p = self.attn_drop if self.training else 0.0
        # SDPA's own is_causal skips the masked half and needs no (T, S) mask; it aligns the diagonal
        # top-left, so it is only valid without a cached prefix and with nothing else masked.
        sdpa_causal = (fused and causal and past == 0 and T == S and key_padding_mask is None and attn_mask is None
                       and self.window is None)
        mask = None
        if want_weights or not (sdpa_causal or blocked):
            mask = build_mask(B, T, S, key_padding_mask=key_padding_mask, attn_mask=attn_mask, causal=causal,
                              q_offset=past, device=x.device, window=self.window, num_global=self.num_global,
                              k_offset=k_offset)

        weights: Tensor | None = None
        if blocked:
            out = windowed_attention(q, k, v, window=self.window, causal=causal, num_global=self.num_global,
                                     key_padding_mask=key_padding_mask, dropout_p=dropout_p, fused=fused,
                                     scale=self.scale)
            if want_weights:  # dense (T, S) maps, zero outside the band: O(N^2), for inputs that fit
                with torch.no_grad():
                    weights = attention_weights(q, self._repeat_kv(k), mask, self.scale)
        elif fused:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=None if sdpa_causal else mask, dropout_p=dropout_p, is_causal=sdpa_causal,
                enable_gqa=self.num_kv_heads != self.num_heads,
            )
            if mask is not None and not sdpa_causal:  # (causal rows always see key 0)
                # Queries with no visible key attend to nothing: 0, whatever the backend returns.
                out = out.masked_fill(~mask.any(-1, keepdim=True), 0.0)
            if want_weights:
                with torch.no_grad():  # maps are for looking at; they never feed the output
                    weights = attention_weights(q, self._repeat_kv(k), mask, self.scale)
        else:
            weights = attention_weights(q, self._repeat_kv(k), mask, self.scale)
            attn = F.dropout(weights, p=dropout_p) if dropout_p > 0 else weights
            out = attn @ self._repeat_kv(v)

        out = out.transpose(1, 2).reshape(B, T, self.q_size)  # (B, T, dim)
        out = self.proj_drop(self.proj(out))
        if self.store_weights:
            self.last_weights = weights.detach()
        return (out, weights) if need_weights else out

    def _check_window_inputs(self, T: int, context: Tensor | None, attn_mask: Tensor | None,
                             cache: KVCache | None) -> None:
        if context is not None:
            raise ValueError(f"window={self.window} is for self-attention; this call passes `context` "
                             f"(cross-attention): build the cross-attention layer without a window")
        if attn_mask is not None:
            raise ValueError(f"window={self.window} builds its own band mask; combine it with key_padding_mask "
                             f"and causal, not with attn_mask of shape {tuple(attn_mask.shape)}")
        if self.num_global and cache is not None:
            raise ValueError(f"num_global={self.num_global} with a key/value cache is not supported: "
                             f"decode with num_global=0 (a plain rolling window)")
        if self.num_global > T and cache is None:
            raise ValueError(f"num_global={self.num_global} global tokens but the sequence has only {T}")

    def _roll(self, cache: KVCache) -> None:
        """Rolling cache: keep the last window - 1 keys, all that the next query can see."""
        drop = cache.length - (self.window - 1)
        if drop > 0:  # a copy: a view would keep a long prefill's keys alive
            cache.k, cache.v = cache.k[:, :, drop:].clone(), cache.v[:, :, drop:].clone()
            cache.offset += drop

    def _repeat_kv(self, t: Tensor) -> Tensor:
        """(B, Hkv, S, hd) -> (B, H, S, hd): each key/value head serves num_heads/num_kv_heads queries."""
        rep = self.num_heads // self.num_kv_heads
        return t if rep == 1 else t.repeat_interleave(rep, dim=1)


class AttentionRecorder:
    """Collect attention maps from chosen layers while the model runs as usual.

        with AttentionRecorder(model, layers=["decoder.*.cross_attn"], average_heads=True) as rec:
            logits = model(src, tgt_in)
        rec.maps  # {module_name: (B, T, S)}; per head (B, H, T, S) without average_heads

    layers: None (all), or entries that are an index into the model's attention layers in
        module order (negative counts from the end), a module name, or a glob over names.
    heads: keep only these head indices (None = all); average_heads: mean over the kept heads.
    Each map is the layer's last call (for a cached decoder: its last step). The maps are computed
    beside the output of whichever kernel runs, so recording never changes what the model returns;
    layers not chosen run their usual kernel with no extra work.
    """

    def __init__(self, model: nn.Module, layers: list[int | str] | None = None,
                 heads: list[int] | None = None, average_heads: bool = False) -> None:
        self.modules = dict(select_attention_layers(model, layers))
        if heads is not None:
            num = {m.num_heads for m in self.modules.values()}
            bad = [h for h in heads if not all(-n <= h < n for n in num)]
            if bad or not heads:
                raise ValueError(f"heads={list(heads)}: expected a non-empty list of head indices below {min(num)}")
        self.heads, self.average_heads = heads, average_heads
        self.maps: dict[str, Tensor] = {}

    def __enter__(self) -> "AttentionRecorder":
        for m in self.modules.values():
            m.store_weights, m.last_weights = True, None
        return self

    def collect(self) -> dict[str, Tensor]:
        maps = {}
        for name, m in self.modules.items():
            w = m.last_weights
            if w is None:
                continue
            if self.heads is not None:
                w = w[:, list(self.heads)]
            maps[name] = w.mean(dim=1) if self.average_heads else w
        self.maps = maps
        return maps

    def __exit__(self, *exc: object) -> None:
        self.collect()
        for m in self.modules.values():
            m.store_weights, m.last_weights = False, None


def select_attention_layers(model: nn.Module, layers: list[int | str] | None) -> list[tuple[str, MultiHeadAttention]]:
    """(name, module) of the model's attention layers picked by index, name or glob (None = all)."""
    named = [(n, m) for n, m in model.named_modules() if isinstance(m, MultiHeadAttention)]
    if not named:
        raise ValueError(f"{type(model).__name__} has no MultiHeadAttention layers to record")
    if layers is None:
        return named
    chosen: dict[str, MultiHeadAttention] = {}
    for layer in layers:
        if isinstance(layer, int):
            if not -len(named) <= layer < len(named):
                raise ValueError(f"layer index {layer} out of range for {len(named)} attention layers")
            chosen.setdefault(*named[layer])
            continue
        hits = [(n, m) for n, m in named if fnmatch.fnmatchcase(n, str(layer))]
        if not hits:
            raise ValueError(f"no attention layer matches {layer!r}; known: {[n for n, _ in named]}")
        for n, m in hits:
            chosen.setdefault(n, m)
    return list(chosen.items())


def attention_maps(model: nn.Module, *inputs: object, layers: list[int | str] | None = None,
                   heads: list[int] | None = None, average_heads: bool = False,
                   **kwargs: object) -> tuple[object, dict[str, Tensor]]:
    """Run `model(*inputs, **kwargs)` once and return (its output, {layer name: attention map}).

    The one way to ask any model of the zoo for its attention: see AttentionRecorder for the
    arguments and shapes. The output is exactly what the model returns without recording.
    """
    with AttentionRecorder(model, layers, heads, average_heads) as rec:
        out = model(*inputs, **kwargs)
    return out, rec.maps
