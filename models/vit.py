"""Vision Transformer: patch embedding -> [class token] + 2-D positions -> encoder -> head."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.export import Dim
from timm.layers import trunc_normal_

from models.checks import (check_prefix_tokens, refuse, require_bool, require_choice, require_int,
                           require_size)
from models.embeddings import ConvStem, PatchEmbed, PosEmbed2D, check_patch_fits, prepend_tokens
from models.layers import Activation, Encoder, FeedForward, LayerNorm, check_block_options
from models.network import Network, OnnxSpec


class VisionTransformer(Network):
    """ViT (Dosovitskiy et al. 2021) built only from the zoo's shared parts.

    Args mirror configs/model/vit.yaml `net:`. `pool` is "cls" (class token), "mean" (average
    of patch tokens) or "cls_mean" (the two side by side, 2 * dim features: DINOv2's classifier). `stem` is "patch" (one linear map per patch, the original ViT) or "conv"
    (stride-2 convolutions with the same total stride, ViT_C of Xiao et al. 2021).
    Inputs of another resolution are accepted: the position table is resized. `attn_window` / `attn_global`
    make the encoder's self-attention a sliding window over the patches in raster order, with global tokens.

    Options for pretrained families (timm ViT / DeiT; the defaults are the zoo's own ViT):
    `class_token` (None: with pool="cls") adds a class token apart from the pooling (timm's class token
    with average pooling); `dist_token` a DeiT distillation token with its own head, the two heads averaged;
    `token_pos` learned positions for those prefix tokens (timm's default; its `no_embed_class` has none);
    `fc_norm` a LayerNorm after pooling instead of the encoder's final one; `norm_eps`, `act` as in layers.py.

    DINOv2 (transformers' Dinov2Model / Dinov2WithRegistersModel): `layer_scale` and `ffn` (layers.py);
    `num_registers` learned register tokens after the class token, without positions, left out of the
    patch outputs (`num_prefix` counts them); `pos_antialias` for the resized position table;
    `num_classes=0` a backbone without head: forward returns the pooled features (B, dim), the
    normalised class token with pool="cls" (transformers' pooler_output).
    """

    name = "vit"
    modality = "image"

    def __init__(
        self,
        *,
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
        layer_scale: float | None = None,
        ffn: FeedForward = "mlp",
        num_registers: int = 0,
        pos_antialias: bool = False,
    ) -> None:
        super().__init__()
        block_options = dict(num_heads=num_heads, mlp_ratio=mlp_ratio, num_kv_heads=num_kv_heads,
                             qkv_bias=qkv_bias, drop=drop, attn_drop=attn_drop, attn_window=attn_window,
                             attn_global=attn_global, norm_eps=norm_eps, act=act, layer_scale=layer_scale,
                             ffn=ffn)
        # Before the stem, which would trip on a bad dim first and under another name.
        check_block_options(dim=dim, drop_path=drop_path, **block_options)
        require_int("depth", depth)
        require_int("img_size", img_size)
        require_int("in_chans", in_chans, note=" (1 = grayscale, 3 = RGB)")
        if num_classes != 0:
            require_int("num_classes", num_classes, at_least=2, note=" (classes to tell apart; 0: no head)")
        require_choice("pool", pool, ("cls", "mean", "cls_mean"))
        require_choice("stem", stem, ("patch", "conv"))
        require_size("patch_size", patch_size)
        require_size("patch_stride", patch_stride, optional=True)
        check_patch_fits(patch_size, img_size)
        class_token = check_prefix_tokens("cls" if pool == "cls_mean" else pool, class_token, dist_token)
        require_bool("token_pos", token_pos)
        require_bool("fc_norm", fc_norm)
        require_int("num_registers", num_registers, at_least=0)
        require_bool("pos_antialias", pos_antialias)
        if pool == "cls_mean" and (dist_token or fc_norm):
            raise refuse("pool", pool, "reads the class token and the patch mean after the encoder's norm "
                         "(no dist_token, no fc_norm)")
        self.pool = pool
        self.num_classes = num_classes
        if stem == "patch":
            self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, dim, stride=patch_stride)
        else:
            self.patch_embed = ConvStem(img_size, patch_size, in_chans, dim, stem_channels)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if class_token else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim)) if dist_token else None
        num_tokens = int(class_token) + int(dist_token)
        self.num_prefix = num_tokens + num_registers  # tokens before the patches
        self.prefix_pos = nn.Parameter(torch.zeros(1, num_tokens, dim)) if token_pos and num_tokens else None
        self.reg_token = nn.Parameter(torch.zeros(1, num_registers, dim)) if num_registers else None
        self.pos_embed = PosEmbed2D(self.patch_embed.grid_size, dim, antialias=pos_antialias)
        self.pos_drop = nn.Dropout(drop)
        self.encoder = Encoder(dim=dim, depth=depth, drop_path=drop_path, final_norm=not fc_norm, **block_options)
        self.fc_norm = LayerNorm(dim, norm_eps) if fc_norm else nn.Identity()
        features = 2 * dim if pool == "cls_mean" else dim
        self.head = nn.Linear(features, num_classes) if num_classes else nn.Identity()
        self.head_dist = nn.Linear(dim, num_classes) if dist_token and num_classes else None
        self.apply(self._init_weights)
        for token in (self.cls_token, self.dist_token, self.prefix_pos, self.reg_token):
            if token is not None:
                trunc_normal_(token, std=0.02)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "dist_token", "prefix_pos", "reg_token", "pos_embed.weight"}

    def onnx_spec(self) -> OnnxSpec:
        """images (B, C, H, W): B dynamic; H, W fixed at the training resolution (another one resizes the
        position table, a branch the graph would not hold)."""
        c = self.patch_embed.in_chans
        h, w = self.patch_embed.img_size
        return OnnxSpec(self, ["images"], (torch.randn(2, c, h, w),), ({0: Dim("batch", min=1)},),
                        {"images": ["batch"]})

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, num_prefix + gh*gw, dim) encoded tokens (class [, distillation] token first,
        then the registers)."""
        grid = self.patch_embed.grid_for(tuple(x.shape[-2:]))
        x = self.patch_embed(x)  # (B, gh*gw, dim)
        x = x + self.pos_embed(grid)
        x = prepend_tokens(x, [self.cls_token, self.dist_token], self.prefix_pos)
        if self.reg_token is not None:  # after the positioned tokens: registers have no position
            tokens = self.num_prefix - self.reg_token.shape[1]
            registers = self.reg_token.expand(x.shape[0], -1, -1)
            x = torch.cat([x[:, :tokens], registers, x[:, tokens:]], dim=1)
        return self.encoder(self.pos_drop(x))

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.forward_features(x)
        if self.pool == "cls":
            pooled = self.fc_norm(tokens[:, 0])
        elif self.pool == "cls_mean":  # (B, 2 * dim)
            pooled = torch.cat([tokens[:, 0], tokens[:, self.num_prefix:].mean(dim=1)], dim=1)
        else:
            pooled = self.fc_norm(tokens[:, self.num_prefix:].mean(dim=1))
        if self.head_dist is not None:  # DeiT: class and distillation heads averaged (timm's inference)
            return (self.head(pooled) + self.head_dist(self.fc_norm(tokens[:, 1]))) / 2
        return self.head(pooled)  # (B, num_classes); (B, features) without a head
