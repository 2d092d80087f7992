"""Training-time fault guards (callbacks/default.yaml): stop on a non-finite loss before it reaches the
weights or a checkpoint, and seed every epoch from (seed, epoch) so that a run resumed after a crash
replays exactly the batches an uninterrupted run would have seen."""

from __future__ import annotations

import os
from typing import Any, Iterator

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.seed import seed_everything
from torch.distributed.tensor import DTensor


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN / inf loss or weights; nothing poisoned was saved."""


class NonFiniteGuard(L.Callback):
    """Stops training at the first NaN / inf training loss, before its backward pass and update, and
    refuses to write a checkpoint whose weights are not finite. The best / last checkpoints on disk
    therefore stay the last good ones, ready for `python train.py ckpt_path=<run dir>`."""

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        bad = not bool(torch.isfinite(loss).all())  # one scalar sync per step: noise next to the step itself
        # Under DDP every process must stop together: one raising alone leaves the others waiting in the
        # gradient all-reduce until the collective times out.
        if trainer.world_size > 1:
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            raise NonFiniteLossError(
                f"training loss is {loss.item()} at epoch {trainer.current_epoch}, global step {trainer.global_step} "
                f"(batch {trainer.fit_loop.epoch_loop.batch_idx} of the epoch); stopped before the update. "
                f"{_kept(trainer)}. Usual causes: too high a learning rate (model.optimizer.lr), no gradient "
                f"clipping (trainer.gradient_clip_val), NaN in the data"
            )

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        bad = next((name for name, value in checkpoint["state_dict"].items()
                    if any(t.is_floating_point() and not bool(torch.isfinite(t).all()) for t in _local(value))), None)
        # Sharded checkpoints (FSDP): each process sees its own shards, and under a full one rank 0 alone holds
        # the weights: every process must stop together, or the others wait in the save's collectives.
        if trainer.world_size > 1 and trainer.strategy.reduce_boolean_decision(bad is not None, all=False):
            bad = bad or "(on another process)"
        if bad is not None:
            raise NonFiniteLossError(
                f"weight {bad!r} holds NaN / inf at epoch {trainer.current_epoch}, global step "
                f"{trainer.global_step}; not writing this checkpoint. {_kept(trainer)}"
            )


def _local(value: Any) -> list[torch.Tensor]:
    """The tensors this process holds of a state-dict entry: a DTensor's or a ShardedTensor's local shards."""
    if isinstance(value, DTensor):
        return [value.to_local()]
    if hasattr(value, "local_shards"):  # FSDP1's sharded state dict (ShardedTensor)
        return [shard.tensor for shard in value.local_shards()]
    return [value]


def _kept(trainer: L.Trainer) -> str:
    """Which good checkpoints remain, for the error message."""
    cb = trainer.checkpoint_callback
    paths = {getattr(cb, "best_model_path", ""), getattr(cb, "last_model_path", "")} - {""}
    kept = sorted(p for p in paths if os.path.isfile(p))
    if not kept:
        return "No checkpoint had been written yet"
    return f"Kept untouched, from the last good epoch: {', '.join(kept)}"


class EpochSeed(L.Callback):
    """Makes each training epoch's randomness a function of (seed, epoch): the global RNGs (augmentation,
    SpecAugment, dropout) and every torch.Generator the training loader holds (shuffle order, random
    subsets, time shifts). A run resumed at epoch e then sees exactly the batches an uninterrupted run
    sees at epoch e; without this the loader, built anew, would replay epoch 0's draws.

    Timing is the subtle part. Lightning builds the loader and its first iterator (which draws a
    number from the loader's generator) while configuring the optimizers, before a resumed run's loop
    state is restored; later epochs get their iterator after `on_train_epoch_start`. So the loader's
    generators are seeded when it is built (for the epoch this callback's saved state says comes next)
    and at each epoch's end (for the next), always before an iterator exists; the global RNGs at each
    epoch's start, after the sanity-check validation.
    """

    def __init__(self, seed: int | None) -> None:
        self.seed = seed
        self.trainer: L.Trainer | None = None
        self.resume_epoch: int | None = None  # from a checkpoint: the epoch a resumed run trains first

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        dm = trainer.datamodule
        self.trainer = trainer
        if self.seed is None or stage != "fit" or dm is None or getattr(dm.train_dataloader, "epoch_seeded", False):
            return
        make = dm.train_dataloader

        def seeded_loader() -> Any:
            loader = make()
            if isinstance(loader, torch.utils.data.DataLoader) and loader.generator is None:
                # Its own generator, so that creating an iterator draws nothing from the global RNG.
                loader.generator = torch.Generator()
            epoch = trainer.current_epoch if self.resume_epoch is None else self.resume_epoch
            self.resume_epoch = None
            self._seed_loader(loader, epoch)
            return loader

        seeded_loader.epoch_seeded = True  # type: ignore[attr-defined]
        dm.train_dataloader = seeded_loader  # instance attribute: Lightning asks the data module for it by name

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.seed is not None:
            seed_everything(_mix(self.seed, trainer.current_epoch) % 2**31, workers=True, verbose=False)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.seed is not None:
            self._seed_loader(trainer.train_dataloader, trainer.current_epoch + 1)

    def state_dict(self) -> dict[str, Any]:
        trainer = self.trainer
        if trainer is None:
            return {}
        # A checkpoint written once the epoch's batches are all done (the usual, after validation) resumes
        # at the next epoch; one written mid-epoch resumes inside this one.
        done = trainer.fit_loop.epoch_loop.batch_progress.current.ready >= trainer.num_training_batches
        return {"next_epoch": trainer.current_epoch + int(done)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.resume_epoch = state_dict.get("next_epoch")

    def _seed_loader(self, loader: Any, epoch: int) -> None:
        for i, gen in enumerate(_generators(loader)):
            gen.manual_seed(_mix(self.seed, epoch, i))
        for sampler in (getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
            if hasattr(sampler, "set_epoch"):  # e.g. the translator's bucketing batch sampler
                sampler.set_epoch(epoch)


def _mix(*keys: int) -> int:
    """A well-spread 63-bit seed from several integers (nearby keys give unrelated streams)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def _generators(loader: Any) -> Iterator[torch.Generator]:
    """Each torch.Generator held by the loader, its samplers or its collate function, once, in a fixed order."""
    seen: set[int] = set()
    batch_sampler = getattr(loader, "batch_sampler", None)
    for obj in (loader, getattr(loader, "sampler", None), batch_sampler, getattr(batch_sampler, "sampler", None),
                getattr(loader, "collate_fn", None)):
        for value in vars(obj).values() if hasattr(obj, "__dict__") else ():
            if isinstance(value, torch.Generator) and id(value) not in seen:
                seen.add(id(value))
                yield value
