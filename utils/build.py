"""Turn a composed config into (data module, Lightning module, trainer)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, open_dict


def setup_runtime(cfg: DictConfig) -> None:
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    if cfg.get("seed") is not None:
        L.seed_everything(int(cfg.seed), workers=True)


DATA_FACTS = ("num_classes", "vocab_size")  # null in a data config = "ask the data module"


def build_datamodule(cfg: DictConfig, state: dict[str, Any] | None = None) -> L.LightningDataModule:
    """Instantiate the data module and fill facts the model needs but only the data knows
    (a user's image folder decides num_classes, a trained tokenizer vocab_size).

    `state` is the data module's saved state from a checkpoint (e.g. the translator's tokenizer),
    restored before those facts are read so that evaluation sees exactly what training saw.
    """
    dm = hydra.utils.instantiate(cfg.data)
    if state is not None:
        dm.load_state_dict(state)
    for fact in DATA_FACTS:
        if fact in cfg.data and cfg.data[fact] is None:
            with open_dict(cfg):
                cfg.data[fact] = int(getattr(dm, fact))
    return dm


def datamodule_state(ckpt: dict[str, Any], cfg: DictConfig) -> dict[str, Any] | None:
    """The data module state Lightning saved in a checkpoint (under the class's qualified name)."""
    name = str(cfg.data._target_).rsplit(".", 1)[-1]
    return ckpt.get(name)


def build_module(cfg: DictConfig) -> L.LightningModule:
    return hydra.utils.instantiate(cfg.model)


def build_trainer(cfg: DictConfig, callbacks: list[L.Callback] | None = None) -> L.Trainer:
    cbs = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    return hydra.utils.instantiate(cfg.trainer, callbacks=cbs + (callbacks or []), logger=loggers or False)


def write_metrics(path: Path, metrics: dict[str, Any]) -> dict[str, float]:
    """Save metrics as plain floats in JSON (tensors are not JSON)."""
    clean = {k: float(v) for k, v in metrics.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(clean, indent=2, sort_keys=True) + "\n")
    return clean


def output_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)

