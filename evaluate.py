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
from omegaconf import DictConfig, open_dict

from utils.build import build_datamodule, build_module, datamodule_state, build_trainer, output_dir, setup_runtime, write_metrics
from utils.checkpoint import CONFIG_KEY, average_checkpoints, load_checkpoint, resolve_checkpoint, run_config
from utils.errors import run_hydra, user_errors
from utils.validate import check_run_config, load_weights

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    check_run_config(cfg)  # this command's own keys (average_last, save_attention, ...); the run's come below
    ckpt_file = resolve_checkpoint(cfg.ckpt_path)
    ckpt = load_checkpoint(ckpt_file)
    train_cfg = run_config(ckpt_file, ckpt)
    # Evaluation-time choices (trainer, loggers, paths, seed, threads, kernel) come from evaluate.yaml; what the
    # model is and which data it was trained on come from the training run.
    with open_dict(train_cfg):
        for key in ("trainer", "logger", "paths", "seed", "threads", "attention_kernel"):
            train_cfg[key] = cfg.get(key)
        train_cfg.callbacks = None
    setup_runtime(train_cfg)
    datamodule = build_datamodule(train_cfg, datamodule_state(ckpt, train_cfg))
    module = build_module(train_cfg)
    state = ckpt["state_dict"]
    if cfg.get("average_last"):
        state, used = average_checkpoints(ckpt_file, int(cfg.average_last))
        log.info(f"Averaged the weights of {len(used)} checkpoints: {', '.join(p.name for p in used)}")
    load_weights(module, state, ckpt_file, train_cfg, ckpt.get(CONFIG_KEY))
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
