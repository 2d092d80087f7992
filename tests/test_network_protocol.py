"""Every zoo network says what the house needs (models/network.py): its name and modality (as its config says),
globs that find its attention layers, and an ONNX spec that exports and runs the same in onnxruntime."""

from __future__ import annotations

import importlib
import pkgutil
import warnings
from fnmatch import fnmatchcase

import pytest
import torch
from omegaconf import OmegaConf

import models
from helpers.config import ROOT
from models.attention import MultiHeadAttention
from models.audio import AudioSpectrogramTransformer
from models.network import Network
from models.sequence import SequenceClassifier
from models.text_encoder import TextEncoder
from models.translator import Translator
from models.video import VideoTransformer
from models.vit import VisionTransformer
from models.whisper import Whisper
from models.whisper_classifier import WhisperClassifier

MODALITIES = ("image", "audio", "video", "text", "tokens", "protein")

# One small instance per network (two for video: divided and joint attention name their layers apart).
SMALL = {
    "vit": lambda: VisionTransformer(img_size=16, patch_size=4, dim=16, depth=1, num_heads=2),
    "audio": lambda: AudioSpectrogramTransformer(
        n_mels=16,
        n_fft=256,
        hop_length=160,
        patch_size=[16, 3],
        patch_stride=[16, 2],
        dim=16,
        depth=1,
        num_heads=2,
    ),
    "video": lambda: VideoTransformer(
        img_size=16, num_frames=2, patch_size=8, dim=16, depth=1, num_heads=2
    ),
    "video_joint": lambda: VideoTransformer(
        img_size=16, num_frames=2, patch_size=8, dim=16, depth=1, num_heads=2, attention="joint"
    ),
    "translator": lambda: Translator(
        20, dim=16, encoder_depth=1, decoder_depth=1, num_heads=2, max_len=16
    ),
    "sequence": lambda: SequenceClassifier(
        12, 3, 40, dim=16, depth=2, num_heads=2, attn_window=4, attn_global=1
    ),
    "text_encoder": lambda: TextEncoder(30, dim=16, depth=2, num_heads=2, max_len=32),
    "whisper": lambda: Whisper(
        vocab_size=20, n_mels=8, dim=16, encoder_depth=1, decoder_depth=1, num_heads=2, audio_len=4,
        max_len=8, bos_id=1, eos_id=2, pad_id=2
    ),
    "whisper_classifier": lambda: WhisperClassifier(
        num_classes=3, n_mels=8, dim=16, encoder_depth=1, num_heads=2, audio_len=4
    ),
}


def network_classes() -> list[type[Network]]:
    """Every Network subclass defined in the modules of models/ (its pretrained converters aside)."""
    for info in pkgutil.iter_modules(models.__path__):
        if info.name != "pretrained":
            importlib.import_module(f"models.{info.name}")
    found, todo = [], [Network]
    while todo:
        for sub in todo.pop().__subclasses__():
            found.append(sub)
            todo.append(sub)
    return sorted(set(found), key=lambda c: c.__name__)


def test_every_network_declares_name_modality_and_attention_layers() -> None:
    classes = network_classes()
    assert {c.__name__ for c in classes} >= {
        "VisionTransformer",
        "AudioSpectrogramTransformer",
        "VideoTransformer",
        "Translator",
        "SequenceClassifier",
        "TextEncoder",
        "ProteinLM",
    }
    for cls in classes:
        assert isinstance(cls.name, str) and cls.name, cls
        assert cls.modality in MODALITIES, cls
        assert cls.attention_layers and all(isinstance(g, str) for g in cls.attention_layers), cls
        config = ROOT / "configs" / "model" / f"{cls.name}.yaml"
        if config.exists():  # the config group of that name builds this class
            yaml = OmegaConf.load(config)
            assert yaml.net._target_ == f"{cls.__module__}.{cls.__name__}"
            assert "modality" not in yaml, cls  # the class says it


@pytest.mark.parametrize("key", list(SMALL))
def test_attention_layer_globs_find_the_attention_modules(key: str) -> None:
    net = SMALL[key]()
    attention = {n for n, m in net.named_modules() if isinstance(m, MultiHeadAttention)}
    matched = {
        n for n, _ in net.named_modules() if any(fnmatchcase(n, g) for g in net.attention_layers)
    }
    assert matched and matched <= attention, (matched, attention)
    name = key.split("_joint")[0]
    assert net.name == name


def _export_and_run(net: Network, tmp_path, inputs: list[tuple[torch.Tensor, ...]]) -> None:
    """Export the net's spec with torch.onnx (dynamo) and compare onnxruntime with PyTorch on `inputs`."""
    import onnxruntime as ort

    spec = net.eval().onnx_spec()
    path = tmp_path / f"{net.name}.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*will not be used, since it shares the same shape constraints"
        )
        program = torch.onnx.export(
            spec.module,
            spec.example,
            dynamo=True,
            input_names=spec.input_names,
            output_names=["out"],
            dynamic_shapes=spec.dynamic_shapes,
            verbose=False,
        )
    program.save(str(path))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    for x in [spec.example, *inputs]:
        with torch.no_grad():
            ref = spec.module(*x)
        out = session.run(["out"], {n: t.numpy() for n, t in zip(spec.input_names, x)})[0]
        assert out.shape == tuple(ref.shape)
        torch.testing.assert_close(torch.from_numpy(out), ref, atol=1e-4, rtol=1e-4)


def test_sequence_classifier_exports_to_onnx_with_dynamic_batch_and_length(tmp_path) -> None:
    torch.manual_seed(0)
    net = SMALL["sequence"]()  # max_len 40 > 3 x window 4: the blocked window path, lengths 13..40
    spec = net.onnx_spec()
    assert spec.dynamic == {"ids": ["batch", "length"]}
    ids = torch.randint(1, 12, (3, 20))
    ids[0, 15:] = 0  # padded
    with torch.no_grad():  # the wrapper's forced mask gives the network's own answer
        torch.testing.assert_close(spec.module(ids), net(ids))
        torch.testing.assert_close(spec.module(ids[1:]), net(ids[1:]))  # no padding: no mask there
    _export_and_run(net, tmp_path, [(ids,), (torch.randint(1, 12, (1, 40)),)])


def test_text_encoder_exports_to_onnx_with_dynamic_batch_and_length(tmp_path) -> None:
    torch.manual_seed(0)
    net = SMALL["text_encoder"]()
    spec = net.onnx_spec()
    assert spec.input_names == ["input_ids", "attention_mask"]
    ids = torch.randint(1, 30, (3, 11))
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[2, 6:] = 0
    ids = ids.masked_fill(mask.eq(0), 0)
    with torch.no_grad():  # attention_mask 1 = token is the network's pad mask inverted
        torch.testing.assert_close(spec.module(ids, mask), net(ids, mask.eq(0)))
    _export_and_run(net, tmp_path, [(ids, mask), (ids[:1, :1], mask[:1, :1])])
