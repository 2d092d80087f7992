"""Protein language model (ESM-2, Lin et al. 2023): residue ids -> encoder -> masked-residue logits, and contacts
read from its attention (Rao et al. 2020).

One class for ESM-2 (rotary positions in the half-split layout, pre-norm blocks, eps 1e-5, erf GELU, a final
norm, token dropout) and BERT-style protein models such as AntiBERTy (a learned position table, token types,
a norm after the embeddings, post-norm blocks): the differences are typed options; the blocks and the attention
are the shared ones (models/layers.py, models/attention).

The contact head is ESM's: every layer's and head's attention map, special tokens dropped, symmetrized and
average-product corrected (APC), then a logistic regression over the layers x heads features. Its weights come
from a checkpoint or are fitted on known structures (inference/contacts.py, `evaluate.py contacts=true`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.export import Dim

from models.attention import AttentionRecorder, RotaryEmbedding
from models.checks import require_bool, require_choice, require_int, require_number
from models.layers import Activation, EncoderBlock, LayerNorm, activation, check_block_options, share_rotary_table
from models.network import Network, OnnxSpec
from models.protein_alphabet import ALPHABETS, Alphabet

POSITIONS = ("rotary", "learned")
MASK_RATIO_TRAIN = 0.15 * 0.8  # ESM's token dropout: the share of <mask> inputs its training saw


def symmetrize(x: Tensor) -> Tensor:
    """x + x^T over the last two axes (a contact has no direction)."""
    return x + x.transpose(-1, -2)


def apc(x: Tensor) -> Tensor:
    """Average product correction (Dunn et al. 2008): remove each row's and column's background,
    x_ij - x_i. x_.j / x_.. over the last two axes."""
    rows, cols = x.sum(-1, keepdim=True), x.sum(-2, keepdim=True)
    return x - rows * cols / x.sum((-1, -2), keepdim=True)


class ProteinLM(Network):
    """(B, T) residue ids framed `<cls> ... <eos>` -> (B, T, vocab) logits of the residue at every position.

    Args mirror configs/model/protein.yaml `net:`. alphabet: "esm" (33 tokens) or "antiberty" (25).
    positions: "rotary" (ESM-2: no table; max_len only bounds training and the export) or "learned"
    (a table of max_len rows, BERT). ffn_dim: feed-forward width. token_dropout: ESM's (the embedding of
    <mask> is zeroed and the rest rescaled by (1 - 0.12) / (1 - the sequence's observed mask share), in
    training and inference alike). norm_first: pre-norm blocks (ESM-2) or post-norm (BERT). embed_norm: a
    LayerNorm after the embeddings (BERT). final_norm: one after the last block (ESM-2's
    emb_layer_norm_after). type_vocab_size: BERT's token-type table (0 = none; every token has type 0).
    attn_window: sliding-window attention (each residue sees those less than W away) for proteins longer
    than the training length.
    """

    name = "protein"
    modality = "protein"
    task = "unmask"
    attention_layers = ("blocks.*.attn",)

    def __init__(
        self,
        *,
        alphabet: str = "esm",
        dim: int = 320,
        depth: int = 6,
        num_heads: int = 20,
        ffn_dim: int = 1280,
        max_len: int = 1026,
        positions: str = "rotary",
        token_dropout: bool = True,
        norm_first: bool = True,
        embed_norm: bool = False,
        final_norm: bool = True,
        type_vocab_size: int = 0,
        norm_eps: float = 1e-5,
        act: Activation = "gelu",
        attn_window: int | None = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
    ) -> None:
        super().__init__()
        require_choice("alphabet", alphabet, ALPHABETS)
        require_int("depth", depth)
        require_int("ffn_dim", ffn_dim, note=" (feed-forward hidden width)")
        require_int("max_len", max_len, note=" (the longest sequence trained on, <cls> and <eos> included)")
        require_choice("positions", positions, POSITIONS)
        for key, value in (("token_dropout", token_dropout), ("embed_norm", embed_norm),
                           ("final_norm", final_norm)):
            require_bool(key, value)
        require_int("type_vocab_size", type_vocab_size, at_least=0)
        block_options = dict(ffn_dim=ffn_dim, norm_eps=norm_eps, norm_first=norm_first, act=act,
                             attn_window=attn_window, drop=drop, attn_drop=attn_drop)
        check_block_options(dim=dim, num_heads=num_heads, **block_options)
        require_number("norm_eps", norm_eps, low=0, low_open=True)
        self.alphabet = Alphabet.named(alphabet)
        vocab = len(self.alphabet)
        self.dim, self.depth, self.num_heads = dim, depth, num_heads
        self.max_len = max_len
        self.token_dropout = token_dropout
        self.tok_embed = nn.Embedding(vocab, dim, padding_idx=self.alphabet.pad)
        self.pos_embed = nn.Embedding(max_len, dim) if positions == "learned" else None
        self.type_embed = nn.Embedding(type_vocab_size, dim) if type_vocab_size else None
        self.embed_norm = LayerNorm(dim, norm_eps) if embed_norm else None
        self.drop = nn.Dropout(drop)
        # One rotary table for every block (ESM-2 computes the same table in each layer).
        self.rope = RotaryEmbedding(dim // num_heads) if positions == "rotary" else None
        self.blocks = nn.ModuleList(EncoderBlock(dim, num_heads, rotary=self.rope, **block_options)
                                    for _ in range(depth))
        self.norm = LayerNorm(dim, norm_eps) if final_norm else None
        # The masked-LM head (ESM's and BERT's): dense -> GELU -> LayerNorm -> the token embedding + a bias.
        self.head_dense = nn.Linear(dim, dim)
        self.head_act = activation(act)
        self.head_norm = LayerNorm(dim, norm_eps)
        self.head_bias = nn.Parameter(torch.zeros(vocab))
        # Fitted by scikit-learn on frozen maps (inference/contacts.py), never by the masked-LM loss: no gradient,
        # so DDP does not wait for one that never comes.
        self.contact_head = nn.Linear(depth * num_heads, 1).requires_grad_(False)
        self._init_weights()
        share_rotary_table(self)  # one rotary buffer for every block, kept once in the state dict

    def _init_weights(self) -> None:
        """BERT's: normal(0, 0.02) weights, zero biases, the padding embedding zero."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        with torch.no_grad():
            self.tok_embed.weight[self.alphabet.pad].zero_()
            # An all-zero contact head means "not fitted" (predict.py then says how to fit it): masked-LM
            # training never touches it, so random weights would print random contacts as if they meant something.
            self.contact_head.weight.zero_()

    @property
    def vocab_size(self) -> int:
        return len(self.alphabet)

    def embed(self, ids: Tensor, pad_mask: Tensor) -> Tensor:
        """(B, T, dim) input vectors: token (+ position, + type 0) embeddings, ESM's token dropout, padding zero."""
        x = self.tok_embed(ids)
        keep = (~pad_mask).unsqueeze(-1).to(x.dtype)
        if self.token_dropout:
            masked = ids.eq(self.alphabet.mask)
            x = x.masked_fill(masked.unsqueeze(-1), 0.0)
            observed = masked.sum(-1).to(x.dtype) / keep.sum((-1, -2)).clamp(min=1)
            x = x * ((1 - MASK_RATIO_TRAIN) / (1 - observed))[:, None, None]
        if self.pos_embed is not None:
            x = x + self.pos_embed.weight[: ids.shape[1]]
        if self.type_embed is not None:
            x = x + self.type_embed.weight[0]
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        return self.drop(x * keep)

    def hidden(self, ids: Tensor, pad_mask: Tensor | None = None, always_mask: bool = False) -> Tensor:
        """(B, T) ids -> (B, T, dim) final hidden states (after the final norm, where the model has one).
        always_mask: apply the padding mask even when nothing is padded (the graph export branches on no value)."""
        if ids.dim() != 2 or ids.dtype != torch.long:
            raise ValueError(f"expected (batch, length) int64 residue ids, got {tuple(ids.shape)} {ids.dtype}")
        if self.pos_embed is not None and ids.shape[1] > self.max_len:
            raise ValueError(f"{ids.shape[1]} tokens: longer than max_len={self.max_len} (learned positions)")
        pad_mask = ids.eq(self.alphabet.pad) if pad_mask is None else pad_mask
        x = self.embed(ids, pad_mask)
        # Nothing padded (one protein, or a batch of equal lengths): no mask, so the kernels stream the (T, T)
        # scores once less. The check reads one flag on the host (a sync on a GPU, once a forward).
        keys = pad_mask if always_mask or bool(pad_mask.any()) else None
        for block in self.blocks:
            x = block(x, key_padding_mask=keys)
        return x if self.norm is None else self.norm(x)

    def lm_head(self, h: Tensor) -> Tensor:
        """(..., dim) hidden states -> (..., vocab) logits (the output layer is the token embedding)."""
        h = self.head_norm(self.head_act(self.head_dense(h)))
        return F.linear(h, self.tok_embed.weight) + self.head_bias

    def forward(self, ids: Tensor, pad_mask: Tensor | None = None, always_mask: bool = False) -> Tensor:
        """ids (B, T) -> logits (B, T, vocab). pad_mask (B, T): True = padding (default: ids == pad)."""
        return self.lm_head(self.hidden(ids, pad_mask, always_mask))

    def contact_features(self, ids: Tensor, pad_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(logits, features): features (B, T - 2, T - 2, depth * num_heads), every layer's and head's map
        over the residues (specials and padding zeroed, <cls> and the last column dropped as ESM does),
        symmetrized and APC-corrected; row i, column j = residues i + 1 and j + 1 (1-based)."""
        pad_mask = ids.eq(self.alphabet.pad) if pad_mask is None else pad_mask
        with AttentionRecorder(self, ["blocks.*.attn"]) as rec:
            logits = self(ids, pad_mask)
        maps = torch.stack(list(rec.maps.values()), dim=1)  # (B, depth, H, T, T)
        # Zero rows / columns of padding and of <eos>, then drop <cls> and the last position (ESM's head).
        keep = (~pad_mask & ids.ne(self.alphabet.eos)).to(maps.dtype)
        maps = maps * keep[:, None, None, :, None] * keep[:, None, None, None, :]
        maps = maps[..., 1:-1, 1:-1].flatten(1, 2)  # (B, depth * H, T - 2, T - 2)
        features = apc(symmetrize(maps)).permute(0, 2, 3, 1)
        return logits, features

    def contacts(self, ids: Tensor, pad_mask: Tensor | None = None) -> Tensor:
        """(B, T - 2, T - 2) contact probabilities between residues (ESM's `predict_contacts`)."""
        _, features = self.contact_features(ids, pad_mask)
        weight = self.contact_head.weight
        return torch.sigmoid(self.contact_head(features.to(weight.dtype)).squeeze(-1))

    def onnx_spec(self) -> OnnxSpec:
        """ids (B, T) int64 -> logits (B, T, vocab); B and T (3 .. max_len) dynamic."""
        ids = torch.randint(4, 24, (2, min(self.max_len, 16)))
        ids[:, 0], ids[:, -1] = self.alphabet.cls, self.alphabet.eos
        length = Dim("length", min=3, max=self.max_len)
        return OnnxSpec(_PlainProteinLM(self).eval(), ["ids"], (ids,), ({0: Dim("batch", min=1), 1: length},),
                        {"ids": ["batch", "length"]})


class _PlainProteinLM(nn.Module):
    """ProteinLM with ids as its only input (the export traces no optional arguments)."""

    def __init__(self, net: ProteinLM) -> None:
        super().__init__()
        self.net = net

    def forward(self, ids: Tensor) -> Tensor:
        return self.net(ids, always_mask=True)



__all__ = ["ProteinLM", "apc", "symmetrize"]
