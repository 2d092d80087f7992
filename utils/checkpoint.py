"""Finding, safely reading and atomically writing checkpoints, and keeping the run's config inside them."""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
from omegaconf import DictConfig, OmegaConf

from utils.errors import MissingFileError, UserError

CONFIG_KEY = "zoo_config"  # the training config, stored in every checkpoint as plain data
# Turn a sharded checkpoint directory into one file (<dir>.consolidated) that load_checkpoint reads: the
# Trainer's FSDPStrategy stores the weights under "model", ModelParallelStrategy under "state_dict" (Fabric's).
CONSOLIDATE = {"FSDPStrategy": "python -m lightning.pytorch.utilities.consolidate_checkpoint",
               "ModelParallelStrategy": "python -m lightning.fabric.utilities.consolidate_checkpoint"}


class ConfigInCheckpoint(L.Callback):
    """Store the (unresolved) training config in each checkpoint, so a lone .ckpt file can be
    evaluated without its run directory. Plain dicts and strings keep `weights_only` loading safe."""

    def __init__(self, cfg: DictConfig) -> None:
        self.config = OmegaConf.to_container(cfg, resolve=False)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint[CONFIG_KEY] = self.config


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary file beside `path`, fsync, then os.replace: readers (and a crash at any
    moment) see either the old complete file or the new complete file, never a truncated one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # same file system
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a checkpoint is as readable as any other output
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:  # the rename itself survives a power cut only once the directory entry is synced
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer with atomic_save. Lightning's own either writes into the target
    or stages the file in the system temp dir and copies it across file systems: a crash mid-write
    can leave a truncated best.ckpt / last.ckpt, and the run's only good weights are gone."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if "://" in str(path):  # remote storage: leave it to fsspec
            return super().save_checkpoint(checkpoint, path, storage_options)
        if is_sharded_checkpoint(path):  # a sharded best.ckpt carried over from a sharded run (as FSDP does)
            shutil.rmtree(path)
        atomic_save(checkpoint, path)


class ResumableCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that keeps the best-so-far when a run is resumed into a new run directory.

    Lightning forgets the best score when `dirpath` changes (every `python train.py ckpt_path=<run>`
    gets a fresh Hydra directory), so the resumed run's first epoch became "best" and the final test
    could use worse weights than the interrupted run had already saved. Here the old best files are
    copied into the new directory and the scores carried over, so a resumed run ends exactly as an
    uninterrupted one would.
    """

    @property
    def state_key(self) -> str:  # the plain ModelCheckpoint key: older checkpoints restore into this class
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    reads_shards = True  # whether this run's strategy reads sharded checkpoints (setup says)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self.reads_shards = isinstance(trainer.strategy, (FSDPStrategy, ModelParallelStrategy))

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old_dir = state_dict.get("dirpath")
        if old_dir and self.dirpath and Path(old_dir).resolve() != Path(self.dirpath).resolve():
            state_dict = self._carry_over(state_dict, Path(old_dir))
        super().load_state_dict(state_dict)

    def _carry_over(self, state: dict[str, Any], old_dir: Path) -> dict[str, Any]:
        old_best = {Path(p): s for p, s in (state.get("best_k_models") or {}).items()}
        if not all(p.exists() for p in old_best):  # the old run is gone: nothing to carry, Lightning's default
            return state
        if not self.reads_shards and any(p.is_dir() for p in old_best):  # a sharded run resumed on another
            # strategy (from its consolidated file): its best cannot be tested here; this run's own best is
            return {"dirpath": state.get("dirpath"), "best_model_path": ""}
        new_dir = Path(self.dirpath)
        new_dir.mkdir(parents=True, exist_ok=True)
        moved = {}
        for old, score in old_best.items():
            new = new_dir / old.name
            if rank_zero_only.rank == 0:  # under DDP every process restores this state; one copies the files
                tmp = new.with_name(f".{new.name}.copy.tmp")
                if old.is_dir():  # a sharded checkpoint (FSDP): a directory of per-process shards
                    shutil.rmtree(tmp, ignore_errors=True)
                    shutil.copytree(old, tmp)
                    shutil.rmtree(new, ignore_errors=True)
                else:
                    shutil.copyfile(old, tmp)
                os.replace(tmp, new)
            moved[str(new)] = score
        rename = lambda p: str(new_dir / Path(p).name) if p else p  # noqa: E731
        return {**state, "dirpath": self.dirpath, "best_k_models": moved,
                "best_model_path": rename(state.get("best_model_path")),
                "kth_best_model_path": rename(state.get("kth_best_model_path")),
                "last_model_path": rename(state.get("last_model_path"))}


def is_sharded_checkpoint(path: str | Path) -> bool:
    """A torch.distributed.checkpoint directory (FSDP `state_dict_type: sharded`, ModelParallelStrategy's
    `save_distributed_checkpoint`): one shard file per process and a `.metadata` index."""
    return Path(path).is_dir() and (Path(path) / ".metadata").is_file()


def consolidate_command(folder: Path) -> str:
    """The command that consolidates a sharded checkpoint, by the strategy its run used (its config is in
    meta.pt, a plain torch.save file that Lightning writes beside the shards)."""
    try:
        meta = torch.load(folder / "meta.pt", map_location="cpu", weights_only=True)
        strategy = str(meta[CONFIG_KEY]["trainer"]["strategy"]["_target_"])
    except (OSError, RuntimeError, KeyError, TypeError, pickle.UnpicklingError):  # no meta.pt or config in it:
        # the Trainer's own FSDP format is the common case
        strategy = "FSDPStrategy"
    return CONSOLIDATE["ModelParallelStrategy" if strategy.endswith("ModelParallelStrategy") else "FSDPStrategy"]


def resolve_checkpoint(path: str | Path, prefer: tuple[str, ...] = ("best.ckpt", "last.ckpt")) -> Path:
    """A checkpoint (a file or a sharded directory), or a run directory (-> the first of `prefer` in its
    checkpoints/)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise MissingFileError(f"ckpt_path {str(p)!r} does not exist: give a .ckpt file or a run directory")
    if p.is_file() or is_sharded_checkpoint(p):
        return p
    folder = p if p.name == "checkpoints" else p / "checkpoints"  # a run directory, or its checkpoints/
    for name in prefer:
        if (folder / name).is_file() or is_sharded_checkpoint(folder / name):
            return folder / name
    found = sorted(f for f in folder.glob("*.ckpt") if f.is_file() or is_sharded_checkpoint(f))
    if found:
        return found[-1]
    raise MissingFileError(f"run directory {str(p)!r} has no checkpoints/*.ckpt (expected checkpoints/best.ckpt)")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with `weights_only=True`: tensors and plain containers only, so a
    file handed to us cannot run code while it is unpickled.

    A sharded checkpoint is refused: torch.distributed.checkpoint reads its `.metadata` index with plain
    pickle, which can run code. Lightning's consolidation (the user's explicit step) makes one file of it.
    """
    p = Path(path)
    if is_sharded_checkpoint(p):
        raise UserError(f"{str(p)!r} is a sharded checkpoint (a directory of per-process shards); make one file of "
                        f"it first: {consolidate_command(p)} {p} (writes {p}.consolidated), then pass that file")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, random bytes, or a pickle that wants to run code
        raise UserError(f"{str(p)!r} is not a readable checkpoint ({type(err).__name__}: {str(err)[:200]})") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise UserError(f"{str(p)!r} is not a Lightning checkpoint of this project (no 'state_dict' entry)")
    return ckpt


def run_config(ckpt_file: Path, ckpt: dict[str, Any]) -> DictConfig:
    """The training config of a checkpoint: the copy stored inside it (written with the weights, so no later
    command can change it), else, for checkpoints from before that copy existed, the run's .hydra/config.yaml."""
    if CONFIG_KEY in ckpt:
        return renamed_targets(OmegaConf.create(ckpt[CONFIG_KEY]))
    saved = ckpt_file.resolve().parent.parent / ".hydra" / "config.yaml"
    if saved.is_file():
        return renamed_targets(OmegaConf.load(saved))
    raise UserError(f"{str(ckpt_file)!r} carries no training config and has no .hydra/config.yaml beside its run")


# Classes that moved: checkpoints name the class they were trained with, so the old paths map to the new.
MOVED_TARGETS = {
    "models.classification.": "training.classification.",
    "models.seq2seq.": "training.seq2seq.",
    "utils.perf.": "training.switches.",
}


def renamed_targets(cfg: DictConfig) -> DictConfig:
    """`cfg` with every `_target_` (and FSDP's policy string) of a moved class given its current path."""

    def visit(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: visit(v) for k, v in node.items()}
        if isinstance(node, list):
            return [visit(v) for v in node]
        for old, new in MOVED_TARGETS.items():
            if isinstance(node, str) and node.startswith(old):
                return new + node[len(old):]
        return node

    # Not resolved: ${hydra:...} and ${data....} interpolations keep their meaning for the caller.
    return OmegaConf.create(moved_keys(visit(OmegaConf.to_container(cfg, resolve=False))))


def moved_keys(cfg: dict[str, Any]) -> dict[str, Any]:
    """Keys that left the model / data configs: the source and its preprocessing are run keys now, the
    modality a class attribute of the network and the data module."""
    model, data = cfg.get("model"), cfg.get("data")
    if isinstance(model, dict):
        for key in ("pretrained", "preprocess"):
            if key in model:
                value = model.pop(key)
                cfg[key] = cfg.get(key) if value is None else value
        if model.get("pretrained_from"):  # a fine-tuned Marian, before every converter returned a Converted
            cfg["pretrained"] = model.pop("pretrained_from")
            cfg.setdefault("preprocess", {"modality": "text"})
        model.pop("pretrained_from", None)
        model.pop("modality", None)
    if isinstance(data, dict):
        data.pop("modality", None)
    return cfg


def average_checkpoints(ckpt_file: Path, n: int) -> tuple[dict[str, torch.Tensor], list[Path]]:
    """Mean of the weights of the last `n` epoch checkpoints beside `ckpt_file` (checkpoints/epoch*.ckpt).

    Averaging the last few epochs smooths the noise of the final updates (Vaswani et al. 2017
    average the last 5-20 checkpoints); integer buffers are taken from the newest one.
    """
    if n < 1:
        raise UserError(f"average_last must be >= 1, got {n}")
    found = sorted(ckpt_file.resolve().parent.glob("epoch*.ckpt"))
    if len(found) < n:
        raise UserError(f"average_last={n} needs {n} epoch checkpoints in {ckpt_file.resolve().parent}, found "
                         f"{len(found)}; train with keep_epoch_checkpoints>={n}")
    used = found[-n:]
    states = [load_checkpoint(p)["state_dict"] for p in used]
    avg = {}
    for key, last in states[-1].items():
        if last.is_floating_point():
            avg[key] = sum(s[key].double() for s in states).div(n).to(last.dtype)
        else:
            avg[key] = last
    return avg, used
