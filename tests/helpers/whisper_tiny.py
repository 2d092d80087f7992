"""A tiny random Whisper saved as Hugging Face writes one (config.json, model.safetensors, generation_config.json,
tokenizer.json): the reference of tests/test_whisper.py, built offline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from helpers.pretrained import randomize

VOCAB = 120
EOT, SOT = 100, 101
LANGUAGES = {"<|en|>": 102, "<|de|>": 103}
TASKS = {"translate": 104, "transcribe": 105}
NO_TIMESTAMPS = 109
SUPPRESS = [1, 2, 7, 11, 37, 106, 107, 108] + list(range(110, 120))  # some text tokens, the other specials, timestamps
BEGIN_SUPPRESS = [3, 75, EOT]  # Whisper's: the blank and EOT (75: a token these weights like first)
ALIGNMENT_HEADS = [[1, 0], [1, 3]]
SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|de|>", "<|translate|>", "<|transcribe|>",
            "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"] + [
                f"<|{i * 0.02:.2f}|>" for i in range(10)]


def write_tokenizer(path: Path) -> None:
    """A word-level tokenizer.json: ids 0..99 are words t0..t99, then Whisper's special tokens in their order."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"t{i}": i for i in range(EOT)} | {s: EOT + i for i, s in enumerate(SPECIALS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(path))


def make_tiny_whisper(folder: Path, *, multilingual: bool = False, std: float = 0.2, eos_bias: float = 0.0,
                      seed: int = 0) -> Path:
    """Save a random WhisperForConditionalGeneration (d_model 48, 2 + 2 layers, 4 heads, 80 mels, 32 frames)."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig(vocab_size=VOCAB, num_mel_bins=80, d_model=48, encoder_layers=2, decoder_layers=2,
                           encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=192,
                           decoder_ffn_dim=192, max_source_positions=16, max_target_positions=40,
                           decoder_start_token_id=SOT, eos_token_id=EOT, pad_token_id=EOT, bos_token_id=EOT,
                           suppress_tokens=SUPPRESS, begin_suppress_tokens=BEGIN_SUPPRESS)
    torch.manual_seed(seed)
    model = randomize(WhisperForConditionalGeneration(config), seed=seed, std=std)
    with torch.no_grad():
        tokens = model.model.decoder.embed_tokens.weight
        tokens[EOT] += eos_bias * model.model.decoder.layer_norm.weight.sign()
        # <|de|> a near copy of <|en|> (tied: input and output): the audio decides which language is detected
        tokens[LANGUAGES["<|de|>"]] = tokens[LANGUAGES["<|en|>"]] + 0.05 * torch.randn(tokens.shape[1])
    model.save_pretrained(folder)
    gen = {"decoder_start_token_id": SOT, "eos_token_id": EOT, "pad_token_id": EOT, "bos_token_id": EOT,
           "no_timestamps_token_id": NO_TIMESTAMPS, "suppress_tokens": SUPPRESS,
           "begin_suppress_tokens": BEGIN_SUPPRESS, "max_length": 40, "alignment_heads": ALIGNMENT_HEADS,
           "is_multilingual": multilingual, "return_timestamps": False}
    if multilingual:
        gen |= {"lang_to_id": LANGUAGES, "task_to_id": TASKS}
    (folder / "generation_config.json").write_text(json.dumps(gen, indent=1))
    write_tokenizer(folder / "tokenizer.json")
    return folder


def write_pairs(folder: Path, n: int = 24, rate: int = 8000, seed: int = 0) -> Path:
    """n noise recordings at `rate` with transcripts of 1-4 words t5..t94 (the tiny tokenizer's words)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        sf.write(str(folder / f"u{i:02d}.wav"), (0.1 * rng.standard_normal(rate // 2 + 50 * i)).astype(np.float32),
                 rate)
        (folder / f"u{i:02d}.txt").write_text(" ".join(f"t{(7 * i + k) % 90 + 5}" for k in range(1 + i % 4)) + "\n")
    return folder
