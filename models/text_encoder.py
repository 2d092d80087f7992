"""BERT-style text encoder on the zoo's blocks: token ids -> contextual vectors -> one sentence embedding.

Embeddings are BERT's (word + learned position + token type, then LayerNorm); the encoder is the shared
`Encoder` with post-norm blocks (BERT: x = LN(x + sublayer(x)), no final norm); the sentence embedding is
the mean of the non-padding token vectors, L2-normalised (sentence-transformers' pooling). Weights come
from a pretrained BERT (models/pretrained/bert.py: all-MiniLM-L6-v2 and friends).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.export import Dim

from models.checks import require_int, require_token_id
from models.layers import Activation, Encoder, LayerNorm, check_block_options
from models.network import Network, OnnxSpec


class TextEncoder(Network):
    """(B, L) token ids -> (B, L, dim) hidden states; `embed` gives (B, dim) unit sentence vectors.

    Args: vocab_size, dim, depth, num_heads, mlp_ratio: transformer size; max_len: position table length;
    type_vocab_size: segment ids (BERT: 2); norm_eps, act: BERT's 1e-12 and exact GELU; pad_id: padding token;
    drop, attn_drop: dropout (training only).
    """

    name = "text_encoder"
    modality = "text"
    task = "embed"

    def __init__(
        self,
        vocab_size: int,
        *,
        dim: int = 384,
        depth: int = 6,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        max_len: int = 512,
        type_vocab_size: int = 2,
        norm_eps: float = 1e-12,
        act: Activation = "gelu",
        pad_id: int = 0,
        drop: float = 0.0,
        attn_drop: float = 0.0,
    ) -> None:
        super().__init__()
        # BERT: post-norm blocks, no final norm.
        block_options = dict(num_heads=num_heads, mlp_ratio=mlp_ratio, drop=drop, attn_drop=attn_drop,
                             norm_eps=norm_eps, norm_first=False, act=act)
        check_block_options(dim=dim, **block_options)
        require_int("depth", depth)
        require_int("vocab_size", vocab_size)
        require_int("max_len", max_len)
        require_int("type_vocab_size", type_vocab_size)
        require_token_id("pad_id", pad_id, vocab_size)
        self.dim = dim
        self.max_len = max_len
        self.pad_id = pad_id
        self.word_embed = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        self.pos_embed = nn.Embedding(max_len, dim)
        self.type_embed = nn.Embedding(type_vocab_size, dim)
        self.embed_norm = LayerNorm(dim, norm_eps)
        self.drop = nn.Dropout(drop)
        self.encoder = Encoder(dim=dim, depth=depth, final_norm=False, **block_options)

    def forward(self, ids: Tensor, pad_mask: Tensor | None = None, token_types: Tensor | None = None,
                always_mask: bool = True) -> Tensor:
        """ids (B, L); pad_mask (B, L) True = padding (default: ids == pad_id); token_types (B, L) or zeros.
        The mask applies even when nothing is padded (no host read of it, no branch on values);
        `always_mask=False` skips it then, at the cost of that read (a GPU sync)."""
        if ids.dim() != 2 or ids.dtype != torch.long:
            raise ValueError(f"expected (batch, length) int64 token ids, got {tuple(ids.shape)} {ids.dtype}")
        L = ids.shape[1]
        if not 1 <= L <= self.max_len:
            raise ValueError(f"sequence of {L} tokens: expected 1..max_len={self.max_len}")
        if pad_mask is None:
            pad_mask = ids.eq(self.pad_id)
        types = torch.zeros_like(ids) if token_types is None else token_types
        x = self.word_embed(ids) + self.pos_embed.weight[:L] + self.type_embed(types)
        x = self.drop(self.embed_norm(x))
        return self.encoder(x, key_padding_mask=pad_mask if always_mask or bool(pad_mask.any()) else None)

    def embed(self, ids: Tensor, pad_mask: Tensor | None = None) -> Tensor:
        """(B, dim) sentence embeddings: mean over the non-padding tokens, L2-normalised."""
        pad_mask = ids.eq(self.pad_id) if pad_mask is None else pad_mask
        h = self(ids, pad_mask)
        keep = (~pad_mask).unsqueeze(-1).to(h.dtype)
        return F.normalize((h * keep).sum(1) / keep.sum(1).clamp(min=1.0), dim=-1)

    def onnx_spec(self) -> OnnxSpec:
        """input_ids (B, L) int64 and attention_mask (B, L) int64, 1 = token, 0 = padding (what tokenizers
        give): B and L (1 .. max_len) dynamic; the output is the hidden states (B, L, dim)."""
        length = min(8, self.max_len)
        ids = torch.randint(0, self.word_embed.num_embeddings - 1, (2, length))
        ids = ids + (ids >= self.pad_id).long()  # every id but pad
        attention_mask = torch.ones(2, length, dtype=torch.long)
        attention_mask[1, length // 2:] = 0  # the second row padded
        ids = ids.masked_fill(attention_mask.eq(0), self.pad_id)
        axes = {0: Dim("batch", min=1), 1: Dim("length", min=1, max=self.max_len)}
        return OnnxSpec(_MaskedTextEncoder(self).eval(), ["input_ids", "attention_mask"], (ids, attention_mask),
                        (axes, axes), {"input_ids": ["batch", "length"], "attention_mask": ["batch", "length"]},
                        ["hidden_states"])


class _MaskedTextEncoder(nn.Module):
    """TextEncoder on (input_ids, attention_mask) with the mask always applied: the graph export traces no
    branch on tensor values, and takes the attention mask tokenizers give (1 = token)."""

    def __init__(self, net: TextEncoder) -> None:
        super().__init__()
        self.net = net

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.net(input_ids, attention_mask.eq(0), always_mask=True)  # (B, L, dim)
