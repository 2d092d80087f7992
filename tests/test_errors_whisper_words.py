"""Bad and odd input to predict.py --words (docs/errors.md, "Input that used to end in a traceback"; the method:
docs/whisper_words.md): one `error:` line and exit 2, or a run with a `note:` saying what was done."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import predict
from helpers.cli import restored_globals
from helpers.whisper_tiny import make_tiny_whisper


def _cli(capsys, *args: object) -> tuple[int, str, str]:
    capsys.readouterr()
    with restored_globals():  # --threads 1 would stay set for the rest of the session
        code = predict.main([*map(str, args), "--threads", "1"])
    out = capsys.readouterr()
    return code, out.out, out.err


def _wav(path: Path, seconds: float = 0.3) -> Path:
    t = np.arange(int(seconds * 16000)) / 16000
    sf.write(str(path), (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000, subtype="FLOAT")
    return path


def _one_error(code: int, out: str, err: str) -> str:
    assert code == 2 and out == "", (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_words_with_a_model_that_is_not_speech_is_refused_naming_its_kind(tmp_path: Path, capsys) -> None:
    import timm
    from PIL import Image
    from timm.models._hub import save_for_hf

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32,
                              depth=1, num_heads=2, num_classes=3)
    save_for_hf(model.eval(), str(tmp_path / "vit"), safe_serialization=True)
    photo = tmp_path / "photo.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(photo)
    line = _one_error(*_cli(capsys, tmp_path / "vit", photo, "--words"))
    assert line == ("error: --words is for speech models (Whisper: word timestamps from its cross-attention); "
                    "this image model has none")


def test_alignment_heads_outside_the_model_are_one_line_naming_them(tmp_path: Path, capsys) -> None:
    folder = make_tiny_whisper(tmp_path / "tiny", std=1.0)
    config = json.loads((folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps({**config, "alignment_heads": [[1, 0], [5, 0]]}))
    wav = _wav(tmp_path / "speech.wav")
    line = _one_error(*_cli(capsys, folder, wav, "--words"))
    assert line == ("error: alignment_heads [[5, 0]] (generation_config.json): this model's decoder has 2 layers "
                    "of 4 heads; expected [layer, head] pairs within those")
    code, out, _ = _cli(capsys, folder, wav)  # without --words the heads are not read
    assert code == 0 and len(out.splitlines()) == 1


def test_an_empty_transcript_gives_no_words_and_a_note(tmp_path: Path, capsys) -> None:
    """EOS may come first once begin-suppression is off (these weights favour it): nothing to align."""
    folder = make_tiny_whisper(tmp_path / "tiny", std=1.0, eos_bias=40.0, seed=1)
    config = json.loads((folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps({**config, "begin_suppress_tokens": []}))
    wav = _wav(tmp_path / "speech.wav")
    code, out, err = _cli(capsys, folder, wav, "--words")
    assert code == 0 and out == "\n", (out, err)
    assert err == f"note: {wav}: --words: no words (the transcript holds no text)\n"
