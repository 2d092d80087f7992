"""Transformer blocks built on the shared attention core.

Today's models use the defaults: pre-norm, GELU, LayerNorm eps 1e-6, a final LayerNorm. Pretrained families
that differ (BERT / Marian post-norm, SiLU, eps 1e-12 or 1e-5, no final norm; DINOv2's layer scale and SwiGLU
feed-forward; the decoder-only LMs' RMSNorm, missing biases, explicit feed-forward width and rotary positions)
set the typed options below; the defaults keep the zoo's own models bit for bit.
"""

from __future__ import annotations

from typing import Any, Literal

import torch.nn.functional as F
from torch import Tensor, nn
from timm.layers import DropPath, LayerScale

from models.attention import KVCache, MultiHeadAttention, RotaryEmbedding
from models.checks import (refuse, require_bool, require_choice, require_fraction, require_int,
                           require_number)

Activation = Literal["gelu", "gelu_tanh", "silu", "relu"]
ACTIVATIONS = ("gelu", "gelu_tanh", "silu", "relu")
FeedForward = Literal["mlp", "swiglu"]
FEED_FORWARDS = ("mlp", "swiglu")
Norm = Literal["layernorm", "rmsnorm"]
NORMS = ("layernorm", "rmsnorm")


def LayerNorm(dim: int, eps: float = 1e-6) -> nn.LayerNorm:
    """LayerNorm with the eps of the ViT / timm reference models (1e-6, not torch's 1e-5) unless told."""
    return nn.LayerNorm(dim, eps=eps)


def norm_layer(kind: str, dim: int, eps: float = 1e-6) -> nn.Module:
    """"layernorm" (centred, with a bias) or "rmsnorm" (scale only: Llama, Mistral, Qwen2)."""
    if kind == "rmsnorm":
        return nn.RMSNorm(dim, eps=eps)
    return LayerNorm(dim, eps)


def activation(name: str) -> nn.Module:
    """gelu (exact erf, ViT / BERT), gelu_tanh (the tanh approximation), silu (Marian's swish), relu."""
    if name == "gelu":
        return nn.GELU()
    if name == "gelu_tanh":
        return nn.GELU(approximate="tanh")
    if name == "silu":
        return nn.SiLU()
    if name == "relu":
        return nn.ReLU()
    raise refuse("act", name, f"expected one of {', '.join(ACTIVATIONS)}")


def check_block_options(
    *,
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
    norm_eps: float = 1e-6,
    norm_first: bool = True,
    act: str = "gelu",
    layer_scale: float | None = None,
    ffn: str = "mlp",
    norm: str = "layernorm",
    bias: bool = True,
    ffn_dim: int | None = None,
) -> None:
    """The rules of the options every block shares. The blocks call it, and so do the networks
    before they build anything (a bad `dim` would otherwise fail first inside a stem, under another
    name).

    Raises:
        ValueError: `name=value: expected ...` for the first option that breaks a rule.
    """
    require_int("dim", dim)
    require_int("num_heads", num_heads)
    if dim % num_heads:
        example = num_heads * max(1, round(dim / num_heads))
        raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}: each head gets "
                         f"dim / num_heads channels (e.g. dim={example})")
    require_int("num_kv_heads", num_kv_heads, optional=True)
    if num_kv_heads is not None and (num_kv_heads > num_heads or num_heads % num_kv_heads):
        raise ValueError(f"num_kv_heads={num_kv_heads} must divide num_heads={num_heads} "
                         f"(grouped-query attention shares each key/value head among "
                         f"num_heads / num_kv_heads query heads)")
    require_number("mlp_ratio", mlp_ratio, low=0, low_open=True)
    require_bool("qkv_bias", qkv_bias)
    require_fraction("drop", drop)
    require_fraction("attn_drop", attn_drop)
    require_fraction("drop_path", drop_path)
    require_int("attn_window", attn_window, note=" (positions each token sees)", optional=True)
    require_int("attn_global", attn_global, at_least=0)
    if attn_global and attn_window is None:
        raise ValueError(f"attn_global={attn_global} needs attn_window (without a window every "
                         f"token already sees every token)")
    require_number("norm_eps", norm_eps, low=0, low_open=True)
    require_bool("norm_first", norm_first)
    require_choice("act", act, ACTIVATIONS)
    require_number("layer_scale", layer_scale, low=0, low_open=True, optional=True)
    require_choice("ffn", ffn, FEED_FORWARDS)
    require_choice("norm", norm, NORMS)
    require_bool("bias", bias)
    require_int("ffn_dim", ffn_dim, note=" (feed-forward hidden width)", optional=True)


class MLP(nn.Module):
    """Position-wise feed-forward: Linear -> activation -> Linear."""

    def __init__(self, dim: int, hidden_dim: int, *, drop: float = 0.0,
                 act: Activation = "gelu", bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim, bias=bias)
        self.act = activation(act)
        self.fc2 = nn.Linear(hidden_dim, dim, bias=bias)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class SwiGLU(nn.Module):
    """SiLU-gated feed-forward (Shazeer 2020), DINOv2's for its giant sizes: fc1 gives the gate and the value
    halves (in that order), fc2 maps silu(gate) * value back. Its width is DINOv2's rule: 2/3 of `hidden_dim`,
    rounded up to a multiple of 8 (the gated form then costs about what an MLP of `hidden_dim` does).
    `width`: the gated width itself (Llama's intermediate_size, its gate and up projections stacked in fc1);
    None = DINOv2's rule."""

    def __init__(self, dim: int, hidden_dim: int, *, drop: float = 0.0, bias: bool = True,
                 width: int | None = None) -> None:
        super().__init__()
        hidden = (int(hidden_dim * 2 / 3) + 7) // 8 * 8 if width is None else width
        self.fc1 = nn.Linear(dim, 2 * hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        gate, value = self.fc1(x).chunk(2, dim=-1)  # (B, T, hidden) each
        return self.drop(self.fc2(self.drop(F.silu(gate) * value)))


def feed_forward(kind: str, dim: int, hidden_dim: int, drop: float, act: Activation, bias: bool = True,
                 ffn_dim: int | None = None) -> nn.Module:
    """The block's feed-forward: "mlp" (Linear -> act -> Linear) or "swiglu" (gated; `act` unused).
    `ffn_dim` (the hidden width as a checkpoint states it) overrides `hidden_dim` and SwiGLU's rule."""
    if kind == "swiglu":
        return SwiGLU(dim, hidden_dim, drop=drop, bias=bias, width=ffn_dim)
    return MLP(dim, hidden_dim if ffn_dim is None else ffn_dim, drop=drop, act=act, bias=bias)


class EncoderBlock(nn.Module):
    """Pre-norm (default): x + Attn(LN(x)), then x + MLP(LN(x)): the ViT / encoder block (pre-norm trains
    stably without warm-up tricks, which matters for minutes-long CPU runs).
    Post-norm (norm_first=False, BERT / Marian): x = LN(x + Attn(x)), then x = LN(x + MLP(x)).
    `layer_scale` (CaiT / DINOv2): each branch times a learned per-channel gamma (`ls1`, `ls2`) that starts at
    this value, before the residual sum; None: no gamma. `ffn`: "mlp" or DINOv2's gated "swiglu".
    Decoder-only LMs (models/lm.py) call it with causal=True and a cache, and set `norm` ("rmsnorm"),
    `bias` (False: no bias in the attention output and feed-forward, Llama), `ffn_dim` (the feed-forward width
    itself) and `rotary` (one RotaryEmbedding the model shares among its blocks)."""

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
        attn_window: int | None = None,
        attn_global: int = 0,
        norm_eps: float = 1e-6,
        norm_first: bool = True,
        act: Activation = "gelu",
        layer_scale: float | None = None,
        ffn: FeedForward = "mlp",
        norm: Norm = "layernorm",
        bias: bool = True,
        ffn_dim: int | None = None,
        rotary: RotaryEmbedding | None = None,
    ) -> None:
        super().__init__()
        check_block_options(dim=dim, num_heads=num_heads, mlp_ratio=mlp_ratio,
                            num_kv_heads=num_kv_heads, qkv_bias=qkv_bias, drop=drop,
                            attn_drop=attn_drop, drop_path=drop_path,
                            attn_window=attn_window, attn_global=attn_global, norm_eps=norm_eps,
                            norm_first=norm_first, act=act, layer_scale=layer_scale, ffn=ffn,
                            norm=norm, bias=bias, ffn_dim=ffn_dim)
        self.norm_first = norm_first
        self.norm1 = norm_layer(norm, dim, norm_eps)
        self.attn = MultiHeadAttention(dim, num_heads, num_kv_heads=num_kv_heads, qkv_bias=qkv_bias,
                                       out_bias=bias, attn_drop=attn_drop, proj_drop=drop,
                                       window=attn_window, num_global=attn_global, rotary=rotary)
        self.ls1 = nn.Identity() if layer_scale is None else LayerScale(dim, layer_scale)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(norm, dim, norm_eps)
        self.mlp = feed_forward(ffn, dim, int(dim * mlp_ratio), drop, act, bias, ffn_dim)
        self.ls2 = nn.Identity() if layer_scale is None else LayerScale(dim, layer_scale)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None, causal: bool = False, *,
                cache: KVCache | None = None, positions: Tensor | None = None) -> Tensor:
        attend = dict(key_padding_mask=key_padding_mask, causal=causal, cache=cache, positions=positions)
        if not self.norm_first:
            h = self.ls1(self.attn(x, **attend))
            x = self.norm1(x + self.drop_path(h))
            return self.norm2(x + self.drop_path(self.ls2(self.mlp(x))))
        h = self.ls1(self.attn(self.norm1(x), **attend))
        x = x + self.drop_path(h)
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))


class DecoderBlock(nn.Module):
    """Causal self-attention, cross-attention to the encoder output, MLP; each with a residual, pre-norm by
    default, post-norm (norm_first=False: x = LN(x + sublayer(x)), Marian) when told."""

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
        attn_window: int | None = None,
        norm_eps: float = 1e-6,
        norm_first: bool = True,
        act: Activation = "gelu",
    ) -> None:
        super().__init__()
        check_block_options(dim=dim, num_heads=num_heads, mlp_ratio=mlp_ratio,
                            num_kv_heads=num_kv_heads, qkv_bias=qkv_bias, drop=drop,
                            attn_drop=attn_drop, drop_path=drop_path,
                            attn_window=attn_window, norm_eps=norm_eps, norm_first=norm_first,
                            act=act)
        attention = dict(num_kv_heads=num_kv_heads, qkv_bias=qkv_bias, attn_drop=attn_drop,
                         proj_drop=drop)
        self.norm_first = norm_first
        self.norm1 = LayerNorm(dim, norm_eps)
        # A window limits the causal self-attention (rolling cache when decoding); cross-attention sees all.
        self.self_attn = MultiHeadAttention(dim, num_heads, window=attn_window, **attention)
        self.norm2 = LayerNorm(dim, norm_eps)
        self.cross_attn = MultiHeadAttention(dim, num_heads, **attention)
        self.norm3 = LayerNorm(dim, norm_eps)
        self.mlp = MLP(dim, int(dim * mlp_ratio), drop=drop, act=act)
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
        if not self.norm_first:
            h = self.self_attn(x, key_padding_mask=tgt_padding_mask, causal=True, cache=self_cache)
            x = self.norm1(x + self.drop_path(h))
            h = self.cross_attn(x, memory, key_padding_mask=memory_padding_mask, cache=cross_cache)
            x = self.norm2(x + self.drop_path(h))
            return self.norm3(x + self.drop_path(self.mlp(x)))
        h = self.self_attn(self.norm1(x), key_padding_mask=tgt_padding_mask, causal=True, cache=self_cache)
        x = x + self.drop_path(h)
        h = self.cross_attn(self.norm2(x), memory, key_padding_mask=memory_padding_mask, cache=cross_cache)
        x = x + self.drop_path(h)
        return x + self.drop_path(self.mlp(self.norm3(x)))


class Encoder(nn.Module):
    """A stack of encoder blocks with linearly growing stochastic depth and a final LayerNorm
    (final_norm=False for post-norm stacks, whose blocks already end in one)."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        *,
        mlp_ratio: float = 4.0,
        num_kv_heads: int | None = None,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        attn_window: int | None = None,
        attn_global: int = 0,
        norm_eps: float = 1e-6,
        norm_first: bool = True,
        act: Activation = "gelu",
        layer_scale: float | None = None,
        ffn: FeedForward = "mlp",
        final_norm: bool = True,
    ) -> None:
        super().__init__()
        require_int("depth", depth)
        require_bool("final_norm", final_norm)
        block_options = dict(mlp_ratio=mlp_ratio, num_kv_heads=num_kv_heads, qkv_bias=qkv_bias,
                             drop=drop, attn_drop=attn_drop, attn_window=attn_window,
                             attn_global=attn_global, norm_eps=norm_eps, norm_first=norm_first,
                             act=act, layer_scale=layer_scale, ffn=ffn)
        check_block_options(dim=dim, num_heads=num_heads, drop_path=drop_path, **block_options)
        rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            EncoderBlock(dim, num_heads, drop_path=r, **block_options) for r in rates
        )
        self.norm = LayerNorm(dim, norm_eps) if final_norm else nn.Identity()

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        for block in self.blocks:
            x = block(x, key_padding_mask=key_padding_mask)
        return self.norm(x)


def share_rotary_table(model: nn.Module) -> None:
    """Keep one rotary table for a model whose blocks share `model.rope` (`model.blocks[i].attn.rotary`): the
    state dict holds it once, as rope.inv_freq; a state without it (a converter's) keeps the table the model
    computed (transformers computes it from the config, as the model did)."""
    model.register_state_dict_post_hook(_drop_shared_rotary)
    model.register_load_state_dict_pre_hook(_fill_shared_rotary)


def _drop_shared_rotary(module: nn.Module, state: dict[str, Tensor], prefix: str, _meta: Any) -> None:
    for key in [k for k in state if k.startswith(prefix + "blocks.") and k.endswith(".attn.rotary.inv_freq")]:
        del state[key]


def _fill_shared_rotary(module: nn.Module, state: dict[str, Tensor], prefix: str, *_: Any) -> None:
    rope = module.rope  # type: ignore[union-attr]
    if rope is None:
        return
    table = state.setdefault(prefix + "rope.inv_freq", rope.inv_freq.clone())
    for i in range(len(module.blocks)):  # type: ignore[arg-type]
        state[f"{prefix}blocks.{i}.attn.rotary.inv_freq"] = table
