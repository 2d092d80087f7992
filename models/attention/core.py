"""MultiHeadAttention: the one attention layer (self / cross, masks, GQA, cache, window, rotary)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.attention.cache import KVCache
from models.attention.kernels import attend, fills_given_buffer, use_fused_attn
from models.attention.masks import build_mask
from models.attention.rotary import RotaryEmbedding
from models.attention.window import check_window_inputs, windowed_attention


@dataclass
class _Plan:
    """How one call runs, decided before any kernel does."""

    blocked: bool  # windowed self-attention in blocks of W (long inputs)
    fused: bool  # SDPA (ignored when weights are wanted: those come from one explicit pass)
    causal: bool  # causal as the kernels see it
    is_causal: bool  # SDPA's own causal mask, no mask tensor
    mask: Tensor | None  # the dense mask (None on the blocked path, which builds its own)
    key_padding_mask: Tensor | None  # aligned with the keys held now
    dropout_p: float
    need_weights: bool


class MultiHeadAttention(nn.Module):
    """Multi-head (grouped-query) attention for self- and cross-attention.

    Args:
        dim: model width (queries, and keys/values when they come from `context`).
        num_heads: query heads; `dim` must be divisible by it.
        num_kv_heads: key/value heads (GQA / MQA); defaults to `num_heads`, must divide it.
        qkv_bias: bias in the input projections.
        out_bias: bias in the output projection (Llama and Qwen2 have none).
        attn_drop: dropout on attention weights, applied only in training.
        proj_drop: dropout after the output projection, applied only in training.
        fused: True/False pins the kernel; None follows the process-wide switch.
        window: sliding-window self-attention: each query sees the keys less than `window` positions
            away (causal: itself and the window - 1 before it); None = every key. O(N window).
        num_global: with a window, the first tokens (e.g. a class token) attend to and are attended
            by every token, as in Longformer.
        rotary: rotary position embeddings applied to queries and keys of self-attention at their
            absolute positions (with a cache: cache.position onwards); one module may be shared by
            all layers of a model. None = no rotary.

    Attention weights (`need_weights=True`, or `store_weights` set by AttentionRecorder) come with
    the output from one explicit pass (weights = softmax(Q K^T / sqrt(d)), out = weights @ V): maps
    cost no second Q K^T. The output then equals the explicit kernel's bit for bit, and the fused
    kernel's only up to float rounding (about 1e-6 relative in float32).

    Raises:
        ValueError: dim or num_heads < 1, dim not divisible by num_heads, num_heads not a multiple
            of num_kv_heads, attn_drop outside [0, 1), window not a positive int, num_global < 0 or
            > 0 without a window, or rotary built for another head_dim.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        num_kv_heads: int | None = None,
        qkv_bias: bool = True,
        out_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        fused: bool | None = None,
        window: int | None = None,
        num_global: int = 0,
        rotary: RotaryEmbedding | None = None,
    ) -> None:
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if dim < 1 or num_heads < 1:
            raise ValueError(f"dim ({dim}) and num_heads ({num_heads}) must be >= 1")
        bad_window = not isinstance(window, int) or isinstance(window, bool) or window < 1
        if window is not None and bad_window:
            raise ValueError(f"window must be a positive number of positions or None, "
                             f"got {window!r}")
        if not isinstance(num_global, int) or num_global < 0 or (num_global and window is None):
            raise ValueError(f"num_global ({num_global}) must be >= 0, and > 0 only with a window "
                             f"(without one every token already sees every token)")
        if dim % num_heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        if num_kv_heads < 1 or num_heads % num_kv_heads != 0:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads "
                             f"({num_kv_heads})")
        if not 0.0 <= attn_drop < 1.0:
            raise ValueError(f"attn_drop must be in [0, 1), got {attn_drop}")
        if rotary is not None and rotary.head_dim != dim // num_heads:
            raise ValueError(f"rotary was built for head_dim={rotary.head_dim}; this layer's heads "
                             f"are dim / num_heads = {dim // num_heads} wide")
        self.dim = dim
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = dim // num_heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.q_size = num_heads * self.head_dim
        self.kv_size = num_kv_heads * self.head_dim
        # One weight for q, k, v (nanoGPT / timm style): self-attention is a single matmul,
        # cross-attention multiplies slices of the same weight with the two sequences.
        self.qkv = nn.Linear(dim, self.q_size + 2 * self.kv_size, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=out_bias)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)
        self.fused = fused
        self.window = window
        self.num_global = num_global
        self.rotary = rotary
        # Set by AttentionRecorder: keep this layer's weights after each forward; with its `reuse`, a flat
        # float32 buffer the weights are written into (grown when an input needs more), else None.
        self.store_weights = False
        self.last_weights: Tensor | None = None
        self.weights_buffer: Tensor | None = None

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
        positions: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """x: (B, T, dim) queries; context: (B, S, dim) keys/values source (None = self-attention).

        key_padding_mask (B, S_total) marks padded keys with True; with a self-attention cache,
        S_total counts the cached keys too. Returns (B, T, dim), and the (B, H, T, S) weights
        as a second value when need_weights=True. positions (B, T): each row's own absolute
        positions for rotary (left-padded batches start each row at 0); None = the cache's
        position onwards, the same for every row.

        Raises:
            ValueError: x or context not (batch, length, dim), a static cache's first step without
                context, rotary with context, a key_padding_mask not (batch, keys), or a windowed
                layer called as check_window_inputs refuses.
        """
        self._check_inputs(x, context, attn_mask, cache, positions)
        B, T, _ = x.shape
        # (B, H, T, hd), (B, Hkv, S, hd) x 2
        q, k, v, past, k_offset = self._qkv(x, context, cache, positions)
        plan = self._plan(q, k, past, k_offset, causal, key_padding_mask, attn_mask,
                          need_weights or self.store_weights)
        if plan.blocked:
            out, weights = windowed_attention(
                q, k, v, window=self.window, causal=plan.causal, num_global=self.num_global,
                key_padding_mask=plan.key_padding_mask, dropout_p=plan.dropout_p, fused=plan.fused,
                scale=self.scale, need_weights=plan.need_weights)
        else:
            # A reusing recorder's buffer takes only weights kept for the recorder (returned ones are the caller's).
            buffer = self._weights_out(q, k) if self.store_weights and not need_weights else None
            out, weights = attend(q, k, v, plan.mask, fused=plan.fused, dropout_p=plan.dropout_p,
                                  is_causal=plan.is_causal, need_weights=plan.need_weights, weights_out=buffer)
        out = out.transpose(1, 2).reshape(B, T, self.q_size)  # (B, T, dim)
        out = self.proj_drop(self.proj(out))
        if self.store_weights:
            self.last_weights = weights.detach().float()  # maps in float32 whatever the precision
        return (out, weights) if need_weights else out

    def _weights_out(self, q: Tensor, k: Tensor) -> Tensor | None:
        """A (B, H, T, S) view of `weights_buffer` for this call's float32 weights (None: no buffer, not float32, or
        where the kernel computes the weights in fresh memory anyway: a gradient to compute, not the CPU)."""
        if self.weights_buffer is None or not fills_given_buffer(q, k):
            return None
        shape = (*q.shape[:-1], k.shape[-2])
        size = math.prod(shape)
        buffer = self.weights_buffer
        # A buffer made under torch.inference_mode may not be written outside it: a new one then.
        stale = buffer.is_inference() and not torch.is_inference_mode_enabled()
        if buffer.numel() < size or buffer.device != q.device or stale:
            self.weights_buffer = torch.empty(size, dtype=torch.float32, device=q.device)
        return self.weights_buffer[:size].view(shape)

    def _check_inputs(self, x: Tensor, context: Tensor | None, attn_mask: Tensor | None,
                      cache: KVCache | None, positions: Tensor | None) -> None:
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be (batch, length, {self.dim}), got {tuple(x.shape)}")
        if context is not None and (context.dim() != 3 or context.shape[-1] != self.dim):
            raise ValueError(f"context must be (batch, length, {self.dim}), "
                             f"got {tuple(context.shape)}")
        static = cache is not None and cache.static
        if static and cache.k is None and context is None:
            raise ValueError("a cross-attention (static) cache needs `context` on the first "
                             "decoding step")
        if self.rotary is not None and (context is not None or static):
            raise ValueError("rotary embeddings are for self-attention; this call passes `context` "
                             "(cross-attention): build the cross-attention layer without rotary")
        if cache is not None and cache.fixed and (self.window is not None or context is not None
                                                  or (self.rotary is not None and positions is None)):
            raise ValueError("a fixed cache is for self-attention without a window, and with rotary "
                             "embeddings it needs each token's `positions`")
        if self.window is not None:
            check_window_inputs(self.window, self.num_global, x.shape[1], context, attn_mask, cache)

    def _qkv(self, x: Tensor, context: Tensor | None, cache: KVCache | None,
             positions: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, int, int]:
        """Project, split heads, rotate, pass the cache: (q, k, v, position of x[:, 0], of k[0])."""
        if cache is not None and cache.static and cache.k is not None:
            # Cross-attention while decoding: source keys/values were computed on the first step.
            q = self._heads(self._project(x, slice(0, self.q_size)), self.num_heads)
            return q, cache.k, cache.v, 0, 0
        q, k, v = self._project_qkv(x, context)
        q = self._heads(q, self.num_heads)  # (B, H, T, hd)
        k = self._heads(k, self.num_kv_heads)  # (B, Hkv, S, hd)
        v = self._heads(v, self.num_kv_heads)  # (B, Hkv, S, hd)
        # A fixed cache's slots are hidden by the caller's mask and its positions are the caller's: no
        # Python number here that changes between steps (a compiled step would be traced again).
        past = 0 if cache is None or cache.static or cache.fixed else cache.position
        k_offset = 0 if cache is None or cache.static else cache.offset  # before this step's roll
        if self.rotary is not None:  # before the cache, which holds keys rotated at their positions
            # positions (B, 1, T): one table per row, every head; else past, past + 1, ...
            rows = None if positions is None else positions[:, None, :]
            q, k = self.rotary.pair(q, k, start=past, positions=rows)
        if cache is not None:
            if cache.static:
                cache.k, cache.v = k, v
            else:  # concatenated, or written in place into preallocated buffers (cache.capacity)
                k, v = cache.append(k, v)
            if self.window is not None:
                cache.roll(self.window - 1)  # all that the next query can see
        return q, k, v, past, k_offset

    def _plan(self, q: Tensor, k: Tensor, past: int, k_offset: int, causal: bool,
              key_padding_mask: Tensor | None, attn_mask: Tensor | None,
              need_weights: bool) -> _Plan:
        """Pick the path and kernel, and build the dense mask (not for SDPA's causal or blocked)."""
        B, _, T, _ = q.shape
        S = k.shape[2]
        if key_padding_mask is not None and k_offset and key_padding_mask.shape[-1] == past + T:
            key_padding_mask = key_padding_mask[:, -S:]  # a rolling cache dropped the oldest keys
        if key_padding_mask is not None and key_padding_mask.shape != (B, S):
            raise ValueError(f"key_padding_mask must have shape (batch, keys) = {(B, S)}, "
                             f"got {tuple(key_padding_mask.shape)}")
        if causal and T == 1 and self.window is None:
            causal = False  # one new query at the end of the sequence sees every key anyway
        # Long windowed self-attention runs blocked; short inputs, the dense kernel with the band.
        span = (2 if causal else 3) * self.window if self.window is not None else 0
        blocked = self.window is not None and past == 0 and T == S and S > span
        keys = min(S, span + self.num_global) if blocked else S
        fused = use_fused_attn(keys, self.head_dim, q.device) if self.fused is None else self.fused
        # SDPA's own is_causal skips the masked half and needs no (T, S) mask; it aligns the
        # diagonal top-left, so it is only valid without a cached prefix and nothing else masked.
        is_causal = (fused and not need_weights and causal and past == 0 and T == S
                     and key_padding_mask is None and attn_mask is None and self.window is None)
        mask = None
        if not (is_causal or blocked):
            mask = build_mask(B, T, S, key_padding_mask=key_padding_mask, attn_mask=attn_mask,
                              causal=causal, q_offset=past, device=q.device, window=self.window,
                              num_global=self.num_global, k_offset=k_offset)
        dropout_p = self.attn_drop if self.training else 0.0
        return _Plan(blocked=blocked, fused=fused, causal=causal, is_causal=is_causal, mask=mask,
                     key_padding_mask=key_padding_mask, dropout_p=dropout_p,
                     need_weights=need_weights)

    def _project(self, x: Tensor, part: slice) -> Tensor:
        b = self.qkv.bias
        return F.linear(x, self.qkv.weight[part], None if b is None else b[part])

    def _project_qkv(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        if context is None:
            return self.qkv(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = self._project(x, slice(0, self.q_size))
        kv = self._project(context, slice(self.q_size, None))
        k, v = kv.split([self.kv_size, self.kv_size], dim=-1)
        return q, k, v

    def _heads(self, t: Tensor, n: int) -> Tensor:
        B, L, _ = t.shape
        return t.view(B, L, n, self.head_dim).transpose(1, 2)  # (B, n, L, hd)
