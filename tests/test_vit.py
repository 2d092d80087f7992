"""Blocks, embeddings and the ViT: shapes, references and resizing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer as TimmViT

from models.attention import fused_attn
from models.embeddings import PatchEmbed, PosEmbed2D
from models.vit import VisionTransformer


def test_patch_embed_is_a_linear_map_of_each_patch() -> None:
    pe = PatchEmbed(8, 4, 2, 5)
    x = torch.randn(1, 2, 8, 8)
    patches = x.unfold(2, 4, 4).unfold(3, 4, 4)  # (1, C, 2, 2, 4, 4)
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(1, 4, -1)  # row-major over the grid
    expected = patches @ pe.proj.weight.reshape(5, -1).T + pe.proj.bias
    torch.testing.assert_close(pe(x), expected, atol=1e-5, rtol=1e-5)


def test_overlapping_patches_grid() -> None:
    pe = PatchEmbed((128, 100), 16, 1, 8, stride=10)
    assert pe.grid_size == ((128 - 16) // 10 + 1, (100 - 16) // 10 + 1)
    assert pe(torch.randn(2, 1, 128, 100)).shape == (2, 12 * 9, 8)


def test_pos_embed_resize_keeps_training_grid_exact_and_interpolates_others() -> None:
    pos = PosEmbed2D((4, 4), 3)
    assert pos((4, 4)) is pos.weight
    # A table that is linear in the row index stays linear after (bicubic) resizing to a finer grid.
    with torch.no_grad():
        pos.weight.copy_(torch.arange(4.0).repeat_interleave(4)[None, :, None].expand(1, 16, 3))
    big = pos((8, 4)).reshape(8, 4, 3)[..., 0]
    assert torch.all(big[1:, 0] >= big[:-1, 0])  # monotone in rows
    assert torch.allclose(big[:, 0], big[:, 3])  # constant along columns


def test_vit_shapes_and_resolution_change() -> None:
    net = VisionTransformer(img_size=28, patch_size=4, in_chans=1, num_classes=10, dim=32, depth=2, num_heads=4)
    assert net(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert net(torch.randn(2, 1, 36, 36)).shape == (2, 10)  # 9x9 grid from a 7x7 table
    with pytest.raises(ValueError, match=r"expected input \(batch, 1, H, W\), got \(2, 3, 28, 28\)"):
        net(torch.randn(2, 3, 28, 28))
    with pytest.raises(ValueError, match="smaller than one patch"):
        net(torch.randn(2, 1, 3, 3))


def test_vit_equals_timm_vit_with_the_same_weights() -> None:
    """An independent implementation (timm) given our weights computes the same logits."""
    torch.manual_seed(0)
    ours = VisionTransformer(img_size=16, patch_size=4, in_chans=3, num_classes=5, dim=32, depth=2,
                             num_heads=4, mlp_ratio=2.0, pool="cls").eval()
    theirs = TimmViT(img_size=16, patch_size=4, in_chans=3, num_classes=5, embed_dim=32, depth=2, num_heads=4,
                     mlp_ratio=2.0, class_token=True, global_pool="token", no_embed_class=True).eval()
    sd = {
        "cls_token": ours.cls_token,
        "pos_embed": ours.pos_embed.weight,
        "patch_embed.proj.weight": ours.patch_embed.proj.weight,
        "patch_embed.proj.bias": ours.patch_embed.proj.bias,
        "norm.weight": ours.encoder.norm.weight,
        "norm.bias": ours.encoder.norm.bias,
        "head.weight": ours.head.weight,
        "head.bias": ours.head.bias,
    }
    for i, blk in enumerate(ours.encoder.blocks):
        for name, p in blk.state_dict().items():
            sd[f"blocks.{i}.{name}"] = p
    missing, unexpected = theirs.load_state_dict(sd, strict=False)
    assert not unexpected and not missing
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)
        with fused_attn(False):
            torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


def test_vit_learns_a_tiny_problem() -> None:
    """Gradients flow through every part: a few steps fit 16 random images."""
    torch.manual_seed(0)
    net = VisionTransformer(img_size=8, patch_size=4, in_chans=1, num_classes=4, dim=32, depth=2, num_heads=4)
    x, y = torch.randn(16, 1, 8, 8), torch.arange(16) % 4
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    first = F.cross_entropy(net(x), y).item()
    for _ in range(60):
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first
    assert all(p.grad is not None for p in net.parameters())


def test_conv_stem_grid_and_errors() -> None:
    from models.embeddings import ConvStem

    stem = ConvStem(28, 8, 1, 32)
    assert stem.grid_size == (4, 4)  # 28 -> 14 -> 7 -> 4 with stride-2, padding-1 convs
    assert stem(torch.randn(2, 1, 28, 28)).shape == (2, 16, 32)
    assert stem(torch.randn(2, 1, 40, 24)).shape == (2, stem.grid_for((40, 24))[0] * 3, 32)
    with pytest.raises(ValueError, match="power of 2"):
        ConvStem(28, 6, 1, 32)
    with pytest.raises(ValueError, match="stem_channels needs 3 entries"):
        ConvStem(28, 8, 1, 32, channels=[8, 16])
    net = VisionTransformer(img_size=28, patch_size=8, in_chans=1, num_classes=10, dim=32, depth=1, stem="conv")
    assert net(torch.randn(2, 1, 56, 56)).shape == (2, 10)  # 7x7 grid from the 4x4 table
    with pytest.raises(ValueError, match="stem='cnn': expected one of patch, conv"):
        VisionTransformer(stem="cnn")


def test_tta_flip_averages_the_logits_of_each_image_and_its_mirror() -> None:
    from functools import partial

    from training.classification import ClassificationModule

    torch.manual_seed(0)
    net = VisionTransformer(img_size=16, patch_size=4, in_chans=1, num_classes=3, dim=16, depth=1, num_heads=2).eval()
    x, y = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 1])
    module = ClassificationModule(net, 3, partial(torch.optim.AdamW), tta_flip=True)
    module.log = lambda *a, **k: None  # no trainer attached
    expected = F.cross_entropy((net(x) + net(torch.flip(x, dims=[3]))) / 2, y)
    with torch.no_grad():
        torch.testing.assert_close(module.validation_step((x, y), 0), expected)
        plain = ClassificationModule(net, 3, partial(torch.optim.AdamW))
        plain.log = module.log
        torch.testing.assert_close(plain.validation_step((x, y), 0), F.cross_entropy(net(x), y))
        assert not torch.allclose(expected, F.cross_entropy(net(x), y))  # the mirror does change the logits
