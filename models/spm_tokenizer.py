"""Marian's SentencePiece tokenizer pair (OPUS-MT) without transformers; travels in checkpoints as a string."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path

from utils.errors import FileFormatError, MissingFileError


@dataclass
class Encoded:
    """What `tokenizers.Tokenizer.encode` returns, as far as the zoo reads it."""

    ids: list[int]
    tokens: list[str]
    offsets: list[tuple[int, int]]


class MarianTokenizer:
    """Marian's tokenizer without transformers: SentencePiece source / target models and one shared vocab.json.

    encode: an optional >>lang<< code, source pieces -> vocab ids (unknown pieces -> <unk>), then </s> (the model
    reads sources that end in it, so it is always appended). decode: target pieces up to </s>, pad dropped.
    As transformers' MarianTokenizer without sacremoses installed (no Moses punctuation normalisation).
    """

    def __init__(self, source_spm: bytes, target_spm: bytes, vocab: dict[str, int], eos: str = "</s>",
                 unk: str = "<unk>", pad: str = "<pad>") -> None:
        import sentencepiece as spm

        self.files = {"source_spm": source_spm, "target_spm": target_spm}
        self.source, self.target = spm.SentencePieceProcessor(), spm.SentencePieceProcessor()
        self.source.LoadFromSerializedProto(source_spm)
        self.target.LoadFromSerializedProto(target_spm)
        self.vocab = dict(vocab)
        self.inverse = {i: t for t, i in self.vocab.items()}
        missing = [t for t in (eos, unk, pad) if t not in self.vocab]
        if missing:
            raise FileFormatError(f"vocab.json lacks the special tokens {missing}")
        self.eos_id, self.unk_id, self.pad_id = self.vocab[eos], self.vocab[unk], self.vocab[pad]
        self.start_id = self.pad_id  # Marian's decoder starts from pad

    @classmethod
    def from_folder(cls, folder: Path) -> "MarianTokenizer":
        files = {n: folder / n for n in ("source.spm", "target.spm", "vocab.json")}
        missing = [n for n, p in files.items() if not p.is_file()]
        if missing:
            raise MissingFileError(f"{folder} lacks {', '.join(missing)} (Marian's tokenizer files)")
        config = folder / "tokenizer_config.json"
        if config.is_file() and json.loads(config.read_text()).get("separate_vocabs"):
            raise FileFormatError(f"{folder}: separate source / target vocabularies are not supported yet")
        return cls(files["source.spm"].read_bytes(), files["target.spm"].read_bytes(),
                   json.loads(files["vocab.json"].read_text()))

    def to_str(self) -> str:
        """One JSON string (checkpoints hold plain data only)."""
        return json.dumps({"marian": {k: base64.b64encode(v).decode() for k, v in self.files.items()},
                           "vocab": self.vocab})

    @classmethod
    def from_str(cls, text: str) -> "MarianTokenizer":
        state = json.loads(text)
        files = {k: base64.b64decode(v) for k, v in state["marian"].items()}
        return cls(files["source_spm"], files["target_spm"], state["vocab"])

    def get_vocab_size(self) -> int:
        return max(self.inverse) + 1

    def token_to_id(self, token: str) -> int | None:
        return self.vocab.get(token)

    def id_to_token(self, i: int) -> str:
        return self.inverse.get(int(i), "<unk>")

    def encode(self, text: str, add_special_tokens: bool = True) -> Encoded:
        """Source ids ending in </s> (always: see the class note). Offsets are character spans of the pieces."""
        code: list[str] = []
        if text.startswith(">>") and (end := text.find("<<")) != -1:
            code, text = [text[: end + 2]], text[end + 2:]
        pieces = code + self.source.encode(text, out_type=str)
        ids = [self.vocab.get(p, self.unk_id) for p in pieces] + [self.eos_id]
        offsets, pos = [], 0
        for p in pieces:
            n = len(p.lstrip("\u2581")) if p not in code else 0
            start = text.find(p.lstrip("\u2581")[:1], pos) if n else pos
            start = pos if start < 0 else start
            offsets.append((start, start + n))
            pos = start + n
        return Encoded(ids, pieces + ["</s>"], offsets + [(len(text), len(text))])

    def encode_target(self, text: str) -> list[int]:
        """Target-side ids (the target SentencePiece model), no </s>: training labels."""
        return [self.vocab.get(p, self.unk_id) for p in self.target.encode(text, out_type=str)]

    def save(self, path: str) -> None:
        """The run directory's tokenizer.json: this tokenizer as one JSON string (load_tokenizer reads it)."""
        Path(path).write_text(self.to_str())

    def encode_batch(self, texts: list[str]) -> list[Encoded]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        """Target text of ids, the special tokens (</s>, <unk>, <pad>) left out."""
        pieces = [self.id_to_token(i) for i in ids if int(i) not in (self.pad_id, self.eos_id, self.unk_id)]
        return self.target.decode_pieces(pieces).replace("\u2581", " ").strip()

    def decode_generated(self, ids: list[int]) -> str:
        """Text of generated ids: up to the first </s>, padding dropped."""
        out = []
        for i in ids:
            if int(i) == self.eos_id:
                break
            out.append(int(i))
        return self.decode(out)
