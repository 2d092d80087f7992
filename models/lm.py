"""Decoder-only language model: token ids -> embeddings (+ learned positions) -> causal blocks -> next-token logits.

One class for GPT-2 (learned positions, LayerNorm, GELU MLP, biases everywhere, tied head) and Llama / Mistral /
Qwen2 (rotary, RMSNorm, SwiGLU, no biases but Qwen2's q/k/v, Mistral's sliding window): the differences are
the typed options of the shared blocks (models/layers.py). Decoding lives in models/generate.py.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.export import Dim

from models.attention import KVCache, RotaryEmbedding, llama3_inv_freq
from models.generate import generate
from models.checks import refuse, require_bool, require_choice, require_int, require_number
from models.layers import EncoderBlock, check_block_options, norm_layer, share_rotary_table
from models.network import Network, OnnxSpec

POSITIONS = ("learned", "rotary")
ROPE_TYPES = ("linear", "llama3")
LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def rotary_table(head_dim: int, base: float, scaling: dict[str, Any] | None) -> Tensor:
    """The rotary inv_freq of a CausalLM with these options: computed as transformers computes it."""
    inv_freq = RotaryEmbedding(head_dim, base=base).inv_freq
    if scaling is None:
        return inv_freq
    if scaling["rope_type"] == "linear":
        return inv_freq / scaling["factor"]
    return llama3_inv_freq(inv_freq, **{k: scaling[k] for k in LLAMA3_KEYS})


def check_rope_scaling(value: Any) -> dict[str, Any] | None:
    """None, {rope_type: linear, factor} or {rope_type: llama3, factor, low_freq_factor, high_freq_factor,
    original_max_position_embeddings} (Hugging Face's names)."""
    if value is None:
        return None
    value = dict(value)
    kind = value.get("rope_type")
    if kind not in ROPE_TYPES:
        raise refuse("rope_scaling.rope_type", kind, f"expected one of {', '.join(ROPE_TYPES)}")
    for key in LLAMA3_KEYS if kind == "llama3" else ("factor",):
        require_number(f"rope_scaling.{key}", value.get(key), low=0, low_open=True)
    return value


class CausalLM(Network):
    """(B, T) token ids -> (B, T, vocab_size) logits of the next token at every position.

    Args mirror configs/model/lm.yaml `net:`. positions: "learned" (a table of block_size rows, GPT-2) or
    "rotary" (RoPE with `rope_base` and optional `rope_scaling`, one module shared by every block; then
    block_size only bounds training, the ONNX export and the context predict.py gives it). ffn: "mlp" (width
    ffn_dim or dim * mlp_ratio, `act`) or "swiglu" (Llama; width ffn_dim, else DINOv2's 2/3 rule). bias:
    biases of the attention output and the feed-forward; qkv_bias: of the q/k/v projections (None: as `bias`;
    Qwen2 has them without the others). attn_window: causal sliding window (Mistral): each token sees itself
    and the window - 1 before it. tie_embeddings: the output head is the token embedding (GPT-2, nanoGPT).

    Init as GPT-2 / nanoGPT: normal(0, 0.02) weights, zero biases, the residual projections (attn.proj,
    mlp.fc2) scaled by 1 / sqrt(2 * depth) so the residual stream does not grow with depth.
    """

    name = "lm"
    modality = "text"
    task = "complete"
    attention_layers = ("blocks.*.attn",)

    def __init__(
        self,
        vocab_size: int,
        block_size: int,
        *,
        dim: int = 128,
        depth: int = 4,
        num_heads: int = 4,
        num_kv_heads: int | None = None,
        mlp_ratio: float = 4.0,
        ffn_dim: int | None = None,
        ffn: str = "mlp",
        act: str = "gelu",
        norm: str = "layernorm",
        norm_eps: float = 1e-5,
        positions: str = "learned",
        rope_base: float = 10000.0,
        rope_scaling: dict[str, Any] | None = None,
        bias: bool = True,
        qkv_bias: bool | None = None,
        attn_window: int | None = None,
        tie_embeddings: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
    ) -> None:
        super().__init__()
        require_int("vocab_size", vocab_size)
        require_int("block_size", block_size, note=" (the longest sequence)")
        require_int("depth", depth)
        require_choice("positions", positions, POSITIONS)
        require_number("rope_base", rope_base, low=0, low_open=True)
        rope_scaling = check_rope_scaling(rope_scaling)
        require_bool("bias", bias)
        require_bool("tie_embeddings", tie_embeddings)
        block_options = dict(mlp_ratio=mlp_ratio, num_kv_heads=num_kv_heads, ffn_dim=ffn_dim, ffn=ffn, act=act,
                             norm=norm, norm_eps=norm_eps, bias=bias, attn_window=attn_window, drop=drop,
                             attn_drop=attn_drop, qkv_bias=bias if qkv_bias is None else qkv_bias)
        check_block_options(dim=dim, num_heads=num_heads, **block_options)
        self.vocab_size = vocab_size
        self.block_size = block_size
        self.depth = depth
        self.attn_window = attn_window
        self.tok_embed = nn.Embedding(vocab_size, dim)
        self.pos_embed = nn.Embedding(block_size, dim) if positions == "learned" else None
        self.rope = None
        if positions == "rotary":
            self.rope = RotaryEmbedding(dim // num_heads, base=rope_base)
            self.rope.inv_freq.copy_(rotary_table(dim // num_heads, rope_base, rope_scaling))
        self.drop = nn.Dropout(drop)
        self.blocks = nn.ModuleList(EncoderBlock(dim, num_heads, rotary=self.rope, **block_options)
                                    for _ in range(depth))
        self.norm = norm_layer(norm, dim, norm_eps)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        self._init_weights()
        if tie_embeddings:
            self.head.weight = self.tok_embed.weight
        share_rotary_table(self)  # one rotary buffer for every block, kept once in the state dict

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp.fc2):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * self.depth))

    def new_caches(self, capacity: int | None = None, *, fixed: bool = False) -> list[KVCache]:
        """One self-attention cache per block. `capacity`: keys each holds at most (allocated once, written in
        place; a windowed block needs window - 1 + its longest write); None: grow by concatenation. fixed: the
        static cache of a compiled decode step (KVCache's `fixed`)."""
        return [KVCache(capacity=capacity, fixed=fixed) for _ in self.blocks]

    def forward(self, ids: Tensor, *, key_padding_mask: Tensor | None = None, positions: Tensor | None = None,
                caches: list[KVCache] | None = None, last_only: bool = False) -> Tensor:
        """ids (B, T) -> logits (B, T, vocab_size), or (B, 1, vocab_size) with last_only.

        key_padding_mask (B, S): True marks padded keys (S counts the cached keys too); positions (B, T): each
        row's positions (left-padded batches); None = the caches' position onwards. caches: from new_caches,
        for step-by-step decoding. last_only: the output layer on the last position only (decoding needs no
        more: for a 512-token prompt and GPT-2's 50,257 words that skips about a third of the prompt's work).
        """
        if ids.dim() != 2 or ids.dtype != torch.long:
            raise ValueError(f"expected (batch, length) int64 token ids, got {tuple(ids.shape)} {ids.dtype}")
        if caches is not None and caches[0].fixed and positions is None:
            raise ValueError("fixed caches (compiled decoding) need each token's `positions` (B, T)")
        past = 0 if caches is None else caches[0].position
        if self.pos_embed is not None and positions is None and past + ids.shape[1] > self.block_size:
            raise ValueError(f"positions up to {past + ids.shape[1]}: longer than block_size={self.block_size} "
                             f"(learned positions)")
        x = self.tok_embed(ids)  # (B, T, dim)
        if self.pos_embed is not None:
            pos = torch.arange(past, past + ids.shape[1], device=ids.device) if positions is None else positions
            x = x + self.pos_embed(pos)
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, key_padding_mask=key_padding_mask, causal=True, positions=positions,
                      cache=None if caches is None else caches[i])
        if last_only:
            x = x[:, -1:]
        return self.head(self.norm(x))  # (B, T or 1, vocab_size)

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], **options: Any) -> Tensor:
        """Continue each prompt; see models.generate.generate for the options."""
        return generate(self, prompts, **options)

    def onnx_spec(self) -> OnnxSpec:
        """ids (B, T) int64 -> logits (B, T, vocab_size); B and T dynamic, T up to block_size (the example is at
        most 128 tokens: a converted Mistral's block_size is 131072)."""
        ids = torch.randint(0, self.vocab_size, (2, min(self.block_size, 128)))
        length = Dim("length", min=2, max=self.block_size)
        return OnnxSpec(_PlainCausalLM(self).eval(), ["ids"], (ids,), ({0: Dim("batch", min=1), 1: length},),
                        {"ids": ["batch", "length"]})


class _PlainCausalLM(nn.Module):
    """CausalLM with ids as its only input (the export traces no optional arguments)."""

    def __init__(self, net: CausalLM) -> None:
        super().__init__()
        self.net = net

    def forward(self, ids: Tensor) -> Tensor:
        return self.net(ids)  # (B, T, vocab_size)


