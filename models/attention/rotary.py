"""RotaryEmbedding: rotary position embeddings (RoPE) for queries and keys, injected in the core."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from models.attention.kernels import plain_eager

LAYOUTS = ("half", "interleaved")
# The most positions whose cos / sin a RotaryEmbedding keeps between calls (8,192 x 128 features x 2 tables x
# 4 bytes = 8 MiB at head_dim 128); later positions are computed when asked for.
TABLE_LIMIT = 8192


class RotaryEmbedding(nn.Module):
    """Turn each feature pair (x_a, x_b) of a head by the angle position * inv_freq[i] (RoFormer).

    Built once by a model and passed to its attention layers
    (`MultiHeadAttention(..., rotary=rope)`), which apply it to queries and keys after the head
    split, at absolute token positions.

    Args:
        head_dim: width of one head.
        base: the frequency base: inv_freq[i] = base ** (-2i / rotary_dim).
        layout: which features pair up. "half": i with i + rotary_dim / 2 (GPT-NeoX, ESM, Llama in
            Hugging Face, `rotate_half`); "interleaved": 2i with 2i + 1 (GPT-J, Meta's Llama
            release, RoFormer).
        scaling: linear position interpolation: positions are divided by this factor (Hugging Face
            rope_type "linear"); None = 1.
        rotary_dim: rotate only the first rotary_dim features of each head, pass the rest through
            (GPT-NeoX: int(head_dim * rotary_pct)); None = head_dim.
        max_positions: refuse positions at or beyond this (the length the weights were trained for);
            None = no limit.

    `inv_freq` is a persistent buffer: a checkpoint's table (ESM-2 stores an fp16-rounded one) is
    loaded and used as is, never recomputed, so converted models keep their numbers.

    Raises:
        ValueError: head_dim < 2 or odd (without rotary_dim), rotary_dim odd or outside
            [2, head_dim], base <= 0, layout not one of LAYOUTS, scaling <= 0, or
            max_positions < 1.
    """

    inv_freq: Tensor

    def __init__(self, head_dim: int, *, base: float = 10000.0, layout: str = "half",
                 scaling: float | None = None, rotary_dim: int | None = None,
                 max_positions: int | None = None) -> None:
        super().__init__()
        if not isinstance(head_dim, int) or head_dim < 2:
            raise ValueError(f"head_dim must be an int >= 2, got {head_dim!r}")
        if rotary_dim is None and head_dim % 2:
            raise ValueError(f"head_dim must be even (rotary turns pairs of features), "
                             f"got {head_dim}; or rotate only an even rotary_dim < {head_dim}")
        rotary_dim = head_dim if rotary_dim is None else rotary_dim
        if not isinstance(rotary_dim, int) or rotary_dim % 2 or not 2 <= rotary_dim <= head_dim:
            raise ValueError(f"rotary_dim (features rotated, default head_dim) must be even and in "
                             f"[2, head_dim={head_dim}], got {rotary_dim!r}")
        if not base > 0:
            raise ValueError(f"base must be > 0, got {base!r}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
        if scaling is not None and not scaling > 0:
            raise ValueError(f"scaling (linear position interpolation factor) must be > 0 or None, "
                             f"got {scaling!r}")
        if max_positions is not None and max_positions < 1:
            raise ValueError(f"max_positions must be >= 1 or None, got {max_positions!r}")
        self.head_dim = head_dim
        self.rotary_dim = rotary_dim
        self.base = base
        self.layout = layout
        self.scaling = scaling
        self.max_positions = max_positions
        # Computed as Hugging Face does (even indices as floats) so the tables agree to the last
        # bit; the linear scaling is folded in, as in its "linear" rope type.
        exponent = torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim
        inv_freq = 1.0 / (base**exponent)
        self.register_buffer("inv_freq", inv_freq / (1.0 if scaling is None else scaling))

    def extra_repr(self) -> str:
        return (f"{self.head_dim}, rotary_dim={self.rotary_dim}, base={self.base}, "
                f"layout={self.layout!r}, scaling={self.scaling}")

    def cos_sin(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """cos and sin of position * inv_freq, float32, (..., L, rotary_dim) in this layout's order.

        Raises:
            ValueError: a position is not below max_positions.
        """
        last = int(positions.max()) if self.max_positions is not None and positions.numel() else -1
        self._check(last)
        angles = positions.float()[..., None] * self.inv_freq.float()  # (..., L, rotary_dim / 2)
        if self.layout == "half":
            angles = torch.cat([angles, angles], dim=-1)
        else:
            angles = angles.repeat_interleave(2, dim=-1)
        return angles.cos(), angles.sin()

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        """x: (B, H, L, head_dim), positions: (L,) or (B, 1, L) absolute token positions."""
        return self._turn(x, *self._signed(*self.cos_sin(positions)))

    def pair(self, q: Tensor, k: Tensor, *, start: int = 0,
             positions: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """q (B, H, L, hd) and k (B, Hkv, L, hd) turned with one table: at `positions` (B, 1, L), or else at
        start, start + 1, ... (self-attention's common case: that table is kept between calls, so the
        layers of a model that share this module compute cos / sin once a length, not twice a layer)."""
        if positions is None:
            cos, sin = self._range(start, q.shape[-2], q.device)
        else:
            cos, sin = self._signed(*self.cos_sin(positions))
        return self._turn(q, cos, sin), self._turn(k, cos, sin)

    def _check(self, last: int) -> None:
        if self.max_positions is not None and last >= self.max_positions:
            raise ValueError(f"position {last}: expected < max_positions={self.max_positions}")

    def _signed(self, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
        """sin with the sign of the turn folded in (-sin on the features that take -x_b), so that the turn
        itself is a swap: (-x_b) * s and x_b * (-s) are the same float, bit for bit."""
        if self.layout == "half":
            half = sin.shape[-1] // 2
            sign = torch.cat([sin.new_full((half,), -1.0), sin.new_ones(half)])
        else:
            sign = torch.tensor([-1.0, 1.0], dtype=sin.dtype, device=sin.device).repeat(sin.shape[-1] // 2)
        return cos, sin * sign

    def _range(self, start: int, length: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """The (cos, signed sin) of positions start .. start + length - 1, sliced from a table kept for
        positions 0 .. n - 1 (grown by doubling, at most TABLE_LIMIT rows): the same floats as computed for
        those positions alone (every entry is float(p) * inv_freq[i], then cos / sin, elementwise). Computed
        directly instead, and nothing kept, past TABLE_LIMIT (a rolling cache's absolute positions grow without
        end), while tracing, compiling or under fake tensors (the table would be a constant of the graph), and
        when inv_freq is not a plain tensor or wants a gradient (functorch transforms, functional_call). The
        table is rebuilt when inv_freq's values, its device or inference mode change (inference tensors cannot
        be saved for backward outside it)."""
        self._check(start + length - 1 if length else -1)
        freq = self.inv_freq
        # plain_eager first: start may be symbolic while compiling.
        if (not plain_eager(freq) or start + length > TABLE_LIMIT or type(freq) is not Tensor or freq.requires_grad
                or torch._guards.detect_fake_mode() is not None):
            return self._signed(*self.cos_sin(torch.arange(start, start + length, device=device)))
        table = self._table
        fresh = (table is not None and table[0] == (device, torch.is_inference_mode_enabled())
                 and table[1].shape == freq.shape and torch.equal(table[1], freq))
        if not fresh or table[2].shape[0] < start + length:
            n = min(TABLE_LIMIT, max(start + length, 2 * table[2].shape[0] if fresh else 0, 64))
            with torch.no_grad():
                cos, sin = self._signed(*self.cos_sin(torch.arange(n, device=device)))
            table = self._table = ((device, torch.is_inference_mode_enabled()), freq.detach().clone(), cos, sin)
        return table[2][start : start + length], table[3][start : start + length]

    _table: tuple | None = None

    def _turn(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """x * cos + swap(x) * signed sin over the first rotary_dim features; the rest pass through."""
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        rot, rest = x[..., : self.rotary_dim], x[..., self.rotary_dim :]
        if self.layout == "half":
            swapped = rot.roll(self.rotary_dim // 2, dims=-1)  # (x_a, x_b) -> (x_b, x_a)
        else:
            swapped = rot.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
        rot = rot * cos + swapped * sin
        return rot if rest.shape[-1] == 0 else torch.cat([rot, rest], dim=-1)


def llama3_inv_freq(inv_freq: Tensor, *, factor: float, low_freq_factor: float,
                    high_freq_factor: float, original_max_position_embeddings: int) -> Tensor:
    """Llama 3.1's frequency table for long contexts (Hugging Face rope_type "llama3"): wavelengths
    longer than original / low_freq_factor are slowed by `factor`, shorter than original /
    high_freq_factor kept, and those between interpolated smoothly. Written as Hugging Face writes
    it, so the tables agree to the last bit."""
    old = original_max_position_embeddings
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old / low_freq_factor, inv_freq / factor, inv_freq)
    smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old / high_freq_factor) * ~(wavelen > old / low_freq_factor)
    return torch.where(medium, smoothed, scaled)
