"""Space-time blocks for video tokens shaped (B, T, N, D): divided (TimeSformer) and joint attention.

Both blocks take and return (B, T, N, D), so a video model swaps one for the other with a single
option. All attention comes from models.attention.MultiHeadAttention; the blocks only rearrange
tokens around it (vit-pytorch vivit style).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import DropPath, trunc_normal_
from torch import Tensor, nn

from models.attention import MultiHeadAttention
from models.checks import require_bool, require_int
from models.layers import MLP, Activation, EncoderBlock, LayerNorm, check_block_options


class TimePosEmbed(nn.Module):
    """Learned table over frames, linearly interpolated for another number of frames.

    Kept apart from the spatial table (PosEmbed2D) so clip length and resolution resize independently.
    """

    def __init__(self, num_frames: int, dim: int) -> None:
        super().__init__()
        require_int("num_frames", num_frames)
        self.num_frames = num_frames
        self.weight = nn.Parameter(torch.zeros(1, num_frames, dim))
        trunc_normal_(self.weight, std=0.02)

    def forward(self, num_frames: int) -> Tensor:
        """(1, T, 1, dim) table for T frames, broadcast over the patches of each frame."""
        if num_frames < 1:
            raise ValueError(f"a clip needs at least 1 frame, got {num_frames}")
        table = self.weight
        if num_frames != self.num_frames:
            table = F.interpolate(table.transpose(1, 2), size=num_frames, mode="linear", align_corners=False)
            table = table.transpose(1, 2)
        return table.unsqueeze(2)


class DividedSpaceTimeBlock(nn.Module):
    """TimeSformer's divided attention: x + TimeAttn(LN(x)), x + SpaceAttn(LN(x)), x + MLP(LN(x)).

    Temporal attention runs across the T frames at each of the N spatial positions, spatial attention
    across the N patches of each frame: T*N*(T+N) scores instead of (T*N)^2 for joint attention.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        mlp_ratio: float = 4.0,
        num_kv_heads: int | None = None,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
        act: Activation = "gelu",
        temporal_proj: bool = False,
    ) -> None:
        super().__init__()
        check_block_options(dim=dim, num_heads=num_heads, mlp_ratio=mlp_ratio, num_kv_heads=num_kv_heads,
                            qkv_bias=qkv_bias, drop=drop, attn_drop=attn_drop, drop_path=drop_path,
                            norm_eps=norm_eps, act=act)
        require_bool("temporal_proj", temporal_proj)
        attention = dict(num_kv_heads=num_kv_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.norm_time = LayerNorm(dim, norm_eps)
        self.attn_time = MultiHeadAttention(dim, num_heads, **attention)
        # TimeSformer's `temporal_dense`: one more Linear on the temporal attention's output.
        self.temporal_proj = nn.Linear(dim, dim) if temporal_proj else nn.Identity()
        self.norm_space = LayerNorm(dim, norm_eps)
        self.attn_space = MultiHeadAttention(dim, num_heads, **attention)
        self.norm_mlp = LayerNorm(dim, norm_eps)
        self.mlp = MLP(dim, int(dim * mlp_ratio), drop=drop, act=act)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor, cls: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """x (B, T, N, D) -> (B, T, N, D); with a class token cls (B, 1, D), (x, cls) (TimeSformer): the token
        joins every frame's spatial attention, its T outputs averaged, and skips the temporal attention."""
        B, T, N, D = x.shape
        h = rearrange(self.norm_time(x), "b t n d -> (b n) t d")  # one sequence of T frames per position
        x = x + self.temporal_proj(self.drop_path(rearrange(self.attn_time(h), "(b n) t d -> b t n d", b=B)))
        seq = x if cls is None else torch.cat([cls[:, None].expand(B, T, 1, D), x], dim=2)  # (B, T, [1 +] N, D)
        h = rearrange(self.norm_space(seq), "b t n d -> (b t) n d")  # one sequence of N patches per frame
        h = self.drop_path(rearrange(self.attn_space(h), "(b t) n d -> b t n d", b=B))
        if cls is None:
            x = x + h
            return x + self.drop_path(self.mlp(self.norm_mlp(x)))
        x, cls = x + h[:, :, 1:], cls + h[:, :, 0].mean(dim=1, keepdim=True)
        return x + self.drop_path(self.mlp(self.norm_mlp(x))), cls + self.drop_path(self.mlp(self.norm_mlp(cls)))


class JointSpaceTimeBlock(EncoderBlock):
    """An EncoderBlock over all T*N tokens of a clip at once (ViViT model 1): the quadratic baseline."""

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        B, T, N, _ = x.shape
        out = super().forward(rearrange(x, "b t n d -> b (t n) d"))
        return rearrange(out, "b (t n) d -> b t n d", t=T)


SPACETIME_BLOCKS: dict[str, type[nn.Module]] = {"divided": DividedSpaceTimeBlock, "joint": JointSpaceTimeBlock}
