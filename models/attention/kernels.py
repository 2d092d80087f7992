"""The kernel switch (fused / explicit / auto) and `attend`, the one call that runs either."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import forward_ad

# Which kernel modules built with `fused=None` run: "fused" (SDPA), "explicit" (the formula written
# out), or "auto": on CPU, explicit when keys x head_dim <= AUTO_EXPLICIT_MAX (short sequences
# of narrow heads, where SDPA's fixed cost per call outweighs its savings), fused otherwise and
# always on GPUs. One layer, forward + backward, 2 threads (bench/bench_kernels.py): explicit
# 1.8x / 1.35x / 1.18x faster at 8 / 16 / 32 keys with head_dim 24, a tie at 64; with head_dim 64
# 1.11x at 8 keys, a tie at 16, 8 % slower at 32. Under torch.compile the same rule holds for
# static lengths; dynamic ones (the compiled translator) take fused. "auto" is the default; env
# ZOO_FUSED_ATTN=1 / 0 / auto or the config key `attention_kernel` picks another.
KERNELS = ("fused", "explicit", "auto")
AUTO_EXPLICIT_MAX = 768  # keys x head_dim: <= 32 keys at head_dim 24, <= 12 at head_dim 64


def parse_kernel(value: object) -> str:
    """"fused" / "explicit" / "auto" from a config or env value (true / 1 = fused, 0 = explicit).

    Raises:
        ValueError: the value names none of KERNELS.
    """
    text = str(value).strip().lower()
    kernel = {"1": "fused", "true": "fused", "0": "explicit", "false": "explicit"}.get(text, text)
    if kernel not in KERNELS:
        raise ValueError(f"attention kernel {value!r}: expected one of {', '.join(KERNELS)}")
    return kernel


try:  # DEFAULT_KERNEL is what `attention_kernel: null` means
    DEFAULT_KERNEL = parse_kernel(os.environ.get("ZOO_FUSED_ATTN", "auto"))
except ValueError as err:
    raise ValueError(f"environment variable ZOO_FUSED_ATTN: {err}") from None
_KERNEL = DEFAULT_KERNEL


def attention_kernel() -> str:
    """The process-wide kernel for modules with `fused=None`: "fused", "explicit" or "auto"."""
    return _KERNEL


def set_attention_kernel(kernel: str | bool) -> None:
    """Switch the process-wide kernel at run time (modules with an explicit `fused` keep theirs)."""
    global _KERNEL
    _KERNEL = parse_kernel(kernel)


def use_fused_attn(keys: int | None = None, head_dim: int | None = None,
                   device: torch.device | None = None) -> bool:
    """Whether a `fused=None` module runs SDPA for `keys` keys of `head_dim` on `device`.

    None means not known: an unknown device counts as CPU, an unknown length takes SDPA.
    """
    if _KERNEL == "auto":
        if torch.compiler.is_compiling() and not isinstance(keys, int):
            return True  # a dynamic length (SymInt): a branch on it would guard and recompile
        on_cpu = device is None or device.type == "cpu"
        short = keys is not None and head_dim is not None and keys * head_dim <= AUTO_EXPLICIT_MAX
        return not (on_cpu and short)
    return _KERNEL == "fused"


@contextmanager
def fused_attn(enabled: bool | str) -> Iterator[None]:
    """Temporarily select fused (True), explicit (False) or "auto" for modules with `fused=None`."""
    previous = _KERNEL
    set_attention_kernel(enabled)
    try:
        yield
    finally:
        set_attention_kernel(previous)


# The SDPA backends a run may allow on CUDA (config key `sdpa_backends`); PyTorch picks among those
# allowed, in its own order of preference, the first that supports the call (masks, dtype, head_dim).
SDPA_BACKENDS = ("flash", "efficient", "cudnn", "math")


def set_sdpa_backends(allowed: list[str] | tuple[str, ...] | None) -> None:
    """Allow only these SDPA backends on CUDA (None = all of them, PyTorch's default); process-wide.

    Raises:
        ValueError: a name not in SDPA_BACKENDS, or an empty list.
    """
    names = SDPA_BACKENDS if allowed is None else tuple(allowed)
    unknown = [n for n in names if n not in SDPA_BACKENDS]
    if unknown or not names:
        raise ValueError(f"SDPA backends {list(names)}: expected some of {', '.join(SDPA_BACKENDS)}")
    torch.backends.cuda.enable_flash_sdp("flash" in names)
    torch.backends.cuda.enable_mem_efficient_sdp("efficient" in names)
    torch.backends.cuda.enable_cudnn_sdp("cudnn" in names)
    torch.backends.cuda.enable_math_sdp("math" in names)


def repeat_kv(t: Tensor, rep: int) -> Tensor:
    """(B, Hkv, S, hd) -> (B, Hkv * rep, S, hd): each key/value head serves `rep` query heads."""
    return t if rep == 1 else t.repeat_interleave(rep, dim=1)


def open_empty_rows(mask: Tensor) -> tuple[Tensor, Tensor]:
    """The one rule for a query row that sees no key: it attends to nothing, output 0.

    Returns (mask, empty): `mask` with such rows opened to every key, so no kernel ever meets an
    all -inf row (NaN in softmax, and in some SDPA backends' backward even when the output is
    zeroed afterwards), and `empty` (..., T, 1), the rows to zero after the kernel. Zeroing with
    masked_fill also zeroes their gradient, so the opened keys receive none from them.
    """
    empty = ~mask.any(-1, keepdim=True)
    return mask | empty, empty


LOW_PRECISION = (torch.float16, torch.bfloat16)


def attention_weights(q: Tensor, k: Tensor, mask: Tensor | None, scale: float, out: Tensor | None = None) -> Tensor:
    """softmax(Q K^T * scale) with masked keys at exactly 0 and rows with no visible key all 0.

    q: (B, H, T, hd), k: (B, H, S, hd) -> (B, H, T, S). out: a float32 (B, H, T, S) tensor to compute the
    weights in, used where the softmax may run in place (`may_write_in_place`; otherwise ignored): the same
    numbers, written into memory that earlier calls have already touched (see AttentionRecorder's `reuse`).
    """
    if out is not None and fills_given_buffer(q, k):
        scores = torch.matmul(q, k.transpose(-2, -1), out=out).mul_(scale)
    elif q.dtype in LOW_PRECISION:
        # Scaled before the product, then float32: fp16 logits of large q.k would overflow to inf (a row
        # of NaN, later zeroed); the weights come out float32 (maps too), cast back for weights @ v.
        scores = ((q * scale) @ k.transpose(-2, -1)).float()  # (B, H, T, S)
    else:
        # In place on the fresh (B, H, T, S) scores: the same numbers with one (T, S) buffer less to
        # allocate and stream through (neither op's backward needs the scores).
        scores = (q @ k.transpose(-2, -1)).mul_(scale)  # (B, H, T, S)
    in_place = may_write_in_place(scores)
    if mask is not None:
        mask, empty = open_empty_rows(mask)
        scores.masked_fill_(~mask, float("-inf"))
    weights = torch.ops.aten._softmax.out(scores, -1, False, out=scores) if in_place else scores.softmax(dim=-1)
    if mask is None:
        return weights
    return weights.masked_fill_(empty, 0.0) if in_place else weights.masked_fill(empty, 0.0)


def fills_given_buffer(q: Tensor, k: Tensor) -> bool:
    """Whether attention_weights computes float32 weights of q and k in a given `out` buffer (where the softmax
    runs in place anyway); the attention module asks it too, so as not to allocate a buffer that goes unused."""
    return q.dtype == torch.float32 and may_write_in_place(q) and may_write_in_place(k)


def may_write_in_place(scores: Tensor) -> bool:
    """Whether the softmax may overwrite the fresh scores: on the CPU, when nothing needs its backward and nothing
    traces it (export, compile: an out= op in a graph). The same numbers, bit for bit, without a second (B, H, T, S)
    buffer to allocate and fill: with every map of a long input that is most of the attention's time (8 x 20 heads
    x 1024^2, one thread: 0.90 -> 0.57 s a layer). CPU only: other devices' kernels were not checked for aliasing."""
    if scores.device.type != "cpu" or (torch.is_grad_enabled() and scores.requires_grad):
        return False
    # Forward-mode AD carries tangents that an out= softmax would drop.
    return plain_eager(scores) and forward_ad._current_level < 0


def plain_eager(t: Tensor) -> bool:
    """Whether `t` is an ordinary tensor of an eager run: not traced or compiled (no graph to put a Python-side
    shortcut in) and not wrapped by a functorch transform (vmap, grad, jacrev: its requires_grad says nothing
    about the transform's own autograd). Compiling is asked first: dynamo cannot trace the functorch query."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    return not torch._C._functorch.is_functorch_wrapped_tensor(t)


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, *, fused: bool,
           dropout_p: float = 0.0, is_causal: bool = False, need_weights: bool = False,
           scale: float | None = None, weights_out: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """One attention call: (B, H, T, hd) queries x (B, Hkv, S, hd) keys / values -> (out, weights).

    mask: bool, True = attend, broadcastable to (B, H, T, S); rows with no visible key give 0 on
    both kernels (`open_empty_rows`). fused: SDPA, unless weights are wanted: then the explicit
    formula, so the output and its weights come from one pass (weights = softmax(...),
    out = weights @ v) and nothing is computed twice. is_causal: SDPA's own top-left causal mask,
    only with mask=None. scale: None = 1 / sqrt(head_dim). weights_out: where the weights may be
    computed (attention_weights' `out`). Returns out (B, H, T, hd) and the (B, H, T, S) weights
    before dropout, or None.
    """
    rep = q.shape[1] // k.shape[1]
    if fused and not need_weights:
        empty = None
        if mask is not None:
            mask, empty = open_empty_rows(mask)
        if rep > 1 and q.device.type != "cpu" and (mask is not None or q.dtype not in LOW_PRECISION):
            # On CUDA only flash takes GQA (enable_gqa), and flash takes no mask and no float32: any
            # other call with enable_gqa falls to the quadratic math kernel. Expanded K/V let the
            # mem-efficient / cuDNN kernels run. (CPU kernels handle GQA themselves: same numbers.)
            k, v, rep = repeat_kv(k, rep), repeat_kv(v, rep), 1
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                             is_causal=is_causal, scale=scale, enable_gqa=rep > 1)
        return (out if empty is None else out.masked_fill(empty, 0.0)), None
    if is_causal:  # SDPA's top-left alignment
        mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    weights = attention_weights(q, repeat_kv(k, rep), mask, scale, out=weights_out)  # (B, H, T, S)
    attn = F.dropout(weights, p=dropout_p) if dropout_p > 0 else weights
    return attn.to(v.dtype) @ repeat_kv(v, rep), weights  # (B, H, T, hd)
