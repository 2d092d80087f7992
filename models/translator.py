"""Encoder-decoder transformer for translation, with cached greedy and batched beam-search decoding.

Encoder: self-attention blocks over the source. Decoder: causal self-attention, cross-attention to
the encoder output, MLP (models/layers.py), all on the shared attention core. Decoding keeps a
key/value cache per layer: self-attention keys are written one step at a time into buffers allocated
once (`KVCache(capacity=steps)`), cross-attention keys are projected from the source once per sentence
(`KVCache(static=True)`).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.export import Dim

from models.attention import KVCache
from models.checks import require_bool, require_choice, require_int, require_token_id
from models.embeddings import sinusoidal_table
from models.layers import Activation, DecoderBlock, Encoder, LayerNorm, check_block_options
from models.network import Network, OnnxSpec

from models.tokenizer import BOS_ID, EOS_ID, PAD_ID

Prompt = Sequence[int] | Sequence[Sequence[int]]  # one start for every sentence, or one each
Encoded = tuple[Tensor, Tensor | None]  # encode(src): the memory (B, S, dim) and its padding mask (B, S) or None
CHECK_EVERY = 8  # greedy / beam search read `done` back (a host sync on a GPU) every this many steps


class Seq2SeqSearch:
    """Cached greedy and batched beam search for an encoder-decoder network (the Translator, Whisper).

    The network gives `encode(src) -> (memory, pad)`, `decode(tgt_in, memory, pad, caches) -> logits`,
    `new_caches(capacity)` (one (self, cross) KVCache pair per decoder layer) and the ids `pad_id`, `bos_id`,
    `eos_id`, with `vocab_size` and `max_len` (decoder positions). Decoding starts from `prompt` (None: the one
    `bos_id`; Whisper: start of transcript, language, task, no-timestamps) and returns only the new tokens.
    """

    pad_id: int
    bos_id: int
    eos_id: int
    vocab_size: int
    max_len: int
    # On the CPU, read `done` back every this many steps (None: CHECK_EVERY, as on a GPU). Reading it there is no
    # sync, but the steps run past the one that ended every row are paid: Whisper sets 1 (see models/whisper.py).
    cpu_check_every: int | None = None

    def _encoded(self, src: Tensor, encoded: Encoded | None) -> Encoded:
        """The encoder's (memory, pad) of `src`, or `encoded` when the caller computed it already (a fine-tuning run
        that keeps a frozen encoder's outputs, training/speech.py); `src` still gives the batch and the device."""
        if encoded is None:
            return self.encode(src)
        if encoded[0].shape[0] != src.shape[0]:
            raise ValueError(f"encoded: {encoded[0].shape[0]} rows for a batch of {src.shape[0]}")
        return encoded

    def _start(self, batch: int, device: torch.device, prompt: Prompt | None, beams: int = 1) -> Tensor:
        """(batch * beams, P): the tokens each row starts from: bos_id, the prompt, or each sentence's own
        prompt (a list of `batch` lists of one length; Whisper's detected languages differ per recording)."""
        start = torch.tensor([self.bos_id] if prompt is None else prompt, dtype=torch.long, device=device)
        if start.dim() == 2 and start.shape[0] != batch:
            raise ValueError(f"prompt: {start.shape[0]} rows for a batch of {batch}: expected one list of ids, "
                             f"or one per sentence")
        if start.shape[-1] == 0 or start.dim() > 2:
            raise ValueError("prompt: expected a list of token ids (at least the decoder start), or one per "
                             "sentence")
        start = start.expand(batch, -1) if start.dim() == 1 else start
        return start.repeat_interleave(beams, 0)

    def _next_logits(self, ys: Tensor, memory: Tensor, pad: Tensor | None, caches: list | None) -> Tensor:
        if caches is not None:  # the positions not cached yet: the whole prompt first, then one token a step
            return self.decode(ys[:, caches[0][0].position:], memory, pad, caches)[:, -1]
        return self.decode(ys, memory, pad)[:, -1]  # no cache: recompute the whole prefix

    def _mask_step(self, logits: Tensor, t: int, max_new_tokens: int, min_new_tokens: int, banned: Tensor | None,
                   forced_eos: bool, begin_banned: Tensor | None = None) -> Tensor:
        """Tokens not allowed at step t: EOS before min_new_tokens, `banned` ids (HF's bad_words_ids: Marian never
        generates its pad; Whisper's suppress_tokens), `begin_banned` ids on the first step only (Whisper's
        begin_suppress_tokens: no blank, no EOS first), and every token but EOS on the last step when
        `forced_eos` (HF's forced_eos_token_id)."""
        if begin_banned is not None and t == 0:
            logits[..., begin_banned] = float("-inf")
        if t < min_new_tokens:
            logits[..., self.eos_id] = float("-inf")
        if banned is not None:  # a device index made once per call: a Python list is copied over every step
            logits[..., banned] = float("-inf")
        if forced_eos and t == max_new_tokens - 1:
            logits.fill_(float("-inf"))
            logits[..., self.eos_id] = 0.0
        return logits

    def _finished(self, alive: Tensor, t: int, steps: int) -> int | None:
        """After step t: the steps a check after every step would have run (`alive` + 1, counting the one
        that finished every row) once every row is done, else None. Reads `alive` back (a host sync on a
        GPU) only every CHECK_EVERY steps (on the CPU every `cpu_check_every` steps) and on the last step,
        where it returns the steps run at most."""
        every = self.cpu_check_every if alive.device.type == "cpu" and self.cpu_check_every else CHECK_EVERY
        if (t + 1) % every and t < steps - 1:
            return None
        ran = int(alive) + 1
        return min(ran, t + 1) if ran <= t + 1 or t == steps - 1 else None

    @torch.no_grad()
    def greedy(self, src: Tensor, max_new_tokens: int = 64, use_cache: bool = True, min_new_tokens: int = 0,
               banned: tuple[int, ...] = (), forced_eos: bool = False, prompt: Prompt | None = None,
               begin_banned: tuple[int, ...] = (), encoded: Encoded | None = None) -> Tensor:
        """(B, <= max_new_tokens) generated ids; rows end with EOS then PAD. EOS is not allowed
        before `min_new_tokens` (benchmarks use it to decode a fixed length); `banned` ids are never
        generated and `forced_eos` ends every row by the last step (HF generate's bad_words_ids / forced_eos).
        `prompt`: the tokens decoding starts from (None: bos_id); `begin_banned`: ids banned on the first step.
        `encoded`: `encode(src)` when the caller has it already (`_encoded`)."""
        memory, pad = self._encoded(src, encoded)
        B = src.shape[0]
        ys = self._start(B, src.device, prompt)
        P = ys.shape[1]
        done = torch.zeros(B, dtype=torch.bool, device=src.device)
        steps = min(max_new_tokens, self.max_len - P)
        caches = self.new_caches(max(P + steps - 1, 1)) if use_cache else None
        banned = torch.tensor(banned, device=src.device) if banned else None
        begin_banned = torch.tensor(begin_banned, device=src.device) if begin_banned else None
        # Steps after which some row is still running. `done` is read back only every CHECK_EVERY steps;
        # the steps run past the one that finished every row add only pad, and are cut off at the end.
        alive = torch.zeros((), dtype=torch.long, device=src.device)
        for t in range(steps):
            logits = self._mask_step(self._next_logits(ys, memory, pad, caches), t, steps, min_new_tokens, banned,
                                     forced_eos, begin_banned)
            nxt = logits.argmax(-1)
            nxt = nxt.masked_fill(done, self.pad_id)
            ys = torch.cat([ys, nxt[:, None]], dim=1)
            done |= nxt.eq(self.eos_id)
            alive += ~done.all()
            if (n := self._finished(alive, t, steps)) is not None:
                return ys[:, P:P + n]
        return ys[:, P:]  # steps == 0

    @torch.no_grad()
    def beam_search(self, src: Tensor, beam_size: int = 4, max_new_tokens: int = 64, length_penalty: float = 0.6,
                    use_cache: bool = True, min_new_tokens: int = 0, length_norm: str = "gnmt",
                    banned: tuple[int, ...] = (), forced_eos: bool = False, early_stopping: bool = False,
                    renormalize: bool = False, prompt: Prompt | None = None,
                    begin_banned: tuple[int, ...] = (), encoded: Encoded | None = None) -> Tensor:
        """Batched beam search: (B, <= max_new_tokens) ids of each sentence's best hypothesis.

        length_norm="gnmt" (default): hypotheses are ranked by log p / lp(len), lp = ((5 + len) / 6) **
        length_penalty (Wu et al. 2016), len counting the tokens up to and including EOS; a finished hypothesis
        keeps its score. length_norm="hf": Hugging Face generate's beam search, token for token (finished
        hypotheses kept apart, scored log p / len ** length_penalty; see `_beam_search_hf`); `renormalize` is HF's
        renormalize_logits (log-softmax again after banning tokens). `prompt`, `begin_banned` and `encoded` as in
        greedy.
        """
        if beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {beam_size}")
        if length_norm not in ("gnmt", "hf"):
            raise ValueError(f"length_norm={length_norm!r}: expected 'gnmt' or 'hf'")
        if length_norm == "hf":
            return self._beam_search_hf(src, beam_size, max_new_tokens, length_penalty, use_cache, min_new_tokens,
                                        banned, forced_eos, early_stopping, renormalize, prompt, begin_banned,
                                        encoded)
        B, K, V = src.shape[0], beam_size, self.vocab_size
        memory, pad = self._encoded(src, encoded)
        memory = memory.repeat_interleave(K, 0)  # (B*K, S, dim)
        pad = None if pad is None else pad.repeat_interleave(K, 0)
        dev = src.device
        ys = self._start(B, dev, prompt, K)
        P = ys.shape[1]
        logp = torch.zeros(B, K, device=dev)
        logp[:, 1:] = float("-inf")  # all beams start identical: keep one, or the top-K would be K copies
        lengths = torch.zeros(B, K, device=dev)
        done = torch.zeros(B, K, dtype=torch.bool, device=dev)
        lp = lambda n: ((5.0 + n) / 6.0) ** length_penalty  # noqa: E731
        steps = min(max_new_tokens, self.max_len - P)
        caches = self.new_caches(max(P + steps - 1, 1)) if use_cache else None
        banned = torch.tensor(banned, device=dev) if banned else None
        begin_banned = torch.tensor(begin_banned, device=dev) if begin_banned else None
        # A finished beam has exactly one continuation (PAD) that changes nothing.
        frozen = torch.full((V,), float("-inf"), device=dev)
        frozen[self.pad_id] = 0.0
        # Once every beam is done, beam k picks (k, PAD): the step changes nothing (a new top-k could
        # swap beams of equal score), so `done` need only be read back every CHECK_EVERY steps.
        stay = (torch.arange(K, device=dev) * V + self.pad_id).expand(B, K)
        alive = torch.zeros((), dtype=torch.long, device=dev)  # steps after which some beam runs
        for t in range(steps):
            step = F.log_softmax(self._next_logits(ys, memory, pad, caches).float(), dim=-1).view(B, K, V)
            step = self._mask_step(step, t, steps, min_new_tokens, banned, forced_eos, begin_banned)
            step = torch.where(done[..., None], frozen, step)
            cand_logp = logp[..., None] + step  # (B, K, V)
            cand_len = torch.where(done, lengths, lengths + 1)[..., None].expand(B, K, V)
            score = (cand_logp / lp(cand_len)).view(B, K * V)
            top = torch.where(done.all(), stay, score.topk(K, dim=-1).indices)  # (B, K)
            beam, token = top // V, top % V
            logp = cand_logp.view(B, K * V).gather(1, top)
            lengths = cand_len.reshape(B, K * V).gather(1, top)
            done = done.gather(1, beam) | token.eq(self.eos_id)
            rows = (beam + torch.arange(B, device=dev)[:, None] * K).view(-1)
            ys = torch.cat([ys.index_select(0, rows), token.view(-1, 1)], dim=1)
            if caches is not None:
                for self_cache, _ in caches:  # cross-attention keys are identical across a sentence's beams
                    self_cache.reorder(rows)
            alive += ~done.all()
            if (n := self._finished(alive, t, steps)) is not None:
                break
        else:
            n = 0  # steps == 0
        best = (logp / lp(lengths)).argmax(-1)  # (B,)
        return ys.view(B, K, -1)[torch.arange(B, device=dev), best, P:P + n]

    def _beam_search_hf(self, src: Tensor, K: int, max_new_tokens: int, length_penalty: float, use_cache: bool,
                        min_new_tokens: int, banned: tuple[int, ...], forced_eos: bool, early_stopping: bool,
                        renormalize: bool, prompt: Prompt | None = None,
                        begin_banned: tuple[int, ...] = (), encoded: Encoded | None = None) -> Tensor:
        """Hugging Face generate's beam search (transformers 5, `early_stopping` False or True). Each step takes the
        top 2K continuations of the K running beams by summed log-prob; those among the first K that end in EOS
        join the sentence's K finished hypotheses (score: sum of log-probs / generated length ** length_penalty,
        EOS counted) if they beat the worst one; the best K that do not end in EOS run on. A sentence stops when
        its K finished slots are full and its best running beam, scored at the current length, cannot beat the
        worst finished one (with early_stopping=True: as soon as the slots are full). The answer is the best
        finished hypothesis; padded with pad after EOS."""
        B, V, dev = src.shape[0], self.vocab_size, src.device
        ys = self._start(B, dev, prompt, K)
        P = ys.shape[1]
        steps = min(max_new_tokens, self.max_len - P)
        memory, pad = self._encoded(src, encoded)
        memory = memory.repeat_interleave(K, 0)
        pad = None if pad is None else pad.repeat_interleave(K, 0)
        run_logp = torch.zeros(B, K, device=dev)
        run_logp[:, 1:] = -1e9
        fin_seq = torch.full((B, K, steps), self.pad_id, dtype=torch.long, device=dev)
        fin_score = torch.full((B, K), -1e9, device=dev)
        fin_full = torch.zeros(B, K, dtype=torch.bool, device=dev)
        open_ = torch.ones(B, 1, dtype=torch.bool, device=dev)  # HF's is_early_stop_heuristic_unsatisfied
        top_k_mask = torch.arange(2 * K, device=dev) < K
        caches = self.new_caches(max(P + steps - 1, 1)) if use_cache else None
        offsets = torch.arange(B, device=dev)[:, None] * K
        banned = torch.tensor(banned, device=dev) if banned else None
        begin_banned = torch.tensor(begin_banned, device=dev) if begin_banned else None
        for t in range(steps):
            step = F.log_softmax(self._next_logits(ys, memory, pad, caches).float(), dim=-1)
            step = self._mask_step(step, t, steps, min_new_tokens, banned, forced_eos, begin_banned)
            step = (F.log_softmax(step, dim=-1) if renormalize else step).view(B, K, V)
            cand = (step + run_logp[..., None]).view(B, K * V)
            top_logp, top = cand.topk(2 * K, dim=-1)  # (B, 2K)
            beam, token = top // V, top % V
            rows = (beam + offsets).view(-1)
            seqs = torch.cat([ys.index_select(0, rows), token.view(-1, 1)], dim=1).view(B, 2 * K, -1)
            ends = token.eq(self.eos_id) | (t == steps - 1)  # EOS, or the length limit
            # finished: the first K candidates that end, scored by length; merged with the kept ones
            score = top_logp / float(t + 1) ** length_penalty
            blocked = ~open_ | (fin_full.all(-1, keepdim=True) & early_stopping)
            score = score + (blocked | ~(ends & top_k_mask)).float() * -1e9
            padded = F.pad(seqs[..., P:], (0, steps - t - 1), value=self.pad_id)
            merged_score = torch.cat([fin_score, score], dim=1)
            keep = merged_score.topk(K, dim=-1).indices
            fin_seq = torch.cat([fin_seq, padded], dim=1).gather(1, keep[..., None].expand(B, K, steps))
            fin_score = merged_score.gather(1, keep)
            fin_full = torch.cat([fin_full, (ends & top_k_mask).expand(B, -1)], 1).gather(1, keep)
            # running: the best K candidates that do not end
            run_cand = top_logp + ends.float() * -1e9
            nxt = run_cand.topk(K, dim=-1).indices
            run_logp = run_cand.gather(1, nxt)
            pick = (beam.gather(1, nxt) + offsets).view(-1)
            ys = seqs.gather(1, nxt[..., None].expand(B, K, seqs.shape[-1])).view(B * K, -1)
            if caches is not None:
                for self_cache, _ in caches:
                    self_cache.reorder(pick)
            best_running = run_logp[:, :1] / float(t + 1) ** length_penalty
            worst = torch.where(fin_full, fin_score.min(-1, keepdim=True).values, torch.full_like(fin_score, -1e9))
            open_ = open_ & (best_running > worst).any(-1, keepdim=True)
            # One read back per step. `ends.all()` (the old third test) holds only on the last step: each
            # beam has one EOS candidate, so at most K of the 2K end before it.
            stop = ~open_.any()
            if early_stopping:
                stop = stop | fin_full.all()
            if bool(stop):
                break
        best = fin_seq[:, 0]  # (B, steps): sorted, the first is the best
        length = int(best.ne(self.pad_id).sum(-1).max())
        return best[:, : max(length, 1)]


class Translator(Seq2SeqSearch, Network):
    """Sequence-to-sequence transformer; `forward(src, tgt_in)` gives (B, T, vocab) logits.

    Args:
        vocab_size: joint source/target vocabulary (data fills it from the tokenizer).
        dim, encoder_depth, decoder_depth, num_heads, mlp_ratio, num_kv_heads, qkv_bias: transformer size.
        max_len: longest source or target (in tokens) the position table covers.
        positions: "sinusoidal" (fixed; runs on any length up to max_len) or "learned".
        tie_embeddings: one matrix for source embedding, target embedding and output layer.
        drop, attn_drop, drop_path: regularisation.
        attn_window, attn_global: sliding-window self-attention in the encoder and the decoder (whose
            cache then rolls), and global source tokens; see models/attention/window.py. None = full attention.
        norm_first, act, norm_eps, final_norm: the blocks' options (models/layers.py); Marian (OPUS-MT) is
            post-norm, SiLU, eps 1e-5, no final LayerNorm.
        sinusoid_layout: "interleaved" (sin, cos of each frequency side by side) or "split" (Marian's).
        scale_embeddings: multiply token embeddings by sqrt(dim) (Marian's scale_embedding).
        logits_bias: a fixed bias added to the output logits (Marian's final_logits_bias buffer).
        pad_id, bos_id, eos_id: padding, the token decoding starts from, end of sentence (Marian: start = pad).
    The defaults are the zoo's own translator.
    """

    name = "translator"
    modality = "text"
    task = "generate"
    attention_layers = ("encoder.blocks.*.attn", "decoder.*.self_attn", "decoder.*.cross_attn")

    def __init__(
        self,
        vocab_size: int,
        *,
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
        norm_first: bool = True,
        act: Activation = "gelu",
        norm_eps: float = 1e-6,
        final_norm: bool = True,
        sinusoid_layout: str = "interleaved",
        scale_embeddings: bool = True,
        logits_bias: bool = False,
        pad_id: int = PAD_ID,
        bos_id: int = BOS_ID,
        eos_id: int = EOS_ID,
    ) -> None:
        super().__init__()
        # The options both stacks share; the encoder adds global tokens, each stack its own stochastic depth.
        block_options = dict(num_heads=num_heads, mlp_ratio=mlp_ratio, num_kv_heads=num_kv_heads,
                             qkv_bias=qkv_bias, drop=drop, attn_drop=attn_drop, attn_window=attn_window,
                             norm_eps=norm_eps, norm_first=norm_first, act=act)
        check_block_options(dim=dim, drop_path=drop_path, attn_global=attn_global, **block_options)
        require_int("encoder_depth", encoder_depth)
        require_int("decoder_depth", decoder_depth)
        require_int("vocab_size", vocab_size)
        require_int("max_len", max_len)
        require_choice("positions", positions, ("sinusoidal", "learned"))
        require_choice("sinusoid_layout", sinusoid_layout, ("interleaved", "split"))
        for name, value in (("tie_embeddings", tie_embeddings), ("final_norm", final_norm),
                            ("scale_embeddings", scale_embeddings), ("logits_bias", logits_bias)):
            require_bool(name, value)
        for name, token in (("pad_id", pad_id), ("bos_id", bos_id), ("eos_id", eos_id)):
            require_token_id(name, token, vocab_size)
        self.vocab_size = vocab_size
        self.dim = dim
        self.max_len = max_len
        self.pad_id = pad_id
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.embed_scale = math.sqrt(dim) if scale_embeddings else 1.0
        self.src_embed = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        self.tgt_embed = self.src_embed if tie_embeddings else nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        if positions == "learned":
            self.pos = nn.Parameter(torch.randn(max_len, dim) * 0.02)
        else:
            self.register_buffer("pos", sinusoidal_table(max_len, dim, sinusoid_layout), persistent=False)
        self.drop = nn.Dropout(drop)
        self.encoder = Encoder(dim=dim, depth=encoder_depth, drop_path=drop_path, attn_global=attn_global,
                               final_norm=final_norm, **block_options)
        self.decoder = nn.ModuleList(
            DecoderBlock(dim, drop_path=drop_path * i / max(decoder_depth - 1, 1), **block_options)
            for i in range(decoder_depth)
        )
        self.norm = LayerNorm(dim, norm_eps) if final_norm else nn.Identity()
        self.head = nn.Linear(dim, vocab_size, bias=False)
        if logits_bias:  # a buffer, as in Marian: loaded, never trained
            self.register_buffer("final_logits_bias", torch.zeros(vocab_size))
        else:
            self.final_logits_bias = None
        if tie_embeddings:
            self.head.weight = self.src_embed.weight
        nn.init.normal_(self.src_embed.weight, std=dim**-0.5)
        if not tie_embeddings:
            nn.init.normal_(self.tgt_embed.weight, std=dim**-0.5)

    def no_weight_decay(self) -> set[str]:
        return {"pos"}

    def onnx_spec(self) -> OnnxSpec:
        """src (B, S), tgt_in (B, T) int64 ids: B, S and T (1 .. max_len) dynamic; the teacher-forced
        forward, one graph. The example ids avoid the special tokens (pad would change the masks)."""
        batch = Dim("batch", min=1)
        src_len = Dim("src_len", min=1, max=self.max_len)
        tgt_len = Dim("tgt_len", min=1, max=self.max_len)
        n = max(2, min(8, self.max_len))
        first = PAD_ID + 4  # past the tokenizer's 4 special tokens
        src = torch.randint(first, max(self.vocab_size, first + 1), (2, n))
        tgt_in = torch.randint(first, max(self.vocab_size, first + 1), (2, max(2, n - 1)))
        return OnnxSpec(TeacherForcedTranslator(self).eval(), ["src", "tgt_in"], (src, tgt_in),
                        ({0: batch, 1: src_len}, {0: batch, 1: tgt_len}),
                        {"src": ["batch", "src_len"], "tgt_in": ["batch", "tgt_len"]})

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
        return self.drop(table(ids) * self.embed_scale + self.pos[offset: offset + L])

    def encode(self, src: Tensor, always_mask: bool = False) -> tuple[Tensor, Tensor | None]:
        """src (B, S) ids -> memory (B, S, dim) and its padding mask (B, S), True = pad; None when
        nothing is padded (no mask to build and apply in every later cross-attention step).
        `always_mask` keeps the mask even then: no branch on tensor values, for graph export."""
        pad = src.eq(self.pad_id)
        pad = pad if always_mask or bool(pad.any()) else None
        return self.encoder(self._embed(self.src_embed, src), key_padding_mask=pad), pad

    def decode(self, tgt_in: Tensor, memory: Tensor, memory_pad: Tensor | None,
               caches: list[tuple[KVCache, KVCache]] | None = None, always_mask: bool = False) -> Tensor:
        """Decoder logits (B, T, vocab). With `caches`, tgt_in holds only the new positions."""
        offset = caches[0][0].position if caches else 0
        x = self._embed(self.tgt_embed, tgt_in, offset)
        tgt_pad = (tgt_in.eq(self.pad_id) if caches is None and (always_mask or bool(tgt_in.eq(self.pad_id).any()))
                   else None)
        if tgt_pad is not None and self.bos_id == self.pad_id:  # Marian starts from pad: that one is a real token
            tgt_pad = torch.cat([torch.zeros_like(tgt_pad[:, :1]), tgt_pad[:, 1:]], dim=1)
        for i, block in enumerate(self.decoder):
            self_cache, cross_cache = caches[i] if caches else (None, None)
            x = block(x, memory, tgt_padding_mask=tgt_pad, memory_padding_mask=memory_pad,
                      self_cache=self_cache, cross_cache=cross_cache)
        logits = self.head(self.norm(x))
        return logits if self.final_logits_bias is None else logits + self.final_logits_bias

    def forward(self, src: Tensor, tgt_in: Tensor, always_mask: bool = True) -> Tensor:
        """Teacher-forced logits (B, T, vocab). Padding masks are built even when nothing is padded (an
        all-False mask changes nothing): no host read of the ids (a GPU sync) in a training step.
        `always_mask=False` skips them then, at the cost of that read."""
        memory, pad = self.encode(src, always_mask)
        return self.decode(tgt_in, memory, pad, always_mask=always_mask)

    def new_caches(self, capacity: int | None = None) -> list[tuple[KVCache, KVCache]]:
        """One (self-attention, cross-attention) cache pair per decoder layer. `capacity`: the most
        positions decoded; the self-attention keys then go into buffers allocated once, in place
        (no copy of the whole cache per step). None: they grow by concatenation."""
        return [(KVCache(capacity=capacity), KVCache(static=True)) for _ in self.decoder]


class TeacherForcedTranslator(nn.Module):
    """Translator.forward(src, tgt_in) -> logits, with padding masks always built.

    By default the translator passes no mask when nothing is padded (`bool(pad.any())`), a branch on
    tensor values that torch.export cannot trace; `always_mask=True` builds them regardless (an
    all-False mask masks nothing, so the logits are the same for padded and unpadded batches).
    """

    def __init__(self, net: Translator) -> None:
        super().__init__()
        self.net = net

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        return self.net(src, tgt_in, always_mask=True)  # (B, T, vocab)
