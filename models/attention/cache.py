"""KVCache: keys / values kept between decoding steps (static for cross-attention, rolling)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class KVCache:
    """Keys/values kept between decoding steps, shaped (B, num_kv_heads, S, head_dim).

    Self-attention appends the new step's keys/values; cross-attention (`static=True`) computes
    them once from the source and reuses them for every later step. A windowed layer drops the
    oldest keys (`roll`) and counts them in `offset`, so `position` stays the absolute position
    of the next step (what rotary embeddings and the causal band need).

    `capacity` preallocates: the first write allocates (B, num_kv_heads, capacity, head_dim)
    buffers, each step copies its keys/values into them in place, and `k` / `v` are views of the
    keys held now (`buf[:, :, start:end]`). Without it every step concatenates, which copies the
    whole cache (O(T^2) bytes over T steps) and gives new storage each step. A windowed layer's
    roll then only moves `start` (no copy); when the buffer's end is reached, the kept keys are
    moved to its front, so any capacity >= window - 1 + the longest write works. A write that
    still does not fit raises. The in-place writes are for inference: under autograd, a step
    would overwrite storage an earlier step saved for backward.

    `fixed=True` (with `capacity`) is the static cache of gpt-fast: `k` / `v` are always the whole
    buffers, each write goes to the slots named by the tensor `write_at` (set by the caller, e.g.
    `torch.arange(P)` for a prompt, then a one-element tensor advanced in place), and the caller
    hides the slots not written yet with a key padding mask of all `capacity` keys and passes each
    token's `positions`. No Python number changes from step to step and every shape stays the
    same, so a compiled decode step is traced once for the whole generation. No window (the band
    would need the position as a number), no reorder.
    """

    static: bool = False
    k: Tensor | None = None
    v: Tensor | None = None
    offset: int = 0  # keys a windowed layer dropped from the front (rolling cache)
    capacity: int | None = None  # keys the preallocated buffers hold; None = grow by concatenation
    _k_buf: Tensor | None = field(default=None, repr=False, compare=False)
    _v_buf: Tensor | None = field(default=None, repr=False, compare=False)
    _start: int = field(default=0, repr=False, compare=False)  # where k begins in the buffers
    fixed: bool = False  # whole buffers as keys, written at the slots `write_at` (see above)
    write_at: Tensor | None = field(default=None, repr=False, compare=False)  # (T,) slots, fixed caches

    def __post_init__(self) -> None:
        if self.capacity is not None and (isinstance(self.capacity, bool) or not isinstance(self.capacity, int)
                                          or self.capacity < 1):
            raise ValueError(f"capacity must be a positive number of keys or None, got {self.capacity!r}")
        if self.fixed and (self.capacity is None or self.static):
            raise ValueError("a fixed cache needs a capacity (its slots) and is for self-attention (static=False)")

    @property
    def length(self) -> int:
        """Keys held now."""
        return 0 if self.k is None else self.k.shape[-2]

    @property
    def position(self) -> int:
        """Keys seen so far: the absolute position of the next step."""
        return self.offset + self.length

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Add a step's (B, Hkv, T, hd) keys/values; returns all the keys/values held now."""
        if self.fixed:
            return self._write_slots(k, v)
        if self.capacity is None:
            if self.k is not None:
                k, v = torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2)
            self.k, self.v = k, v
            return k, v
        T, held = k.shape[2], self.length
        if self._k_buf is None or self._k_buf.shape[0] != k.shape[0]:
            self._allocate(k, v)
        end = self._start + held
        if end + T > self.capacity:  # a rolling window reached the end: its kept keys to the front
            if held + T > self.capacity:
                raise ValueError(f"KVCache capacity {self.capacity} exceeded: {held} keys held and {T} new; "
                                 f"build the cache with a larger capacity")
            for buf in (self._k_buf, self._v_buf):  # a clone when the two ranges overlap
                kept = buf[:, :, self._start:end]
                buf[:, :, :held].copy_(kept.clone() if self._start < held else kept)
            self._start, end = 0, held
        self._k_buf[:, :, end:end + T].copy_(k)
        self._v_buf[:, :, end:end + T].copy_(v)
        self._set_views(self._start, end + T)
        return self.k, self.v

    def _write_slots(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Fixed cache: k, v into the slots `write_at`; returns the whole (B, Hkv, capacity, hd) buffers."""
        if self.write_at is None or self.write_at.shape != (k.shape[2],):
            got = None if self.write_at is None else tuple(self.write_at.shape)
            raise ValueError(f"a fixed cache writes {k.shape[2]} keys at the slots `write_at`: expected a "
                             f"({k.shape[2]},) tensor of slots, got {got}")
        if self._k_buf is None or self._k_buf.shape[0] != k.shape[0]:
            self._k_buf = k.new_zeros(k.shape[0], k.shape[1], self.capacity, k.shape[3])
            self._v_buf = v.new_zeros(v.shape[0], v.shape[1], self.capacity, v.shape[3])
        self._k_buf.index_copy_(2, self.write_at, k)
        self._v_buf.index_copy_(2, self.write_at, v)
        self.k, self.v = self._k_buf, self._v_buf
        return self.k, self.v

    def _allocate(self, k: Tensor, v: Tensor) -> None:
        """Buffers for k's batch (on the first write, or after a reorder changed the batch size)."""
        B, H, _, D = k.shape
        k_buf = k.new_empty(B, H, self.capacity, D)
        v_buf = v.new_empty(B, v.shape[1], self.capacity, v.shape[3])
        held = self.length
        if held:  # keys from before a batch-size change (reorder already selected their rows)
            k_buf[:, :, :held].copy_(self.k)
            v_buf[:, :, :held].copy_(self.v)
        self._k_buf, self._v_buf, self._start = k_buf, v_buf, 0
        if held:
            self._set_views(0, held)

    def _set_views(self, start: int, end: int) -> None:
        self._start = start
        self.k, self.v = self._k_buf[:, :, start:end], self._v_buf[:, :, start:end]

    def reorder(self, index: Tensor) -> None:
        """Select batch rows (beam search keeps the surviving hypotheses).

        A preallocated cache reorders the keys held in place in its buffers when the batch size
        stays (beam search); a new batch size gets new buffers on the next write."""
        if self.k is None:
            return
        if self.fixed:
            raise ValueError("a fixed cache keeps its rows (no reorder): decode beams with capacity=, fixed=False")
        if self.capacity is not None and not self.static and index.shape[0] == self.k.shape[0]:
            self.k.copy_(self.k.index_select(0, index))
            self.v.copy_(self.v.index_select(0, index))
            return
        self.k = self.k.index_select(0, index)
        self.v = self.v.index_select(0, index)

    def roll(self, keep: int) -> None:
        """Keep only the last `keep` keys: all that the next query of a window can see."""
        if self.fixed:
            raise ValueError("a fixed cache keeps every slot (no roll): windowed layers use capacity=, fixed=False")
        drop = self.length - keep
        if drop <= 0:
            return
        self.offset += drop
        if self.capacity is not None and not self.static:
            self._set_views(self._start + drop, self._start + drop + keep)  # no copy: the view moves
        else:  # a copy: a view would keep a long prefill's keys alive
            self.k, self.v = self.k[:, :, drop:].clone(), self.v[:, :, drop:].clone()
