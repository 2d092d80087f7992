"""data=fsdd (data/fsdd.py): the split is by whole speakers, labels are the file name's digit, clips are resampled
to the model's rate and centred; on a tiny synthetic folder and, where it exists, on the real recordings folder
(env FSDD_ROOT, else the shared copy); a one-epoch train run writes metrics. Its error rows: tests/test_errors_fsdd.py."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from data.fsdd import DIGITS, FSDDDataModule, place, scan, split_speakers
from helpers.cli import run
from helpers.fsdd_tiny import SPEAKERS, tone_hz, write_tiny_fsdd

REAL = Path(os.environ.get("FSDD_ROOT", "/work/shared/datasets/fsdd/recordings"))
REAL_SPEAKERS = ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_fsdd(tmp_path_factory.mktemp("fsdd") / "recordings")


def _digit_of(path: str) -> int:
    return int(Path(path).name.split("_")[0])


def test_split_is_by_whole_speakers_and_labels_are_the_file_digit(tiny: Path) -> None:
    torch.set_num_threads(1)
    dm = FSDDDataModule(root=str(tiny), test_speaker="lucas", val_speaker="george", batch_size=8)
    assert dm.class_names == list(DIGITS) and dm.num_classes == 10
    dm.setup()
    assert dm.speakers == {"train": ["jackson"], "val": ["george"], "test": ["lucas"]}
    seen = {split: set(names) for split, names in dm.clip_speakers.items()}
    assert seen == {"train": {"jackson"}, "val": {"george"}, "test": {"lucas"}}
    for split, ds in (("train", dm.train_dataset), ("val", dm.val_dataset), ("test", dm.test_dataset)):
        waves, labels = ds.tensors
        assert waves.shape == (20, 16000) and waves.dtype == torch.int16
        assert labels.tolist() == [_digit_of(f) for f in dm.clip_files[split]]
        assert all(Path(f).name.split("_")[1] in dm.speakers[split] for f in dm.clip_files[split])
    # The audio is the file's, resampled from 8 to 16 kHz and centred: the tone of the label's digit, in the middle.
    wave, label = dm.test_dataset[5]
    wave = wave.float().numpy() / 32768
    n = int(0.3 * 16000)
    start = (16000 - n) // 2
    assert np.abs(wave[: start - 10]).max() == 0 and np.abs(wave[start + n + 10:]).max() == 0
    spectrum = np.abs(np.fft.rfft(wave[start + 200: start + n - 200]))
    peak_hz = spectrum.argmax() * 16000 / (n - 400)
    assert abs(peak_hz - tone_hz(int(label))) < 10
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 16000) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_without_a_val_speaker_val_is_a_tenth_of_the_training_speakers_takes(tmp_path: Path) -> None:
    """data.val_speaker=null: every speaker but the test one trains; takes 9, 19, ... validate and are not trained
    on; the test speaker is in neither (a folder without such takes: tests/test_errors_fsdd.py)."""
    root = write_tiny_fsdd(tmp_path / "recordings", takes=20, seconds=0.1)
    dm = FSDDDataModule(root=str(root), test_speaker="lucas", val_speaker=None)
    dm.setup()
    assert dm.speakers == {"train": ["george", "jackson"], "val": ["george", "jackson"], "test": ["lucas"]}
    takes = {split: [int(Path(f).stem.split("_")[2]) for f in files] for split, files in dm.clip_files.items()}
    assert sorted(set(takes["val"])) == [9, 19] and len(takes["val"]) == 2 * 10 * 2
    assert not set(takes["train"]) & {9, 19} and len(takes["train"]) == 2 * 10 * 18
    assert not set(dm.clip_files["train"]) & set(dm.clip_files["val"])
    assert {Path(f).name.split("_")[1] for f in dm.clip_files["train"] + dm.clip_files["val"]} == {"george", "jackson"}
    assert len(dm.val_dataset.tensors[1]) == 40 and len(dm.test_dataset.tensors[1]) == 200


def test_peak_and_gain_and_the_held_out_speakers_are_never_augmented(tiny: Path) -> None:
    dm = FSDDDataModule(root=str(tiny), test_speaker="george", val_speaker="jackson", peak=0.5, gain_db=[-6, 0],
                        speed_range=[0.9, 1.1], batch_size=20)
    dm.setup()
    peaks = dm.test_dataset.tensors[0].float().abs().amax(dim=1) / 32767
    torch.testing.assert_close(peaks, torch.full_like(peaks, 0.5), atol=2e-3, rtol=0)
    x, _ = next(iter(dm.test_dataloader()))
    torch.testing.assert_close(x, dm.test_dataset.tensors[0][:20].float() / 32768)  # as stored: no augmentation
    x, _ = next(iter(dm.train_dataloader()))
    assert 0.5 * 10 ** (-6 / 20) - 0.05 < x.abs().amax(dim=1).min() and x.abs().amax(dim=1).max() < 0.5 + 0.05


def test_place_centres_short_clips_and_keeps_the_middle_of_long_ones() -> None:
    assert place(torch.ones(4), 8).tolist() == [0, 0, 1, 1, 1, 1, 0, 0]
    assert place(torch.arange(10.0), 4).tolist() == [3, 4, 5, 6]


@pytest.mark.skipif(not REAL.is_dir(), reason=f"the FSDD recordings folder is not at {REAL} (set FSDD_ROOT)")
def test_the_real_folder_every_leave_one_speaker_out_fold_is_disjoint() -> None:
    files = scan(REAL)
    assert len(files) == 3000
    speakers = sorted({f[2] for f in files})
    assert speakers == REAL_SPEAKERS
    assert all(f[0].name.startswith(f"{f[1]}_{f[2]}_") for f in files)
    assert np.bincount([f[1] for f in files]).tolist() == [300] * 10
    for i, test in enumerate(speakers):
        val = speakers[(i + 1) % len(speakers)]  # bench/fsdd_loso.py's folds
        split = split_speakers([f[2] for f in files], test, val)
        assert split["test"] == [test] and split["val"] == [val]
        assert set(split["train"]) == set(speakers) - {test, val}
    # A few real clips through the data module's reader: 8 kHz in, 16 kHz 1 s clips out, label = file digit.
    dm = FSDDDataModule(root=str(REAL))
    chosen = [f for f in files if f[3] == 0 and f[2] == "theo"]
    ds = dm._read(chosen)
    assert ds.tensors[0].shape == (10, 16000) and ds.tensors[1].tolist() == [f[1] for f in chosen]
    assert (ds.tensors[0].abs().amax(dim=1) > 300).all()  # not silence (theo records quietly: peaks ~-30 dBFS)


def test_a_one_epoch_train_run_writes_metrics(tiny: Path, tmp_path: Path) -> None:
    folder = tmp_path / "run"
    done = run("train.py", "model=audio", "data=fsdd", f"data.root={tiny}", "data.test_speaker=lucas",
               "data.val_speaker=jackson", "trainer.max_epochs=1", "model.net.depth=1", "model.net.dim=32",
               "threads=1", f"hydra.run.dir={folder}")
    assert done.returncode == 0
    metrics = json.loads((folder / "metrics.json").read_text())
    assert {"val/acc", "test/acc", "fit_seconds"} <= set(metrics)
    assert 0 <= metrics["test/acc"] <= 1


# ----------------------------------------------------------------------------- what the FSDD recipe added elsewhere


def test_keywords_with_a_vocabulary_of_digits_has_them_as_its_classes_in_order() -> None:
    from data.audio import AudioDataModule
    from data.keywords import CLASSES, KeywordSpec, plan

    spec = KeywordSpec(train_per_class=2, val_per_class=1, test_per_class=1, words=DIGITS)
    items = plan(spec)
    assert len(items) == 10 * 4 and {it["word"] for it in items} == set(DIGITS)
    assert all(DIGITS[it["label"]] == it["word"] for it in items)  # label i is the digit i, as FSDD's
    assert spec.key("e") != KeywordSpec(2, 1, 1).key("e")
    # The default vocabulary keeps the cache key it had before `words` existed (its caches stay valid).
    import hashlib
    import json
    from dataclasses import asdict

    from data.keywords import VERSION

    old = {k: v for k, v in asdict(KeywordSpec()).items() if k != "words"}
    blob = json.dumps({"version": VERSION, "engine": "e", **old}, sort_keys=True)
    assert KeywordSpec().key("e") == f"v{VERSION}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"
    dm = AudioDataModule(words=list(DIGITS), num_classes=10)
    assert dm.class_names == list(DIGITS) and dm.num_classes == 10
    assert AudioDataModule().class_names == list(CLASSES)
    with pytest.raises(ValueError, match="num_classes=12 but dataset 'keywords' has 10 classes"):
        AudioDataModule(words=list(DIGITS), num_classes=12)
    with pytest.raises(ValueError, match="words=.* is for dataset 'keywords'"):
        AudioDataModule(dataset="audio_folder", root="x", words=["a", "b"])
    with pytest.raises(ValueError, match="at least 2 different"):
        AudioDataModule(words=["one", "one"], num_classes=2)


def test_utterance_norm_removes_a_clips_level_and_a_fixed_filter() -> None:
    import torchaudio.functional as AF

    from models.audio import AudioSpectrogramTransformer

    torch.manual_seed(0)
    net = AudioSpectrogramTransformer(dim=32, depth=1, num_heads=2, n_mels=40, n_fft=480, hop_length=320,
                                      patch_size=[40, 3], patch_stride=[40, 2], utterance_norm=True).eval()
    wave = torch.zeros(1, 16000)
    wave[0, 4000:12000] = torch.randn(8000) * 0.1  # speech in the middle, silence around it
    plain = net.spectrogram(wave)
    speech = slice(14, 36)  # frames well inside the speech (silence stays at the floor: log(1e-6) minus the mean)
    quiet = net.spectrogram(wave * 0.05)  # -26 dB: the same input to the network, where there is speech
    torch.testing.assert_close(quiet[..., speech], plain[..., speech], atol=0.02, rtol=0)  # the 1e-6 floor: ~0.01
    # A microphone: a fixed gentle filter (a first-order low-pass) changes each band's level, not the pattern.
    filtered = AF.lfilter(wave, torch.tensor([1.0, -0.5]), torch.tensor([0.5, 0.0]), clamp=False)
    diff = (net.spectrogram(filtered) - plain)[0, 0, 1:, speech]
    without = AudioSpectrogramTransformer(dim=32, depth=1, num_heads=2, n_mels=40, n_fft=480, hop_length=320,
                                          patch_size=[40, 3], patch_stride=[40, 2]).eval()
    diff_without = (without.spectrogram(filtered) - without.spectrogram(wave))[0, 0, 1:, speech]
    assert diff.abs().mean() < 0.1 * diff_without.abs().mean()


def test_loso_folds_hold_each_speaker_out_once_with_the_next_as_val() -> None:
    from bench.fsdd_loso import folds

    assert folds(["a", "b", "c"]) == [("a", "b"), ("b", "c"), ("c", "a")]


def test_loso_fold_cpu_time_is_its_own_process_time_when_folds_run_side_by_side(tmp_path: Path) -> None:
    """Two children at once, one busy and one asleep: each is charged its own CPU seconds (os.wait4). getrusage
    of all children, read before and after, would charge the sleeper the busy one's time: it ends in between."""
    import concurrent.futures

    from bench.fsdd_loso import run_child

    busy = [sys.executable, "-c", "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass"]
    sleepy = [sys.executable, "-c", "import time; time.sleep(1.0); print('awake')"]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        a = pool.submit(run_child, busy, tmp_path / "busy.log")
        b = pool.submit(run_child, sleepy, tmp_path / "sleepy.log")
        (code_a, cpu_a, _), (code_b, cpu_b, wall_b) = a.result(), b.result()
    assert code_a == code_b == 0 and (tmp_path / "sleepy.log").read_text() == "awake\n"
    assert cpu_a >= 0.4 and cpu_b < 0.2 and wall_b >= 1.0
    assert run_child([sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "fail.log")[0] == 3


def test_loso_over_seeds_runs_every_fold_per_seed_and_averages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--seeds: every (seed, fold) runs once with seed=S in its own folder; the JSON has each speaker's score per
    seed, its mean, and the mean over seeds of the folds' means (by hand below)."""
    import bench.fsdd_loso as loso
    import data.fsdd

    monkeypatch.setattr(data.fsdd, "scan", lambda root: [(Path(f"{d}_{s}_0.wav"), d, s, 0)
                                                         for s in ("ann", "bob", "cy") for d in range(10)])
    acc = {("ann", 1): 0.9, ("bob", 1): 0.6, ("cy", 1): 0.75, ("ann", 2): 0.7, ("bob", 2): 0.5, ("cy", 2): 0.9}
    calls = []

    def fake_fold(root, test, val, run_dir, extra, pretrained=None, probe="linear"):
        seed = int(extra[-1].removeprefix("seed="))
        calls.append((test, val, seed, run_dir.relative_to(tmp_path).as_posix(), extra))
        return {"test_speaker": test, "val_speaker": val, "test_acc": acc[test, seed], "cpu_minutes": 1.0,
                "wall_minutes": 1.0}

    monkeypatch.setattr(loso, "run_fold", fake_fold)
    out = tmp_path / "r.json"
    monkeypatch.setattr(sys, "argv", ["fsdd_loso", "--root", "x", "--runs", str(tmp_path / "runs"), "--seeds", "1",
                                      "2", "--jobs", "2", "--json", str(out), "--", "trainer.max_epochs=1"])
    loso.main()
    assert sorted(calls) == sorted(
        (t, v, s, f"runs/seed_{s}/test_{t}", ["trainer.max_epochs=1", f"seed={s}"])
        for s in (1, 2) for t, v in (("ann", "bob"), ("bob", "cy"), ("cy", "ann")))
    r = json.loads(out.read_text())
    assert r["per_seed_mean_test_acc"] == pytest.approx({"1": 0.75, "2": 0.7})
    assert "each fold once per seed (1, 2)" in r["what"]
    assert r["mean_test_acc"] == pytest.approx(0.725)
    assert r["per_speaker"]["bob"] == {"test_acc": {"1": 0.6, "2": 0.5}, "mean": pytest.approx(0.55)}
    assert (r["worst_speaker"], r["worst_test_acc"]) == ("bob", pytest.approx(0.55))
    assert [f["test_speaker"] for f in r["folds"]["2"]] == ["ann", "bob", "cy"]
    for bad in (["--seeds", "1", "1"], ["--folds", "dan"], ["--jobs", "0"], ["--seeds", "1", "--pretrained", "x"]):
        monkeypatch.setattr(sys, "argv", ["fsdd_loso", "--root", "x", *bad])
        with pytest.raises(SystemExit) as exit_info:
            loso.main()
        assert exit_info.value.code == 2, bad


def test_loso_stops_at_a_failed_fold_and_starts_no_other(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.fsdd_loso as loso
    import data.fsdd

    monkeypatch.setattr(data.fsdd, "scan", lambda root: [(Path(f"{d}_{s}_0.wav"), d, s, 0)
                                                         for s in ("ann", "bob", "cy", "dee") for d in range(10)])
    started = []

    def fake_fold(root, test, val, run_dir, extra, pretrained=None, probe="linear"):
        started.append(test)
        time.sleep(0.2 if test == "ann" else 0.5)  # bob runs beside ann, which fails first
        if test == "ann":
            raise SystemExit("fold test=ann failed (1)")
        return {"test_speaker": test, "val_speaker": val, "test_acc": 0.5, "cpu_minutes": 1.0, "wall_minutes": 1.0}

    monkeypatch.setattr(loso, "run_fold", fake_fold)
    monkeypatch.setattr(sys, "argv", ["fsdd_loso", "--root", "x", "--runs", str(tmp_path), "--jobs", "2"])
    with pytest.raises(SystemExit, match="test=ann failed"):
        loso.main()
    assert sorted(started) == ["ann", "bob"]  # cy and dee never started


def test_synthetic_digits_join_training_only_at_the_same_peak(tiny: Path, tmp_path: Path) -> None:
    """data.synthetic_per_class adds espeak-ng clips of every digit to training (labels = the spoken digit),
    scaled to the recordings' peak; val and test stay the held-out speakers' recordings."""
    torch.set_num_threads(1)
    dm = FSDDDataModule(root=str(tiny), test_speaker="lucas", val_speaker="george", peak=0.5,
                        synthetic_per_class=2, synthetic_root=str(tmp_path))
    dm.setup()
    waves, labels = dm.train_dataset.tensors
    assert len(labels) == 20 + 2 * 10 and labels[20:].tolist() == sorted(list(range(10)) * 2)
    peaks = waves[20:].float().abs().amax(dim=1) / 32767
    torch.testing.assert_close(peaks, torch.full((20,), 0.5), atol=1e-4, rtol=0)
    assert all(s.startswith("espeak-ng:") for s in dm.clip_speakers["train"][20:])
    assert len(dm.val_dataset) == 20 and len(dm.test_dataset) == 20
    with pytest.raises(ValueError, match="synthetic_per_class=-1"):
        FSDDDataModule(root=str(tiny), synthetic_per_class=-1, synthetic_root=str(tmp_path))
    with pytest.raises(ValueError, match="needs synthetic_root"):
        FSDDDataModule(root=str(tiny), synthetic_per_class=2)
