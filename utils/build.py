"""Turn a composed config into (data module, Lightning module, trainer)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from models.attention import DEFAULT_KERNEL, set_attention_kernel, set_sdpa_backends
from utils.checkpoint import AtomicCheckpointIO
from utils.errors import UserError
from utils.pretrained import apply_pretrained, load_pretrained, pretrained_tokenizer
from utils.recipes import recipe_files
from utils.validate import check_model_config, check_run_config

DATA_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "data"
log = logging.getLogger(__name__)


def setup_runtime(cfg: DictConfig) -> None:
    check_run_config(cfg)
    apply_pretrained(cfg)  # fills what the source decides (model.net, null data keys) before they are checked
    check_model_config(cfg)  # the only check of model.*: the net is built on the meta device, before any data
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    kernel = cfg.get("attention_kernel")  # null: the default (auto, or env ZOO_FUSED_ATTN), also after another run
    try:
        set_attention_kernel(DEFAULT_KERNEL if kernel is None else kernel)
    except ValueError as err:  # names the value and the choices
        raise UserError(str(err)) from None
    # null: today's defaults (full fp32 matmuls, every SDPA backend), also after a run that set others
    torch.set_float32_matmul_precision(cfg.get("matmul_precision") or "highest")
    backends = cfg.get("sdpa_backends")
    set_sdpa_backends(None if backends is None else list(backends))
    if cfg.get("seed") is not None:
        # The same on every DDP process: it draws the initial weights, which FSDP does not broadcast from rank 0.
        # Training randomness is per rank from the first epoch on (utils.faults.EpochSeed mixes the rank in).
        L.seed_everything(int(cfg.seed), workers=True, verbose=False)  # Lightning's notice would go to stderr
        log.info(f"Seed set to {int(cfg.seed)}")


def recipe_lines(cfg: DictConfig, choices: dict[str, str | None]) -> list[str]:
    """One line per recipe or experiment file in a composition (Hydra's `runtime.choices`), with
    the keys it set: a file that a config pulls into other groups (data=fashion_mnist pulls
    experiment/vit_fashion) then shows in the run's log, not only in the config tree."""
    lines = []
    for name, leaves in recipe_files(choices).items():
        keys = []
        for dotted, value in leaves:
            now = OmegaConf.select(cfg, dotted, default=value)
            keys.append(f"{dotted}={value}" + ("" if now == value else f" (overridden: {now})"))
        lines.append(f"{name} set {', '.join(keys)}")
    return sorted(lines)


DATA_FACTS = ("num_classes", "vocab_size")  # null in a data config = "ask the data module"


def build_datamodule(cfg: DictConfig, state: dict[str, Any] | None = None) -> L.LightningDataModule:
    """Instantiate the data module and fill facts the model needs but only the data knows
    (a user's image folder decides num_classes, a trained tokenizer vocab_size).

    `state` is the data module's saved state from a checkpoint (e.g. the translator's tokenizer),
    restored before those facts are read so that evaluation sees exactly what training saw.
    """
    check_model_fits_data(cfg)
    apply_pretrained(cfg)  # pretrained=: the source's architecture and input preparation (utils/pretrained.py)
    dm = _instantiate(cfg.data, "data")
    if state is not None:
        dm.load_state_dict(state)
    elif pretrained_tokenizer(cfg) is not None:  # a pretrained text model: its own tokenizer, not a new BPE
        dm.load_state_dict({"tokenizer": pretrained_tokenizer(cfg)})
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
    module = _instantiate(cfg.model, "model")
    load_pretrained(module.net, cfg)  # a no-op unless apply_pretrained just converted `pretrained`
    return module


def _instantiate(node: DictConfig, name: str, **kwargs: Any) -> Any:
    """hydra.utils.instantiate, with a constructor's refusal of a config value (a ValueError naming it, e.g.
    `batch_size=0; expected an integer >= 1`) turned into a UserError that names the config group too."""
    from hydra.errors import InstantiationException
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return hydra.utils.instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        if isinstance(cause, (ValueError, MisconfigurationException, FileNotFoundError)):
            raise UserError(f"{name}: {cause}") from cause
        if isinstance(cause, TypeError) and "unexpected keyword argument" in str(cause):  # e.g. an old `modality:`
            raise UserError(f"{name}: {cause}; remove that key from the {name} config") from cause
        if isinstance(cause, (ImportError, AttributeError)) and str(err).startswith("Error locating target"):
            raise UserError(f"{name}: {str(err).splitlines()[0].split(', set env var')[0]} ({cause})") from cause
        raise


def modality_of(node: DictConfig, attribute: str = "modality") -> str | None:
    """The modality the class of a model / data config declares (a network's or a data module's `modality`
    attribute), or None when it names none (a class from outside the zoo). `attribute="task"`: the task it
    declares the same way (a network's `task`; a data module's, where one kind of input serves several tasks)."""
    target = node.get("net", node).get("_target_") if isinstance(node, DictConfig) else None
    try:
        return getattr(hydra.utils.get_class(str(target)), attribute, None) if target else None
    except Exception:  # an unknown _target_ is reported where it is instantiated, with its config group
        return None


def _fits(model: DictConfig, data: DictConfig) -> bool:
    """Same modality, and the same task where the data module names one (text pairs translate, plain text is
    completed); a side that declares nothing fits anything."""
    kinds = [(modality_of(model, a), modality_of(data, a)) for a in ("modality", "task")]
    return all(m is None or d is None or m == d for m, d in kinds)


def check_model_fits_data(cfg: DictConfig) -> None:
    """Refuse a model / data pairing of different modalities (`model=vit data=bible`) or tasks (`model=lm
    data=phrases`) before anything is built: otherwise it fails later, deep inside the data module or as a
    missing `${data....}` key."""
    if _fits(cfg.model, cfg.data):
        return
    model, data = modality_of(cfg.model), modality_of(cfg.data)
    fitting = sorted(p.stem for p in DATA_CONFIGS.glob("*.yaml") if _fits(cfg.model, OmegaConf.load(p)))
    holds = f"{data} data" if model != data else f"{data} data for the task {modality_of(cfg.data, 'task')!r}"
    takes = f"{model} data" if model != data else f"does {modality_of(cfg.model, 'task')!r}"
    raise UserError(
        f"data={cfg.data.get('dataset', '?')} holds {holds}, but the model ({cfg.model.net._target_}) "
        f"{'takes ' if model != data else ''}{takes}; data configs that fit it: "
        f"{', '.join(f'data={d}' for d in fitting)}"
    )


def build_trainer(cfg: DictConfig, callbacks: list[L.Callback] | None = None) -> L.Trainer:
    cbs = [_instantiate(c, f"callbacks.{k}") for k, c in (cfg.get("callbacks") or {}).items() if c is not None]
    loggers = [_instantiate(c, f"logger.{k}") for k, c in (cfg.get("logger") or {}).items() if c is not None]
    # Checkpoints are written to a temporary file and renamed over the old one: a crash never truncates them.
    return _instantiate(cfg.trainer, "trainer", callbacks=cbs + (callbacks or []), logger=loggers or False,
                        plugins=[AtomicCheckpointIO()])


def write_metrics(path: Path, metrics: dict[str, Any]) -> dict[str, float]:
    """Save metrics as plain floats in JSON (tensors are not JSON)."""
    clean = {k: float(v) for k, v in metrics.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(clean, indent=2, sort_keys=True) + "\n")
    return clean


def output_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)

