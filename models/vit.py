"""Vision Transformer: patch embedding -> [class token] + 2-D positions -> encoder -> head."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from timm.layers import trunc_normal_

from models.embeddings import ConvStem, PatchEmbed, PosEmbed2D, prepend_tokens
from models.layers import Activation, Encoder, LayerNorm


class VisionTransformer(nn.Module):
    """ViT (Dosovitskiy et al. 2021) built only from the zoo's shared parts.

    Args mirror configs/model/vit.yaml `net:`. `pool` is "cls" (class token) or "mean" (average
    of patch tokens). `stem` is "patch" (one linear map per patch, the original ViT) or "conv"
    (stride-2 convolutions with the same total stride, ViT_C of Xiao et al. 2021).
    Inputs of another resolution are accepted: the position table is resized. `attn_window` / `attn_global`
    make the encoder's self-attention a sliding window over the patches in raster order, with global tokens.

    Options for pretrained families (timm ViT / DeiT; the defaults keep the zoo's own ViT as it was):
    `class_token` (None: with pool="cls") adds a class token apart from the pooling (timm's class token
    with average pooling); `dist_token` a DeiT distillation token with its own head, the two heads averaged;
    `token_pos` learned positions for those prefix tokens (timm's default; its `no_embed_class` has none);
    `fc_norm` a LayerNorm after pooling instead of the encoder's final one; `norm_eps`, `act` as in layers.py.
    """

    name = "vit"  # the config group (configs/model/) and the name of exported files
    modality = "image"  # the kind of input it reads
    attention_layers = ("encoder.blocks.*.attn",)  # what the explorer and the pictures show

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
        class_token: bool | None = None,
        dist_token: bool = False,
        token_pos: bool = False,
        fc_norm: bool = False,
        norm_eps: float = 1e-6,
        act: Activation = "gelu",
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
        class_token = pool == "cls" if class_token is None else class_token
        if pool == "cls" and not class_token:
            raise ValueError("pool='cls' needs a class token (class_token=false goes with pool='mean')")
        if dist_token and not class_token:
            raise ValueError("dist_token (DeiT) needs a class token beside it")
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if class_token else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim)) if dist_token else None
        self.num_prefix = int(class_token) + int(dist_token)  # tokens before the patches
        self.prefix_pos = nn.Parameter(torch.zeros(1, self.num_prefix, dim)) if token_pos and self.num_prefix else None
        self.pos_embed = PosEmbed2D(self.patch_embed.grid_size, dim)
        self.pos_drop = nn.Dropout(drop)
        self.encoder = Encoder(dim, depth, num_heads, mlp_ratio, num_kv_heads, qkv_bias, drop, attn_drop, drop_path,
                               attn_window, attn_global, norm_eps=norm_eps, act=act, final_norm=not fc_norm)
        self.fc_norm = LayerNorm(dim, norm_eps) if fc_norm else nn.Identity()
        self.head = nn.Linear(dim, num_classes)
        self.head_dist = nn.Linear(dim, num_classes) if dist_token else None
        self.apply(self._init_weights)
        for token in (self.cls_token, self.dist_token, self.prefix_pos):
            if token is not None:
                trunc_normal_(token, std=0.02)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "dist_token", "prefix_pos", "pos_embed.weight"}

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, num_prefix + gh*gw, dim) encoded tokens (class [, distillation] token first)."""
        grid = self.patch_embed.grid_for(tuple(x.shape[-2:]))
        x = self.patch_embed(x)  # (B, gh*gw, dim)
        x = x + self.pos_embed(grid)
        x = prepend_tokens(x, [self.cls_token, self.dist_token], self.prefix_pos)
        return self.encoder(self.pos_drop(x))

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.forward_features(x)
        if self.pool == "cls":
            pooled = self.fc_norm(tokens[:, 0])
        else:
            pooled = self.fc_norm(tokens[:, self.num_prefix:].mean(dim=1))
        if self.head_dist is not None:  # DeiT: class and distillation heads averaged (timm's inference)
            return (self.head(pooled) + self.head_dist(self.fc_norm(tokens[:, 1]))) / 2
        return self.head(pooled)  # (B, num_classes)
