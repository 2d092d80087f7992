"""Whisper (Radford et al. 2022): log-mel spectrogram -> encoder -> decoder with cross-attention -> text tokens.

Encoder: two 1-D convolutions with GELU (the second with stride 2: 3000 frames -> 1500 positions), fixed
sinusoidal positions, pre-norm EncoderBlocks, a final LayerNorm. Decoder: token embeddings + learned positions,
pre-norm DecoderBlocks (causal self-attention with a KV cache, cross-attention to the audio), a final
LayerNorm and the output tied to the token embedding. Everything attends through the shared core
(models/layers.py, models/attention/); decoding is the translator's (Seq2SeqSearch) started from Whisper's prompt.

Whisper's key projections have no bias. The zoo's one fused qkv projection keeps a key bias that is zero: a
key bias adds q . b_k to every score of a query row, the same constant for every key, which softmax removes;
so the output and the attention maps are those of a model without it, whatever its value (exactly: the kernels
add 0.0), and no option in the core is needed. Its gradient is zero up to rounding, and any value it drifts to
changes nothing.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.export import Dim

from models.attention import KVCache, MultiHeadAttention
from models.checks import require_int, require_token_id
from models.layers import Activation, DecoderBlock, Encoder, LayerNorm, check_block_options
from models.network import Network, OnnxSpec
from models.translator import Encoded, Seq2SeqSearch
from models.whisper_frontend import HOP_LENGTH, WhisperFrontEnd


def whisper_sinusoids(length: int, dim: int, max_timescale: float = 10000.0) -> Tensor:
    """Whisper's encoder positions (length, dim): all sines then all cosines, the dim / 2 frequencies spaced
    geometrically from 1 to 1 / max_timescale (both ends included, unlike Vaswani et al.'s table)."""
    if dim % 2 or dim < 4:
        raise ValueError(f"dim={dim}: expected an even width >= 4 for Whisper's sinusoidal positions")
    step = math.log(max_timescale) / (dim // 2 - 1)
    inv = torch.exp(-step * torch.arange(dim // 2))
    angle = torch.arange(length)[:, None] * inv[None, :]  # (length, dim / 2)
    return torch.cat([angle.sin(), angle.cos()], dim=1)


class WhisperAudio(nn.Module):
    """Whisper's audio side, shared by the speech model (`Whisper`) and a classifier on its encoder
    (models/whisper_classifier.py): the front end, two convolutions, fixed positions and the encoder blocks.
    The attributes keep Whisper's state-dict names (conv1, conv2, audio_pos, encoder), so one converted state
    loads into either."""

    def _build_audio(self, *, n_mels: int, dim: int, audio_len: int, depth: int, drop_path: float = 0.0,
                     **block_options) -> None:
        require_int("n_mels", n_mels)
        require_int("encoder_depth", depth)
        require_int("audio_len", audio_len, note=" (encoder positions: input frames / 2)")
        self.n_mels = n_mels
        self.dim = dim
        self.audio_len = audio_len
        self.conv1 = nn.Conv1d(n_mels, dim, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(dim, dim, kernel_size=3, stride=2, padding=1)
        # Fixed, but in the state dict: a checkpoint's table is loaded as it is (transformers stores it too).
        self.register_buffer("audio_pos", whisper_sinusoids(audio_len, dim))
        self.drop = nn.Dropout(block_options["drop"])
        self.encoder = Encoder(dim=dim, depth=depth, drop_path=drop_path, **block_options)
        self.frontend = WhisperFrontEnd(n_mels=n_mels)

    def _zero_key_biases(self) -> None:
        """Whisper has no key bias: the k third of every qkv bias starts (and, see the module doc, acts) as 0."""
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, MultiHeadAttention) and m.qkv.bias is not None:
                    m.qkv.bias[m.q_size: m.q_size + m.kv_size].zero_()

    def features(self, wave: Tensor) -> Tensor:
        """16 kHz waveform (B, samples) -> Whisper's (B, n_mels, 3000) log-mel features (models/whisper_frontend)."""
        return self.frontend(wave)

    def clip_features(self, wave: Tensor) -> Tensor:
        """16 kHz waveform (B, samples) -> the log-mel frames of the clip only (1 s: 100 frames), not padded to
        30 s as transcription pads. The values are those of the padded features (bit for bit from 0.1 s up):
        padding is silence, which changes no frame and not the maximum the features are clamped by, so the front
        end computes only the clip's frames (`clip=True`). A clip longer than the encoder's positions (30 s) is
        cut there, as transcription cuts it."""
        # ceil(samples / hop), written so that ONNX (whose integer division truncates) computes it too
        frames = min(2 * self.audio_len, self.frontend.frames, (wave.shape[-1] + HOP_LENGTH - 1) // HOP_LENGTH)
        return self.frontend(wave, clip=True)[..., :frames]

    def pooled_features(self, wave: Tensor) -> Tensor:
        """16 kHz waveform (B, samples) -> (B, dim): the mean of the encoder's output over the clip's own
        positions (`clip_features`), what a frozen-feature probe reads (inference/probe.py) and the classifier
        pools: 30x less work for a spoken word than 30 s, and a short clip is not averaged with 29 s of silence."""
        memory, _ = self.encode(self.clip_features(wave))
        return memory.mean(dim=1)

    def encode(self, mel: Tensor) -> tuple[Tensor, None]:
        """mel (B, n_mels, frames) -> audio memory (B, ceil(frames / 2), dim) and no padding mask (Whisper pads
        the audio with silence, which it attends to)."""
        if mel.dim() != 3 or mel.shape[1] != self.n_mels:
            raise ValueError(f"expected log-mel features (batch, {self.n_mels}, frames), got {tuple(mel.shape)}")
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # (B, S, dim)
        if x.shape[1] > self.audio_len:
            raise ValueError(f"{mel.shape[2]} frames give {x.shape[1]} audio positions, more than "
                             f"audio_len={self.audio_len} ({2 * self.audio_len} frames: 30 s for Whisper)")
        x = self.drop(x + self.audio_pos[: x.shape[1]])
        return self.encoder(x), None


class Whisper(Seq2SeqSearch, WhisperAudio, Network):
    """`forward(mel, tgt_in)`: (B, n_mels, frames) log-mel features and (B, T) decoder ids -> (B, T, vocab) logits.

    Args:
        vocab_size: text vocabulary with Whisper's special tokens.
        n_mels: mel bands of the input (80; 128 for large-v3).
        dim, encoder_depth, decoder_depth, num_heads, mlp_ratio: transformer size (Whisper's encoder and
            decoder share width and heads).
        audio_len: encoder positions (Whisper: 1500, i.e. 3000 frames = 30 s after the stride-2 convolution);
            shorter inputs use the first positions.
        max_len: decoder positions (Whisper: 448), prompt included.
        norm_eps, act: the blocks' LayerNorm eps (1e-5) and activation (exact GELU).
        drop, attn_drop: regularisation (Whisper: none).
        bos_id: the decoder start (<|startoftranscript|>); eos_id: <|endoftext|>; pad_id: what follows EOS in a
            batch (Whisper pads with <|endoftext|>).
    """

    name = "whisper"
    modality = "audio"
    task = "transcribe"  # speech -> text (inference/predictor.py's `_transcribe`), not a text translator
    attention_layers = ("encoder.blocks.*.attn", "decoder.*.self_attn", "decoder.*.cross_attn")
    # On the CPU, stop right after the step that ends every row: a spoken word is 2-4 tokens, and each step run past
    # it (up to CHECK_EVERY - 1 of them) reads the whole 51,864 x dim output matrix for nothing. Same tokens.
    cpu_check_every = 1

    def __init__(
        self,
        *,
        vocab_size: int,
        n_mels: int = 80,
        dim: int = 384,
        encoder_depth: int = 4,
        decoder_depth: int = 4,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        audio_len: int = 1500,
        max_len: int = 448,
        norm_eps: float = 1e-5,
        act: Activation = "gelu",
        drop: float = 0.0,
        attn_drop: float = 0.0,
        bos_id: int = 50257,
        eos_id: int = 50256,
        pad_id: int = 50256,
    ) -> None:
        super().__init__()
        block_options = dict(num_heads=num_heads, mlp_ratio=mlp_ratio, drop=drop, attn_drop=attn_drop,
                             norm_eps=norm_eps, act=act)
        check_block_options(dim=dim, **block_options)
        require_int("vocab_size", vocab_size)
        require_int("decoder_depth", decoder_depth)
        require_int("max_len", max_len, note=" (decoder positions)")
        for name, token in (("bos_id", bos_id), ("eos_id", eos_id), ("pad_id", pad_id)):
            require_token_id(name, token, vocab_size)
        self.vocab_size = vocab_size
        self.max_len = max_len
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.pad_id = pad_id
        self._build_audio(n_mels=n_mels, dim=dim, audio_len=audio_len, depth=encoder_depth, **block_options)
        self.tgt_embed = nn.Embedding(vocab_size, dim)
        self.text_pos = nn.Parameter(torch.zeros(max_len, dim))
        self.decoder = nn.ModuleList(DecoderBlock(dim, **block_options) for _ in range(decoder_depth))
        self.norm = LayerNorm(dim, norm_eps)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        self.head.weight = self.tgt_embed.weight  # tied output, as Whisper's
        nn.init.normal_(self.tgt_embed.weight, std=0.02)
        nn.init.normal_(self.text_pos, std=0.01)
        self._zero_key_biases()

    def no_weight_decay(self) -> set[str]:
        return {"text_pos"}

    def onnx_spec(self) -> OnnxSpec:
        """mel (B, n_mels, 2 * audio_len) float, tgt_in (B, T) int64 -> logits (B, T, vocab): B and T
        (1 .. max_len) dynamic, the frames fixed (Whisper pads every input to 30 s); the teacher-forced
        forward, one graph (decoding steps with a cache are not exported)."""
        batch = Dim("batch", min=1)
        tgt_len = Dim("tgt_len", min=1, max=self.max_len)
        mel = torch.randn(2, self.n_mels, 2 * self.audio_len)
        tgt_in = torch.randint(0, self.vocab_size, (2, max(2, min(6, self.max_len))))
        tgt_in[:, 0] = self.bos_id
        return OnnxSpec(self, ["mel", "tgt_in"], (mel, tgt_in), ({0: batch}, {0: batch, 1: tgt_len}),
                        {"mel": ["batch"], "tgt_in": ["batch", "tgt_len"]})

    def decode(self, tgt_in: Tensor, memory: Tensor, memory_pad: Tensor | None = None,
               caches: list[tuple[KVCache, KVCache]] | None = None, last_only: bool = False) -> Tensor:
        """Decoder logits (B, T, vocab). With `caches`, tgt_in holds only the positions not cached yet.
        last_only: the logits of the last position only, (B, 1, vocab) (decoding: the output matrix is
        51,864 x dim, and the prompt's other positions need none)."""
        if tgt_in.dim() != 2 or tgt_in.shape[1] == 0:
            raise ValueError(f"token ids must be (batch, length >= 1), got shape {tuple(tgt_in.shape)}")
        offset = caches[0][0].position if caches else 0
        end = offset + tgt_in.shape[1]
        if end > self.max_len:
            raise ValueError(f"{end} decoder tokens: more than max_len={self.max_len} (learned positions)")
        x = self.drop(self.tgt_embed(tgt_in) + self.text_pos[offset:end])
        for i, block in enumerate(self.decoder):
            self_cache, cross_cache = caches[i] if caches else (None, None)
            x = block(x, memory, memory_padding_mask=memory_pad, self_cache=self_cache, cross_cache=cross_cache)
        x = self.norm(x[:, -1:] if last_only else x)
        if last_only and not torch.is_grad_enabled():
            return x @ self._head_columns()  # decoding: the same product, read column-major (below)
        return self.head(x)

    def _head_columns(self) -> Tensor:
        """The output matrix transposed and contiguous (dim, vocab), kept between decoding calls while the weights
        are unchanged: a step's (B, dim) x (dim, vocab) product reads it 2.6x faster than nn.Linear's (vocab,
        dim) layout at batch 1 on the CPU (7 vs 19 ms for tiny.en, one thread; 1.3x at batch 8). Costs a second
        copy of the matrix (80 MB for tiny.en) while decoding runs; not in the state dict."""
        w = self.head.weight
        key = (w.data_ptr(), w._version, w.device, w.dtype)
        if getattr(self, "_columns_key", None) != key:
            self._columns = w.detach().t().contiguous()
            self._columns_key = key
        return self._columns

    def _next_logits(self, ys: Tensor, memory: Tensor, pad: Tensor | None, caches: list | None) -> Tensor:
        """Seq2SeqSearch's next-token logits (B, vocab), the output matrix applied to the last position only."""
        new = ys[:, caches[0][0].position:] if caches is not None else ys
        return self.decode(new, memory, pad, caches, last_only=True)[:, -1]

    def forward(self, mel: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced logits (B, T, vocab)."""
        memory, _ = self.encode(mel)
        return self.decode(tgt_in, memory)

    def new_caches(self, capacity: int | None = None) -> list[tuple[KVCache, KVCache]]:
        """One (self-attention, cross-attention) cache pair per decoder layer; `capacity` as the Translator's."""
        return [(KVCache(capacity=capacity), KVCache(static=True)) for _ in self.decoder]

    @torch.no_grad()
    def detect_language(self, mel: Tensor, language_ids: Sequence[int]) -> Tensor:
        """(B,) each recording's most likely language token after <|startoftranscript|>, as Whisper (and
        transformers' generate given no language) picks it: the argmax over the language tokens only."""
        ids = torch.tensor(sorted(int(i) for i in language_ids), dtype=torch.long, device=mel.device)
        if ids.numel() == 0:
            raise ValueError("language_ids=[]: expected the model's language token ids (its lang_to_id)")
        memory, _ = self.encode(mel)
        start = torch.full((mel.shape[0], 1), self.bos_id, dtype=torch.long, device=mel.device)
        logits = self.decode(start, memory)[:, -1]  # (B, vocab)
        return ids[logits[:, ids].argmax(-1)]  # ties go to the lowest id, as an argmax over the vocabulary

    @torch.no_grad()
    def transcribe(self, mel: Tensor, *, prompt: Sequence[int], max_new_tokens: int = 224, beam_size: int = 1,
                   suppress_tokens: Sequence[int] = (), begin_suppress_tokens: Sequence[int] = (),
                   length_penalty: float = 1.0, detect_language: Sequence[int] = (),
                   use_cache: bool = True, encoded: Encoded | None = None) -> list[list[int]]:
        """Whisper's decoding: from `prompt` (<|startoftranscript|>, the language and task tokens of a
        multilingual model, <|notimestamps|>), `suppress_tokens` never, `begin_suppress_tokens` not first
        (blank, EOS); greedy, or transformers' beam search with `beam_size` > 1. `detect_language`: the
        language token ids; when given, the prompt's language token (its second) becomes each recording's
        detected language. Returns each row's new tokens up to, not including, EOS (the converter's `module`
        holds the checkpoint's settings). `encoded`: `encode(mel)` when the caller has it already."""
        require_int("max_new_tokens", max_new_tokens)
        require_int("beam_size", beam_size)
        prompt = [require_token_id(f"prompt[{i}]", t, self.vocab_size) for i, t in enumerate(prompt)]
        if detect_language:
            if len(prompt) < 3:
                raise ValueError(f"prompt={prompt}: detect_language needs a multilingual prompt "
                                 f"[start, language, task, ...]")
            found = self.detect_language(mel, detect_language).tolist()
            prompt = [[prompt[0], lang, *prompt[2:]] for lang in found]
        options = dict(prompt=prompt, banned=tuple(suppress_tokens),
                       begin_banned=tuple(begin_suppress_tokens), use_cache=use_cache, encoded=encoded)
        if beam_size == 1:
            ids = self.greedy(mel, max_new_tokens, **options)
        else:
            ids = self.beam_search(mel, beam_size, max_new_tokens, length_penalty, length_norm="hf", **options)
        return [_until(row, self.eos_id) for row in ids.tolist()]


def _until(row: list[int], eos: int) -> list[int]:
    return row[: row.index(eos)] if eos in row else row
