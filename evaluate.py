"""Evaluate a checkpoint on its test set: `python evaluate.py ckpt_path=<file.ckpt | run dir>`.

`save_attention=N` also draws the attention of the first N test examples into <run dir>/attention/
(the same pictures as `predict.py --attention-dir`). `average_last=N` evaluates the average of the weights of the run's last N epoch checkpoints
(checkpoints/epoch*.ckpt, kept by `keep_epoch_checkpoints` at training time).

The model and data are rebuilt from the training config stored in the checkpoint (no overrides to
re-type); metrics are printed and written to metrics.json in this evaluation's own run directory, never
into the run being evaluated (utils/rundir.py).
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from utils.build import build_trainer, output_dir, write_metrics
from utils.checkpoint import average_checkpoints, resolve_checkpoint
from utils.errors import run_hydra, user_errors
from utils.restore import restore
from utils.validate import check_run_config

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    check_run_config(cfg)  # this command's own keys (average_last, save_attention, ...); the run's come below
    # Evaluation-time choices (trainer, loggers, paths, seed, threads, kernel) come from evaluate.yaml; what the
    # model is and which data it was trained on come from the training run.
    runtime = {key: cfg.get(key) for key in ("trainer", "logger", "paths", "seed", "threads", "attention_kernel")}
    runtime["callbacks"] = None
    state = None
    if cfg.get("average_last"):
        state, used = average_checkpoints(resolve_checkpoint(cfg.ckpt_path), int(cfg.average_last))
        log.info(f"Averaged the weights of {len(used)} checkpoints: {', '.join(p.name for p in used)}")
    run = restore(cfg.ckpt_path, runtime=runtime, state=state)
    train_cfg, ckpt_file, module, datamodule = run.cfg, run.ckpt_file, run.module, run.datamodule
    trainer = build_trainer(train_cfg)
    log.info(f"Evaluating {ckpt_file}")
    trainer.test(module, datamodule=datamodule)
    metrics = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    if not trainer.is_global_zero:  # multi-process evaluation: rank 0 writes the files
        return {k: float(v) for k, v in metrics.items()}
    run_dir = output_dir()
    clean = write_metrics(run_dir / "metrics.json", metrics)
    print(f"Checkpoint: {ckpt_file}\nMetrics: {clean}\nWritten to {run_dir / 'metrics.json'}")
    if cfg.get("save_attention"):
        from viz.explain import save_test_pictures, wrap

        lines = save_test_pictures(wrap(module, datamodule, train_cfg, ckpt_file), int(cfg.save_attention),
                                   run_dir / "attention")
        print("Attention pictures of the first test examples:\n" + "\n".join(lines))
    return clean


@hydra.main(version_base="1.3", config_path="configs", config_name="evaluate")
@user_errors
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    run_hydra(main, path_key="ckpt_path")  # `python evaluate.py RUN_DIR` works too
