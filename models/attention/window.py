"""Sliding-window attention with global tokens, run blocked in O(N W), and its input checks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from models.attention.cache import KVCache
from models.attention.kernels import attend
from models.attention.masks import build_mask


def _blocks(t: Tensor, window: int, num: int, causal: bool) -> Tensor:
    """(B, H, L, ...) -> (B, num, H, 2W or 3W, ...): for query block b, key blocks b-1, b (, b+1).

    Pads W in front (and W + whatever completes the last block behind), so block b's keys cover
    positions b*W - W ... b*W + 2W - 1 (causal: ... b*W + W - 1). A copy of 2-3x the input: O(N W).
    """
    after = num * window - t.shape[2] + (0 if causal else window)
    pad = [0, 0] * (t.dim() - 3) + [window, after]
    blocks = F.pad(t, pad).unflatten(2, (-1, window))  # (B, H, num + 1|2, W, ...)
    parts = [blocks[:, :, :num], blocks[:, :, 1 : num + 1]] + ([] if causal else [blocks[:, :, 2:]])
    return torch.cat(parts, dim=3).transpose(1, 2)


def _dense_map(block_weights: Tensor, n: int, window: int, num_global: int) -> Tensor:
    """(B, nb, H, W, G + nk) weights of the blocked pass -> the dense (B, H, N, N) map.

    Zero off the band.

    Key j of block b sits at position b*W - W + j (`_blocks`); the G global keys come first.
    """
    B, num, H, W, _ = block_weights.shape
    G = num_global
    local = block_weights[..., G:]  # (B, nb, H, W, nk)
    nk = local.shape[-1]
    # Columns shifted by W so the front padding lands at 0..W-1; each row's columns are distinct.
    blocks = torch.arange(num, device=local.device)[:, None]
    cols = blocks * W + torch.arange(nk, device=local.device)  # (nb, nk)
    dense = local.new_zeros(B, num, H, W, num * W + 2 * W)
    dense.scatter_(-1, cols[None, :, None, None, :].expand_as(local), local)
    dense = dense[..., W : W + n]  # (B, nb, H, W, N)
    if G:  # block keys at positions < G were masked out (weight 0): the global columns hold them
        dense[..., :G] = block_weights[..., :G]
    return dense.transpose(1, 2).flatten(2, 3)[:, :, :n]  # (B, H, N, N)


def windowed_attention(
    q: Tensor, k: Tensor, v: Tensor, *, window: int, causal: bool, num_global: int,
    key_padding_mask: Tensor | None, dropout_p: float, fused: bool, scale: float,
    need_weights: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Banded self-attention in O(N W) time and memory: queries in blocks of W, each against the
    keys of its own and neighbouring blocks (2W causal, 3W bidirectional) plus the G global keys,
    through `attend`, masked to the exact band; then the G global queries against all keys. Equal
    to the dense kernel with `band_mask` (tested).

    q: (B, H, N, hd), k, v: (B, Hkv, N, hd) -> (B, H, N, hd), and with need_weights the dense
    (B, H, N, N) map (O(N^2), for inputs that fit) from the same pass, else None.
    """
    B, H, N, hd = q.shape
    Hkv, G, W = k.shape[1], num_global, window
    num = -(-N // W)  # query blocks
    qb = F.pad(q, [0, 0, 0, num * W - N]).unflatten(2, (num, W))  # (B, H, nb, W, hd)
    qb = qb.transpose(1, 2)  # (B, nb, H, W, hd)
    kb, vb = _blocks(k, W, num, causal), _blocks(v, W, num, causal)  # (B, nb, Hkv, nk, hd)
    nk = kb.shape[3]
    # Which block keys are real: inside the sequence, not padding, not a global key (those come
    # once, below). (B|1, 1, N): _blocks wants a head dim.
    keep = torch.ones(1, 1, N, dtype=torch.bool, device=q.device)
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
    kw = {"dropout_p": dropout_p, "fused": fused, "scale": scale, "need_weights": need_weights}
    out, weights = attend(qb, kb, vb, mask, **kw)  # (B * nb, H, W, hd), (B * nb, H, W, G + nk)
    out = out.unflatten(0, (B, num)).transpose(1, 2).flatten(2, 3)[:, :, :N]  # (B, H, N, hd)
    if weights is not None:
        weights = _dense_map(weights.unflatten(0, (B, num)), N, W, G)
    if G:  # the global queries see every key: G rows of dense attention, O(G N)
        gmask = build_mask(B, G, N, key_padding_mask=key_padding_mask, causal=causal,
                           device=q.device)
        g_out, g_weights = attend(q[:, :, :G], k, v, gmask, **kw)
        out = torch.cat([g_out, out[:, :, G:]], dim=2)
        if weights is not None:
            weights = torch.cat([g_weights, weights[:, :, G:]], dim=2)
    return out, weights


def check_window_inputs(window: int, num_global: int, T: int, context: Tensor | None,
                        attn_mask: Tensor | None, cache: KVCache | None) -> None:
    """Refuse the calls a windowed layer cannot run.

    Raises:
        ValueError: cross-attention (`context`), an `attn_mask` (the band is the mask), global
            tokens with a cache, or more global tokens than the sequence has.
    """
    if context is not None:
        raise ValueError(f"window={window} is for self-attention; this call passes `context` "
                         f"(cross-attention): build the cross-attention layer without a window")
    if attn_mask is not None:
        raise ValueError(f"window={window} builds its own band mask; combine it with "
                         f"key_padding_mask and causal, not with attn_mask of shape "
                         f"{tuple(attn_mask.shape)}")
    if num_global and cache is not None:
        raise ValueError(f"num_global={num_global} with a key/value cache is not supported: "
                         f"decode with num_global=0 (a plain rolling window)")
    if num_global > T and cache is None:
        raise ValueError(f"num_global={num_global} global tokens but the sequence has only {T}")
