"""Shared fixtures: composed configs (as the lightning-hydra-template does) and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = str(ROOT / "configs")
MODELS = sorted(p.stem for p in (ROOT / "configs" / "model").glob("*.yaml"))
DATASETS = sorted(p.stem for p in (ROOT / "configs" / "data").glob("*.yaml"))


def _target(path: Path) -> str:
    return next(line.split(":", 1)[1].strip() for line in path.read_text().splitlines() if line.startswith("_target_:"))


def _default_data(model: str) -> str:
    line = next(l for l in (ROOT / "configs" / "data" / "default" / f"{model}.yaml").read_text().splitlines()
                if l.strip().startswith("- /data/"))
    return line.split("/data/", 1)[1].split("@", 1)[0]


# Which model trains on each dataset: the model whose default data uses the same data module class.
_MODULE_OF_MODEL = {m: _target(ROOT / "configs" / "data" / f"{_default_data(m)}.yaml") for m in MODELS}
MODEL_FOR_DATA = {d: next(m for m, t in _MODULE_OF_MODEL.items() if t == _target(ROOT / "configs" / "data" / f"{d}.yaml"))
                  for d in DATASETS}


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


def run_cli(script: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run train.py / evaluate.py as a user would; returns the finished process."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run([sys.executable, script, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-5000:]}")
    return proc


@pytest.fixture
def compose_train(tmp_path: Path):
    return lambda *overrides: compose_config("train", list(overrides), tmp_path)
