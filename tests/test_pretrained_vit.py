"""timm ViT / DeiT checkpoints in the zoo's VisionTransformer: logits and per-layer maps equal timm's with the
same weights, ONNX export, predict straight from a source, fine-tuning on a folder, and the offline error."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from timm.models._hub import save_for_hf

from helpers.cli import command
from helpers.pretrained import assert_predicts_from_source, cli, image_folder, randomize
from models.attention import attention_maps, fused_attn
from models.pretrained import convert

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5)
VARIANTS = {  # timm architecture and arguments: every pooling / token layout the converter maps
    "cls": ("vit_tiny_patch16_224", {}),
    "avg_fc_norm": ("vit_tiny_patch16_224", {"global_pool": "avg", "fc_norm": True}),
    "no_class_token": ("vit_tiny_patch16_224", {"class_token": False, "global_pool": "avg"}),
    "no_embed_class": ("vit_tiny_patch16_224", {"no_embed_class": True}),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", {}),
}


def reference(variant: str, folder: Path, seed: int = 0) -> torch.nn.Module:
    """A tiny timm model with random (not-small) weights, saved as the hub stores it (config.json + safetensors)."""
    arch, kwargs = VARIANTS[variant]
    model = randomize(timm.create_model(arch, pretrained=False, **TINY, **kwargs), seed)
    save_for_hf(model, str(folder), safe_serialization=True)
    return model


def timm_maps(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """timm's attention weights per layer, from its explicit (non-fused) path: the input of attn_drop."""
    maps: list[torch.Tensor] = []
    hooks = []
    for block in model.blocks:
        block.attn.fused_attn = False
        hooks.append(block.attn.attn_drop.register_forward_hook(lambda m, args, out: maps.append(args[0])))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return maps


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_logits_and_maps_equal_timm(variant: str, tmp_path: Path) -> None:
    ref = reference(variant, tmp_path)
    conv = convert(str(tmp_path))
    net = conv.build()
    assert conv.net["dist_token"] == (variant == "deit_distilled")
    for batch in (1, 3):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad(), fused_attn(True):  # layers asked for maps run one explicit pass (output + map)
            out, maps = attention_maps(net, x)
            expected = ref(x)
        assert (out - expected).abs().max() <= 1e-4
        theirs = timm_maps(ref, x)
        ours = [maps[f"encoder.blocks.{i}.attn"] for i in range(len(theirs))]
        for a, b in zip(ours, theirs):
            assert a.shape == b.shape and (a - b).abs().max() <= 1e-5


def test_converted_vit_exports_to_onnx(tmp_path: Path) -> None:
    from utils.export import export_onnx, verify_onnx

    reference("deit_distilled", tmp_path / "src")
    net = convert(str(tmp_path / "src")).build()
    spec = export_onnx(net, tmp_path / "vit.onnx")
    assert verify_onnx(net, tmp_path / "vit.onnx", spec) <= 1e-4


def test_preprocessing_travels_with_the_weights(tmp_path: Path) -> None:
    reference("cls", tmp_path)
    pre = convert(str(tmp_path)).preprocess
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY)
    assert pre["image_size"] == 32 and pre["mean"] == list(model.pretrained_cfg["mean"])
    assert pre["interpolation"] == model.pretrained_cfg["interpolation"] and pre["crop_pct"] == model.pretrained_cfg["crop_pct"]


def test_predict_runs_a_source_directly_draws_and_writes_its_page(tmp_path: Path) -> None:
    reference("cls", tmp_path / "src")
    image = next(image_folder(tmp_path / "images").rglob("*.png"))
    data = assert_predicts_from_source(tmp_path / "src", image, tmp_path / "out", "image", label="class 0")
    assert data["grid"] == [4, 4] and data["cls"] and data["image"].startswith("data:image/png;base64,")
    assert data["maps"]["shape"] == [2, 2, 17, 17]  # layers, heads, class token + 4 x 4 patches


def test_uncached_source_exits_2_naming_it_and_the_cache(tmp_path: Path) -> None:
    image = next(image_folder(tmp_path / "images", per_class=1).rglob("*.png"))
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = cli("predict.py", "timm:vit_tiny_patch16_224.augreg_in21k_ft_in1k", str(image), env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k" in proc.stderr and str(tmp_path / "hf") in proc.stderr
    assert "huggingface-cli download" in proc.stderr


def test_finetune_replaces_the_head_resizes_positions_and_trains(tmp_path: Path) -> None:
    from utils.checkpoint import load_checkpoint

    ref = reference("cls", tmp_path / "src")
    folder = image_folder(tmp_path / "data", classes=3, per_class=8)
    run = tmp_path / "run"
    proc = command("train.py", "experiment=finetune_vit", f"pretrained={tmp_path / 'src'}",
                   f"data.root={folder}", "data.image_size=48", "data.batch_size=8", "trainer.max_epochs=1",
                   "threads=1", "logger=csv", f"hydra.run.dir={run}", "data.num_workers=0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = load_checkpoint(run / "checkpoints" / "last.ckpt")
    state = ckpt["state_dict"]
    assert state["net.head.weight"].shape == (3, 32)  # the folder's classes, not the source's 5
    assert state["net.pos_embed.weight"].shape == (1, 36, 32)  # 6 x 6 patches at 48 px, from the source's 4 x 4
    assert not torch.equal(state["net.encoder.blocks.0.attn.qkv.weight"], ref.blocks[0].attn.qkv.weight)  # trained
    assert ckpt["zoo_config"]["preprocess"]["mean"] == list(ref.pretrained_cfg["mean"])
    assert ckpt["zoo_config"]["data"]["mean"] == list(ref.pretrained_cfg["mean"])  # the folder normalised as the source
    image = next(folder.rglob("*.png"))
    proc = command("predict.py", str(run), str(image), "--threads", "1")
    assert proc.returncode == 0 and "class" in proc.stdout, proc.stderr[-3000:]
    proc = command("evaluate.py", f"ckpt_path={run}", "threads=1", f"hydra.run.dir={tmp_path / 'eval'}")
    assert proc.returncode == 0 and "test/acc" in proc.stdout, proc.stderr[-3000:]
    proc = command("export.py", f"ckpt_path={run}", "format=onnx", "threads=1", f"out={tmp_path / 'export'}")
    assert proc.returncode == 0 and (tmp_path / "export" / "vit.onnx").is_file(), proc.stderr[-3000:]
    import json

    import onnx

    props = {p.key: p.value for p in onnx.load(str(tmp_path / "export" / "vit.onnx")).metadata_props}
    assert json.loads(props["zoo_preprocess"])["std"] == list(ref.pretrained_cfg["std"])  # travels with the file


def test_finetune_experiment_without_a_source_says_what_is_missing(compose_train) -> None:
    from utils.build import setup_runtime
    from utils.errors import UserError

    cfg = compose_train("experiment=finetune_vit", "data.root=/tmp")
    with pytest.raises(UserError, match=r"data.image_size is null.*pretrained=timm:"):
        setup_runtime(cfg)
