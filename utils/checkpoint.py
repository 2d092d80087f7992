"""Finding and safely reading checkpoints, and keeping the run's config inside them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

CONFIG_KEY = "zoo_config"  # the training config, stored in every checkpoint as plain data


class ConfigInCheckpoint(L.Callback):
    """Store the (unresolved) training config in each checkpoint, so a lone .ckpt file can be
    evaluated without its run directory. Plain dicts and strings keep `weights_only` loading safe."""

    def __init__(self, cfg: DictConfig) -> None:
        self.config = OmegaConf.to_container(cfg, resolve=False)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint[CONFIG_KEY] = self.config


def resolve_checkpoint(path: str | Path, prefer: tuple[str, ...] = ("best.ckpt", "last.ckpt")) -> Path:
    """A checkpoint file, or a run directory (-> the first of `prefer` in its checkpoints/)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"ckpt_path {str(p)!r} does not exist: give a .ckpt file or a run directory")
    if p.is_file():
        return p
    for name in prefer:
        if (p / "checkpoints" / name).is_file():
            return p / "checkpoints" / name
    found = sorted((p / "checkpoints").glob("*.ckpt")) if (p / "checkpoints").is_dir() else []
    if found:
        return found[-1]
    raise FileNotFoundError(f"run directory {str(p)!r} has no checkpoints/*.ckpt (expected checkpoints/best.ckpt)")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with `weights_only=True`: tensors and plain containers only, so a
    file handed to us cannot run code while it is unpickled."""
    p = Path(path)
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, random bytes, or a pickle that wants to run code
        raise ValueError(f"{str(p)!r} is not a readable checkpoint ({type(err).__name__}: {str(err)[:200]})") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{str(p)!r} is not a Lightning checkpoint of this project (no 'state_dict' entry)")
    return ckpt


def run_config(ckpt_file: Path, ckpt: dict[str, Any]) -> DictConfig:
    """The training config of a checkpoint: the run's .hydra/config.yaml, else the embedded copy."""
    saved = ckpt_file.resolve().parent.parent / ".hydra" / "config.yaml"
    if saved.is_file():
        return OmegaConf.load(saved)
    if CONFIG_KEY in ckpt:
        return OmegaConf.create(ckpt[CONFIG_KEY])
    raise ValueError(f"{str(ckpt_file)!r} carries no training config and has no .hydra/config.yaml beside its run")


def average_checkpoints(ckpt_file: Path, n: int) -> tuple[dict[str, torch.Tensor], list[Path]]:
    """Mean of the weights of the last `n` epoch checkpoints beside `ckpt_file` (checkpoints/epoch*.ckpt).

    Averaging the last few epochs smooths the noise of the final updates (Vaswani et al. 2017
    average the last 5-20 checkpoints); integer buffers are taken from the newest one.
    """
    if n < 1:
        raise ValueError(f"average_last must be >= 1, got {n}")
    found = sorted(ckpt_file.resolve().parent.glob("epoch*.ckpt"))
    if len(found) < n:
        raise ValueError(f"average_last={n} needs {n} epoch checkpoints in {ckpt_file.resolve().parent}, found "
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
