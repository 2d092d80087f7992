"""Export: ONNX graphs run in onnxruntime give PyTorch's outputs at other batch sizes and lengths;
safetensors files rebuild bit-identical networks without pickle; export.py works on a trained run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from helpers.cli import run
from helpers.config import compose_config
from models.tokenizer import PAD_ID
from utils.export import (
    build_network,
    export_checkpoint,
    export_onnx,
    export_safetensors,
    load_network,
    load_safetensors,
    onnx_session,
    run_onnx,
)

ATOL = 1e-4
TINY: dict[str, dict[str, Any]] = {
    "vit": dict(_target_="models.vit.VisionTransformer", img_size=16, patch_size=4, in_chans=1, num_classes=5,
                dim=32, depth=1, num_heads=2, pool="cls", stem="conv"),
    # GQA (one key/value head) and tied embeddings: the two things export could get wrong here.
    "translator": dict(_target_="models.translator.Translator", vocab_size=40, dim=32, encoder_depth=1,
                       decoder_depth=1, num_heads=2, num_kv_heads=1, mlp_ratio=2.0, max_len=16, drop=0.0,
                       tie_embeddings=True),
    "audio": dict(_target_="models.audio.AudioSpectrogramTransformer", sample_rate=8000, clip_seconds=0.5,
                  num_classes=4, n_mels=16, n_fft=200, hop_length=80, freq_mask=2, time_mask=2,
                  patch_size=[16, 3], patch_stride=[16, 2], dim=32, depth=1, num_heads=2),
    "video": dict(_target_="models.video.VideoTransformer", img_size=16, num_frames=4, patch_size=4, in_chans=1,
                  num_classes=4, dim=32, depth=1, num_heads=2),
    "sequence": dict(_target_="models.sequence.SequenceClassifier", vocab_size=20, num_classes=3, max_len=24,
                     dim=32, depth=1, num_heads=2),
    "text_encoder": dict(_target_="models.text_encoder.TextEncoder", vocab_size=30, dim=32, depth=1, num_heads=2,
                         max_len=16),
    "protein": dict(_target_="models.protein.ProteinLM", dim=32, depth=1, num_heads=2, ffn_dim=64, max_len=24),
}


def _ids(batch: int, length: int, pad_last: int = 0) -> torch.Tensor:
    ids = torch.randint(4, TINY["translator"]["vocab_size"], (batch, length))
    if pad_last:
        ids[0, -pad_last:] = PAD_ID  # one padded row beside unpadded ones
    return ids


def _protein(batch: int, length: int, pad_last: int = 0) -> torch.Tensor:
    """<cls> residues <eos> ids (ESM's alphabet); the first row's last `pad_last` tokens padding (<eos> before)."""
    ids = torch.randint(4, 24, (batch, length))
    ids[:, 0], ids[:, -1] = 0, 2
    if pad_last:
        ids[0, -pad_last:] = 1
        ids[0, -pad_last - 1] = 2
    return ids


# Two batch sizes, and two lengths on every dynamic length axis (none equal to the export's example).
INPUTS = {
    "vit": lambda: [(torch.randn(1, 1, 16, 16),), (torch.randn(5, 1, 16, 16),)],
    "translator": lambda: [(_ids(1, 11), _ids(1, 3)), (_ids(4, 5, pad_last=2), _ids(4, 14, pad_last=3))],
    "audio": lambda: [(torch.randn(1, 4000),), (torch.randn(3, 2500),)],  # the full 0.5 s clip and 0.31 s
    "video": lambda: [(torch.randn(1, 1, 4, 16, 16),), (torch.randn(6, 1, 4, 16, 16),)],
    "sequence": lambda: [(torch.randint(1, 20, (1, 7)),), (_padded(3, 19, 20, 0),)],
    "text_encoder": lambda: [(torch.randint(1, 30, (1, 5)), torch.ones(1, 5, dtype=torch.long)),
                             (_padded(3, 12, 30, 0), (_padded(3, 12, 30, 0) != 0).long())],
    "protein": lambda: [(_protein(1, 7),), (_protein(3, 19, pad_last=5),)],
}
DYNAMIC = {"vit": [["batch", 1, 16, 16]], "translator": [["batch", "src_len"], ["batch", "tgt_len"]],
           "audio": [["batch", "samples"]], "video": [["batch", 1, 4, 16, 16]], "sequence": [["batch", "length"]],
           "text_encoder": [["batch", "length"], ["batch", "length"]], "protein": [["batch", "length"]]}
# What PyTorch computes on the graph's inputs: the network itself, but for the text encoder, whose graph takes
# the tokenizers' attention mask (1 = token) where the network takes a padding mask (True = pad).
REFERENCE = {"text_encoder": lambda net, ids, mask: net(ids, mask.eq(0))}


def _padded(batch: int, length: int, vocab: int, pad: int) -> torch.Tensor:
    """Ids of `batch` rows whose row i ends in i padding tokens (seeded by the caller)."""
    gen = torch.Generator().manual_seed(batch * 100 + length)
    ids = torch.randint(pad + 1, vocab, (batch, length), generator=gen)
    for i in range(batch):
        if i:
            ids[i, -i:] = pad
    return ids


def tiny_network(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    net = build_network(TINY[name])
    with torch.no_grad():  # move every weight and buffer off its init (zero biases, unit BatchNorm stats)
        for t in net.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.rand_like(t) * 0.1)
    return net.eval()


@pytest.fixture(scope="module", params=sorted(TINY))
def exported(request, tmp_path_factory) -> tuple[str, torch.nn.Module, Path, list[str]]:
    torch.set_num_threads(1)
    name = request.param
    net = tiny_network(name)
    path = tmp_path_factory.mktemp("onnx") / f"{name}.onnx"
    spec = export_onnx(net, path, config=TINY[name])
    return name, net, path, spec.input_names


def test_onnx_matches_pytorch_at_other_batch_sizes_and_lengths(exported) -> None:
    name, net, path, input_names = exported
    session = onnx_session(path, threads=1)
    torch.manual_seed(1)
    for inputs in INPUTS[name]():
        with torch.no_grad():
            ref = REFERENCE.get(name, lambda net, *x: net(*x))(net, *inputs)
        out = run_onnx(session, input_names, inputs)
        assert out.shape == ref.shape
        diff = float((out - ref).abs().max())
        print(f"{name} {[tuple(x.shape) for x in inputs]}: max |onnx - torch| = {diff:.2e}")
        assert diff < ATOL, (name, diff)


def test_onnx_declares_its_dynamic_axes_and_metadata(exported) -> None:
    name, _, path, _ = exported
    model = onnx.load(str(path))
    dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input]
    assert dims == DYNAMIC[name]
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["zoo_config"]) == TINY[name] and props["zoo_model"] == name


@pytest.mark.parametrize("name", sorted(TINY))
def test_safetensors_round_trip_is_bit_identical(name: str, tmp_path: Path) -> None:
    net = tiny_network(name)
    path = export_safetensors(net, tmp_path / f"{name}.safetensors", TINY[name])
    loaded = load_safetensors(path)
    assert type(loaded) is type(net) and not loaded.training
    torch.manual_seed(2)
    for inputs in INPUTS[name]():
        with torch.no_grad():
            assert torch.equal(loaded(*inputs), net(*inputs))
    for key, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_tied_embeddings_are_stored_once_and_tied_again(tmp_path: Path) -> None:
    net = tiny_network("translator")
    path = export_safetensors(net, tmp_path / "t.safetensors", TINY["translator"])
    with safe_open(str(path), framework="pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert "src_embed.weight" in keys and not keys & {"tgt_embed.weight", "head.weight"}
    assert json.loads(meta["zoo_tied"]) == {"tgt_embed.weight": "src_embed.weight", "head.weight": "src_embed.weight"}
    loaded = load_safetensors(path)
    assert loaded.head.weight is loaded.src_embed.weight is loaded.tgt_embed.weight
    assert torch.equal(loaded.head.weight, net.head.weight)
    # A config that no longer ties them cannot silently leave head.weight at its random init.
    untied = {**TINY["translator"], "tie_embeddings": False}
    stored = {k: v.contiguous() for k, v in net.state_dict().items() if k not in ("tgt_embed.weight", "head.weight")}
    save_file(stored, str(tmp_path / "u.safetensors"),
              metadata={"zoo_config": json.dumps(untied), "zoo_tied": meta["zoo_tied"]})
    with pytest.raises(ValueError, match="does not tie them"):
        load_safetensors(tmp_path / "u.safetensors")


def test_safetensors_loader_refuses_foreign_targets_and_junk(tmp_path: Path) -> None:
    evil = tmp_path / "evil.safetensors"
    save_file({"x": torch.zeros(1)}, str(evil), metadata={"zoo_config": json.dumps({"_target_": "os.system",
                                                                                     "command": "touch /tmp/pwn"})})
    with pytest.raises(ValueError, match="unknown network _target_ 'os.system'"):
        load_safetensors(evil)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not safetensors")
    for target in ("models.attention.MultiHeadAttention", "models.checks.refuse", "models.network.Network"):
        inside = tmp_path / "inside.safetensors"  # in the zoo's package, but not a network
        save_file({"x": torch.zeros(1)}, str(inside), metadata={"zoo_config": json.dumps({"_target_": target})})
        with pytest.raises(ValueError, match="unknown network _target_"):
            load_safetensors(inside)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_safetensors(junk)
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(1)}, str(plain))
    with pytest.raises(ValueError, match="no 'zoo_config' metadata"):
        load_safetensors(plain)


def test_bad_format_and_bad_checkpoint_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown format 'tflite'; expected one of onnx, safetensors, both"):
        export_checkpoint(tmp_path / "any.ckpt", tmp_path, "tflite")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_network(junk)


def test_export_config_composes(tmp_path: Path) -> None:
    cfg = compose_config("export", ["ckpt_path=x.ckpt", "format=onnx"], tmp_path)
    assert cfg.ckpt_path == "x.ckpt" and cfg.format == "onnx" and cfg.out is None and cfg.atol == pytest.approx(ATOL)


def test_cli_exports_a_trained_run(tiny_runs, tmp_path: Path) -> None:
    # a real (tiny) epoch, shared with test_maps / test_app: fast_dev_run writes no checkpoint
    folder, out = tiny_runs["vit"], tmp_path / "export"
    proc = run("export.py", f"ckpt_path={folder}", "format=both", f"out={out}", f"hydra.run.dir={tmp_path / 'e'}")
    assert f"onnx: {out / 'vit.onnx'}" in proc.stdout and "onnx_max_abs_diff" in proc.stdout
    net, config, _ = load_network(folder)  # what the checkpoint holds, read the ordinary way
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        ref = net(x)
        assert torch.equal(load_safetensors(out / "vit.safetensors")(x), ref)
    onnx_out = run_onnx(onnx_session(out / "vit.onnx", threads=1), ["images"], (x,))
    np.testing.assert_allclose(onnx_out.numpy(), ref.numpy(), atol=ATOL, rtol=0)
    assert config["dim"] == 32 and config["_target_"] == "models.vit.VisionTransformer"


@pytest.mark.parametrize("family", ["vit", "audio", "video", "translator", "sequence"])
def test_a_run_of_every_model_config_exports_and_checks_in_onnxruntime(family: str, tmp_path: Path) -> None:
    # One small run per configs/model/*.yaml (tests/data/old_checkpoints, trained by train.py).
    ckpt = Path(__file__).resolve().parent / "data" / "old_checkpoints" / f"{family}.ckpt"
    torch.set_num_threads(1)
    result = export_checkpoint(ckpt, tmp_path, "both")
    assert result["model"] == family and result["onnx_max_abs_diff"] < ATOL
    assert load_safetensors(result["safetensors"]) is not None
