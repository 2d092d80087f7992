"""End to end through the command line (the scripts' `__main__` blocks, run in this process): train, evaluate,
sweep, and safe checkpoint loading."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from helpers.cli import command, run
from helpers.config import MODELS
from helpers.runs import whisper_overrides
from utils.checkpoint import load_checkpoint

TINY = ["trainer.max_epochs=1", "trainer.limit_train_batches=3", "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=2", "model.net.depth=1", "model.net.dim=32"]


# The default data of each model, smaller where its size costs time: the full ListOps (96K sequences) takes
# minutes to generate, the phrases' BPE tokenizer (40K pairs) about 10 s to train at every run, the homology split of
# the 20,000 UniProt sequences 4 minutes of mmseqs on a fresh clone (2,000 still run the real file and mmseqs).
SMALL_DATA = {"sequence": ["data.train_size=48", "data.val_size=16", "data.test_size=16", "data.min_length=20",
                           "data.max_length=200"],
              "translator": ["data.num_pairs=1500", "data.bpe_vocab_size=200"],
              "protein": ["data.max_sequences=2000"]}


@pytest.mark.parametrize("model", MODELS)
def test_fast_dev_run_each_model(model: str, tmp_path: Path) -> None:
    small = whisper_overrides() if model == "whisper" else SMALL_DATA.get(model, [])
    proc = run("train.py", f"model={model}", *small, "trainer.fast_dev_run=true", f"hydra.run.dir={tmp_path}")
    assert f"Run directory: {tmp_path}" in proc.stdout
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert "test/loss" in metrics and torch.isfinite(torch.tensor(metrics["test/loss"]))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One tiny run (trained, tested), shared: tests read it and write elsewhere."""
    folder = tmp_path_factory.mktemp("trained") / "run"
    run("train.py", *TINY, f"hydra.run.dir={folder}")
    return folder


def test_train_then_evaluate_round_trip(trained: Path, tmp_path: Path) -> None:
    run_dir = trained
    for name in ("metrics.json", "checkpoints/best.ckpt", "checkpoints/last.ckpt", ".hydra/config.yaml",
                 "csv/metrics.csv"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    metrics = json.loads((run_dir / "metrics.json").read_text())

    # Evaluate the run directory (-> best.ckpt) with nothing re-typed: same model, data, metrics.
    ev = tmp_path / "eval"
    proc = run("evaluate.py", f"ckpt_path={run_dir}", "trainer.limit_test_batches=2", f"hydra.run.dir={ev}")
    assert "best.ckpt" in proc.stdout
    evaluated = json.loads((ev / "metrics.json").read_text())
    assert evaluated["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert evaluated["test/loss"] == pytest.approx(metrics["test/loss"], rel=1e-5)

    # A lone checkpoint file, moved away from its run directory, carries its own config.
    lone = tmp_path / "elsewhere" / "model.ckpt"
    lone.parent.mkdir()
    lone.write_bytes((run_dir / "checkpoints" / "best.ckpt").read_bytes())
    ev2 = tmp_path / "eval2"
    run("evaluate.py", f"ckpt_path={lone}", "trainer.limit_test_batches=2", f"hydra.run.dir={ev2}")
    assert json.loads((ev2 / "metrics.json").read_text())["test/acc"] == pytest.approx(metrics["test/acc"])


def test_resume_from_run_directory_continues_at_the_next_epoch(trained: Path, tmp_path: Path) -> None:
    first, second = trained, tmp_path / "second"  # first: one epoch, as TINY trains
    proc = run("train.py", *TINY, "trainer.max_epochs=2", "test=false", f"ckpt_path={first}",
               f"hydra.run.dir={second}")
    assert "checkpoints/last.ckpt" in proc.stderr + proc.stdout
    header = (second / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    col = header.index("epoch")
    epochs = {row.split(",")[col] for row in (second / "csv" / "metrics.csv").read_text().splitlines()[1:]}
    assert epochs == {"1"}  # epoch 0 was restored, not re-run


def test_multirun_sweep(tmp_path: Path) -> None:
    run("train.py", "-m", "model.net.depth=1,2", "trainer.fast_dev_run=true", f"hydra.sweep.dir={tmp_path}")
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["0", "1"]
    assert all((tmp_path / d / "metrics.json").is_file() for d in ("0", "1"))


def test_evaluate_reports_missing_and_bad_checkpoints(tmp_path: Path) -> None:
    proc = command("evaluate.py", f"ckpt_path={tmp_path / 'nope.ckpt'}", f"hydra.run.dir={tmp_path}/e1")
    assert proc.returncode != 0 and "does not exist" in proc.stderr
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint at all")
    proc = command("evaluate.py", f"ckpt_path={junk}", f"hydra.run.dir={tmp_path}/e2")
    assert proc.returncode != 0 and "not a readable checkpoint" in proc.stderr


class _Exploit:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/zoo_pwned_marker"),))


def test_malicious_pickle_is_refused(tmp_path: Path) -> None:
    marker = Path("/tmp/zoo_pwned_marker")
    marker.unlink(missing_ok=True)
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _Exploit()}, evil, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(evil)
    assert not marker.exists()
