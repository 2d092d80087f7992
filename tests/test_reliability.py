"""Faults (NaN loss, crash mid-save, SIGKILL then resume, determinism) and clear errors for bad inputs."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.errors import ConfigCompositionException

from helpers.config import DATASETS, MODEL_FOR_DATA, MODELS, ROOT, compose_config
from helpers.runs import TINY, train_in_process
from models.audio import AudioSpectrogramTransformer
from training.classification import ClassificationModule
from models.translator import Translator
from models.video import VideoTransformer
from models.vit import VisionTransformer
from utils.build import build_datamodule, build_trainer
from utils.checkpoint import AtomicCheckpointIO, atomic_save, load_checkpoint, resolve_checkpoint
from utils.faults import NonFiniteGuard, NonFiniteLossError


def without_time(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k != "fit_seconds"}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- faults -------------------------------------------------------------------------------------------


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoints(tmp_path: Path, monkeypatch) -> None:
    seen: dict[str, str] = {}
    original = ClassificationModule.training_step

    def poisoned(self, batch, batch_idx):  # epoch 0 trains normally; epoch 1's second batch gives NaN
        loss = original(self, batch, batch_idx)
        if self.current_epoch == 1 and batch_idx == 1:
            seen.update({n: sha(tmp_path / "checkpoints" / n) for n in ("best.ckpt", "last.ckpt")})
            return loss * float("nan")
        return loss

    monkeypatch.setattr(ClassificationModule, "training_step", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"training loss is nan at epoch 1, global step 4 \(batch 1 "):
        train_in_process("vit", tmp_path, "trainer.max_epochs=3")
    assert not (tmp_path / "metrics.json").exists()  # no test of a poisoned model either
    for name, digest in seen.items():  # the files are the epoch-0 ones, byte for byte, and finite
        ckpt = load_checkpoint(tmp_path / "checkpoints" / name)
        assert sha(tmp_path / "checkpoints" / name) == digest and ckpt["epoch"] == 0
        assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert len(seen) == 2


def test_checkpoint_with_nan_weights_is_refused(tmp_path: Path) -> None:
    trainer = L.Trainer(default_root_dir=tmp_path, logger=False)
    good = {"state_dict": {"w": torch.ones(2), "steps": torch.tensor(3)}}
    NonFiniteGuard().on_save_checkpoint(trainer, None, good)  # finite: passes
    bad = {"state_dict": {"w": torch.tensor([1.0, float("inf")])}}
    with pytest.raises(NonFiniteLossError, match=r"weight 'w' holds NaN / inf .*not writing this checkpoint"):
        NonFiniteGuard().on_save_checkpoint(trainer, None, bad)


def test_crash_mid_write_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.zeros(1000)}, "epoch": 0}, target)
    before = sha(target)

    def dies_half_way(obj, f, *args, **kwargs):  # the process "dies" with half a file written
        f.write(b"PK\x03\x04" + b"\0" * 1000)
        raise KeyboardInterrupt("simulated crash during torch.save")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": torch.ones(1000)}, "epoch": 1}, target)
    monkeypatch.undo()
    assert sha(target) == before and load_checkpoint(target)["epoch"] == 0
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]  # no temporary file left behind
    atomic_save({"state_dict": {}, "epoch": 2}, target)  # and the next save replaces it whole
    assert load_checkpoint(target)["epoch"] == 2


def test_checkpoint_bytes_are_synced_beside_the_target_before_the_rename(tmp_path: Path, monkeypatch) -> None:
    # A rename within one directory is atomic; fsync first, or a power cut can leave the new name on
    # empty blocks. (Lightning's writer stages in the system temp dir and never fsyncs.)
    calls: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda src, dst: (calls.append(("replace", str(src))),
                                                         real_replace(src, dst)))
    target = tmp_path / "best.ckpt"
    atomic_save({"state_dict": {}}, target)
    (_, synced), (_, renamed), (_, dir_synced) = calls
    assert [c[0] for c in calls] == ["fsync", "replace", "fsync"]
    assert synced == renamed and Path(renamed).parent == tmp_path and dir_synced == str(tmp_path)


def test_trainer_writes_checkpoints_atomically(tmp_path: Path) -> None:
    trainer = build_trainer(compose_config("train", ["trainer.fast_dev_run=true"], tmp_path))
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


_REFERENCE: dict[str, dict[str, float]] = {}


def reference_run(model: str, tmp_path_factory) -> dict[str, float]:
    """One uninterrupted 3-epoch run per model, shared by the determinism and the resume tests."""
    if model not in _REFERENCE:
        out = tmp_path_factory.mktemp(f"{model}_reference")
        _REFERENCE[model] = train_in_process(model, out, "trainer.max_epochs=3")
    return _REFERENCE[model]


@pytest.mark.parametrize("model", MODELS)
def test_same_seed_gives_identical_metrics(model: str, tmp_path: Path, tmp_path_factory) -> None:
    again = train_in_process(model, tmp_path, "trainer.max_epochs=3")
    assert without_time(again) == without_time(reference_run(model, tmp_path_factory))  # bit for bit, every metric
    assert {"test/loss", "val/loss", "train/loss"} <= set(again)


class CrashAt(L.Callback):
    """Dies in the middle of an epoch, as a killed process would (after the previous epoch's checkpoint)."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            raise RuntimeError("simulated crash")


@pytest.mark.parametrize("model", MODELS)
def test_resume_after_a_crash_replays_the_uninterrupted_run(model: str, tmp_path: Path, tmp_path_factory) -> None:
    # Each data module draws its randomness differently (loader generator, collate generator, sampler
    # generator, a batch sampler with set_epoch); all must resume at epoch 1's draws, not epoch 0's.
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_in_process(model, tmp_path / "crashed", "trainer.max_epochs=3", "test=false",
                         "+callbacks.crash._target_=test_reliability.CrashAt", "+callbacks.crash.epoch=2",
                         "+callbacks.crash.batch=1")
    resumed = train_in_process(model, tmp_path / "resumed", "trainer.max_epochs=3", f"ckpt_path={tmp_path / 'crashed'}")
    assert without_time(resumed) == without_time(reference_run(model, tmp_path_factory))


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    # Enough batches that epoch 1 lasts a while, so the kill lands inside it; threads=1 (2 shared cores).
    args = ["trainer.max_epochs=2", "trainer.limit_train_batches=15", "trainer.limit_val_batches=2",
            "trainer.limit_test_batches=2", "model.net.depth=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "train.py", *TINY, *args]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, f"hydra.run.dir={killed}"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)  # atomic writes: the name appears only once the file is complete
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert load_checkpoint(last)["epoch"] == 0  # killed during epoch 1, with epoch 0's checkpoint on disk

    resumed = tmp_path / "resumed"
    proc = subprocess.Popen([*cmd, f"ckpt_path={killed}", f"hydra.run.dir={resumed}"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    reference = train_in_process("vit", tmp_path / "reference", *args)  # meanwhile, the uninterrupted run
    assert proc.wait(timeout=600) == 0, proc.stderr.read()[-3000:]
    assert without_time(json.loads((resumed / "metrics.json").read_text())) == without_time(reference)


def test_resume_into_a_new_directory_keeps_the_best_checkpoint(tmp_path: Path) -> None:
    # best.ckpt of the first run (epoch 0 here: val/acc can only tie later, and ties do not replace)
    # must be the one the resumed run tests, not the resumed run's first epoch.
    train_in_process("vit", tmp_path / "first", "trainer.max_epochs=1", "test=false", "model.optimizer.lr=0")
    best = load_checkpoint(tmp_path / "first" / "checkpoints" / "best.ckpt")
    train_in_process("vit", tmp_path / "second", "model.optimizer.lr=0", f"ckpt_path={tmp_path / 'first'}")
    carried = load_checkpoint(tmp_path / "second" / "checkpoints" / "best.ckpt")
    assert carried["epoch"] == best["epoch"] == 0
    assert load_checkpoint(tmp_path / "second" / "checkpoints" / "last.ckpt")["epoch"] > 0  # it did train on


# --- clear errors --------------------------------------------------------------------------------------


def _vit() -> VisionTransformer:
    return VisionTransformer(img_size=28, patch_size=8, in_chans=1, num_classes=10, dim=32, depth=1, stem="conv")


def _audio() -> AudioSpectrogramTransformer:  # the default recipe's front end: 30 ms windows, 3-frame patches
    return AudioSpectrogramTransformer(n_mels=40, n_fft=480, hop_length=320, patch_size=[40, 3],
                                       patch_stride=[40, 2], dim=32, depth=1)


def _video() -> VideoTransformer:
    return VideoTransformer(dim=32, depth=1)


def _translator() -> Translator:
    return Translator(vocab_size=50, dim=16, encoder_depth=1, decoder_depth=1, max_len=8)


def _ids(*shape: int) -> torch.Tensor:
    return torch.ones(shape, dtype=torch.long)


BAD_INPUTS = [
    ("vit: RGB into a grayscale model", _vit, torch.randn(2, 3, 28, 28),
     r"expected input \(batch, 1, H, W\), got \(2, 3, 28, 28\)"),
    ("vit: no batch dimension", _vit, torch.randn(1, 28, 28), r"expected input \(batch, 1, H, W\), got \(1, 28, 28\)"),
    ("vit: image smaller than a patch", _vit, torch.randn(2, 1, 4, 4),
     r"input height 4 is smaller than one patch \(8\)"),
    ("audio: clip too short", _audio, torch.randn(2, 100),
     r"clip too short: 100 samples \(0.006 s at 16000 Hz\); this model needs at least 640 samples"),
    ("audio: stereo clip", _audio, torch.randn(2, 2, 16000),
     r"expected mono waveforms \(batch, samples\) or \(batch, 1, samples\), got \(2, 2, 16000\)"),
    ("video: an image batch, not a clip", _video, torch.randn(2, 1, 32, 32),
     r"expected a clip \(batch, 1, frames, H, W\), got \(2, 1, 32, 32\)"),
    ("video: zero frames", _video, torch.randn(2, 1, 0, 32, 32),
     r"a clip needs at least 1 frame, got shape \(2, 1, 0, 32, 32\)"),
    ("translator: empty sentence", _translator, (_ids(2, 0), _ids(2, 3)),
     r"token ids are empty, shape \(2, 0\)"),
    ("translator: longer than max_len", _translator, (_ids(2, 9), _ids(2, 3)),
     r"sequence of 9 tokens is longer than max_len=8"),
]


@pytest.mark.parametrize("build, x, message", [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_refused_with_the_value_and_what_was_expected(build, x, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()(*x) if isinstance(x, tuple) else build()(x)


@pytest.mark.parametrize("model, data", [("vit", "bible"), ("audio", "mnist"), ("translator", "moving_digits"),
                                         ("video", "keywords")])
def test_model_and_data_of_different_modalities_are_refused_before_training(model: str, data: str, tmp_path) -> None:
    cfg = compose_config("train", [f"model={model}", f"data={data}"], tmp_path)
    fitting = sorted(d for d in DATASETS if MODEL_FOR_DATA[d] == model)
    expected = ", ".join(f"data={d}" for d in fitting)
    with pytest.raises(ValueError, match=rf"data={data} holds \w+ data, but the model .* takes \w+ data; "
                                         rf"data configs that fit it: {expected}$"):
        build_datamodule(cfg)  # the first thing train() and evaluate() build


@pytest.mark.parametrize("model, data, holds, does", [("lm", "phrases", "generate", "complete"),
                                                      ("translator", "text_corpus", "complete", "generate")])
def test_text_data_of_another_task_is_refused_before_training(model: str, data: str, holds: str, does: str,
                                                              tmp_path) -> None:
    # Sentence pairs and plain text are both text: the data module's task tells them apart.
    cfg = compose_config("train", [f"model={model}", f"data={data}"], tmp_path)
    expected = ", ".join(f"data={d}" for d in sorted(d for d in DATASETS if MODEL_FOR_DATA[d] == model))
    with pytest.raises(ValueError, match=rf"^data={data} holds text data for the task '{holds}', but the model "
                                         rf"\(.*\) does '{does}'; data configs that fit it: {expected}$"):
        build_datamodule(cfg)


def test_every_data_config_builds_data_of_its_models_modality(tmp_path) -> None:
    from utils.build import modality_of

    for data in DATASETS:
        cfg = compose_config("train", [f"model={MODEL_FOR_DATA[data]}", f"data={data}"], tmp_path)
        assert modality_of(cfg.data) == modality_of(cfg.model) is not None, data
        assert "modality" not in cfg.data and "modality" not in cfg.model  # class attributes, not config keys


@pytest.mark.parametrize("typo, key", [("model.net.dimm=3", "dimm"), ("trainer.max_epoch=3", "max_epoch"),
                                       ("data.batchsize=3", "batchsize")])
def test_config_key_typo_names_the_key(typo: str, key: str, tmp_path) -> None:
    full_key = typo.split("=")[0]
    with pytest.raises(ConfigCompositionException, match=rf"Could not override '{full_key}'") as err:
        compose_config("train", [typo], tmp_path)
    assert f"Key '{key}' is not in struct" in str(err.value.__cause__)


def test_missing_truncated_and_foreign_checkpoint_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"'.*nope.ckpt' does not exist: give a .ckpt file or a run directory"):
        resolve_checkpoint(tmp_path / "nope.ckpt")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"has no checkpoints/\*.ckpt"):
        resolve_checkpoint(tmp_path / "run")
    whole = tmp_path / "whole.ckpt"
    torch.save({"state_dict": {"w": torch.randn(10_000)}, "epoch": 3}, whole)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"truncated.ckpt' is not a readable checkpoint \((RuntimeError|OSError): "):
        load_checkpoint(truncated)
    foreign = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, foreign)  # a tensor file, not a Lightning checkpoint
    with pytest.raises(ValueError, match=r"weights.pt' is not a Lightning checkpoint of this project"):
        load_checkpoint(foreign)
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty.ckpt' is not a readable checkpoint"):
        load_checkpoint(tmp_path / "empty.ckpt")


def test_translate_refuses_empty_and_truncates_long_sentences(monkeypatch) -> None:
    from training.seq2seq import Seq2SeqModule
    from models.tokenizer import train_tokenizer

    tok = train_tokenizer(["one two three four five six"] * 20, vocab_size=60)
    net = Translator(vocab_size=tok.get_vocab_size(), dim=16, encoder_depth=1, decoder_depth=1, max_len=8)
    module = Seq2SeqModule(net=net, optimizer=torch.optim.AdamW, beam_size=1, max_new_tokens=4)
    module.tokenizer = tok
    with pytest.raises(ValueError, match="sentence 1 is empty; give text to translate"):
        module.translate(["one", "   "])
    assert len(module.translate(["one two three four five six " * 5])) == 1  # 30 words: cut to max_len, no error


def test_last_checkpoint_is_the_last_epoch_even_without_improvement(tmp_path: Path) -> None:
    # lr=0: val/acc never improves after epoch 0, so best.ckpt stays at epoch 0; last.ckpt (what a resume
    # starts from) must still follow every epoch (Lightning's save_last alone only follows new bests).
    from helpers.cli import run

    folder = tmp_path / "run"
    run("train.py", "trainer.max_epochs=3", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
        "model.net.depth=1", "model.net.dim=32", "model.optimizer.lr=0", "test=false", "threads=1",
        f"hydra.run.dir={folder}")
    last = load_checkpoint(folder / "checkpoints" / "last.ckpt")
    best = load_checkpoint(folder / "checkpoints" / "best.ckpt")
    assert (last["epoch"], last["global_step"]) == (2, 6)
    assert best["epoch"] == 0
