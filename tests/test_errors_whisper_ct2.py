"""Bad CTranslate2 Whisper folders to predict.py (docs/errors.md, Whisper section): a truncated model.bin, one of a
binary version the reader does not know, an int8-quantized one, a folder without model.bin; each one `error:` line,
exit code 2. The folders are a tiny random Whisper converted by CTranslate2 itself (tests/helpers/whisper_ct2.py)."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import predict
from helpers.cli import restored_globals


@pytest.fixture(scope="module")
def ct2(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(float16 folder, int8 folder, a 0.3 s wav)."""
    pytest.importorskip("ctranslate2", reason="ctranslate2 is not installed: it writes the model.bin these break")
    from helpers.whisper_ct2 import make_tiny_ct2

    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("ct2")
    _, half = make_tiny_ct2(folder, "float16", std=1.0)
    _, int8 = make_tiny_ct2(folder, "int8")
    wav = folder / "a.wav"
    sf.write(str(wav), (0.1 * np.random.default_rng(0).standard_normal(4800)).astype(np.float32), 16000)
    return half, int8, wav


def _predict(capsys, *args: str) -> tuple[int, str]:
    capsys.readouterr()
    with restored_globals():
        code = predict.main([*args, "--threads", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_a_truncated_unknown_version_or_int8_model_bin_is_one_line(ct2, tmp_path: Path, capsys) -> None:
    half, int8, wav = ct2
    code, _ = _predict(capsys, str(half), str(wav))
    assert code == 0  # the intact folder runs

    cut = _copy(half, tmp_path / "cut")
    data = (cut / "model.bin").read_bytes()
    (cut / "model.bin").write_bytes(data[: len(data) // 2])
    code, line = _predict(capsys, str(cut), str(wav))
    truncated = f"error: {cut / 'model.bin'}: truncated CTranslate2 model.bin: the data of "
    assert code == 2 and line.startswith(truncated), line
    assert f"the file ends at {len(data) // 2}" in line

    new = _copy(half, tmp_path / "v7")
    (new / "model.bin").write_bytes(struct.pack("<I", 7) + data[4:])
    code, line = _predict(capsys, str(new), str(wav))
    assert code == 2 and line == (
        f"error: {new / 'model.bin'}: CTranslate2 binary version 7; expected 2 to 6 (this is not a CTranslate2 "
        f"model.bin, or one of a format this reader does not know)")

    code, line = _predict(capsys, str(int8), str(wav))
    assert code == 2 and line.startswith(f"error: {int8 / 'model.bin'}: variable ") and line.endswith(
        " is int8: a quantized model; expected float32, float16 or bfloat16 weights (convert with --quantization "
        "float16)"), line


MISSING = {  # a file of a converted folder -> what predict.py says without it ({folder})
    "model.bin": "{folder} has a CTranslate2 Whisper config.json but no model.bin; expected the folder "
                 "ct2-transformers-converter writes (model.bin, config.json, tokenizer.json)",
    "tokenizer.json": "{folder} has model.bin and config.json but no tokenizer.json; convert with "
                      "ct2-transformers-converter ... --copy_files tokenizer.json, or copy the original model's "
                      "tokenizer.json into the folder",
}


@pytest.mark.parametrize("missing", list(MISSING))
def test_a_ct2_whisper_folder_without_one_of_its_files_is_one_line(missing: str, ct2, tmp_path: Path,
                                                                    capsys) -> None:
    half, _, wav = ct2
    bare = _copy(half, tmp_path / "bare")
    (bare / missing).unlink()
    code, line = _predict(capsys, str(bare), str(wav))
    assert code == 2 and line == f"error: pretrained={str(bare)!r}: " + MISSING[missing].format(folder=bare)
