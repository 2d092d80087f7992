"""Subword tokenizer for translation: a joint source/target BPE trained with Hugging Face `tokenizers`.

One vocabulary serves both languages, so the encoder and decoder embeddings and the output layer
can be a single tied matrix. Digits are split one by one (numbers are copied and reformatted
between languages: 12,345.67 -> 12.345,67, which is easy digit by digit and hard for merged
chunks). A character never seen in training becomes [UNK] instead of raising.
"""

from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from models.spm_tokenizer import MarianTokenizer

SPECIALS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]")
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(4)  # fixed by the order of SPECIALS at training time


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a BPE tokenizer with `vocab_size` entries (specials included) on `texts`."""
    if vocab_size <= len(SPECIALS) + 1:
        raise ValueError(f"vocab_size must be > {len(SPECIALS) + 1}, got {vocab_size}")
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(), pre_tokenizers.Digits(individual_digits=True)])
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    check_specials(tok)
    return tok


def check_specials(tok: Tokenizer) -> None:
    ids = [tok.token_to_id(s) for s in SPECIALS]
    if ids != list(range(len(SPECIALS))):
        raise ValueError(f"tokenizer special tokens {SPECIALS} must have ids 0..3, found {ids}")


def load_tokenizer(json_str: str, zoo_specials: bool = True) -> Tokenizer:
    """A tokenizer from the string a checkpoint carries: the zoo's BPE (its specials checked unless
    `zoo_specials=False`, e.g. a pretrained BERT's WordPiece) or Marian's SentencePiece pair."""
    if json_str.startswith('{"marian"'):  # a pretrained OPUS-MT model's SentencePiece pair
        return MarianTokenizer.from_str(json_str)  # type: ignore[return-value]
    tok = Tokenizer.from_str(json_str)
    if zoo_specials:
        check_specials(tok)
    return tok


def encode(tok: Tokenizer, text: str, max_len: int) -> list[int]:
    """Token ids of `text`, truncated to `max_len` (documented truncation; BOS/EOS are added later)."""
    return tok.encode(text, add_special_tokens=False).ids[:max_len]


def decode(tok: Tokenizer, ids: Iterable[int]) -> str:
    """Text of generated ids: stops at the first EOS, drops BOS/PAD (a pretrained family's tokenizer with its own
    special ids, e.g. Marian's, does this itself)."""
    if hasattr(tok, "decode_generated"):
        return tok.decode_generated(ids)
    out = []
    for i in ids:
        i = int(i)
        if i == EOS_ID:
            break
        if i not in (PAD_ID, BOS_ID):
            out.append(i)
    return tok.decode(out, skip_special_tokens=False).strip()
