"""DINO's pictures of a ViT (viz/maps.py backbone_views, viz/pictures.draw_backbone): the class token's
last-layer attention per head, the smallest patch set holding 60 % of it, the patch features' principal
components as colours; a backbone without classifier head predicts; predict.py draws them for a photo."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import matplotlib
import pytest
import timm
import torch
from timm.models._hub import save_for_hf
from torch import nn

from helpers.cli import command
from helpers.predictors import classifier
from helpers.pretrained import page_data, randomize
from models.vit import VisionTransformer
from viz.explorer import page
from app import shown
from viz.maps import backbone_views, classifier_views, cls_attention, mass_mask, pca_colours
from viz.pictures import draw

PHOTO = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"  # 512 x 600, a real photo


def dino_threshold(attn: torch.Tensor, share: float) -> torch.Tensor:
    """DINO's own thresholding (visualize_attention.py): sort ascending, keep what lies above 1 - share of
    the cumulated mass. attn: (H, N), rows summing to 1."""
    val, idx = torch.sort(attn, dim=1)
    cum = torch.cumsum(val, dim=1)
    kept = cum > (1 - share)
    out = torch.zeros_like(kept)
    for h in range(attn.shape[0]):
        out[h, idx[h]] = kept[h]
    return out


def test_the_mask_is_the_smallest_patch_set_holding_the_share() -> None:
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(6, 5, 7, generator=g) ** 4  # peaked, as trained heads are
    masks = mass_mask(maps, 0.6)
    assert masks.shape == maps.shape and masks.dtype == torch.bool
    flat, kept = maps.flatten(1), masks.flatten(1)
    share = flat / flat.sum(1, keepdim=True)
    for h in range(6):
        held = float(share[h][kept[h]].sum())
        assert held >= 0.6
        smallest = share[h][kept[h]].min()
        assert held - float(smallest) < 0.6  # minimal: without its smallest patch it holds less
        assert not (share[h][~kept[h]] > smallest).any()  # the largest patches, none left out above it
    assert torch.equal(kept, dino_threshold(share, 0.6))  # the same set as DINO's code picks


def test_pca_colours_are_the_first_components_in_unit_range() -> None:
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(12, 16, generator=g) @ torch.randn(16, 16, generator=g)
    colours = pca_colours(feats, (3, 4))
    assert colours.shape == (3, 4, 3)
    assert float(colours.min()) == 0.0 and float(colours.max()) == 1.0
    assert torch.allclose(colours.flatten(0, 1).amin(0), torch.zeros(3)) and torch.allclose(
        colours.flatten(0, 1).amax(0), torch.ones(3))
    # independently: the centred features' right singular vectors, up to each component's sign
    centred = feats.double() - feats.double().mean(0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    ref = centred @ v[:3].T
    ref = (ref - ref.amin(0)) / (ref.amax(0) - ref.amin(0))
    ours = colours.flatten(0, 1).double()
    for c in range(3):
        assert torch.allclose(ours[:, c], ref[:, c], atol=1e-5) or torch.allclose(ours[:, c], 1 - ref[:, c],
                                                                                   atol=1e-5)


def test_the_class_token_row_leaves_out_registers_and_other_prefix_tokens() -> None:
    net = SimpleNamespace(num_prefix=5, cls_token=torch.zeros(1))  # class token + 4 registers
    last = torch.rand(1, 3, 5 + 6, 5 + 6).softmax(-1)
    heads = cls_attention(last, net, (2, 3))
    assert heads.shape == (3, 2, 3) and torch.equal(heads.flatten(1), last[0, :, 0, 5:])


def tiny_vit(**kwargs) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=8, in_chans=3, num_classes=3, dim=32, depth=2, num_heads=2,
                             **kwargs).eval()


def test_a_backbone_predicts_features_and_draws_dino_pictures_of_any_size(tmp_path: Path) -> None:
    net = tiny_vit()
    net.head = nn.Identity()  # a backbone: what num_classes=0 builds
    x = torch.randn(1, 3, 40, 56)  # not the table's 32 x 32: 5 x 7 patches
    p = classifier(net, []).predict(x, maps=True)
    assert p.top == [] and p.logits is None
    assert shown(p) == "a backbone without a classifier head: 32 features"  # the app's answer box
    assert torch.allclose(p.features, net(x)[0], atol=1e-5)
    assert torch.allclose(p.tokens, net.forward_features(x), atol=1e-5)
    views = backbone_views(net, x, p.maps, p.tokens)
    assert views.heads.shape == (2, 5, 7) and views.masks.shape == (2, 5, 7) and views.colours.shape == (5, 7, 3)
    last = p.maps["encoder.blocks.1.attn"]
    assert torch.equal(views.heads.flatten(1), last[0, :, 0, 1:])
    paths = draw(p, tmp_path, "photo")
    assert sorted(q.name for q in paths) == ["photo_attention.png", "photo_cls_heads.png", "photo_pca.png"]
    data = page_data(_write(tmp_path / "p.html", page(p, "photo")))
    assert data["prefix"] == 1 and data["pca"].startswith("data:image/png") and data["prediction"]["top"] == []
    assert len(data["layers"]) == 2 and data["heads"] == ["0", "1"]  # every layer and head


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def timm_folder(folder: Path, num_classes: int) -> Path:
    model = randomize(timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                                        embed_dim=32, depth=2, num_heads=2, num_classes=num_classes), 0)
    save_for_hf(model, str(folder), safe_serialization=True)
    return folder


def test_predict_draws_the_class_token_heads_and_pca_of_a_photo(tmp_path: Path) -> None:
    folder = timm_folder(tmp_path / "vit", 5)
    out, html = tmp_path / "out", tmp_path / "photo.html"
    proc = command("predict.py", str(folder), str(PHOTO), "--attention-dir", str(out), "--html", str(html),
                   "--image-size", "130x98", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{PHOTO}: ") and proc.stdout.count("%") == 5  # the top-5 classes
    assert proc.stderr == (f"note: {PHOTO}: --image-size 130x98 is no multiple of the patch (8x8): 128x96 "
                           "used; position table of 4x4 patches resized to 16x12; resized from 512x600 to 128x96\n")
    assert {q.name for q in out.iterdir()} == {"grace_hopper_attention.png", "grace_hopper_cls_heads.png",
                                               "grace_hopper_pca.png"}
    data = page_data(html)
    assert data["grid"] == [12, 16] and data["pca"].startswith("data:image/png")


def test_predict_with_a_backbone_prints_no_classes(tmp_path: Path) -> None:
    try:
        VisionTransformer(num_classes=0)
    except ValueError:
        pytest.skip("models/vit.py builds no head-less ViT yet (num_classes=0)")
    folder = timm_folder(tmp_path / "vit", 0)
    out = tmp_path / "out"
    proc = command("predict.py", str(folder), str(PHOTO), "--attention-dir", str(out), "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == f"{PHOTO}: a backbone without a classifier head: 32 features"
    assert (out / "grace_hopper_cls_heads.png").is_file() and (out / "grace_hopper_pca.png").is_file()


def test_register_tokens_are_left_out_of_the_patch_grid(tmp_path: Path) -> None:
    try:
        net = tiny_vit(num_registers=2)
    except TypeError:
        pytest.skip("models/vit.py has no register tokens yet (num_registers)")
    x = torch.randn(1, 3, 32, 48)  # 4 x 6 patches after the class token and 2 registers
    p = classifier(net).predict(x, maps=True)
    assert p.tokens.shape == (1, 3 + 24, 32)
    views = backbone_views(net, x, p.maps, p.tokens)
    assert torch.equal(views.heads.flatten(1), p.maps["encoder.blocks.1.attn"][0, :, 0, 3:])
    assert torch.allclose(views.colours, pca_colours(p.tokens[0, 3:], (4, 6)))
    assert page_data(_write(tmp_path / "p.html", page(p, "x")))["prefix"] == 3


def test_the_rollout_of_a_cls_mean_head_weighs_the_class_token_and_the_patch_mean_alike() -> None:
    """DINOv2's classifier reads the class token beside the mean of the patches: its rollout picture is what
    flows into both, half each (the flow written out here from the maps: 0.5 I + 0.5 A per layer, rows to 1)."""
    net = tiny_vit(num_registers=2, pool="cls_mean")
    x = torch.randn(1, 3, 32, 32)
    p = classifier(net, ["a", "b", "c"]).predict(x, maps=True)
    flow = torch.eye(p.maps["encoder.blocks.0.attn"].shape[-1])
    for name in ("encoder.blocks.0.attn", "encoder.blocks.1.attn"):
        a = 0.5 * torch.eye(flow.shape[0]) + 0.5 * p.maps[name][0].mean(0)
        flow = (a / a.sum(-1, keepdim=True)) @ flow
    both = flow[0, 3:] + flow[3:, 3:].mean(0)  # class token row + mean of the patch rows, over the patches
    view = classifier_views(net, x, p.logits[None], p.maps).tokens[0]
    torch.testing.assert_close(view.flatten(), both / both.sum(), atol=1e-6, rtol=0)
