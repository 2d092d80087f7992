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
    """Stops training at a NaN / inf training loss and refuses to write a checkpoint whose weights are not
    finite. The best / last checkpoints on disk therefore stay the last good ones, ready for
    `python train.py ckpt_path=<run dir>`.

    Each step's check stays on the device (a flag per step, no host read): the flags are read every
    `check_every_n_steps` steps, at each epoch's end, before validation and before any checkpoint is
    written, so training stops at the first of these after a bad loss, naming the step that had it. A bad
    step's update and the few steps after it may have run by then (1 = stop before the bad update, at the
    cost of a host sync per step); whatever they did to the weights in memory, no checkpoint holds it.
    Under DDP the decision is all-reduced at those points only, so all processes stop together.

    Args:
        check_every_n_steps: read the flags after this many training steps (>= 1).
    """

    def __init__(self, check_every_n_steps: int = 50) -> None:
        if isinstance(check_every_n_steps, bool) or not isinstance(check_every_n_steps, int) or check_every_n_steps < 1:
            raise ValueError(f"check_every_n_steps must be an int >= 1, got {check_every_n_steps!r}")
        self.check_every_n_steps = check_every_n_steps
        self._flags: list[torch.Tensor] = []  # per step since the last read: (bad, loss) on the device
        self._where: list[tuple[int, int, int]] = []  # (epoch, global step, batch) of each

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        loss = loss.detach().float().reshape(-1)
        self._flags.append(torch.cat([(~torch.isfinite(loss).all()).float()[None], loss[:1]]))
        self._where.append((trainer.current_epoch, trainer.global_step, trainer.fit_loop.epoch_loop.batch_idx))
        if self.check_every_n_steps == 1:
            self._check(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # The epoch's last batch stands for the epoch's end: `on_train_epoch_end` is no place for a collective,
        # since there rank 0's progress bar alone computes (and syncs) the epoch metrics first, and two
        # processes entering different collectives wait for each other forever.
        if len(self._flags) >= self.check_every_n_steps or batch_idx + 1 >= trainer.num_training_batches:
            self._check(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.training or trainer.state.fn == "fit":  # validation on weights a bad step may have touched
            self._check(trainer)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._check(trainer)
        weights = [(name, t) for name, value in checkpoint["state_dict"].items() for t in _local(value)
                   if t.is_floating_point() and t.numel()]
        device = weights[0][1].device if weights else None
        finite = torch.stack([torch.isfinite(t).all().to(device) for _, t in weights]).tolist() if weights else []
        bad = next((name for (name, _), ok in zip(weights, finite) if not ok), None)  # one host read for all
        # Sharded checkpoints (FSDP): each process sees its own shards, and under a full one rank 0 alone holds
        # the weights: every process must stop together, or the others wait in the save's collectives.
        if trainer.world_size > 1 and trainer.strategy.reduce_boolean_decision(bad is not None, all=False):
            bad = bad or "(on another process)"
        if bad is not None:
            raise NonFiniteLossError(
                f"weight {bad!r} holds NaN / inf at epoch {trainer.current_epoch}, global step "
                f"{trainer.global_step}; not writing this checkpoint. {_kept(trainer)}"
            )

    def _check(self, trainer: L.Trainer) -> None:
        """Read the flags gathered since the last read (one host sync; under DDP one all-reduce) and raise
        at the first bad loss of any process."""
        if not self._flags:  # every process has as many (DDP steps in lockstep), so all skip the collective
            return
        flags, where = self._flags, self._where
        self._flags, self._where = [], []
        stacked = torch.stack(flags)  # (steps, [bad, loss])
        anywhere = stacked[:, 0].sum()
        # Under DDP every process must stop together: one raising alone leaves the others waiting in the
        # next collective until it times out.
        if trainer.world_size > 1:
            anywhere = trainer.strategy.reduce(anywhere, reduce_op="sum")
        host = torch.cat([anywhere.reshape(1), stacked.flatten()]).tolist()
        if not host[0]:
            return
        rows = [host[1 + 2 * i: 3 + 2 * i] for i in range(len(where))]
        first = next((i for i, (bad, _) in enumerate(rows) if bad), None)
        if first is None:
            raise NonFiniteLossError(f"another process's training loss is NaN / inf (before global step "
                                     f"{trainer.global_step}); stopped. {_kept(trainer)}")
        epoch, step, batch = where[first]
        raise NonFiniteLossError(
            f"training loss is {rows[first][1]} at epoch {epoch}, global step {step} (batch {batch} of the epoch); "
            f"stopped {len(rows) - 1 - first} step(s) later, before any checkpoint with it was written. "
            f"{_kept(trainer)}. Usual causes: too high a learning rate (model.optimizer.lr), no gradient "
            f"clipping (trainer.gradient_clip_val), NaN in the data"
        )


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
            seed = _rank_mix(trainer.global_rank, self.seed, trainer.current_epoch)
            seed_everything(seed % 2**31, workers=True, verbose=False)

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
        # A sampler's draw must agree across DDP processes (each takes its share of one permutation); an
        # augmentation generator (held by the collate function) must not.
        augmenting = {id(g) for g in _held(getattr(loader, "collate_fn", None))}
        rank = self.trainer.global_rank if self.trainer is not None else 0
        for i, gen in enumerate(_generators(loader)):
            gen.manual_seed(_rank_mix(rank, self.seed, epoch, i) if id(gen) in augmenting else _mix(self.seed, epoch, i))
        for sampler in (getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
            if hasattr(sampler, "set_epoch"):  # e.g. the translator's bucketing batch sampler
                sampler.set_epoch(epoch)


def _mix(*keys: int) -> int:
    """A well-spread 63-bit seed from several integers (nearby keys give unrelated streams)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def _rank_mix(rank: int, *keys: int) -> int:
    """The seed of `keys` for DDP process `rank`: rank 0 keeps the one-process seed (a run on one device is the
    same run as before), every other rank gets an unrelated stream (its own augmentation and dropout)."""
    return _mix(*keys) if rank == 0 else _mix(*keys, _RANK_KEY, rank)


_RANK_KEY = 0x52414E4B  # marks a rank-mixed seed apart from _mix(seed, epoch, i) of the loader's i-th generator


def _held(obj: Any) -> list[torch.Generator]:
    return [v for v in vars(obj).values() if isinstance(v, torch.Generator)] if hasattr(obj, "__dict__") else []


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


def _local(value: Any) -> list[torch.Tensor]:
    """The tensors this process holds of a state-dict entry: a DTensor's or a ShardedTensor's local shards."""
    if isinstance(value, DTensor):
        return [value.to_local()]
    if hasattr(value, "local_shards"):  # FSDP1's sharded state dict (ShardedTensor)
        return [shard.tensor for shard in value.local_shards()]
    return [value]
