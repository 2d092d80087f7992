"""Dense boolean masks (True = attend): padding, causal, band and custom, combined by build_mask."""

from __future__ import annotations

import torch
from torch import Tensor


def band_mask(q_len: int, k_len: int, window: int, *, causal: bool = False, num_global: int = 0,
              q_offset: int = 0, k_offset: int = 0, device: torch.device | None = None) -> Tensor:
    """(T, S) bool, True = attend: query at position p sees the key at position j when
    |p - j| < window (causal: 0 <= p - j < window), and every query sees / is seen by the first
    `num_global` positions (causal still holds for those). Positions are q_offset + i and
    k_offset + j."""
    q_pos = torch.arange(q_offset, q_offset + q_len, device=device)[:, None]
    k_pos = torch.arange(k_offset, k_offset + k_len, device=device)[None, :]
    dist = q_pos - k_pos
    mask = (dist < window) & (dist >= 0 if causal else dist > -window)
    if num_global:
        glob = (q_pos < num_global) | (k_pos < num_global)
        mask |= glob & (dist >= 0) if causal else glob
    return mask


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
    window / num_global: the band of `band_mask`, dense (for short inputs).
    Returns None when nothing is masked, which keeps the fused kernel on its fastest path.

    Raises:
        ValueError: key_padding_mask is not (batch, k_len), or attn_mask is not boolean.
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
            raise ValueError(f"attn_mask must be boolean (True = attend), "
                             f"got dtype {attn_mask.dtype}")
        extra = attn_mask
        if attn_mask.dim() != 4:
            extra = attn_mask.reshape(1, 1, *attn_mask.shape[-2:])
        mask = extra if mask is None else mask & extra
    return mask
