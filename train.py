"""Train a model: `python train.py model=vit|translator|audio|video [data=...] [key=value ...]`.

The run directory (Hydra's output dir) receives the composed config, checkpoints
(best.ckpt, last.ckpt), CSV + TensorBoard logs and metrics.json with the test metrics.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from training.sharding import load_full_state_dict
from utils.build import (build_datamodule, build_module, build_trainer, datamodule_state,
                         output_dir, recipe_lines, setup_runtime, write_metrics)
from utils.checkpoint import (CONFIG_KEY, ConfigInCheckpoint, is_sharded_checkpoint, load_checkpoint,
                              resolve_checkpoint)
from utils.errors import run_hydra, user_errors
from utils.ranks import worker_rank
from utils.validate import check_weights_fit

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, then test the best checkpoint; returns (and writes) the metrics."""
    setup_runtime(cfg)
    for line in recipe_lines(cfg, HydraConfig.get().runtime.choices):  # what data= etc. pulled in
        log.info(line)
    run_dir = output_dir()
    # Resuming from a run directory continues from where it stopped: its last checkpoint, with the
    # data module's saved state (the translator's tokenizer) restored before the model is sized.
    resume = str(resolve_checkpoint(cfg.ckpt_path, prefer=("last.ckpt", "best.ckpt"))) if cfg.get("ckpt_path") else None
    ckpt = load_checkpoint(resume) if resume else None
    datamodule = build_datamodule(cfg, datamodule_state(ckpt, cfg) if ckpt else None)
    module = build_module(cfg)
    if ckpt is not None:  # before Lightning's loader, whose mismatch report is one line per tensor
        check_weights_fit(module, ckpt["state_dict"], resume, cfg, ckpt.get(CONFIG_KEY))
    trainer = build_trainer(cfg, callbacks=[ConfigInCheckpoint(cfg)])
    log.info(f"Run directory: {run_dir}")
    # Under DDP every process runs this function (Lightning re-launches the script with the same run
    # directory); only rank 0 writes files, Lightning's checkpoints and loggers included. Ranks are not set
    # yet (the Trainer sets them in fit): the launcher's variables say which process launched the run.
    if hasattr(datamodule, "save_artifacts") and worker_rank(os.environ) is None:  # e.g. tokenizer.json
        datamodule.save_artifacts(run_dir)
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    metrics = {k: v for k, v in trainer.callback_metrics.items() if k.startswith(("train/", "val/"))}
    metrics["fit_seconds"] = time.perf_counter() - start  # training wall time, validation included

    if cfg.get("test"):
        best = getattr(trainer.checkpoint_callback, "best_model_path", "")
        if best:  # empty under fast_dev_run, which saves no checkpoint
            if is_sharded_checkpoint(best):  # shards these processes wrote during this fit: the strategy reads them
                trainer.strategy.load_checkpoint(best)
            else:  # our own loader (weights_only), so no file is unpickled freely; through the strategy, which
                # under FSDP holds the module's parameters as shards
                load_full_state_dict(trainer, module, load_checkpoint(best)["state_dict"])
            log.info(f"Testing best checkpoint {best}")
        trainer.test(module, datamodule=datamodule)
        metrics.update({k: v for k, v in trainer.callback_metrics.items() if k.startswith("test/")})

    if not trainer.is_global_zero:
        return {k: float(v) for k, v in metrics.items()}
    clean = write_metrics(run_dir / "metrics.json", metrics)
    log.info(f"Metrics: {clean}")
    print(f"Run directory: {run_dir}\nMetrics written to {Path(run_dir) / 'metrics.json'}")
    return clean


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
@user_errors
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    # Returned for Hydra sweepers (e.g. Optuna) that optimise a metric.
    return metrics.get(cfg.get("optimized_metric", "")) if cfg.get("optimized_metric") else None


if __name__ == "__main__":
    run_hydra(main)
