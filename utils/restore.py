"""Rebuild a trained run from its checkpoint: config, data module, LightningModule and weights, in one place.

evaluate.py, export.py and inference/ all start here, so "what a checkpoint means" is written once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import lightning as L
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from utils.build import DATA_FACTS, build_datamodule, build_module, datamodule_state, setup_runtime
from utils.checkpoint import CONFIG_KEY, load_checkpoint, resolve_checkpoint, run_config
from utils.errors import UserError, note
from utils.validate import load_weights, net_target

SWITCHES = ("compile", "grad_checkpointing")  # training-time speed / memory switches


@dataclass
class Restored:
    """A run rebuilt from one checkpoint file; `datamodule` is None when it was not asked for."""

    cfg: DictConfig
    ckpt_file: Path
    ckpt: dict[str, Any]
    module: L.LightningModule
    datamodule: L.LightningDataModule | None


def read_run(ckpt_path: str | Path) -> tuple[Path, dict[str, Any], DictConfig]:
    """(checkpoint file, checkpoint, training config) of a checkpoint file or run directory."""
    ckpt_file = resolve_checkpoint(ckpt_path)
    ckpt = load_checkpoint(ckpt_file)
    cfg = run_config(ckpt_file, ckpt)
    warn_if_other_model(ckpt_file, cfg)
    return ckpt_file, ckpt, cfg


def warn_if_other_model(ckpt_file: Path, cfg: DictConfig) -> None:
    """A checkpoint copied into another run's folder is used as what it holds; say that the folder's own
    config (.hydra/config.yaml) describes another model, so its scores are not taken for the run's."""
    saved = ckpt_file.resolve().parent.parent / ".hydra" / "config.yaml"
    if not saved.is_file():
        return
    try:
        theirs = net_target(OmegaConf.load(saved))
    except Exception:  # a folder config that is not YAML: the checkpoint's own config is what counts anyway
        return
    ours = net_target(cfg)
    if "?" not in (ours, theirs) and ours != theirs:
        note(f"{ckpt_file} holds a {ours}, but its run directory was trained as a {theirs} "
             f"({saved}); using the checkpoint's own model and config, not the run's")


def restore(ckpt_path: str | Path, *, data: bool | Callable[[DictConfig], bool] = True, switches: bool = True,
            runtime: dict[str, Any] | None = None, state: dict[str, Any] | None = None) -> Restored:
    """The run of a checkpoint, its weights loaded.

    data: build the data module (it knows the classes, the tokenizer and the normalisation); without it the
        facts the data would decide (num_classes, vocab_size) are read from the trained output layer. A callable
        decides from the run's config (predict.py: a protein needs no data, its alphabet is the network's).
    switches: keep the training-time switches (torch.compile, activation checkpointing); off for predictions.
    runtime: this command's own keys (trainer, paths, seed, threads, attention_kernel...) put over the run's.
    state: weights to load instead of the checkpoint's (e.g. an average of several checkpoints).
    """
    ckpt_file, ckpt, cfg = read_run(ckpt_path)
    if "model" not in cfg or "net" not in cfg.model:
        raise UserError(f"{str(ckpt_file)!r}: its training config has no model.net (expected a run of this project)")
    with open_dict(cfg):
        for key, value in (runtime or {}).items():
            cfg[key] = value
        for switch in () if switches else SWITCHES:
            if switch in cfg.model:
                cfg.model[switch] = False
    if runtime is not None:
        setup_runtime(cfg)
    elif not HydraConfig.initialized():
        plain_paths(cfg, ckpt_file)
    weights = ckpt["state_dict"] if state is None else state
    dm = None
    if callable(data):
        data = data(cfg)
    if data:
        dm = build_datamodule(cfg, datamodule_state(ckpt, cfg))  # fills num_classes / vocab_size
    else:
        facts_from_weights(cfg, weights, ckpt_file)
    module = build_module(cfg)
    load_weights(module, weights, ckpt_file, cfg, ckpt.get(CONFIG_KEY))
    return Restored(cfg, ckpt_file, ckpt, module, dm)


def plain_paths(cfg: DictConfig, ckpt_file: Path) -> None:
    """Called from plain Python (predict.py, app.py, a notebook): give the run's ${hydra:...} paths Hydra's
    meaning, so the data module finds its data (paths.data_dir is under paths.root_dir)."""
    if "paths" not in cfg:
        return
    with open_dict(cfg):
        cfg.paths.root_dir = str(Path.cwd())
        cfg.paths.output_dir = str(ckpt_file.resolve().parent.parent)


def facts_from_weights(cfg: DictConfig, state: dict[str, Any], ckpt_file: Path) -> None:
    """Fill the data facts a config leaves null (num_classes of an image folder, a tokenizer's vocab_size) from
    the trained output layer: its rows are what the model was trained with, and no dataset is needed."""
    for fact in DATA_FACTS:
        if "data" in cfg and fact in cfg.data and cfg.data[fact] is None:
            if "net.head.weight" not in state:
                raise UserError(f"{str(ckpt_file)!r}: data.{fact} is null and there is no head.weight to read it from")
            with open_dict(cfg):
                cfg.data[fact] = int(state["net.head.weight"].shape[0])
