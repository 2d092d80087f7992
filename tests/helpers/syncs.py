"""Counting host syncs on any device: the ops that make the CPU wait for the accelerator.

On a GPU, `torch.cuda.set_sync_debug_mode("warn")` flags syncs, but the CI machines have none. This
dispatch mode counts, on CPU too, the ops that *would* stall the host on a GPU: a value read back
(`.item()`, `bool(t)`, `int(t)`: `aten._local_scalar_dense`), ops whose output size depends on the
data (`nonzero`, `unique`, `masked_select`: the host must learn the size), `.tolist()`, and copies
between the host and a non-CPU device. On CPU every tensor is a host tensor, so tensors that stay on
the host on a GPU too (an optimizer's step counter) are passed as `exempt`.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
SYNC_OPS = {
    aten._local_scalar_dense.default,  # .item(), bool(t), int(t), float(t)
    aten.is_nonzero.default,
    aten.equal.default,
    aten.nonzero.default,
    aten.masked_select.default,
    aten._unique.default,
    aten._unique2.default,
    aten.unique_dim.default,
    aten.unique_consecutive.default,
    aten.repeat_interleave.Tensor,  # output length from the repeats' values
}
COPY_OPS = {aten._to_copy.default, aten.copy_.default}


@dataclass
class SyncCount:
    """The syncs seen: `ops` names them (op and the line of model code that asked)."""

    ops: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.ops)

    def __repr__(self) -> str:
        return f"{self.count} host syncs" + "".join(f"\n  {op}" for op in self.ops)


def _caller() -> str:
    """The innermost frame outside torch / this file: where the sync was asked for."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        if "/torch/" not in frame.filename and not frame.filename.endswith("syncs.py"):
            return f"{'/'.join(frame.filename.rsplit('/', 2)[-2:])}:{frame.lineno} {frame.line}"
    return "?"


class _SyncCounter(TorchDispatchMode):
    def __init__(self, result: SyncCount, exempt: set[int]) -> None:
        super().__init__()
        self.result = result
        self.exempt = exempt

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        first = args[0] if args else None
        held = isinstance(first, torch.Tensor) and id(first) in self.exempt
        if func in SYNC_OPS and not held:
            self.result.ops.append(f"{func}: {_caller()}")
        elif func in COPY_OPS and isinstance(first, torch.Tensor):
            src = (args[1] if func is aten.copy_.default else first).device
            dst = first.device if func is aten.copy_.default else kwargs.get("device") or src
            if src != dst and "cpu" in (src.type, torch.device(dst).type):
                self.result.ops.append(f"{func} {src}->{dst}: {_caller()}")
        return func(*args, **kwargs)


@contextmanager
def count_syncs(exempt: Iterable[torch.Tensor] = ()) -> Iterator[SyncCount]:
    """`with count_syncs() as syncs: ...` then `syncs.count` (and `syncs` prints where each was)."""
    result = SyncCount()
    exempt_ids = {id(t) for t in exempt}
    tolist = torch.Tensor.tolist

    def counted_tolist(self: torch.Tensor):  # no aten op on a CPU tensor: counted here
        if self.device.type == "cpu" and id(self) not in exempt_ids:  # others: a counted copy
            result.ops.append(f"tolist: {_caller()}")
        return tolist(self)

    torch.Tensor.tolist = counted_tolist
    try:
        with _SyncCounter(result, exempt_ids):
            yield result
    finally:
        torch.Tensor.tolist = tolist
