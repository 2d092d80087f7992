"""Bad transcript folders for fine-tuning (data=transcripts) and bad wav files for predict.py on Whisper: the rows of
docs/errors.md's Whisper section, on a tiny random HF Whisper (tests/helpers/whisper_tiny.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import predict
from helpers.cli import command, restored_globals
from helpers.whisper_tiny import make_tiny_whisper


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return make_tiny_whisper(tmp_path_factory.mktemp("whisper") / "tiny", std=1.0)


def _pairs(folder: Path, n: int = 12, seconds: float = 0.3, rate: int = 16000) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        sf.write(str(folder / f"u{i:02d}.wav"), (0.1 * rng.standard_normal(int(seconds * rate))).astype(np.float32),
                 rate)
        (folder / f"u{i:02d}.txt").write_text(f"t{10 + i} t{20 + i}\n")
    return folder


def _train(tiny: Path, root: Path, tmp_path: Path, *extra: str):
    return command("train.py", "experiment=finetune_whisper", f"pretrained={tiny}", f"data.root={root}", "threads=1",
                   "trainer.max_epochs=1", "data.val_fraction=0.25", "data.test_fraction=0.25",
                   f"hydra.run.dir={tmp_path / 'runs' / root.name}", *extra)


def test_a_wav_without_text_or_a_text_without_wav_is_skipped_and_said(tiny, tmp_path: Path) -> None:
    root = _pairs(tmp_path / "pairs")
    sf.write(str(root / "lonely.wav"), np.zeros(1600, np.float32), 8000)
    (root / "orphan.txt").write_text("t5\n")
    (root / "u00.wav").unlink()
    sf.write(str(root / "u00.wav"), np.zeros((800, 2), np.float32), 8000)  # 8 kHz stereo: resampled, mixed
    done = _train(tiny, root, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (f"note: data=transcripts: skipped 1 audio file(s) with no .txt beside them (first: {root / 'lonely.wav'})"
            in done.stderr)
    assert (f"note: data=transcripts: skipped 1 transcript(s) with no audio file beside them (first: "
            f"{root / 'orphan.txt'})" in done.stderr)
    assert (f"note: data=transcripts: 1 of 12 audio files resampled to 16000 Hz when read (first: {root / 'u00.wav'} "
            f"at 8000 Hz)" in done.stderr)
    assert f"note: data=transcripts: 1 of 12 audio files mixed to mono (first: {root / 'u00.wav'}: 2 channels)" \
        in done.stderr


def _last_line(done) -> str:
    return done.stderr.strip().splitlines()[-1]


def test_a_transcript_folder_with_no_pair_an_empty_text_a_long_wav_or_text_is_refused(tiny, tmp_path: Path) -> None:
    only_wavs = tmp_path / "only_wavs"
    only_wavs.mkdir()
    sf.write(str(only_wavs / "a.wav"), np.zeros(1600, np.float32), 16000)
    done = _train(tiny, only_wavs, tmp_path)
    assert done.returncode == 2 and _last_line(done) == (
        f"error: data=transcripts: {only_wavs} holds no usable pair of name.wav + name.txt (1 audio file(s), "
        f"0 .txt file(s))")

    empty = _pairs(tmp_path / "empty")
    (empty / "u03.txt").write_text(" ... \n")
    done = _train(tiny, empty, tmp_path)
    assert done.returncode == 2 and _last_line(done) == (
        f"error: data=transcripts: {empty / 'u03.txt'} holds no words (empty or punctuation only); write what "
        f"u03.wav says, or remove both files")

    long = _pairs(tmp_path / "long")
    sf.write(str(long / "u05.wav"), np.zeros(31 * 16000, np.float32), 16000)
    done = _train(tiny, long, tmp_path)
    assert done.returncode == 2 and _last_line(done) == (
        f"error: data=transcripts: {long / 'u05.wav'} is 31 s long, more than data.max_seconds=30 (Whisper hears one "
        f"30 s window); cut it into shorter utterances")

    wordy = _pairs(tmp_path / "wordy")
    (wordy / "u07.txt").write_text(" ".join(f"t{i}" for i in range(10, 50)))  # 40 tokens: the decoder holds 40
    done = _train(tiny, wordy, tmp_path)
    assert done.returncode == 2 and _last_line(done) == (
        f"error: data=transcripts: the transcript of {wordy / 'u07.wav'} is 40 tokens; with the prompt (2) and "
        f"<|endoftext|> more than the decoder's 40 positions; cut it into shorter utterances")

    done = _train(tiny, tmp_path / "nowhere", tmp_path)
    assert done.returncode == 2 and _last_line(done) == (
        f"error: data=transcripts: data.root={tmp_path / 'nowhere'} is not a folder; expected name.wav + name.txt "
        f"pairs (docs/whisper_finetune.md)")


def test_whisper_without_a_source_says_what_is_missing(tmp_path: Path) -> None:
    root = _pairs(tmp_path / "pairs")
    done = command("train.py", "model=whisper", f"data.root={root}", "threads=1", f"hydra.run.dir={tmp_path / 'r'}")
    assert done.returncode == 2 and _last_line(done) == (
        "error: data=transcripts needs the model's tokenizer: fine-tune a source (pretrained=<whisper source>, "
        "experiment=finetune_whisper)")


def _predict(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    with restored_globals():
        code = predict.main([*args, "--threads", "1"])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_silent_wav_runs_and_says_so_and_44_1_or_96_khz_wavs_are_resampled(tiny, tmp_path: Path, capsys) -> None:
    silent = tmp_path / "silent.wav"
    sf.write(str(silent), np.zeros(16000, np.float32), 16000)
    code, out, err = _predict(capsys, str(tiny), str(silent))
    assert code == 0 and len(out.splitlines()) == 1  # what the model writes for silence (maybe nothing)
    assert f"note: {silent}: every sample is 0 (silence): the transcript is what the model writes for no speech" in err
    for rate, channels in ((44100, 1), (96000, 2)):
        wave = 0.3 * np.sin(2 * np.pi * 440 * np.arange(rate // 2) / rate).astype(np.float32)
        path = tmp_path / f"tone_{rate}.wav"
        sf.write(str(path), np.stack([wave] * channels, 1) if channels > 1 else wave, rate)
        code, out, err = _predict(capsys, str(tiny), str(path))
        expected = f"resampled from {rate} Hz to 16000 Hz"
        assert code == 0 and out.strip() and expected in err, err
        assert ("mixed 2 channels to mono" in err) == (channels == 2)
