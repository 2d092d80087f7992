"""Hugging Face DINOv2 checkpoints in the zoo's VisionTransformer: last hidden state, pooler output, logits and
every layer's attention map equal transformers' with the same weights, at image sizes that resize the position
table (shrunk and grown); register tokens, SwiGLU, the classifier's head, preprocessing from the processor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers.pretrained import cli, fake_hub_cache, randomize
from models.attention import AttentionRecorder, fused_attn
from models.pretrained import convert

transformers = pytest.importorskip("transformers")

# The position table is built for 56 px (4 x 4 patches of 14): 28 and 42 px shrink it, 70 px grows it, 45 x 31 px
# (not multiples of 14: the last pixels are dropped, as by the reference's convolution) makes it 3 x 2.
TINY = {"image_size": 56, "patch_size": 14, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "mlp_ratio": 2, "layerscale_value": 0.5}
SIZES = ((28, 28), (42, 42), (70, 70), (45, 31))
VARIANTS = {  # transformers class, config class, extra config
    "model": ("Dinov2Model", "Dinov2Config", {}),
    "classifier": ("Dinov2ForImageClassification", "Dinov2Config", {"num_labels": 5}),
    "swiglu": ("Dinov2Model", "Dinov2Config", {"use_swiglu_ffn": True, "mlp_ratio": 4}),
    "registers": ("Dinov2WithRegistersModel", "Dinov2WithRegistersConfig", {"num_register_tokens": 3}),
    "registers_classifier": ("Dinov2WithRegistersForImageClassification", "Dinov2WithRegistersConfig",
                             {"num_register_tokens": 2, "num_labels": 4}),
}


def reference(variant: str, folder: Path, seed: int = 0) -> torch.nn.Module:
    """A tiny transformers model with random weights (std 0.2), saved as the hub stores it; eager attention
    so that output_attentions returns its maps."""
    model_cls, config_cls, extra = VARIANTS[variant]
    config = getattr(transformers, config_cls)(**{**TINY, **extra}, attn_implementation="eager")
    model = randomize(getattr(transformers, model_cls)(config), seed)
    model.save_pretrained(str(folder))
    return model


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_outputs_and_maps_equal_transformers(variant: str, tmp_path: Path) -> None:
    ref = reference(variant, tmp_path)
    conv = convert(str(tmp_path))
    net = conv.build()
    classifier = "classifier" in variant
    base = ref.base_model if classifier else ref
    assert net.num_prefix == 1 + base.config.to_dict().get("num_register_tokens", 0)
    for size, batch in zip(SIZES, (1, 3, 2, 2)):
        x = torch.randn(batch, 3, *size)
        with torch.no_grad():
            theirs = base(x, output_attentions=True)
            logits = ref(x).logits if classifier else None
            with fused_attn(True):  # layers asked for maps run one explicit pass (output + map)
                with AttentionRecorder(net) as rec:
                    recorded = net.forward_features(x)
                tokens = net.forward_features(x)
                out = net(x)
        for ours in (tokens, recorded):
            assert (ours - theirs.last_hidden_state).abs().max() <= 1e-4
        if classifier:
            assert out.shape == logits.shape and (out - logits).abs().max() <= 1e-4
        else:
            assert (out - theirs.pooler_output).abs().max() <= 1e-4
        assert len(rec.maps) == len(theirs.attentions)
        for i, expected in enumerate(theirs.attentions):
            ours = rec.maps[f"encoder.blocks.{i}.attn"]
            assert ours.shape == expected.shape and (ours - expected).abs().max() <= 1e-5


def test_converted_dinov2_exports_to_onnx(tmp_path: Path) -> None:
    from utils.export import export_onnx, verify_onnx

    reference("registers_classifier", tmp_path / "src")
    net = convert(str(tmp_path / "src")).build()
    spec = export_onnx(net, tmp_path / "vit.onnx")
    assert verify_onnx(net, tmp_path / "vit.onnx", spec) <= 1e-4


def test_converted_config_and_preprocessing(tmp_path: Path) -> None:
    reference("swiglu", tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": {"height": 224, "width": 224}, "do_center_crop": True, "resample": 3,
        "size": {"shortest_edge": 256}, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
        "image_processor_type": "BitImageProcessor"}))
    conv = convert(str(tmp_path))
    assert conv.net["ffn"] == "swiglu" and conv.net["num_classes"] == 0 and conv.net["patch_size"] == 14
    assert conv.state["encoder.blocks.0.mlp.fc2.weight"].shape == (32, 88)  # (int(128 * 2 / 3) + 7) // 8 * 8
    pre = conv.preprocess
    assert pre["image_size"] == 224 and pre["crop_pct"] == 224 / 256 and pre["interpolation"] == "bicubic"
    assert pre["mean"] == [0.485, 0.456, 0.406] and pre["class_names"] == []


def test_defaults_build_no_dinov2_parts() -> None:
    """The options' defaults add no parameter: today's ViT keeps its state_dict keys."""
    from models.vit import VisionTransformer

    keys = set(VisionTransformer().state_dict())
    assert not any(k.endswith((".ls1.gamma", ".ls2.gamma")) or k == "reg_token" for k in keys)


@pytest.mark.parametrize("bad, message", [
    ({"num_registers": -1}, r"num_registers=-1: expected an integer >= 0"),
    ({"layer_scale": 0}, r"layer_scale=0: expected a number > 0"),
    ({"ffn": "geglu"}, r"ffn='geglu'"),
    ({"num_classes": 1}, r"num_classes=1: expected an integer >= 2"),
    ({"pool": "cls_mean", "fc_norm": True}, r"pool='cls_mean'"),
])
def test_bad_dinov2_options_are_refused_naming_the_key(bad: dict, message: str) -> None:
    from models.vit import VisionTransformer

    with pytest.raises(ValueError, match=message):
        VisionTransformer(**bad)


def test_finetune_from_a_backbone_adds_a_head_and_resizes_positions(tmp_path: Path) -> None:
    from helpers.cli import command
    from helpers.pretrained import image_folder
    from utils.checkpoint import load_checkpoint

    reference("registers", tmp_path / "src")
    folder = image_folder(tmp_path / "data", classes=3, per_class=6)
    run = tmp_path / "run"
    proc = command("train.py", "experiment=finetune_vit", f"pretrained={tmp_path / 'src'}", f"data.root={folder}",
                   "data.image_size=42", "data.batch_size=6", "trainer.max_epochs=1", "threads=1", "logger=csv",
                   f"hydra.run.dir={run}", "data.num_workers=0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = load_checkpoint(run / "checkpoints" / "last.ckpt")["state_dict"]
    assert state["net.head.weight"].shape == (3, 32)  # a fresh head: the backbone had none
    assert state["net.pos_embed.weight"].shape == (1, 9, 32)  # 3 x 3 patches at 42 px, from the source's 4 x 4
    assert state["net.reg_token"].shape == (1, 3, 32)


def test_an_hf_id_is_read_from_the_hugging_face_cache_offline(tmp_path: Path) -> None:
    """`hf:facebook/dinov2-small` as a user who downloaded it once has it: a hub cache (here holding a tiny
    model under that id), read offline; predict.py draws DINO's pictures of a backbone from it."""
    import matplotlib

    folder = tmp_path / "saved"
    reference("model", folder)
    home = tmp_path / "hf_home"
    fake_hub_cache(home, "facebook/dinov2-small", [p for p in folder.iterdir() if p.is_file()])
    photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    out = tmp_path / "out"
    proc = cli("predict.py", "hf:facebook/dinov2-small", str(photo), "--attention-dir", str(out),
               env={"HF_HOME": str(home), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == f"{photo}: a backbone without a classifier head: 32 features"
    assert {p.name for p in out.glob("*.png")} == {"grace_hopper_attention.png", "grace_hopper_cls_heads.png",
                                                   "grace_hopper_pca.png"}
    missing = cli("predict.py", "hf:facebook/dinov2-base", str(photo), env={"HF_HOME": str(home),
                                                                             "HF_HUB_OFFLINE": "1"})
    assert missing.returncode == 2 and "facebook/dinov2-base" in missing.stderr
