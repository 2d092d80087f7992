"""Encoder-decoder transformer for translation, with cached greedy and batched beam-search decoding.

Encoder: self-attention blocks over the source. Decoder: causal self-attention, cross-attention to
the encoder output, MLP (models/layers.py), all on the shared attention core. Decoding keeps a
key/value cache per layer: self-attention keys grow by one step at a time, cross-attention keys
are projected from the source once per sentence (`KVCache(static=True)`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.attention import KVCache
from models.embeddings import sinusoidal_table
from models.layers import DecoderBlock, Encoder, LayerNorm

from models.tokenizer import BOS_ID, EOS_ID, PAD_ID


class Translator(nn.Module):
    """Sequence-to-sequence transformer; `forward(src, tgt_in)` gives (B, T, vocab) logits.

    Args:
        vocab_size: joint source/target vocabulary (data fills it from the tokenizer).
        dim, encoder_depth, decoder_depth, num_heads, mlp_ratio, num_kv_heads, qkv_bias: transformer size.
        max_len: longest source or target (in tokens) the position table covers.
        positions: "sinusoidal" (fixed; runs on any length up to max_len) or "learned".
        tie_embeddings: one matrix for source embedding, target embedding and output layer.
        drop, attn_drop, drop_path: regularisation.
        attn_window, attn_global: sliding-window self-attention in the encoder and the decoder (whose
            cache then rolls), and global source tokens; see models/attention.py. None = full attention.
    """

    def __init__(
        self,
        vocab_size: int,
        dim: int = 256,
        encoder_depth: int = 3,
        decoder_depth: int = 3,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        num_kv_heads: int | None = None,
        qkv_bias: bool = True,
        max_len: int = 256,
        positions: str = "sinusoidal",
        tie_embeddings: bool = True,
        drop: float = 0.1,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        attn_window: int | None = None,
        attn_global: int = 0,
    ) -> None:
        super().__init__()
        if positions not in ("sinusoidal", "learned"):
            raise ValueError(f"positions must be 'sinusoidal' or 'learned', got {positions!r}")
        if decoder_depth < 1:
            raise ValueError(f"decoder_depth must be >= 1, got {decoder_depth}")
        self.vocab_size, self.dim, self.max_len = vocab_size, dim, max_len
        self.src_embed = nn.Embedding(vocab_size, dim, padding_idx=PAD_ID)
        self.tgt_embed = self.src_embed if tie_embeddings else nn.Embedding(vocab_size, dim, padding_idx=PAD_ID)
        if positions == "learned":
            self.pos = nn.Parameter(torch.randn(max_len, dim) * 0.02)
        else:
            self.register_buffer("pos", sinusoidal_table(max_len, dim), persistent=False)
        self.drop = nn.Dropout(drop)
        self.encoder = Encoder(dim, encoder_depth, num_heads, mlp_ratio, num_kv_heads, qkv_bias, drop, attn_drop,
                               drop_path, attn_window, attn_global)
        self.decoder = nn.ModuleList(
            DecoderBlock(dim, num_heads, mlp_ratio, num_kv_heads, qkv_bias, drop, attn_drop,
                         drop_path * i / max(decoder_depth - 1, 1), attn_window)
            for i in range(decoder_depth)
        )
        self.norm = LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        if tie_embeddings:
            self.head.weight = self.src_embed.weight
        nn.init.normal_(self.src_embed.weight, std=dim**-0.5)
        if not tie_embeddings:
            nn.init.normal_(self.tgt_embed.weight, std=dim**-0.5)

    def no_weight_decay(self) -> set[str]:
        return {"pos"}

    def _embed(self, table: nn.Embedding, ids: Tensor, offset: int = 0) -> Tensor:
        if ids.dim() != 2:
            raise ValueError(f"token ids must be (batch, length), got shape {tuple(ids.shape)}")
        L = ids.shape[1]
        if L == 0:  # an empty source would silently decode from nothing (cross-attention over no keys gives 0)
            raise ValueError(f"token ids are empty, shape {tuple(ids.shape)}: give at least one token per row")
        if offset + L > self.max_len:
            raise ValueError(f"sequence of {offset + L} tokens is longer than max_len={self.max_len}; "
                             f"truncate the input or build the model with a larger max_len")
        # sqrt(dim) scaling keeps token embeddings (std dim^-0.5, tied with the output) on par with positions.
        return self.drop(table(ids) * math.sqrt(self.dim) + self.pos[offset: offset + L])

    def encode(self, src: Tensor, always_mask: bool = False) -> tuple[Tensor, Tensor | None]:
        """src (B, S) ids -> memory (B, S, dim) and its padding mask (B, S), True = pad; None when
        nothing is padded (no mask to build and apply in every later cross-attention step).
        `always_mask` keeps the mask even then: no branch on tensor values, for graph export."""
        pad = src.eq(PAD_ID)
        pad = pad if always_mask or bool(pad.any()) else None
        return self.encoder(self._embed(self.src_embed, src), key_padding_mask=pad), pad

    def decode(self, tgt_in: Tensor, memory: Tensor, memory_pad: Tensor | None,
               caches: list[tuple[KVCache, KVCache]] | None = None, always_mask: bool = False) -> Tensor:
        """Decoder logits (B, T, vocab). With `caches`, tgt_in holds only the new positions."""
        offset = caches[0][0].position if caches else 0
        x = self._embed(self.tgt_embed, tgt_in, offset)
        tgt_pad = tgt_in.eq(PAD_ID) if caches is None and (always_mask or bool(tgt_in.eq(PAD_ID).any())) else None
        for i, block in enumerate(self.decoder):
            self_cache, cross_cache = caches[i] if caches else (None, None)
            x = block(x, memory, tgt_padding_mask=tgt_pad, memory_padding_mask=memory_pad,
                      self_cache=self_cache, cross_cache=cross_cache)
        return self.head(self.norm(x))

    def forward(self, src: Tensor, tgt_in: Tensor, always_mask: bool = False) -> Tensor:
        memory, pad = self.encode(src, always_mask)
        return self.decode(tgt_in, memory, pad, always_mask=always_mask)

    def new_caches(self) -> list[tuple[KVCache, KVCache]]:
        return [(KVCache(), KVCache(static=True)) for _ in self.decoder]

    def _next_logits(self, ys: Tensor, memory: Tensor, pad: Tensor | None, caches: list | None) -> Tensor:
        if caches is not None:
            return self.decode(ys[:, -1:], memory, pad, caches)[:, -1]
        return self.decode(ys, memory, pad)[:, -1]  # no cache: recompute the whole prefix

    @torch.no_grad()
    def greedy(self, src: Tensor, max_new_tokens: int = 64, use_cache: bool = True, min_new_tokens: int = 0) -> Tensor:
        """(B, <= max_new_tokens) generated ids; rows end with EOS then PAD. EOS is not allowed
        before `min_new_tokens` (benchmarks use it to decode a fixed length)."""
        memory, pad = self.encode(src)
        B = src.shape[0]
        ys = torch.full((B, 1), BOS_ID, dtype=torch.long, device=src.device)
        done = torch.zeros(B, dtype=torch.bool, device=src.device)
        caches = self.new_caches() if use_cache else None
        for t in range(min(max_new_tokens, self.max_len - 1)):
            logits = self._next_logits(ys, memory, pad, caches)
            if t < min_new_tokens:
                logits[:, EOS_ID] = float("-inf")
            nxt = logits.argmax(-1)
            nxt = nxt.masked_fill(done, PAD_ID)
            ys = torch.cat([ys, nxt[:, None]], dim=1)
            done |= nxt.eq(EOS_ID)
            if bool(done.all()):
                break
        return ys[:, 1:]

    @torch.no_grad()
    def beam_search(self, src: Tensor, beam_size: int = 4, max_new_tokens: int = 64, length_penalty: float = 0.6,
                    use_cache: bool = True, min_new_tokens: int = 0) -> Tensor:
        """Batched beam search: (B, <= max_new_tokens) ids of each sentence's best hypothesis.

        Hypotheses are ranked by log p / lp(len), lp = ((5 + len) / 6) ** length_penalty (Wu et al.
        2016), len counting the tokens up to and including EOS; a finished hypothesis keeps its score.
        """
        if beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {beam_size}")
        B, K, V = src.shape[0], beam_size, self.vocab_size
        memory, pad = self.encode(src)
        memory = memory.repeat_interleave(K, 0)  # (B*K, S, dim)
        pad = None if pad is None else pad.repeat_interleave(K, 0)
        dev = src.device
        ys = torch.full((B * K, 1), BOS_ID, dtype=torch.long, device=dev)
        logp = torch.zeros(B, K, device=dev)
        logp[:, 1:] = float("-inf")  # all beams start identical: keep one, or the top-K would be K copies
        lengths = torch.zeros(B, K, device=dev)
        done = torch.zeros(B, K, dtype=torch.bool, device=dev)
        caches = self.new_caches() if use_cache else None
        lp = lambda n: ((5.0 + n) / 6.0) ** length_penalty  # noqa: E731
        for t in range(min(max_new_tokens, self.max_len - 1)):
            step = F.log_softmax(self._next_logits(ys, memory, pad, caches).float(), dim=-1).view(B, K, V)
            if t < min_new_tokens:
                step[..., EOS_ID] = float("-inf")
            # A finished beam has exactly one continuation (PAD) that changes nothing.
            frozen = torch.full((V,), float("-inf"), device=dev)
            frozen[PAD_ID] = 0.0
            step = torch.where(done[..., None], frozen, step)
            cand_logp = logp[..., None] + step  # (B, K, V)
            cand_len = torch.where(done, lengths, lengths + 1)[..., None].expand(B, K, V)
            score = (cand_logp / lp(cand_len)).view(B, K * V)
            top = score.topk(K, dim=-1).indices  # (B, K)
            beam, token = top // V, top % V
            logp = cand_logp.view(B, K * V).gather(1, top)
            lengths = cand_len.reshape(B, K * V).gather(1, top)
            done = done.gather(1, beam) | token.eq(EOS_ID)
            rows = (beam + torch.arange(B, device=dev)[:, None] * K).view(-1)
            ys = torch.cat([ys.index_select(0, rows), token.view(-1, 1)], dim=1)
            if caches is not None:
                for self_cache, _ in caches:  # cross-attention keys are identical across a sentence's beams
                    self_cache.reorder(rows)
            if bool(done.all()):
                break
        best = (logp / lp(lengths)).argmax(-1)  # (B,)
        return ys.view(B, K, -1)[torch.arange(B, device=dev), best, 1:]
