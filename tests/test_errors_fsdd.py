"""Bad input to data=fsdd (docs/errors.md, "FSDD"): each one line `error: ...`, exit code 2, before training."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.cli import command
from helpers.fsdd_tiny import write_tiny_fsdd


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_fsdd(tmp_path_factory.mktemp("fsdd") / "recordings")


def _train(root: Path, tmp_path: Path, *extra: str):
    run_dir = tmp_path / f"run{len(list(tmp_path.glob('run*')))}"
    done = command("train.py", "data=fsdd", f"data.root={root}", "trainer.max_epochs=1", "model.net.depth=1",
                   "model.net.dim=32", "threads=1", f"hydra.run.dir={run_dir}", *extra)
    assert done.returncode == 2, done.stderr[-2000:]
    assert sorted(p.name for p in run_dir.iterdir()) == [".hydra", "train.log"]  # refused before anything is built
    return done.stderr.strip().splitlines()[-1]


def test_an_fsdd_root_that_is_missing_or_not_a_folder_is_one_line(tmp_path: Path) -> None:
    for root in (tmp_path / "nope", tmp_path / "file.wav"):
        if root.name == "file.wav":
            root.write_bytes(b"RIFF")
        assert _train(root, tmp_path) == (f"error: data=fsdd: data.root={root} does not exist or is not a folder; "
                                          f"expected a folder of {{digit}}_{{speaker}}_{{index}}.wav files, as in "
                                          f"FSDD's recordings/ folder (e.g. 7_jackson_32.wav)")


def test_an_fsdd_folder_without_digit_speaker_index_wavs_is_one_line(tmp_path: Path) -> None:
    root = tmp_path / "other"
    root.mkdir()
    (root / "seven.wav").write_bytes(b"RIFF")
    (root / "7_jackson_1.flac").write_bytes(b"fLaC")
    assert _train(root, tmp_path) == (f"error: data=fsdd: no {{digit}}_{{speaker}}_{{index}}.wav files in {root}; "
                                      f"expected {{digit}}_{{speaker}}_{{index}}.wav files, as in FSDD's recordings/ "
                                      f"folder (e.g. 7_jackson_32.wav)")


def test_an_unknown_fsdd_speaker_is_one_line_listing_those_found(tiny: Path, tmp_path: Path) -> None:
    assert _train(tiny, tmp_path, "data.test_speaker=nobody") == (
        "error: data=fsdd: data.test_speaker='nobody' is not a speaker of the folder; speakers found: george, "
        "jackson, lucas")
    assert _train(tiny, tmp_path, "data.val_speaker=Jackson") == (
        "error: data=fsdd: data.val_speaker='Jackson' is not a speaker of the folder; speakers found: george, "
        "jackson, lucas")


def test_the_same_fsdd_speaker_for_test_and_val_is_one_line(tiny: Path, tmp_path: Path) -> None:
    assert _train(tiny, tmp_path, "data.test_speaker=lucas", "data.val_speaker=lucas") == (
        "error: data=fsdd: data.test_speaker and data.val_speaker are both 'lucas'; hold out two different speakers "
        "(found: george, jackson, lucas)")


def test_a_negative_number_of_synthetic_digits_is_one_line(tiny: Path, tmp_path: Path) -> None:
    assert _train(tiny, tmp_path, "data.synthetic_per_class=-1") == (
        "error: data: synthetic_per_class=-1; expected an integer >= 0 (espeak-ng clips per digit added to "
        "training, 0 = none)")


def test_validating_on_takes_that_the_folder_lacks_is_one_line(tiny: Path, tmp_path: Path) -> None:
    """data.val_speaker=null validates on takes 9, 19, ...: the tiny folder has takes 0 and 1 only; a folder of
    takes 9 only would leave nothing to train on."""
    assert _train(tiny, tmp_path, "data.test_speaker=lucas", "data.val_speaker=null") == (
        f"error: data=fsdd: data.val_speaker=null validates on the takes numbered 9, 19, 29, ... of the training "
        f"speakers and trains on the others; {tiny} has none of the first (name a val speaker instead)")
    only = tmp_path / "only_nines"
    only.mkdir()
    for wav in tiny.glob("*_1.wav"):  # every take renumbered 9: nothing left to train on
        (only / wav.name.replace("_1.wav", "_9.wav")).write_bytes(wav.read_bytes())
    assert _train(only, tmp_path, "data.test_speaker=lucas", "data.val_speaker=null") == (
        f"error: data=fsdd: data.val_speaker=null validates on the takes numbered 9, 19, 29, ... of the training "
        f"speakers and trains on the others; {only} has only those (name a val speaker instead)")


def test_a_key_of_the_pulled_in_fsdd_experiment_that_another_model_lacks_names_the_file(tiny, tmp_path) -> None:
    """data=fsdd pulls experiment/fsdd.yaml (model=audio's settings): with another model on the command line, its
    audio keys are not that model's parameters, and the error says which file set the key the user never typed."""
    done = command("train.py", "data=fsdd", f"data.root={tiny}", "model=whisper_classifier", "threads=1",
                   f"hydra.run.dir={tmp_path / 'run'}")
    line = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2 and line.startswith("error: model.net.f_max is not a parameter of WhisperClassifier (set by "
                           "experiment/fsdd.yaml, which this composition pulled in, not on the command line); "
                           "its parameters are: num_classes, n_mels, dim, ")
