"""Hugging Face AST in the zoo's AudioSpectrogramTransformer: the Kaldi fbank front end equals the feature
extractor's on a wav file, logits and per-layer maps equal transformers' with the same weights, ONNX export,
predict from the folder, and a one-epoch fine-tune on an audio folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import soundfile as sf
import torch
from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification

from helpers.cli import command
from helpers.pretrained import assert_predicts_from_source, audio_folder, randomize, write_wav
from models.attention import attention_maps, fused_attn
from models.pretrained import convert

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_mel_bins=32,
            max_length=48, patch_size=16, frequency_stride=10, time_stride=10, num_labels=4)


def reference(folder: Path) -> tuple[ASTForAudioClassification, ASTFeatureExtractor]:
    """A tiny AST with random weights and its feature extractor, saved as the hub stores them."""
    model = randomize(ASTForAudioClassification(ASTConfig(**TINY, attn_implementation="eager")))
    fe = ASTFeatureExtractor(num_mel_bins=TINY["num_mel_bins"], max_length=TINY["max_length"], mean=-3.1, std=2.7)
    model.save_pretrained(folder)
    fe.save_pretrained(folder)
    return model, fe


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("ast")
    model, fe = reference(folder)
    return model, fe, convert(str(folder)).build(), folder


def test_front_end_equals_the_feature_extractor_on_a_wav_file(converted, tmp_path: Path) -> None:
    from data.audio import read_audio

    _, fe, net, _ = converted
    for seconds in (0.3, 0.7):  # padded to max_length frames, and cut to it
        path = write_wav(tmp_path / f"{seconds}.wav", seconds, 300.0)
        samples, rate = sf.read(str(path), dtype="float32")
        expected = fe(samples, sampling_rate=rate, return_tensors="pt")["input_values"]  # (1, frames, mels)
        ours = net.frontend(read_audio(path, 16000)[None])[:, 0].transpose(1, 2)
        assert ours.shape == expected.shape and (ours - expected).abs().max() <= 1e-4


def test_logits_and_maps_equal_transformers(converted) -> None:
    model, fe, net, _ = converted
    for batch in (1, 3):
        waves = torch.randn(batch, 6000) * 0.1
        feats = fe([w.numpy() for w in waves], sampling_rate=16000, return_tensors="pt")["input_values"]
        with torch.no_grad(), fused_attn(True):
            out, maps = attention_maps(net, waves)
            ref = model(feats, output_attentions=True)
        assert (out - ref.logits).abs().max() <= 1e-4
        for i, theirs in enumerate(ref.attentions):
            assert (maps[f"encoder.blocks.{i}.attn"] - theirs).abs().max() <= 1e-5


def test_converted_ast_exports_to_onnx(converted, tmp_path: Path) -> None:
    from utils.export import export_onnx, verify_onnx

    net = converted[2]
    spec = export_onnx(net, tmp_path / "audio.onnx")
    assert verify_onnx(net, tmp_path / "audio.onnx", spec) <= 1e-4


def test_predict_from_the_folder_names_its_labels_and_writes_its_page(converted, tmp_path: Path) -> None:
    folder = converted[3]
    wav = write_wav(tmp_path / "tone.wav", 0.5, 250.0)
    data = assert_predicts_from_source(folder, wav, tmp_path / "out", "audio")
    assert data["audio"].startswith("data:audio/wav;base64,") and data["image"].startswith("data:image/png")


def test_finetune_replaces_the_head_and_trains(converted, tmp_path: Path) -> None:
    from utils.checkpoint import load_checkpoint

    model, _, _, folder = converted
    data = audio_folder(tmp_path / "data", classes=3, per_class=5)
    run = tmp_path / "run"
    proc = command("train.py", "experiment=finetune_audio", f"pretrained={folder}", f"data.root={data}",
                   "data.batch_size=4", "trainer.max_epochs=1", "threads=1", "logger=csv", "model.net.freq_mask=4",
                   "model.net.time_mask=4", f"hydra.run.dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = load_checkpoint(run / "checkpoints" / "last.ckpt")
    state = ckpt["state_dict"]
    assert state["net.head.weight"].shape == (3, 32)
    layer = model.audio_spectrogram_transformer.layers[0].attention
    assert not torch.equal(state["net.encoder.blocks.0.attn.qkv.weight"][:32], layer.q_proj.weight)  # trained
    assert ckpt["zoo_config"]["data"]["clip_seconds"] == 0.48  # the source's max_length, 48 frames of 10 ms
