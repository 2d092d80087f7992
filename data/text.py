"""Parallel text for the translator: one `LightningDataModule` for three sources.

* ``phrases`` (default): English -> `target_lang` phrases written by CLDR locale data (data/phrases.py),
  generated offline in seconds and cached as TSV.
* ``bible``: World English Bible -> Reina-Valera 1909, verse-aligned from Debian's SWORD modules
  (data/bible.py).
* ``tsv``: a user's file, one ``source<TAB>target`` pair a line (Tatoeba / Anki export format).

Splits are decided by a hash of the source sentence (of the verse key for the Bible), so a test
sentence can never also be a training sentence, and adding pairs never reshuffles the old ones.
The BPE tokenizer is trained on the training split only; it is saved in every checkpoint (the
data module's state) and in the run directory as tokenizer.json, and evaluation reloads it.
"""

from __future__ import annotations

from functools import partial

import hashlib
import random
import secrets
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Iterator

import lightning as L
import torch
from tokenizers import Tokenizer
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import BatchSampler, DataLoader, Sampler, SequentialSampler

from data.bible import load_bible
from data.distributed import loader_options
from data.phrases import generate_phrases
from data.tokenized import CarriesTokenizer
from models.tokenizer import BOS_ID, EOS_ID, PAD_ID, encode, load_tokenizer, train_tokenizer
from utils.errors import FileFormatError, MissingFileError, UserError

DATASETS = ("phrases", "bible", "tsv")


@dataclass
class Pair:
    key: str  # what the split is decided on
    source: str
    target: str


def split_of(key: str, val_fraction: float, test_fraction: float) -> str:
    h = int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") / 2**64
    return "test" if h < test_fraction else "val" if h < test_fraction + val_fraction else "train"


def read_text_file(path: Path, what: str, notes: list[str] | None = None) -> str:
    """A user's text file as str; errors name the file (and, for bad bytes, where they are). A UTF-8 or
    UTF-16 byte-order mark is honoured (UTF-16 is appended to `notes` when given)."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"{what}: cannot read {path} ({err.strerror or err})") from err
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):  # UTF-16 with its byte-order mark (e.g. Windows Notepad)
        encoding = "utf-16"
        if notes is not None:
            notes.append(f"{path}: read as UTF-16 (it starts with a UTF-16 byte-order mark)")
    else:
        encoding = "utf-8-sig"
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise FileFormatError(f"{what}: {path} is not UTF-8 text: byte {data[err.start:err.start + 1]!r} at line "
                              f"{line} (offset {err.start}) cannot be decoded; save the file as UTF-8") from None


def read_tsv(path: str | Path) -> list[Pair]:
    """Pairs from `source<TAB>target` lines; extra columns (Tatoeba ids, attribution) are ignored."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise MissingFileError(f"data=tsv: file {str(p)!r} does not exist; expected one 'source<TAB>target' pair a line")
    pairs = []
    for n, line in enumerate(read_text_file(p, "data=tsv").splitlines(), start=1):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) < 2 or not cols[0].strip() or not cols[1].strip():
            raise UserError(f"{p}:{n}: expected 'source<TAB>target', got {line[:80]!r}")
        pairs.append(Pair(cols[0].strip(), cols[0].strip(), cols[1].strip()))
    if not pairs:
        raise UserError(f"data=tsv: {p} has no sentence pairs")
    return pairs


def load_phrases(root: str | Path, target_lang: str, num_pairs: int, seed: int) -> list[Pair]:
    # Keyed by Babel's version too: new CLDR data may render a phrase differently.
    cache = Path(root) / "phrases" / f"en-{target_lang}-{num_pairs}-seed{seed}-babel{version('babel')}.tsv"
    if not cache.is_file():
        pairs = generate_phrases(target_lang, num_pairs, seed)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{secrets.token_hex(4)}.tmp")
        tmp.write_text("".join(f"{s}\t{t}\n" for s, t in pairs), encoding="utf-8")
        tmp.replace(cache)  # atomic: a concurrent or interrupted run never reads half a file
    return read_tsv(cache)


class TextPairs(torch.utils.data.Dataset):
    """Token ids of each pair; the target gets BOS ... EOS (decoder input and label are shifted views).
    A pretrained family's tokenizer (Marian's) brings its own start / end ids and target-side encoding."""

    def __init__(self, pairs: list[Pair], tok: Tokenizer, max_len: int) -> None:
        self.pairs = pairs
        start, end = getattr(tok, "start_id", BOS_ID), getattr(tok, "eos_id", EOS_ID)
        target = getattr(tok, "encode_target", lambda text: encode(tok, text, max_len))
        self.src = [encode(tok, p.source, max_len) for p in pairs]
        self.tgt = [[start, *target(p.target)[: max_len - 2], end] for p in pairs]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[list[int], list[int], int]:
        return self.src[i], self.tgt[i], i

    def lengths(self) -> list[int]:
        return [max(len(s), len(t)) for s, t in zip(self.src, self.tgt)]


def collate(samples: list[tuple[list[int], list[int], int]], pad_id: int = PAD_ID) -> dict[str, Tensor]:
    src = pad_sequence([torch.tensor(s or [pad_id]) for s, _, _ in samples], batch_first=True, padding_value=pad_id)
    tgt = pad_sequence([torch.tensor(t) for _, t, _ in samples], batch_first=True, padding_value=pad_id)
    return {"src": src, "tgt": tgt, "index": torch.tensor([i for _, _, i in samples])}


class BucketBatchSampler(BatchSampler):
    """Batches of similar length (less padding, a faster epoch) from the indices `sampler` yields:
    shuffle them, sort within pools of 50 batches, cut into batches, shuffle the batches.
    Deterministic per (seed, epoch).

    A `BatchSampler` subclass with a `sampler` argument, so that under DDP Lightning can swap in its
    `DistributedSampler`: each process then buckets its own 1/world of the indices, and all processes
    get the same number of batches (the distributed sampler pads to equal shares)."""

    def __init__(self, sampler: Sampler[int], batch_size: int, drop_last: bool, lengths: list[int], seed: int,
                 shuffle: bool) -> None:
        super().__init__(sampler, batch_size, drop_last)
        self.lengths, self.seed, self.shuffle = lengths, seed, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next pass draws for (utils.faults.EpochSeed calls it, also on a resume)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        rng = random.Random(self.seed + self.epoch)
        if hasattr(self.sampler, "set_epoch"):  # a DistributedSampler: this epoch's share, also on a resume
            self.sampler.set_epoch(self.epoch)
        self.epoch += 1  # without set_epoch (a plain loop over the loader) the next pass still differs
        order = list(self.sampler)
        if self.shuffle:
            rng.shuffle(order)
        pool = 50 * self.batch_size
        batches = []
        for start in range(0, len(order), pool):
            chunk = sorted(order[start:start + pool], key=self.lengths.__getitem__)
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()  # only the last pool can end short
        if self.shuffle:
            rng.shuffle(batches)
        return iter(batches)


class TranslationDataModule(CarriesTokenizer, L.LightningDataModule):
    """Sentence pairs -> padded id batches {"src", "tgt", "index"}; `references(stage)` gives the texts.

    Args mirror configs/data/{phrases,bible,tsv}.yaml: `bpe_vocab_size` is the size the tokenizer is
    trained to; `vocab_size` is the size it has (null: read from the tokenizer, and the model is
    sized from it); `max_len` the token limit per side (longer sentences are truncated).
    """

    modality = "text"  # the kind of input it yields: a network of the same modality trains on it
    task = "generate"  # sentence pairs: for a network that generates the target (not a plain-text LM)

    def __init__(
        self,
        dataset: str = "phrases",
        root: str = "datasets",
        path: str | None = None,
        target_lang: str = "de",
        num_pairs: int = 40_000,
        bpe_vocab_size: int = 1000,
        vocab_size: int | None = None,
        max_len: int = 64,
        batch_size: int = 128,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        seed: int = 0,
        val_fraction: float = 0.02,
        test_fraction: float = 0.02,
        max_eval_pairs: int | None = None,
    ) -> None:
        super().__init__()
        if dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
        if dataset == "tsv" and not path:
            raise ValueError("data=tsv needs data.path=<file.tsv> (one 'source<TAB>target' pair a line)")
        if not (0 < val_fraction and 0 < test_fraction and val_fraction + test_fraction < 1):
            raise ValueError(f"val_fraction and test_fraction must be > 0 with a sum < 1, got "
                             f"{val_fraction} and {test_fraction}")
        self.dataset, self.root, self.path, self.target_lang = dataset, root, path, target_lang
        self.num_pairs, self.bpe_vocab_size, self.expected_vocab, self.max_len = num_pairs, bpe_vocab_size, vocab_size, max_len
        self.batch_size, self.eval_batch_size, self.num_workers, self.seed = batch_size, eval_batch_size, num_workers, seed
        self.val_fraction, self.test_fraction, self.max_eval_pairs = val_fraction, test_fraction, max_eval_pairs
        self.tokenizer: Tokenizer | None = None
        self._splits: dict[str, list[Pair]] | None = None
        self._data: dict[str, TextPairs] = {}

    # --- pairs, splits and tokenizer ------------------------------------------------------------
    def _load_pairs(self) -> list[Pair]:
        if self.dataset == "phrases":
            return load_phrases(self.root, self.target_lang, self.num_pairs, self.seed)
        if self.dataset == "bible":
            return [Pair(k, en, es) for k, en, es in load_bible(self.root)]
        return read_tsv(self.path)

    @property
    def splits(self) -> dict[str, list[Pair]]:
        if self._splits is None:
            splits: dict[str, list[Pair]] = {"train": [], "val": [], "test": []}
            for p in self._load_pairs():
                splits[split_of(p.key, self.val_fraction, self.test_fraction)].append(p)
            for name in ("val", "test"):  # a cap keeps per-epoch decoding affordable on big corpora
                if self.max_eval_pairs:
                    splits[name] = splits[name][: self.max_eval_pairs]
            empty = [k for k, v in splits.items() if not v]
            if empty:
                raise UserError(f"{self.dataset}: the {', '.join(empty)} split(s) are empty; use more pairs or "
                                 f"larger val_fraction/test_fraction (now {self.val_fraction}/{self.test_fraction})")
            self._splits = splits
        return self._splits

    def new_tokenizer(self) -> Tokenizer:
        """A joint BPE trained on the training split's sources and targets."""
        return train_tokenizer((t for p in self.splits["train"] for t in (p.source, p.target)), self.bpe_vocab_size)

    def read_tokenizer(self, text: str) -> Tokenizer:
        return load_tokenizer(text)  # the zoo's specials checked (or a Marian SentencePiece pair)

    # --- Lightning hooks ---------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        tok = self.prepare_tokenizer()
        if not self._data and torch.distributed.is_available() and torch.distributed.is_initialized():
            # Under DDP every process trained its own tokenizer before the process group existed; all
            # must use rank 0's (the one its checkpoints and tokenizer.json keep), merges included.
            # Only on the first setup, which every process runs together (later calls, e.g. rank 0
            # drawing pictures after evaluation, would wait forever for the others).
            local = tok.to_str()
            shared = [local]
            torch.distributed.broadcast_object_list(shared, src=0)
            if shared[0] != local:
                size = tok.get_vocab_size()
                self.load_state_dict({"tokenizer": shared[0]})
                tok = self.prepare_tokenizer()
                if tok.get_vocab_size() != size:  # the model on this process was sized from its own
                    raise RuntimeError(f"rank 0's tokenizer has {tok.get_vocab_size()} tokens, the one this process "
                                       f"trained {size}: train one epoch in one process, then resume it under DDP "
                                       f"(ckpt_path=<run>): the checkpoint's tokenizer is then everyone's")
        for name in ("train", "val", "test"):
            if name not in self._data:
                self._data[name] = TextPairs(self.splits[name], tok, self.max_len)

    def references(self, stage: str) -> list[str]:
        return [p.target for p in self.splits[stage]]

    def sources(self, stage: str) -> list[str]:
        return [p.source for p in self.splits[stage]]

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)

    def _loader(self, name: str, batch_size: int, shuffle: bool) -> DataLoader:
        # The bucket sampler shuffles what its sampler yields. Under DDP Lightning swaps in a
        # DistributedSampler: for training a shuffling one (a new random share per process every
        # epoch), for evaluation a sequential one (process r: samples r, r+world, ...).
        data = self._data[name]
        batches = BucketBatchSampler(SequentialSampler(data), batch_size, drop_last=False, lengths=data.lengths(),
                                     seed=self.seed, shuffle=shuffle)
        pad_id = getattr(self.tokenizer, "pad_id", PAD_ID)  # a pretrained family's own (Marian's)
        return DataLoader(data, batch_sampler=batches, collate_fn=partial(collate, pad_id=pad_id),
                          **loader_options(self.num_workers, getattr(self, "trainer", None)))
