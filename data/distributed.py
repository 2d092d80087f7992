"""Loading for several processes (DDP): an epoch subset shared among the processes, evaluation shares that
count each sample once, and the DataLoader options that depend on the device.

Lightning replaces a loader's RandomSampler / SequentialSampler by a DistributedSampler over the whole dataset,
but keeps any DistributedSampler it is handed: both samplers here are DistributedSamplers for that reason.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import Dataset, DistributedSampler


class EpochSubsetSampler(DistributedSampler):
    """Each epoch `num_samples` distinct random items of `dataset` (the whole epoch, all processes together):
    every process draws the same permutation from `generator` (seeded alike on every process: utils.faults.
    EpochSeed reseeds it per epoch) and takes every num_replicas-th item from its rank on, so the shares are
    disjoint and equal. With one process it is exactly RandomSampler(num_samples=..., generator=...).

    A total that does not divide by num_replicas is rounded up (equal shares keep DDP's steps in step)."""

    def __init__(self, dataset: Dataset, *, num_samples: int, generator: torch.Generator, num_replicas: int = 1,
                 rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True)
        if num_samples < 1:
            raise ValueError(f"num_samples={num_samples}; expected an integer >= 1")
        self.generator = generator
        self.num_samples = math.ceil(num_samples / num_replicas)  # this process's share
        self.total_size = self.num_samples * num_replicas

    def __iter__(self) -> Iterator[int]:
        n = len(self.dataset)  # type: ignore[arg-type]
        # RandomSampler's draws, call for call: whole permutations, then a prefix of one more
        order: list[int] = []
        for _ in range(self.total_size // n):
            order += torch.randperm(n, generator=self.generator).tolist()
        order += torch.randperm(n, generator=self.generator).tolist()[: self.total_size % n]
        return iter(order[self.rank::self.num_replicas])


def eval_sampler(dataset: Dataset, trainer: Any) -> DistributedSampler | None:
    """Under DDP: process r evaluates samples r, r + world, ... with nothing repeated, so that metrics count
    each sample once (Lightning's own DistributedSampler pads the shares to equal length with repeats).
    Shares may then differ by one batch, which evaluation allows. None with one process."""
    if trainer is None or trainer.world_size <= 1:
        return None
    return UnrepeatedDistributedSampler(dataset, num_replicas=trainer.world_size, rank=trainer.global_rank,
                                        shuffle=False)


def loader_options(num_workers: int, trainer: Any) -> dict[str, Any]:
    """DataLoader keywords every data module passes: pinned memory when the batches go to a GPU (an
    asynchronous copy), and workers kept alive between epochs instead of re-forked."""
    device = getattr(getattr(trainer, "strategy", None), "root_device", None) if trainer is not None else None
    return {"num_workers": num_workers, "persistent_workers": num_workers > 0,
            "pin_memory": device is not None and device.type == "cuda"}
