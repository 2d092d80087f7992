"""Video transformer (TimeSformer-style): per-frame patches -> space + time positions -> space-time blocks -> head."""

from __future__ import annotations

import math

import torch
from einops import rearrange
from timm.layers import trunc_normal_
from torch import Tensor, nn
from torch.export import Dim

from models.checks import refuse, require_bool, require_choice, require_int, require_number
from models.embeddings import (ConvStem, PatchEmbed, PosEmbed2D, TubeletEmbed, check_patch_fits,
                               sinusoidal_table)
from models.layers import Activation, LayerNorm, check_block_options
from models.network import Network, OnnxSpec
from models.spacetime import SPACETIME_BLOCKS, TimePosEmbed
from models.vit import VisionTransformer


def sincos_table(length: int, dim: int) -> Tensor:
    """(length, dim) sin / cos of position at dim // 2 frequencies spread geometrically from pi / 2 (a quarter
    turn per step) to pi / length (half a period over the axis): the transformer's usual 1 / 10000^(i/k)
    wastes most of them on periods far longer than a 4-patch or 8-frame axis."""
    k = max(dim // 2, 1)
    freqs = (math.pi / 2) * (2 / max(length, 2)) ** (torch.arange(k) / max(k - 1, 1))  # (k,)
    angles = torch.arange(length, dtype=torch.float32)[:, None] * freqs[None]  # (length, k)
    table = torch.cat([angles.sin(), angles.cos()], -1) * math.sqrt(2)  # unit RMS per component
    return table[:, :dim] if table.shape[1] >= dim else torch.nn.functional.pad(table, (0, dim - table.shape[1]))


class VideoTransformer(Network):
    """Classifies clips (B, C, T, H, W) with divided (TimeSformer) or joint space-time attention.

    Args mirror configs/model/video.yaml `net:`. Each frame is embedded on its own (`stem`: "patch" or
    "conv", as in the ViT), then gets a spatial position (PosEmbed2D, bicubically resized) plus a time
    position (TimePosEmbed, linearly resized), so clips of another length or resolution than
    `num_frames` x `img_size` run unchanged. `attention` selects "divided" (temporal then spatial
    attention per block) or "joint" (one attention over all T*N tokens). Both position tables are
    learned; `pos_init` starts them as sin/cos of (row, column) and frame ("sincos") or random ("normal"),
    at scale `pos_init_std`. Tokens are mean-pooled: a class token would need copying into every
    frame for divided attention, for no gain here.

    The stem sees one frame at a time and pooling ignores order, so frames meet only inside the
    temporal (or joint) attention: a clip whose label lives in the order of its frames is classified
    by what that attention does, which is what the shuffled-frames control measures.

    Options for pretrained families (the defaults are the zoo's own model): `stem="tubelet"` embeds
    `tubelet_size` frames x a patch at once (VideoMAE); `pos="sincos_fixed"` replaces both learned tables by the
    fixed 1-D sin/cos table over the flattened (time, patch) tokens (VideoMAE); `class_token` (divided attention
    only) adds TimeSformer's class token, with its own position (`token_pos`), read by `pool="cls"`;
    `temporal_proj` TimeSformer's Linear after the temporal attention; `fc_norm` puts the final LayerNorm after
    mean pooling (VideoMAE's fc_norm, eps `fc_norm_eps`, None: norm_eps) instead of on the tokens; `norm_eps`
    and `act` for the blocks.
    """

    name = "video"
    modality = "video"
    # Divided attention has a temporal and a spatial layer per block, joint attention one.
    attention_layers = ("blocks.*.attn_time", "blocks.*.attn_space", "blocks.*.attn")

    def __init__(
        self,
        *,
        img_size: int = 32,
        num_frames: int = 8,
        patch_size: int = 8,
        in_chans: int = 1,
        num_classes: int = 4,
        dim: int = 64,
        depth: int = 2,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        num_kv_heads: int | None = None,
        qkv_bias: bool = True,
        attention: str = "divided",
        stem: str = "conv",
        stem_channels: list[int] | None = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        pos_init_std: float = 1.0,
        pos_init: str = "sincos",
        tubelet_size: int = 2,
        pos: str = "learned",
        class_token: bool = False,
        token_pos: bool = False,
        pool: str = "mean",
        temporal_proj: bool = False,
        fc_norm: bool = False,
        fc_norm_eps: float | None = None,
        norm_eps: float = 1e-6,
        act: Activation = "gelu",
    ) -> None:
        super().__init__()
        block_options = dict(num_heads=num_heads, mlp_ratio=mlp_ratio, num_kv_heads=num_kv_heads,
                             qkv_bias=qkv_bias, drop=drop, attn_drop=attn_drop, norm_eps=norm_eps, act=act)
        check_block_options(dim=dim, drop_path=drop_path, **block_options)
        require_int("depth", depth)
        require_int("img_size", img_size)
        require_int("num_frames", num_frames)
        require_int("in_chans", in_chans, note=" (1 = grayscale, 3 = RGB)")
        require_int("num_classes", num_classes, at_least=2, note=" (classes to tell apart)")
        require_choice("attention", attention, tuple(SPACETIME_BLOCKS))
        require_choice("stem", stem, ("patch", "conv", "tubelet"))
        require_choice("pos", pos, ("learned", "sincos_fixed"))
        require_choice("pos_init", pos_init, ("sincos", "normal"))
        require_number("pos_init_std", pos_init_std, low=0, low_open=True)
        require_choice("pool", pool, ("cls", "mean"))
        if (pool == "cls") != require_bool("class_token", class_token):
            raise refuse("class_token", class_token, f"pool={pool!r}: 'cls' reads the class token, 'mean' "
                         f"averages the patch tokens (without one)")
        if class_token and attention != "divided":
            raise refuse("class_token", class_token, "the class token is for attention='divided' (TimeSformer)")
        for name, value in (("token_pos", token_pos), ("temporal_proj", temporal_proj), ("fc_norm", fc_norm)):
            require_bool(name, value)
        require_number("fc_norm_eps", fc_norm_eps, low=0, low_open=True, optional=True)
        require_int("patch_size", patch_size)
        check_patch_fits(patch_size, img_size)
        if stem == "patch":
            self.patch_embed: PatchEmbed | ConvStem | TubeletEmbed = PatchEmbed(img_size, patch_size, in_chans, dim)
        elif stem == "conv":
            self.patch_embed = ConvStem(img_size, patch_size, in_chans, dim, stem_channels)
        else:
            if pos == "learned":  # the learned time table counts frames, tubelets merge them: VideoMAE's fixed table
                raise ValueError("stem='tubelet' goes with pos='sincos_fixed' (VideoMAE), not pos='learned'")
            require_int("tubelet_size", tubelet_size)
            self.patch_embed = TubeletEmbed(img_size, patch_size, tubelet_size, in_chans, dim)
        self.in_chans = in_chans
        self.attention = attention
        self.num_frames = num_frames
        self.pool = pool
        self.fc_norm = fc_norm
        if pos == "learned":
            self.pos_embed = PosEmbed2D(self.patch_embed.grid_size, dim)
            self.time_embed = TimePosEmbed(num_frames, dim)
        self.pos = pos
        self.pos_table: Tensor | None
        if pos != "sincos_fixed":
            self.pos_table = None
        else:  # made once, not per forward (derived: checkpoints stay as they were)
            frames = num_frames // tubelet_size if stem == "tubelet" else num_frames
            grid = self.patch_embed.grid_size
            self.register_buffer("pos_table", sinusoidal_table(frames * grid[0] * grid[1], dim), persistent=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if class_token else None
        self.prefix_pos = nn.Parameter(torch.zeros(1, 1, dim)) if class_token and token_pos else None
        self.pos_drop = nn.Dropout(drop)
        rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]  # stochastic depth grows with depth
        block = SPACETIME_BLOCKS[attention]
        if temporal_proj:  # only the divided block has it
            block_options["temporal_proj"] = True
        self.blocks = nn.ModuleList(block(dim, drop_path=r, **block_options) for r in rates)
        self.norm = LayerNorm(dim, norm_eps if fc_norm_eps is None else fc_norm_eps)
        self.head = nn.Linear(dim, num_classes)
        self.apply(VisionTransformer._init_weights)  # same init as the ViT: truncated normal Linear weights
        for token in (self.cls_token, self.prefix_pos):
            if token is not None:
                trunc_normal_(token, std=0.02)
        if pos == "sincos_fixed":
            return
        # ViT's 0.02 suits images, where content is the signal. Here the signal is *where* the content is
        # *when*: with tables ~15x smaller than the stem's features the model sat at chance for epochs.
        if pos_init == "sincos":
            # Neighbouring rows, columns and frames start with related vectors, so "the next frame" and
            # "the patch to the right" are easy to find from the start; the tables are still learned.
            with torch.no_grad():
                self.time_embed.weight.copy_(sincos_table(num_frames, dim)[None] * pos_init_std)
                gh, gw = self.patch_embed.grid_size
                rows = sincos_table(gh, dim // 2)[:, None].expand(gh, gw, -1)
                cols = sincos_table(gw, dim - dim // 2)[None].expand(gh, gw, -1)
                self.pos_embed.weight.copy_(torch.cat([rows, cols], -1).reshape(1, gh * gw, dim) * pos_init_std)
        else:
            for table in (self.pos_embed.weight, self.time_embed.weight):
                trunc_normal_(table, std=pos_init_std, a=-2 * pos_init_std, b=2 * pos_init_std)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed.weight", "time_embed.weight", "cls_token", "prefix_pos"}

    def onnx_spec(self) -> OnnxSpec:
        """clips (B, C, T, H, W): B dynamic; frames and resolution fixed at the training ones."""
        h, w = self.patch_embed.img_size
        example = (torch.randn(2, self.in_chans, self.num_frames, h, w),)
        return OnnxSpec(self, ["clips"], example, ({0: Dim("batch", min=1)},), {"clips": ["batch"]})

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, T, H, W) -> (B, T, gh*gw, dim) encoded tokens (T // tubelet_size with tubelets)."""
        return self._encode(x)[0]

    def _encode(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Encoded tokens (normalised unless fc_norm) and the encoded class token (B, 1, dim) or None."""
        if x.dim() != 5 or x.shape[1] != self.in_chans:
            raise ValueError(f"expected a clip (batch, {self.in_chans}, frames, H, W), got {tuple(x.shape)}")
        B, _, T, H, W = x.shape
        if T < 1:
            raise ValueError(f"a clip needs at least 1 frame, got shape {tuple(x.shape)}")
        grid = self.patch_embed.grid_for((H, W))
        if isinstance(self.patch_embed, TubeletEmbed):
            x = self.patch_embed(x)  # (B, T', N, d)
        else:
            x = self.patch_embed(rearrange(x, "b c t h w -> (b t) c h w"))  # errors name frames smaller than a patch
            x = rearrange(x, "(b t) n d -> b t n d", b=B)
        if self.pos == "learned":
            x = x + self.pos_embed(grid).unsqueeze(1) + self.time_embed(T)  # (1, 1, N, d) + (1, T, 1, d)
        else:  # VideoMAE: fixed sin/cos over the flattened (time, patch) order
            n = x.shape[1] * x.shape[2]  # a table's first n rows are the table of n positions
            table = self.pos_table[:n] if n <= len(self.pos_table) else sinusoidal_table(n, x.shape[3])
            x = x + table.to(x).view(1, *x.shape[1:])
        cls = None
        if self.cls_token is not None:
            cls = self.cls_token if self.prefix_pos is None else self.cls_token + self.prefix_pos
            cls = self.pos_drop(cls.expand(B, -1, -1))
        x = self.pos_drop(x)
        for block in self.blocks:
            if cls is None:
                x = block(x)
            else:
                x, cls = block(x, cls)
        if self.fc_norm:
            return x, cls
        return self.norm(x), (None if cls is None else self.norm(cls))

    def forward(self, x: Tensor) -> Tensor:
        tokens, cls = self._encode(x)
        if cls is not None:
            return self.head(cls[:, 0])
        pooled = tokens.mean(dim=(1, 2))
        return self.head(self.norm(pooled) if self.fc_norm else pooled)  # (B, num_classes)
