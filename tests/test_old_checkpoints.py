"""Checkpoints trained before a refactor keep loading and computing the same numbers (bit for bit on the CPU
that made them, within float32 rounding on another).

tests/data/old_checkpoints/ holds one tiny trained checkpoint per family, made by make.py on commit
c302640, with a seeded input and the network's output at that commit. Their stored configs name the
classes by the module paths of that commit (`models.classification.ClassificationModule`, ...):
whatever moves, those names must still build.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from models.attention import fused_attn
from helpers.cli import command
from utils.build import build_module
from utils.checkpoint import load_checkpoint, run_config
from utils.export import load_network

OLD = Path(__file__).resolve().parent / "data" / "old_checkpoints"
FAMILIES = ["vit", "audio", "video", "translator", "sequence"]


@pytest.fixture(autouse=True)
def one_thread():
    """make.py computed the outputs on one thread; more threads may sum in another order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_same_output(net: torch.nn.Module, family: str) -> None:
    saved = torch.load(OLD / f"{family}.pt", weights_only=True)
    with torch.no_grad(), fused_attn(saved["kernel"]):
        output = net.eval()(*saved["input"])
    # Bit for bit on the CPU that made them; another CPU's matmul kernels (AVX-512 vs AVX2) round otherwise,
    # by up to about 5e-7 here. A changed computation differs by far more than this bound.
    diff = (output - saved["output"]).abs().max().item()
    assert diff <= 1e-5 * max(1.0, saved["output"].abs().max().item()), (
        f"{family}: an old checkpoint now computes other numbers (max abs difference {diff:.3g})")


@pytest.mark.parametrize("family", FAMILIES)
def test_the_export_loader_rebuilds_an_old_checkpoint_bit_for_bit(family):
    net, _, extras = load_network(OLD / f"{family}.ckpt")
    assert_same_output(net, family)
    if family == "translator":
        assert extras.get("zoo_tokenizer"), "the translator's tokenizer no longer comes with it"


@pytest.mark.parametrize("family", FAMILIES)
def test_the_module_an_old_checkpoint_names_builds_and_takes_its_weights(family):
    """evaluate.py's path (and train.py ckpt_path=): the stored `model._target_` is built."""
    ckpt_file = OLD / f"{family}.ckpt"
    ckpt = load_checkpoint(ckpt_file)
    module = build_module(run_config(ckpt_file, ckpt))
    module.load_state_dict(ckpt["state_dict"])
    assert_same_output(module.net, family)


def test_evaluate_runs_on_an_old_run_directory(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copyfile(OLD / "vit.ckpt", run / "checkpoints" / "best.ckpt")
    code, out, err = command("evaluate.py", f"ckpt_path={run}", "threads=1",
                             "trainer.limit_test_batches=1", f"hydra.run.dir={tmp_path / 'eval'}")
    assert code == 0, err[-2000:]
    assert "test/acc" in out
