"""Vision Transformer: patch embedding -> [class token] + 2-D positions -> encoder -> head."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from timm.layers import trunc_normal_

from models.embeddings import ConvStem, PatchEmbed, PosEmbed2D
from models.layers import Encoder


class VisionTransformer(nn.Module):
    """ViT (Dosovitskiy et al. 2021) built only from the zoo's shared parts.

    Args mirror configs/model/vit.yaml `net:`. `pool` is "cls" (class token) or "mean" (average
    of patch tokens). `stem` is "patch" (one linear map per patch, the original ViT) or "conv"
    (stride-2 convolutions with the same total stride, ViT_C of Xiao et al. 2021).
    Inputs of another resolution are accepted: the position table is resized. `attn_window` / `attn_global`
    make the encoder's self-attention a sliding window over the patches in raster order, with global tokens.
    """

    def __init__(
        self,
        img_size: int = 28,
        patch_size: int = 4,
        in_chans: int = 1,
        num_classes: int = 10,
        dim: int = 128,
        depth: int = 6,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        num_kv_heads: int | None = None,
        qkv_bias: bool = True,
        pool: str = "cls",
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        attn_window: int | None = None,
        attn_global: int = 0,
        patch_stride: int | None = None,
        stem: str = "patch",
        stem_channels: list[int] | None = None,
    ) -> None:
        super().__init__()
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', got {pool!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.pool = pool
        if stem == "patch":
            self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, dim, stride=patch_stride)
        elif stem == "conv":
            self.patch_embed = ConvStem(img_size, patch_size, in_chans, dim, stem_channels)
        else:
            raise ValueError(f"stem must be 'patch' or 'conv', got {stem!r}")
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if pool == "cls" else None
        self.pos_embed = PosEmbed2D(self.patch_embed.grid_size, dim)
        self.pos_drop = nn.Dropout(drop)
        self.encoder = Encoder(dim, depth, num_heads, mlp_ratio, num_kv_heads, qkv_bias, drop, attn_drop, drop_path,
                               attn_window, attn_global)
        self.head = nn.Linear(dim, num_classes)
        self.apply(self._init_weights)
        if self.cls_token is not None:
            trunc_normal_(self.cls_token, std=0.02)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "pos_embed.weight"}

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, 1 + gh*gw or gh*gw, dim) encoded tokens."""
        grid = self.patch_embed.grid_for(tuple(x.shape[-2:]))
        x = self.patch_embed(x)  # (B, gh*gw, dim)
        x = x + self.pos_embed(grid)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.encoder(self.pos_drop(x))

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.forward_features(x)
        pooled = tokens[:, 0] if self.cls_token is not None else tokens.mean(dim=1)
        return self.head(pooled)  # (B, num_classes)
