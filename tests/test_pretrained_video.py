"""Hugging Face VideoMAE (joint space-time blocks) and TimeSformer (divided blocks) in the zoo's VideoTransformer:
logits and per-layer maps equal transformers' with the same weights, ONNX export, predict from the folder, and a
one-epoch fine-tune on a video folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    TimesformerConfig,
    TimesformerForVideoClassification,
    VideoMAEConfig,
    VideoMAEForVideoClassification,
    VideoMAEImageProcessor,
)

from helpers.cli import command
from helpers.pretrained import assert_predicts_from_source, randomize
from models.attention import attention_maps, fused_attn
from models.pretrained import convert

TINY = dict(image_size=32, patch_size=8, num_frames=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, num_labels=3, attn_implementation="eager")
FAMILIES = {"videomae": (VideoMAEConfig, VideoMAEForVideoClassification),
            "timesformer": (TimesformerConfig, TimesformerForVideoClassification)}


def reference(family: str, folder: Path) -> torch.nn.Module:
    """A tiny model with random weights saved as the hub stores it (VideoMAE: query / value biases, no key bias)."""
    config, cls = FAMILIES[family]
    model = randomize(cls(config(**TINY)))
    if family == "videomae":
        for layer in model.videomae.encoder.layer:
            torch.nn.init.zeros_(layer.attention.attention.key.bias)
    model.save_pretrained(folder)
    VideoMAEImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    if family == "videomae":  # the hub's VideoMAE files: q_bias / v_bias, no key bias
        state = load_file(str(folder / "model.safetensors"))
        for key in [k for k in state if k.endswith(("query.bias", "key.bias", "value.bias"))]:
            bias = state.pop(key)
            if not key.endswith("key.bias"):
                state[key.replace("query.bias", "q_bias").replace("value.bias", "v_bias")] = bias
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return model


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def converted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp(request.param)
    model = reference(request.param, folder)
    return request.param, model, convert(str(folder)).build(), folder


def temporal_maps(model: torch.nn.Module) -> tuple[list[torch.Tensor], list]:
    """TimeSformer's temporal attention weights (output_attentions returns only the spatial ones): hooks on
    the input of each temporal attention's dropout, the softmax."""
    maps: list[torch.Tensor] = []
    hooks = [layer.temporal_attention.attention.attn_drop.register_forward_hook(lambda m, a, o: maps.append(a[0]))
             for layer in model.timesformer.encoder.layer]
    return maps, hooks


def test_logits_and_maps_equal_transformers(converted) -> None:
    family, model, net, _ = converted
    for batch in (1, 3):
        x = torch.randn(batch, 4, 3, 32, 32)  # HF takes (B, T, C, H, W), the zoo (B, C, T, H, W)
        time, hooks = temporal_maps(model) if family == "timesformer" else ([], [])
        with torch.no_grad(), fused_attn(True):
            out, maps = attention_maps(net, x.transpose(1, 2))
            ref = model(x, output_attentions=True)
        for h in hooks:
            h.remove()
        assert (out - ref.logits).abs().max() <= 1e-4
        space = "attn" if family == "videomae" else "attn_space"
        for i, theirs in enumerate(ref.attentions):  # VideoMAE: (B, H, T'N, T'N); TimeSformer: (B T, H, 1+N, 1+N)
            assert (maps[f"blocks.{i}.{space}"] - theirs).abs().max() <= 1e-5
        for i, theirs in enumerate(time):  # (B N, H, T, T)
            assert (maps[f"blocks.{i}.attn_time"] - theirs).abs().max() <= 1e-5


def test_converted_video_exports_to_onnx(converted, tmp_path: Path) -> None:
    from utils.export import export_onnx, verify_onnx

    net = converted[2]
    spec = export_onnx(net, tmp_path / "video.onnx")
    assert verify_onnx(net, tmp_path / "video.onnx", spec) <= 1e-4


def write_video(path: Path, frames: int, size: int = 32, seed: int = 0) -> Path:
    import av

    g = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=8)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for _ in range(frames):
            pixels = np.repeat(g.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8), 8, 0).repeat(8, 1)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        out.mux(stream.encode())
    return path


def test_predict_from_the_folder_draws_and_writes_its_page(converted, tmp_path: Path) -> None:
    from viz.explorer import unpack

    family, folder = converted[0], converted[3]
    clip = write_video(tmp_path / "clip.mp4", 6)
    data = assert_predicts_from_source(folder, clip, tmp_path / "out", "video")
    # the page draws one map per frame and patch: VideoMAE's tubelet tokens (2 frames each) spread over their
    # frames, TimeSformer's spatial rows without the class token of each frame
    F, (gh, gw) = len(data["frames"]), data["grid"]
    N = gh * gw
    assert (F, N) == (4, 16) and data["attention"] == ("joint" if family == "videomae" else "divided")
    shapes = {"rollout": [F * N, F * N], "joint": [2, 2, F * N, F * N], "time": [2, 2, N, F, F],
              "space": [2, 2, F, N, N]}
    for key in ("rollout", "joint") if family == "videomae" else ("rollout", "time", "space"):
        assert data[key]["shape"] == shapes[key], key
        assert np.allclose(unpack(data[key]).sum(-1), 1, atol=1e-3), key  # every row a distribution


def test_finetune_replaces_the_head_resizes_tables_and_trains(converted, tmp_path: Path) -> None:
    from utils.checkpoint import load_checkpoint

    family, model, _, folder = converted
    for c in range(2):
        for i in range(5):
            write_video(tmp_path / "data" / f"class{c}" / f"{i}.mp4", 5, size=40, seed=10 * c + i)
    run = tmp_path / "run"
    proc = command("train.py", "experiment=finetune_video", f"pretrained={folder}",
                   f"data.root={tmp_path / 'data'}", "data.image_size=40", "data.batch_size=4", "trainer.max_epochs=1",
                   "threads=1", "logger=csv", f"hydra.run.dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = load_checkpoint(run / "checkpoints" / "last.ckpt")["state_dict"]
    assert state["net.head.weight"].shape == (2, 32)
    if family == "timesformer":  # a learned 4 x 4 table resized to the 5 x 5 patches of 40 px
        assert state["net.pos_embed.weight"].shape == (1, 25, 32)
    proc = command("predict.py", str(run), str(tmp_path / "data" / "class0" / "0.mp4"), "--threads", "1")
    assert proc.returncode == 0 and "class" in proc.stdout, proc.stderr[-3000:]
