"""A clip classifier on Whisper's encoder (models/whisper_classifier.py), started from a Whisper source through
`python train.py experiment=finetune_whisper_classifier pretrained=<folder>`: the encoder is the source's (checked
against transformers' own encoder), the head the data's, and predict.py draws what it attended to."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from helpers.cli import command
from helpers.fsdd_tiny import write_tiny_fsdd
from helpers.whisper_tiny import make_tiny_whisper
from utils.restore import restore


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """One epoch at learning rate 0: the run's encoder is still the source's, the head is the new one."""
    tmp = tmp_path_factory.mktemp("whisper_classifier")
    folder, root, out = make_tiny_whisper(tmp / "whisper"), write_tiny_fsdd(tmp / "recordings"), tmp / "run"
    # 0.32 s = 32 frames: the tiny model's 16 encoder positions
    command("train.py", "experiment=finetune_whisper_classifier", f"pretrained={folder}", "data=fsdd",
            f"data.root={root}", "data.clip_seconds=0.32", "trainer.max_epochs=1", "model.optimizer.lr=0",
            "threads=1", f"hydra.run.dir={out}", check=True)
    return folder, root, out


def test_the_run_classifies_with_the_sources_encoder(run: tuple[Path, Path, Path]) -> None:
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    folder, root, out = run
    restored = restore(out / "checkpoints" / "best.ckpt", data=True)
    net = restored.module.net.eval()
    assert type(net).__name__ == "WhisperClassifier" and net.head.out_features == 10
    assert not any(k.startswith(("decoder.", "tgt_embed")) for k in net.state_dict())  # the decoder is left
    ref = WhisperForConditionalGeneration.from_pretrained(str(folder), attn_implementation="eager").eval()
    extractor = WhisperFeatureExtractor(feature_size=80)
    restored.datamodule.setup("test")
    wave, _ = next(iter(restored.datamodule.split_dataloader("test")))
    with torch.no_grad():
        mel = extractor(list(wave.numpy()), sampling_rate=16000, return_tensors="pt").input_features[..., :32]
        expected = ref.model.encoder(mel).last_hidden_state.mean(1)
        assert (net.pooled_features(wave) - expected).abs().max() < 1e-4
        # The new head starts at zero (zero logits, whatever the encoder gives): random weights make the
        # comparison of the whole forward with head(pooled reference) mean something.
        torch.nn.init.normal_(net.head.weight, std=0.5)
        torch.nn.init.normal_(net.head.bias, std=0.5)
        logits = net(wave)
        assert logits.abs().max() > 0.1
    assert logits.shape == (len(wave), 10)
    assert (logits - net.head(expected)).abs().max() < 1e-4
    metrics = json.loads((out / "metrics.json").read_text())
    assert "test/acc" in metrics


def test_predict_draws_the_classifiers_attention_over_time(run: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, root, out = run
    wav = root / "3_lucas_0.wav"
    proc = command("predict.py", str(out), str(wav), "--attention-dir", str(tmp_path), "--html",
                   str(tmp_path / "page.html"), check=True)
    assert f"{wav}: " in proc.stdout and (tmp_path / "3_lucas_0_attention.png").stat().st_size > 0
    page = (tmp_path / "page.html").read_text()
    # The explorer's frequency axis is Whisper's: Slaney's mel scale over 0 - 8 kHz, linear below 1 kHz (15 mel)
    # and logarithmic above (27 mel per factor 6.4); HTK's scale would put 614 Hz a quarter of the way up.
    top = 15 + 27 * math.log(8000 / 1000) / math.log(6.4)
    hz = [m * 200 / 3 if m < 15 else 1000 * 6.4 ** ((m - 15) / 27) for m in (top * k / 4 for k in range(5))]
    ticks = ",".join(f'[{k / 4},"{f:.0f}"]' for k, f in enumerate(hz))
    assert f'"ticks":[{ticks}]' in page, ticks


def test_the_run_exports_and_onnxruntime_reads_any_clip_length(run: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """`python export.py RUN` writes the classifier; onnxruntime gives its logits for any clip length, lengths that
    are no multiple of the hop too (the frame count ceil(samples / hop) is in the graph, and ONNX's integer
    division truncates where Python's floors)."""
    import onnxruntime as ort

    from utils.export import export_checkpoint, export_onnx

    _, _, out = run
    result = export_checkpoint(out / "checkpoints" / "best.ckpt", tmp_path, "onnx")
    assert result["model"] == "whisper_classifier" and result["onnx_max_abs_diff"] < 1e-4
    net = restore(out / "checkpoints" / "best.ckpt", data=False).module.net.eval()
    with torch.no_grad():  # the run's head learned nothing at lr 0 (it starts at 0): give it something to say
        torch.nn.init.normal_(net.head.weight)
    export_onnx(net, tmp_path / "random_head.onnx")
    session = ort.InferenceSession(str(tmp_path / "random_head.onnx"))
    torch.manual_seed(0)
    for samples in (5120, 4001, 1999):  # up to the tiny encoder's 16 positions (32 frames)
        wave = torch.randn(3, samples)
        with torch.no_grad():
            expected = net(wave)
        assert expected.abs().max() > 0.1
        assert abs(session.run(None, {"waveform": wave.numpy()})[0] - expected.numpy()).max() < 1e-4
