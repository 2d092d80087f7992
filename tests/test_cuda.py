"""The CUDA correctness subset of the GPU check (bench/gpu/check.py, docs/benchmarks.md "GPU check") as assertions:
fused = explicit against float64 for every mask kind, fully masked rows, KV cache and beam search on the GPU, and
a host-sync budget. Marked `cuda` and skipped without a GPU: `pytest -m cuda` on a GPU machine."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bench/gpu/run.sh)")]


def _ctx(tmp_path: Path):
    from bench.gpu.check import Ctx

    return Ctx(cpu=False, device=torch.device("cuda"), out=tmp_path, work=tmp_path, data_dir=tmp_path / "data",
               log=print, deadline=math.inf)


@pytest.mark.parametrize("name", ["fused_equals_explicit", "fully_masked_rows", "kv_cache_and_beam"])
def test_gpu_check_case(name: str, tmp_path: Path) -> None:
    """Each case checks everything it covers before failing, so the assertion lists every broken combination."""
    from bench.gpu import check

    ctx = _ctx(tmp_path)
    getattr(check, name)(ctx)
    assert not ctx.failures, "\n".join(ctx.failures[:30])


def test_a_vit_training_step_needs_no_host_sync(tmp_path: Path) -> None:
    """Forward, loss and backward of the default ViT on the GPU never wait for the device: every sync would stall
    the launch queue once per step (the Lightning module's logging is measured by the GPU check, not asserted)."""
    from models.vit import VisionTransformer

    torch.manual_seed(0)
    net = VisionTransformer(img_size=28, patch_size=8, in_chans=1, num_classes=10, dim=96, depth=4, num_heads=4,
                            mlp_ratio=2.0, pool="mean", stem="conv").cuda()
    x, y = torch.randn(64, 1, 28, 28, device="cuda"), torch.randint(0, 10, (64,), device="cuda")

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()

    step()  # lazy initialisation (cuBLAS handles, autotuning) is not the step's
    from bench.gpu.check import count_syncs

    counted = count_syncs(_ctx(tmp_path), step)  # torch.cuda.set_sync_debug_mode("warn"), source lines
    assert counted["syncs"] == 0, counted["where"]
