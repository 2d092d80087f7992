"""Plain text for a causal language model: files -> one tokenizer -> contiguous blocks of token ids.

* Sources: `path` (one text file or a list of them, UTF-8, `.gz` / `.xz` read too), or null for the
  embedded Tiny Shakespeare (data/corpora/tinyshakespeare.txt.xz: char-rnn's `data/tinyshakespeare/
  input.txt`, 1,115,394 characters, public domain, byte for byte); `dataset=bible_text`: the English
  side of data/bible.py (the World English Bible, one verse a line in canonical order).
* Split by position within each file: the first 1 - val - test for training, then validation, then
  test (defaults 90 / 5 / 5). The training part is nanoGPT's shakespeare_char `train.bin` exactly; its
  `val.bin` (the last 10 %) is our validation + test.
* Tokenizers, both Hugging Face `tokenizers` objects trained on the training part only: `char` (one id
  per character seen in training, nanoGPT's shakespeare_char, plus [UNK] at id 0 for the rest) or
  `bpe` (byte-level BPE of `bpe_vocab_size` ids: no unknown input). The tokenizer travels in every
  checkpoint as the data module's state and in the run directory as tokenizer.json.
* Training batches are `batch_size` blocks at random offsets (nanoGPT's get_batch; distinct offsets
  within an epoch), and an epoch is `batches_per_epoch` of them. Evaluation reads the split as fixed,
  non-overlapping blocks (each token predicted once), optionally `max_eval_blocks` evenly spaced ones.
"""

from __future__ import annotations

import gzip
import lzma
from pathlib import Path

import lightning as L
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from data.bible import load_bible
from data.distributed import EpochSubsetSampler, eval_sampler, loader_options
from data.tokenized import CarriesTokenizer
from models.checks import refuse, require_choice, require_int, require_number
from utils.errors import FileFormatError, MissingFileError, UserError

TINY_SHAKESPEARE = Path(__file__).resolve().parent / "corpora" / "tinyshakespeare.txt.xz"
TOKENIZERS = ("char", "bpe")
UNK = "[UNK]"
SPLITS = ("train", "val", "test")
DATASETS = ("text_corpus", "bible_text")


def read_corpus(path: str | Path) -> str:
    """A text file as str (UTF-8, or UTF-16 with its byte-order mark; `.gz` / `.xz` decompressed);
    a missing, unreadable, non-UTF-8 or blank file is one UserError naming it."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise MissingFileError(f"data=text_corpus: file {str(p)!r} does not exist; expected a UTF-8 text file "
                               f"(Tiny Shakespeare: data/tinyshakespeare/input.txt of github.com/karpathy/char-rnn)")
    try:
        raw = p.read_bytes()
        if p.suffix == ".gz":
            raw = gzip.decompress(raw)
        elif p.suffix == ".xz":
            raw = lzma.decompress(raw)
    except (OSError, EOFError, lzma.LZMAError) as err:
        raise FileFormatError(f"data=text_corpus: cannot read {p} ({err})") from None
    encoding = "utf-16" if raw.startswith((b"\xff\xfe", b"\xfe\xff")) else "utf-8-sig"
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise FileFormatError(f"data=text_corpus: {p} is not UTF-8 text: byte {raw[err.start:err.start + 1]!r} at "
                              f"line {line} (offset {err.start}) cannot be decoded; save the file as UTF-8") from None
    if not text.strip():
        raise UserError(f"data=text_corpus: {p} holds no text (it is empty or blank)")
    return text


def split_text(text: str, val_fraction: float, test_fraction: float) -> dict[str, str]:
    """train / val / test by position: the first 1 - val - test of the characters, the next val, the last test."""
    n = len(text)
    # + 1e-9: 1 - 0.05 - 0.05 is 0.8999999999999999 in floating point; nanoGPT cuts at int(n * 0.9)
    val_start = int(n * (1 - val_fraction - test_fraction) + 1e-9)
    test_start = int(n * (1 - test_fraction) + 1e-9)
    return {"train": text[:val_start], "val": text[val_start:test_start], "test": text[test_start:]}


def char_tokenizer(text: str) -> Tokenizer:
    """One id per distinct character of `text` in sorted order (nanoGPT's shakespeare_char), after [UNK] = 0."""
    vocab = {UNK: 0, **{c: i for i, c in enumerate(sorted(set(text)), start=1)}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))  # no merges: one token per character
    tok.decoder = decoders.Fuse()  # characters joined as they are, no spaces between tokens
    return tok


def bpe_tokenizer(text: str, vocab_size: int) -> Tokenizer:
    """Byte-level BPE (GPT-2's scheme) of `vocab_size` ids trained on `text`: any input has an encoding."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([text], trainer=trainer)
    return tok


def encode_text(tok: Tokenizer, text: str) -> Tensor:
    """Token ids of a whole text as one int64 tensor (no special tokens added)."""
    # The whole text as one string, as a prompt is encoded at generation time (byte-level BPE's
    # pre-tokenizer would split runs of blank lines differently if the text were fed line by line).
    return torch.tensor(tok.encode(text, add_special_tokens=False).ids, dtype=torch.long)


class RandomBlocks(Dataset):
    """Item i: the block starting at token i and its next-token targets (x = ids[i:i+T], y = ids[i+1:i+T+1])."""

    def __init__(self, ids: Tensor, block_size: int) -> None:
        self.ids, self.block_size = ids, block_size

    def __len__(self) -> int:
        return len(self.ids) - self.block_size

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        chunk = self.ids[i:i + self.block_size + 1]
        return chunk[:-1], chunk[1:]


class FixedBlocks(RandomBlocks):
    """Item i: the i-th of the non-overlapping blocks (each token a target once), or of `limit` evenly spaced ones."""

    def __init__(self, ids: Tensor, block_size: int, limit: int | None = None) -> None:
        super().__init__(ids, block_size)
        count = (len(ids) - 1) // block_size
        step = count / limit if limit and limit < count else 1
        self.starts = [int(k * step) * block_size for k in range(min(count, limit or count))]

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return super().__getitem__(self.starts[i])


class TextCorpusDataModule(CarriesTokenizer, L.LightningDataModule):
    """Text files -> batches (x, y) of `block_size` token ids and their next tokens, (B, T) each.

    Args mirror configs/data/text_corpus.yaml: `path` a file or a list of files (null: the embedded Tiny
    Shakespeare); `tokenizer` char | bpe; `bpe_vocab_size` the size a BPE tokenizer is trained to;
    `vocab_size` the size the tokenizer has (null: read from it, and the model is sized from it).
    """

    modality = "text"  # the kind of input it yields: a network of the same modality trains on it
    task = "complete"  # plain text: for a network that continues it (utils.build.check_model_fits_data)

    def __init__(
        self,
        dataset: str = "text_corpus",
        path: str | list[str] | None = None,
        root: str = "datasets",
        tokenizer: str = "char",
        bpe_vocab_size: int = 1024,
        vocab_size: int | None = None,
        block_size: int = 64,
        batch_size: int = 12,
        eval_batch_size: int = 64,
        batches_per_epoch: int = 250,
        max_eval_blocks: int | None = None,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        require_choice("dataset", dataset, DATASETS)
        require_choice("tokenizer", tokenizer, TOKENIZERS)
        require_int("bpe_vocab_size", bpe_vocab_size, at_least=257, note=" (the 256 bytes and merges)")
        for name, value in (("block_size", block_size), ("batch_size", batch_size),
                            ("eval_batch_size", eval_batch_size), ("batches_per_epoch", batches_per_epoch)):
            require_int(name, value)
        require_int("max_eval_blocks", max_eval_blocks, optional=True)
        require_int("num_workers", num_workers, at_least=0)
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            require_number(name, value, low=0, high=1, low_open=True, high_open=True)
        if val_fraction + test_fraction >= 1:
            raise refuse("val_fraction", val_fraction, f"with test_fraction={test_fraction} expected a sum < 1 "
                         "(the rest is the training text)")
        paths = [path] if isinstance(path, (str, Path)) else list(path) if path is not None else [TINY_SHAKESPEARE]
        if not paths:
            raise refuse("path", path, "expected a text file or a list of them")
        self.dataset, self.root = dataset, root
        self.paths = [Path(p).expanduser() for p in paths]
        self.tokenizer_kind, self.bpe_vocab_size, self.expected_vocab = tokenizer, bpe_vocab_size, vocab_size
        self.block_size, self.batch_size, self.eval_batch_size = block_size, batch_size, eval_batch_size
        self.batches_per_epoch, self.max_eval_blocks = batches_per_epoch, max_eval_blocks
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.num_workers, self.seed = num_workers, seed
        self.tokenizer: Tokenizer | None = None
        self._texts: dict[str, str] | None = None
        self.ids: dict[str, Tensor] = {}

    # --- text, splits and tokenizer ----------------------------------------------------------------
    @property
    def texts(self) -> dict[str, str]:
        """train / val / test text: each file split by position, the parts joined across files."""
        if self._texts is None:
            if self.dataset == "bible_text":  # the English verses of the translation corpus, in canonical order
                self.paths = [Path(self.root) / "bible"]
                corpora = ["".join(f"{english}\n" for _, english, _ in load_bible(self.root))]
            else:
                corpora = [read_corpus(p) for p in self.paths]
            parts = [split_text(text, self.val_fraction, self.test_fraction) for text in corpora]
            texts = {name: "".join(part[name] for part in parts) for name in SPLITS}
            for name in SPLITS:  # a token is one character or more: refused here, before any tokenizer is trained
                self._check_length(name, len(texts[name]), "characters")
            self._texts = texts
        return self._texts

    def _check_length(self, split: str, count: int, unit: str) -> None:
        if count > self.block_size:  # one block and its next-token target
            return
        share = {"train": 1 - self.val_fraction - self.test_fraction, "val": self.val_fraction,
                 "test": self.test_fraction}[split]
        raise UserError(f"data=text_corpus: the {split} split ({share:.0%} of {', '.join(map(str, self.paths))}) "
                        f"has {count} {unit}, not more than data.block_size={self.block_size}; give more text or a "
                        f"smaller block_size")

    def new_tokenizer(self) -> Tokenizer:
        """char or byte-level BPE, trained on the training text."""
        train = self.texts["train"]
        return char_tokenizer(train) if self.tokenizer_kind == "char" else bpe_tokenizer(train, self.bpe_vocab_size)

    # --- Lightning hooks ---------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        tok = self.prepare_tokenizer()
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage or "", SPLITS)
        for name in needed:  # evaluate.py encodes the test text only
            if name not in self.ids:
                self.ids[name] = encode_text(tok, self.texts[name])
                self._check_length(name, len(self.ids[name]), "tokens")

    def train_dataloader(self) -> DataLoader:
        data = RandomBlocks(self.ids["train"], self.block_size)
        # Each epoch batches_per_epoch * batch_size distinct random offsets (seeded: the same run twice is the
        # same), under DDP shared among the processes.
        trainer = getattr(self, "trainer", None)
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = EpochSubsetSampler(data, num_samples=min(len(data), self.batches_per_epoch * self.batch_size),
                                     num_replicas=world, rank=rank, generator=torch.Generator().manual_seed(self.seed))
        return DataLoader(data, batch_size=self.batch_size, sampler=sampler, drop_last=True,
                          **loader_options(self.num_workers, trainer))

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def _eval_loader(self, name: str) -> DataLoader:
        data = FixedBlocks(self.ids[name], self.block_size, self.max_eval_blocks if name == "val" else None)
        trainer = getattr(self, "trainer", None)
        return DataLoader(data, batch_size=self.eval_batch_size, shuffle=False, sampler=eval_sampler(data, trainer),
                          **loader_options(self.num_workers, trainer))
