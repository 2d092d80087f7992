"""Sequence classifier: token ids -> embeddings + positions -> shared encoder -> first token -> head.

For long token sequences (Long Range Arena's ListOps, data/listops.py): the encoder's self-attention
can be a sliding window with global tokens (`attn_window`, `attn_global`), so its cost is linear in length.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.export import Dim
from timm.layers import trunc_normal_

from models.embeddings import sinusoidal_table
from models.checks import require_int, require_token_id
from models.layers import Encoder, check_block_options
from models.network import Network, OnnxSpec


class SequenceClassifier(Network):
    """(B, L) token ids, `pad_id` marking padding, the first token a class token -> (B, num_classes).

    Args mirror configs/model/sequence.yaml `net:`. Positions are the fixed sinusoid table (no
    parameters for 2,000 positions); `attn_global=1` lets the class token see the whole sequence.
    """

    name = "sequence"
    modality = "tokens"

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        max_len: int,
        *,
        dim: int = 64,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        num_kv_heads: int | None = None,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        attn_window: int | None = None,
        attn_global: int = 0,
        pad_id: int = 0,
    ) -> None:
        super().__init__()
        block_options = dict(num_heads=num_heads, mlp_ratio=mlp_ratio, num_kv_heads=num_kv_heads,
                             qkv_bias=qkv_bias, drop=drop, attn_drop=attn_drop, attn_window=attn_window,
                             attn_global=attn_global)
        check_block_options(dim=dim, drop_path=drop_path, **block_options)
        require_int("depth", depth)
        require_int("vocab_size", vocab_size)
        require_int("num_classes", num_classes, at_least=2, note=" (classes to tell apart)")
        require_int("max_len", max_len)
        require_token_id("pad_id", pad_id, vocab_size)
        self.dim = dim
        self.max_len = max_len
        self.pad_id = pad_id
        self.embed = nn.Embedding(vocab_size, dim)
        self.register_buffer("pos", sinusoidal_table(max_len, dim), persistent=False)
        self.encoder = Encoder(dim=dim, depth=depth, drop_path=drop_path, **block_options)
        self.head = nn.Linear(dim, num_classes)
        nn.init.normal_(self.embed.weight, std=dim**-0.5)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, ids: Tensor, always_mask: bool = True) -> Tensor:
        """(B, L) ids -> (B, num_classes). The padding mask is built on the ids' device even when nothing
        is padded (an all-False mask changes nothing): no host read of the ids, no branch on their values.
        `always_mask=False` skips it when nothing is padded, at the cost of that read (a GPU sync)."""
        if ids.dim() != 2 or ids.dtype != torch.long:
            raise ValueError(f"expected (batch, length) int64 token ids, got {tuple(ids.shape)} {ids.dtype}")
        if ids.shape[1] > self.max_len:
            raise ValueError(f"sequence of {ids.shape[1]} tokens is longer than max_len={self.max_len}")
        pad = ids.eq(self.pad_id)
        # sqrt(dim) puts embeddings (std dim^-0.5) on the scale of the unit sin/cos positions.
        x = self.embed(ids) * math.sqrt(self.dim) + self.pos[: ids.shape[1]]
        x = self.encoder(x, key_padding_mask=pad if always_mask or bool(pad.any()) else None)
        return self.head(x[:, 0])

    def onnx_spec(self) -> OnnxSpec:
        """ids (B, L) int64, `pad_id` marking padding: B and L dynamic. L spans the lengths whose attention
        takes one path: up to max_len, or with a window from where the blocked window path starts
        (3 x attn_window + 1; shorter sequences take the dense path, another graph)."""
        window = self.encoder.blocks[0].attn.window
        shortest = 1 if window is None or self.max_len <= 3 * window else 3 * window + 1
        ids = torch.randint(0, self.embed.num_embeddings - 1, (2, self.max_len))
        ids = ids + (ids >= self.pad_id).long()  # every id but pad
        ids[1, self.max_len // 2 + 1:] = self.pad_id  # the second row padded, past its first token
        length = Dim("length", min=shortest, max=self.max_len)
        return OnnxSpec(_MaskedSequenceClassifier(self).eval(), ["ids"], (ids,), ({0: Dim("batch", min=1), 1: length},),
                        {"ids": ["batch", "length"]})


class _MaskedSequenceClassifier(nn.Module):
    """SequenceClassifier with the padding mask always built: the graph export traces no branch on values."""

    def __init__(self, net: SequenceClassifier) -> None:
        super().__init__()
        self.net = net

    def forward(self, ids: Tensor) -> Tensor:
        return self.net(ids, always_mask=True)  # (B, num_classes)
