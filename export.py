"""Export a trained model: `python export.py ckpt_path=<file.ckpt | run dir> [format=onnx|safetensors|both] [out=<dir>]`.

Writes <model>.onnx (runs in onnxruntime; dynamic batch, and lengths where the model allows) and/or
<model>.safetensors (weights + config as JSON metadata; `utils.export.load_safetensors` rebuilds the
network without unpickling anything). The logic lives in utils/export.py.
"""

from __future__ import annotations

import logging

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from utils.errors import run_hydra, user_errors
from utils.export import export_checkpoint
from utils.rundir import refuse_writing_into_run
from utils.validate import check_run_config


@hydra.main(version_base="1.3", config_path="configs", config_name="export")
@user_errors
def main(cfg: DictConfig) -> None:
    for noisy in ("onnxscript", "onnx_ir"):  # the exporter's optimiser logs every pass at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    check_run_config(cfg)
    if cfg.out:
        refuse_writing_into_run(cfg.out, cfg.ckpt_path, "out")
    out = cfg.out or HydraConfig.get().runtime.output_dir
    result = export_checkpoint(cfg.ckpt_path, out, str(cfg.format), opset=int(cfg.opset), fused=bool(cfg.fused_attn),
                               verify=bool(cfg.verify), atol=float(cfg.atol))
    for key, value in result.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    run_hydra(main, path_key="ckpt_path")  # `python export.py RUN_DIR` works too
