"""The configs as the tests see them: model and dataset names, which model trains on which data, compose()."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf, open_dict

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = str(ROOT / "configs")
MODELS = sorted(p.stem for p in (ROOT / "configs" / "model").glob("*.yaml"))
DATASETS = sorted(p.stem for p in (ROOT / "configs" / "data").glob("*.yaml"))


def compose_config(name: str, overrides: list[str], tmp_path: Path) -> DictConfig:
    """Compose a config the way `python train.py ...` would, with run paths in tmp_path."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.root_dir = str(ROOT)
        cfg.paths.output_dir = str(tmp_path)
        cfg.paths.log_dir = str(tmp_path)
        cfg.paths.data_dir = str(tmp_path / "datasets")
    return cfg


def _data_target(path: Path) -> str:
    """The data module class of a data config (its own `_target_`; its defaults list does not change that)."""
    return OmegaConf.load(path)._target_


def _default_data_target(model: str) -> str:
    """The data module class `model=<model>` trains on when no data= is given, from the composed config."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose(config_name="train", overrides=[f"model={model}"]).data._target_


def _kind(target: str) -> tuple[str | None, str | None]:
    """The modality and task a data module class declares."""
    from hydra.utils import get_class

    cls = get_class(target)
    return getattr(cls, "modality", None), getattr(cls, "task", None)


def _model_for(data: str) -> str:
    """The model whose default data uses the same data module class; else (a family's second data module, e.g.
    data=protein_structures beside the default protein_sequences) the one whose default data declares the same
    modality and task (imported only then: collecting stays fast)."""
    target = _data_target(ROOT / "configs" / "data" / f"{data}.yaml")
    same = [m for m, t in _MODULE_OF_MODEL.items() if t == target]
    if same:
        return same[0]
    return next(m for m, t in _MODULE_OF_MODEL.items() if _kind(t) == _kind(target))


# Which model trains on each dataset.
_MODULE_OF_MODEL = {m: _default_data_target(m) for m in MODELS}
MODEL_FOR_DATA = {d: _model_for(d) for d in DATASETS}
