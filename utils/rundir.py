"""The run-directory rule: a finished (or interrupted) run is never damaged by a later command.

* A command's own directory (`hydra.run.dir`, or `hydra.sweep.dir` for -m) must be new or empty (or hold only
  the .hydra/ config and log of a command that stopped before writing anything), except:
  - train.py with `ckpt_path=` pointing into that very directory continues the run in place (the
    resuming command's config goes to .hydra/resume_<time>/; the run's .hydra/config.yaml stays);
  - `overwrite=true`: train.py first deletes the old run's outputs (checkpoints, metrics, logs, config);
    evaluate.py / export.py may reuse a directory of their own, but never one that holds checkpoints.
* evaluate.py / export.py / predict.py never write inside the run they read (their directory, export's
  `out=`, predict's `--attention-dir`), and read that run's config from the checkpoint itself.

Hydra writes .hydra/config.yaml into the run directory before the task function runs, so the check is a
Hydra callback (configs/hydra/default.yaml) that runs first. Under several processes (DDP with Lightning's
launcher, torchrun, SLURM) only the launching process (utils/ranks.py) checks and writes the config; every
other process writes only its own log, <task>_node<k>_rank<r>.log, into the same (shared) directory.
"""

from __future__ import annotations

import os
import re
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from utils.errors import UserError, fail
from utils.ranks import worker_rank

# What a training run writes into its directory (the Hydra log is <job name>.log).
RUN_OUTPUTS = (".hydra", "checkpoints", "csv", "tensorboard", "attention", "metrics.json", "tokenizer.json")


def holds_checkpoints(path: Path) -> bool:
    return (path / "checkpoints").is_dir() and any((path / "checkpoints").glob("*.ckpt"))


def run_dir_of(ckpt_file: Path) -> Path | None:
    """The run directory a checkpoint belongs to (<run>/checkpoints/x.ckpt), or None for a lone file."""
    ckpt_file = ckpt_file.resolve()
    return ckpt_file.parent.parent if ckpt_file.parent.name == "checkpoints" else None


def is_inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def refuse_writing_into_run(target: Path, ckpt_path: str | Path, what: str) -> None:
    """`target` (an output folder) must not lie inside the run directory that `ckpt_path` reads."""
    from utils.checkpoint import resolve_checkpoint

    run = run_dir_of(resolve_checkpoint(ckpt_path))
    if run is not None and is_inside(Path(target).expanduser(), run):
        raise UserError(f"{what}={target} is inside the run being read ({run}); this command never writes into "
                        f"a run: choose a folder outside it")


def _nonempty(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def _listing(path: Path, limit: int = 4) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _worker_log(path: Path) -> bool:
    """Another process's log (RunDirGuard names it): it may be this very launch's, started a moment earlier."""
    return re.search(r"_node\d+_rank\d+\.log$", path.name) is not None


def clear_run_outputs(path: Path) -> list[str]:
    """Delete what a training run wrote into `path` (not other files); returns the names deleted."""
    gone = []
    for entry in sorted(path.iterdir()):
        if entry.name in RUN_OUTPUTS or (entry.is_file() and entry.suffix == ".log" and not _worker_log(entry)):
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            gone.append(entry.name)
    return gone


def check_run_dir(config: DictConfig, run_dir: Path) -> str | None:
    """Apply the rule to one command directory; returns a new `hydra.output_subdir` when the command must
    keep its config apart (a resume in place), else None. Raises UserError when the rule says no."""
    task = str(config.get("task_name", "train"))
    overwrite = bool(config.get("overwrite", False))
    if not _nonempty(run_dir):
        return None
    if all(p.name == ".hydra" or p.suffix == ".log" and p.is_file() for p in run_dir.iterdir()):
        clear_run_outputs(run_dir)  # only the config and log of a command that stopped before any result
        return None
    key = "hydra.run.dir"
    if task == "train":
        ckpt_path = config.get("ckpt_path")
        if ckpt_path and is_inside(Path(str(ckpt_path)).expanduser(), run_dir):
            if overwrite:
                raise UserError(f"overwrite=true would delete the checkpoint that ckpt_path={ckpt_path} resumes "
                                f"from; leave out one of them")
            return f".hydra/resume_{datetime.now():%Y-%m-%d_%H-%M-%S}"
        if overwrite:
            clear_run_outputs(run_dir)
            return None
        raise UserError(f"{key}={run_dir} is not empty ({_listing(run_dir)}); training into it would mix two runs. "
                        f"Choose a new directory, resume that run with ckpt_path={run_dir}, or replace it with "
                        f"overwrite=true")
    if holds_checkpoints(run_dir):
        raise UserError(f"{key}={run_dir} holds a training run (checkpoints/); {task}.py writes into a directory "
                        f"of its own: leave hydra.run.dir out or choose a new directory")
    if not overwrite:
        raise UserError(f"{key}={run_dir} is not empty ({_listing(run_dir)}); choose a new directory, or reuse "
                        f"it with overwrite=true")
    return None


class RunDirGuard(Callback):
    """Hydra callback: applies the run-directory rule before Hydra writes anything (see the module doc)."""

    # Hydra turns an exception in a callback into a warning and runs the job anyway: refusals exit here.
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            self._check_run(config)
        except UserError as err:
            fail(str(err))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            self._check_sweep(config)
        except UserError as err:
            fail(str(err))

    def _check_run(self, config: DictConfig) -> None:
        rank = worker_rank(os.environ)
        if rank is not None:  # the launching process checks; Lightning's launcher already did the same for its own
            with read_write(config.hydra), open_dict(config.hydra):
                config.hydra.output_subdir = None
                config.hydra.job.name = f"{config.get('task_name', 'train')}_{rank.tag}"
            return
        HydraConfig.instance().set_config(config)  # so ${hydra:...} in the directory resolves
        run_dir = Path(str(OmegaConf.select(config, "hydra.run.dir"))).expanduser().resolve()
        subdir = check_run_dir(config, run_dir)
        task = str(config.get("task_name", "train"))
        if task != "train" and "ckpt_path" in config and not OmegaConf.is_missing(config, "ckpt_path"):
            _refuse_inside_read_run(run_dir, str(config.ckpt_path), "hydra.run.dir")
        if subdir is not None and config.hydra.output_subdir is not None:
            with read_write(config.hydra), open_dict(config.hydra):
                config.hydra.output_subdir = subdir

    def _check_sweep(self, config: DictConfig) -> None:
        if worker_rank(os.environ) is not None:
            return
        HydraConfig.instance().set_config(config)
        sweep_dir = Path(str(OmegaConf.select(config, "hydra.sweep.dir"))).expanduser().resolve()
        if not _nonempty(sweep_dir):
            return
        if not bool(config.get("overwrite", False)):
            raise UserError(f"hydra.sweep.dir={sweep_dir} is not empty ({_listing(sweep_dir)}); a sweep into it "
                            f"would mix with the runs there. Choose a new directory or replace them with overwrite=true")
        if str(config.get("task_name", "train")) == "train":
            for job in sweep_dir.iterdir():
                if job.is_dir() and (job / ".hydra").is_dir():
                    clear_run_outputs(job)


def _refuse_inside_read_run(target: Path, ckpt_path: str, what: str) -> None:
    try:
        refuse_writing_into_run(target, ckpt_path, what)
    except FileNotFoundError:  # a missing checkpoint is reported by the command itself, with its message
        pass

