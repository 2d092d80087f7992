"""KVCache: keys / values kept between decoding steps (static for cross-attention, rolling)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class KVCache:
    """Keys/values kept between decoding steps, shaped (B, num_kv_heads, S, head_dim).

    Self-attention appends the new step's keys/values; cross-attention (`static=True`) computes
    them once from the source and reuses them for every later step. A windowed layer drops the
    oldest keys (`roll`) and counts them in `offset`, so `position` stays the absolute position
    of the next step (what rotary embeddings and the causal band need).
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

    def roll(self, keep: int) -> None:
        """Keep only the last `keep` keys: all that the next query of a window can see."""
        drop = self.length - keep
        if drop > 0:  # a copy: a view would keep a long prefill's keys alive
            self.k, self.v = self.k[:, :, drop:].clone(), self.v[:, :, drop:].clone()
            self.offset += drop
