"""predict.py on a converted Whisper folder (a tiny random transformers WhisperForConditionalGeneration): the
transcript equals transformers' greedy `generate` decoded by the same tokenizer, the cross-attention picture is
drawn, and the recorded cross-attention equals the eager model's (output_attentions) for the same tokens."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.whisper_tiny import make_tiny_whisper

FRAMES = 32  # the tiny model's max_source_positions (16) x the stride-2 convolution


def _wav(path: Path, seconds: float, rate: int = 16000, channels: int = 1, seed: int = 0) -> Path:
    import soundfile as sf

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(len(t))
    data = np.stack([wave] * channels, 1) if channels > 1 else wave
    sf.write(str(path), data.astype(np.float32), rate, subtype="FLOAT")
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import WhisperForConditionalGeneration

    folder = make_tiny_whisper(tmp_path_factory.mktemp("whisper") / "tiny", std=1.0)
    torch.set_num_threads(1)
    ref = WhisperForConditionalGeneration.from_pretrained(str(folder), attn_implementation="eager").eval()
    return folder, ref


def _reference(folder: Path, ref, wav: Path):
    """transformers' greedy generate on the zoo front end's features, its new tokens and their text."""
    from inference.inputs import read
    from inference.load import load

    predictor = load(str(folder))
    wave = read(predictor, str(wav))
    mel = predictor.net.features(wave)[..., :FRAMES]
    prompt = predictor.generation["prompt"]
    with torch.no_grad():  # generate returns the new tokens only
        new = ref.generate(mel, max_new_tokens=40 - len(prompt), num_beams=1)[0].tolist()
    new = new[: new.index(predictor.net.eos_id)] if predictor.net.eos_id in new else new
    return predictor, mel, new, predictor.tokenizer.decode(new, skip_special_tokens=True).strip()


def test_predict_py_prints_the_transcript_of_generate_and_draws(tiny, tmp_path: Path, capsys) -> None:
    import predict
    from inference.inputs import read

    folder, ref = tiny
    wav = _wav(tmp_path / "speech.wav", 0.3)
    predictor, _, new, text = _reference(folder, ref, wav)
    assert new, "the reference decoded nothing: a weak test"
    got = predictor.predict(read(predictor, str(wav)))
    assert got.ids == new and got.text == text
    prompt, eos = predictor.generation["prompt"], predictor.net.eos_id
    with torch.no_grad():  # --beam-size: transformers' beam search, as generate's num_beams
        beams = ref.generate(predictor.net.features(read(predictor, str(wav)))[..., :FRAMES],
                             max_new_tokens=40 - len(prompt), num_beams=3)[0].tolist()
    beams = beams[: beams.index(eos)] if eos in beams else beams
    assert predictor.predict(read(predictor, str(wav)), beam_size=3).ids == beams
    capsys.readouterr()
    pictures = tmp_path / "pictures"
    assert predict.main([str(folder), str(wav), "--attention-dir", str(pictures), "--threads", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == text
    drawn = sorted(x.name for x in pictures.iterdir())
    assert drawn == ["speech_cross_attention.png"], drawn


def test_recorded_cross_attention_equals_the_eager_model(tiny, tmp_path: Path) -> None:
    import copy

    from inference.inputs import read
    from inference.load import load
    from viz.pictures import transcription_cross

    folder, ref = tiny
    wav = _wav(tmp_path / "speech.wav", 0.3, seed=1)
    predictor = load(str(folder))
    # Both sides in float64: with these std-1 weights float32 rounding alone moves a map by ~1e-5 (transformers'
    # own float32 maps are 1.3e-5 from its float64 ones on an AMD EPYC), so a float32 comparison at 1e-5 tests
    # the CPU's rounding; in float64 the recording path agrees to ~3e-8 (the maps are kept as float32).
    predictor.net.double()
    ref = copy.deepcopy(ref).double()
    wave = read(predictor, str(wav))
    mel = predictor.net.features(wave)[..., :FRAMES]
    assert mel.dtype == torch.float64
    p = predictor.predict(wave, maps=True)
    prompt = predictor.generation["prompt"]
    ended = len(p.ids) < 40 - len(prompt)
    tgt = torch.tensor([prompt + p.ids + [predictor.net.eos_id] * ended])[:, :-1]
    with torch.no_grad():
        out = ref(input_features=mel, decoder_input_ids=tgt, output_attentions=True)
    for i, expected in enumerate(out.cross_attentions):
        torch.testing.assert_close(p.maps[f"decoder.{i}.cross_attn"], expected.float(), rtol=0, atol=1e-5)
    name, cross = transcription_cross(p, -1)
    assert name == "decoder.1.cross_attn" and cross.shape == (len(p.target_tokens), FRAMES // 2)
    torch.testing.assert_close(cross, out.cross_attentions[-1][0].mean(0)[len(prompt) - 1:].float(), rtol=0,
                               atol=1e-5)
