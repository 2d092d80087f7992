"""Pre-norm transformer blocks built on the shared attention core."""

from __future__ import annotations

from torch import Tensor, nn
from timm.layers import DropPath

from models.attention import KVCache, MultiHeadAttention


def LayerNorm(dim: int) -> nn.LayerNorm:
    """LayerNorm with the eps of the ViT / timm reference models (1e-6, not torch's 1e-5)."""
    return nn.LayerNorm(dim, eps=1e-6)


class MLP(nn.Module):
    """Position-wise feed-forward: Linear -> GELU -> Linear."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class EncoderBlock(nn.Module):
    """x + Attn(LN(x)), then x + MLP(LN(x)): the ViT / encoder block (pre-norm trains stably
    without warm-up tricks, which matters for minutes-long CPU runs)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        num_kv_heads: int | None = None,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        attn_window: int | None = None,
        attn_global: int = 0,
    ) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, num_heads, num_kv_heads, qkv_bias, attn_drop, drop,
                                       window=attn_window, num_global=attn_global)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None, causal: bool = False) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), key_padding_mask=key_padding_mask, causal=causal))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class DecoderBlock(nn.Module):
    """Causal self-attention, cross-attention to the encoder output, MLP; each pre-norm + residual."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        num_kv_heads: int | None = None,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        attn_window: int | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim)
        # A window limits the causal self-attention (rolling cache when decoding); cross-attention sees all.
        self.self_attn = MultiHeadAttention(dim, num_heads, num_kv_heads, qkv_bias, attn_drop, drop, window=attn_window)
        self.norm2 = LayerNorm(dim)
        self.cross_attn = MultiHeadAttention(dim, num_heads, num_kv_heads, qkv_bias, attn_drop, drop)
        self.norm3 = LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio), drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        *,
        tgt_padding_mask: Tensor | None = None,
        memory_padding_mask: Tensor | None = None,
        self_cache: KVCache | None = None,
        cross_cache: KVCache | None = None,
    ) -> Tensor:
        h = self.self_attn(self.norm1(x), key_padding_mask=tgt_padding_mask, causal=True, cache=self_cache)
        x = x + self.drop_path(h)
        h = self.cross_attn(self.norm2(x), memory, key_padding_mask=memory_padding_mask, cache=cross_cache)
        x = x + self.drop_path(h)
        return x + self.drop_path(self.mlp(self.norm3(x)))


class Encoder(nn.Module):
    """A stack of encoder blocks with linearly growing stochastic depth and a final LayerNorm."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        num_kv_heads: int | None = None,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        attn_window: int | None = None,
        attn_global: int = 0,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            EncoderBlock(dim, num_heads, mlp_ratio, num_kv_heads, qkv_bias, drop, attn_drop, r, attn_window, attn_global)
            for r in rates
        )
        self.norm = LayerNorm(dim)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        for block in self.blocks:
            x = block(x, key_padding_mask=key_padding_mask)
        return self.norm(x)
