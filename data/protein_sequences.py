"""Protein sequences for masked-LM training: FASTA files -> homology-aware split -> padded `<cls> residues <eos>` ids.

* Source: `path` (a FASTA file or a list of them, `.gz` read too), or null for Debian's mmseqs2 example data
  (`/usr/share/doc/mmseqs2/example-data/DB.fasta.gz`: 20,000 UniProt sequences, package mmseqs2-examples).
* Split: data/protein_split.py (mmseqs clusters at `identity`, whole clusters to train / val / test, val / test
  sequences with a training homologue dropped); cached under `<root>/protein_splits`.
* Batches: one int64 tensor (B, T) of `<cls> residues <eos>` ids, padded with the alphabet's pad id (the
  LightningModule masks). A sequence longer than `max_len` residues is cropped: training at a random offset
  each time it is drawn (as ESM trained), validation / test to its first `max_len` residues (fixed). Batches
  hold sequences of similar length (data.text.BucketBatchSampler); a training epoch is one pass over the
  training sequences.
"""

from __future__ import annotations

import functools
import gzip
import zlib
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, SequentialSampler

from data.distributed import loader_options
from data.protein_split import SPLITS, Split, homology_split
from data.text import BucketBatchSampler
from models.checks import refuse, require_choice, require_int, require_number
from models.protein_alphabet import ALPHABETS, Alphabet, SequenceError
from utils.errors import FileFormatError, MissingDataError, MissingFileError, UserError, note

UNIPROT_EXAMPLES = Path("/usr/share/doc/mmseqs2/example-data/DB.fasta.gz")


def read_fasta(path: str | Path, alphabet: Alphabet | str | None = None) -> list[tuple[str, str]]:
    """(name, sequence) of every record of a FASTA file (`.gz` too), in file order; the name is the header's
    first word. A missing or non-UTF-8 file, one with no records or with residues before the first header is a
    UserError naming the file.

    Without `alphabet`: sequences as written (white space dropped), empty ones kept: the caller checks them
    (predict.py does, saying what it fixed). With an alphabet (the data modules): lower case and white space
    are cleaned and records without residues skipped, each with a note; a letter the alphabet lacks is a
    UserError naming the letter, its position and the record."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise MissingFileError(f"FASTA file {str(p)!r} does not exist; expected a FASTA file of protein sequences "
                               f"('>name' lines, each followed by its residues)")
    try:
        raw = p.read_bytes()
        if raw[:2] == b"\x1f\x8b":  # gzip's magic, whatever the file is called
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise FileFormatError(f"cannot read FASTA file {p} ({err})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise FileFormatError(f"FASTA file {p} is not UTF-8 text: byte {raw[err.start:err.start + 1]!r} at line "
                              f"{line} (offset {err.start}) cannot be decoded; expected ASCII residue "
                              f"letters") from None
    records: list[tuple[str, list[str]]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith(">"):
            words = line[1:].split(maxsplit=1)
            records.append((words[0] if words else f"record_{len(records) + 1}", []))
        elif line.strip() and not line.startswith(";"):  # ';' starts a comment line in old FASTA files
            if not records:
                raise FileFormatError(f"FASTA file {p}: sequence text before the first '>' header line (line "
                                      f"{number}); expected '>name' lines, each followed by its residues")
            records[-1][1].append(line)
    if not records:
        raise FileFormatError(f"FASTA file {p} holds no FASTA records (it is empty or has no '>name' header "
                              f"line); expected '>name' lines, each followed by its residues")
    if alphabet is None:
        return [(name, "".join("".join(lines).split())) for name, lines in records]
    alpha = Alphabet.named(alphabet) if isinstance(alphabet, str) else alphabet
    known = set(alpha.letters)
    out, cleaned, empty = [], 0, []
    for name, lines in records:
        joined = "".join(lines)
        seq = "".join(joined.split()).upper()
        if not seq:
            empty.append(name)
            continue
        if set(seq) - known:
            try:
                alpha.clean(seq)
            except SequenceError as err:
                raise UserError(f"FASTA file {p} record {name!r}: {err}") from None
        cleaned += seq != joined
        out.append((name, seq))
    if cleaned:
        note(f"{p}: upper-cased residues / removed white space in {cleaned} of {len(records)} records")
    if empty:
        note(f"{p}: skipped {len(empty)} record(s) without residues (first: {empty[0]!r})")
    if not out:
        raise FileFormatError(f"FASTA file {p}: none of its {len(records)} records holds residues")
    return out


def encode_residues(seq: str, alphabet: Alphabet) -> np.ndarray:
    """The ids of a clean residue string (no cls / eos), uint8."""
    return _lookup(alphabet)[np.frombuffer(seq.encode("ascii"), dtype=np.uint8)]


@functools.lru_cache(maxsize=None)
def _lookup(alphabet: Alphabet) -> np.ndarray:
    """byte -> token id of the alphabet's residue letters (a table: one numpy gather encodes a sequence)."""
    lut = np.zeros(256, dtype=np.uint8)
    for letter in alphabet.letters:
        lut[ord(letter)] = alphabet.tokens.index(letter)
    return lut


class ProteinTokens(Dataset):
    """Item i: the residue ids of sequence i (uint8 tensor), cropped to `max_len`: at a random offset
    (torch's generator: seeded, per worker) when `random_crop`, else the first `max_len` residues."""

    def __init__(self, ids: list[np.ndarray], max_len: int, random_crop: bool) -> None:
        self.ids, self.max_len, self.random_crop = ids, max_len, random_crop

    def __len__(self) -> int:
        return len(self.ids)

    def lengths(self) -> list[int]:
        return [min(len(x), self.max_len) for x in self.ids]

    def __getitem__(self, i: int) -> Tensor:
        ids = self.ids[i]
        start = 0
        if len(ids) > self.max_len and self.random_crop:
            start = int(torch.randint(len(ids) - self.max_len + 1, ()).item())
        return torch.from_numpy(ids[start:start + self.max_len].astype(np.int64))


class PadProteins:
    """collate_fn: residue id tensors -> (B, T) int64 `<cls> residues <eos>`, padded with the pad id."""

    def __init__(self, alphabet: Alphabet) -> None:
        self.alphabet = alphabet

    def __call__(self, items: list[Tensor]) -> Tensor:
        a = self.alphabet
        out = torch.full((len(items), max(len(x) for x in items) + 2), a.pad, dtype=torch.long)
        for row, x in zip(out, items):
            row[0], row[1:len(x) + 1], row[len(x) + 1] = a.cls, x, a.eos
        return out


class ProteinBatches(L.LightningDataModule):
    """What both protein data modules share: the split's residue ids -> train / val / test loaders of padded
    id batches, `unigram()` and the alphabet. A subclass fills `self._names` and `self._seqs` (all records) and
    `self.split` (a data.protein_split.Split) in `_load()`."""

    modality = "protein"  # the kind of input it yields: a network of the same modality trains on it
    task = "unmask"  # masked-LM batches (utils.build.check_model_fits_data)
    what = "sequences"
    search = True  # step 3 of the split rule (data/protein_split.py): drop val / test homologues of training ones

    def __init__(self, *, alphabet: str, max_len: int, batch_size: int, eval_batch_size: int, val_fraction: float,
                 test_fraction: float, identity: float, root: str, num_workers: int, seed: int) -> None:
        super().__init__()
        require_choice("alphabet", alphabet, ALPHABETS)
        for name, value in (("max_len", max_len), ("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            require_int(name, value)
        require_int("num_workers", num_workers, at_least=0)
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction),
                            ("identity", identity)):
            require_number(name, value, low=0, high=1, low_open=True, high_open=True)
        if val_fraction + test_fraction >= 1:
            raise refuse("val_fraction", val_fraction, f"with test_fraction={test_fraction} expected a sum < 1 "
                         "(the rest trains)")
        self.alphabet = Alphabet.named(alphabet)
        self.max_len, self.batch_size, self.eval_batch_size = max_len, batch_size, eval_batch_size
        self.val_fraction, self.test_fraction, self.identity = val_fraction, test_fraction, identity
        self.root, self.num_workers, self.seed = root, num_workers, seed
        self._names: list[str] = []
        self._seqs: list[str] = []
        self.split: Split | None = None
        self._ids: dict[str, ProteinTokens] = {}

    def _load(self) -> None:
        raise NotImplementedError

    def _homology_split(self) -> Split:
        return homology_split(self._seqs, val_fraction=self.val_fraction, test_fraction=self.test_fraction,
                              identity=self.identity, seed=self.seed, what=self.what, search=self.search,
                              cache_dir=Path(self.root).expanduser() / "protein_splits")

    def _ready(self) -> Split:
        if self.split is None:
            self._load()
        assert self.split is not None
        return self.split

    def sequences(self, split: str = "train") -> list[tuple[str, str]]:
        """(name, residues) of one split's records, whole (not cropped)."""
        require_choice("split", split, SPLITS)
        return [(self._names[i], self._seqs[i]) for i in self._ready().indices(split)]

    def unigram(self, split: str = "train") -> np.ndarray:
        """Residue frequencies of a split over the alphabet's ids (len(alphabet), sums to 1; whole sequences,
        no cls / eos / pad): the unigram model whose perplexity is the baseline of the masked LM."""
        counts = np.zeros(len(self.alphabet), dtype=np.float64)
        for _, seq in self.sequences(split):
            counts += np.bincount(encode_residues(seq, self.alphabet), minlength=len(self.alphabet))
        return counts / counts.sum()

    # --- Lightning hooks ---------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage or "", SPLITS)
        for name in needed:
            if name not in self._ids:
                ids = [encode_residues(seq, self.alphabet) for _, seq in self.sequences(name)]
                self._ids[name] = ProteinTokens(ids, self.max_len, random_crop=name == "train")

    def _loader(self, name: str, batch_size: int, shuffle: bool) -> DataLoader:
        self.setup({"train": "fit", "val": "validate", "test": "test"}[name])
        data = self._ids[name]
        # Batches of similar lengths (less padding); seeded per (seed, epoch); under DDP Lightning swaps in
        # its DistributedSampler for the SequentialSampler (data.text.BucketBatchSampler).
        sampler = BucketBatchSampler(SequentialSampler(data), batch_size, drop_last=False, lengths=data.lengths(),
                                     seed=self.seed, shuffle=shuffle)
        return DataLoader(data, batch_sampler=sampler, collate_fn=PadProteins(self.alphabet),
                          **loader_options(self.num_workers, getattr(self, "trainer", None)))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)


class ProteinSequencesDataModule(ProteinBatches):
    """FASTA files -> masked-LM batches (B, T) of `<cls> residues <eos>` ids.

    Args mirror configs/data/protein_sequences.yaml: `dataset` the config's name; `path` a FASTA file or a
    list of them (null: the UniProt examples of mmseqs2-examples); `max_len` residues per sequence (longer
    ones cropped); `identity` the split's homology threshold; `max_sequences` the first N records only (null:
    all); `root` where the split is cached (`<root>/protein_splits`).
    """

    def __init__(
        self,
        *,
        dataset: str = "protein_sequences",
        path: str | list[str] | None = None,
        alphabet: str = "esm",
        max_len: int = 1024,
        batch_size: int = 16,
        eval_batch_size: int = 32,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        identity: float = 0.3,
        max_sequences: int | None = None,
        root: str = "datasets",
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(alphabet=alphabet, max_len=max_len, batch_size=batch_size, eval_batch_size=eval_batch_size,
                         val_fraction=val_fraction, test_fraction=test_fraction, identity=identity, root=root,
                         num_workers=num_workers, seed=seed)
        require_int("max_sequences", max_sequences, at_least=3, optional=True, note=" (train, val and test)")
        paths = [path] if isinstance(path, (str, Path)) else list(path) if path is not None else None
        if paths is not None and not paths:
            raise refuse("path", path, "expected a FASTA file or a list of them")
        self.dataset = dataset  # the config's name (data=protein_sequences), for messages
        self.paths = [Path(p).expanduser() for p in paths] if paths is not None else None
        self.max_sequences = max_sequences

    def _load(self) -> None:
        paths = self.paths
        if paths is None:
            if not UNIPROT_EXAMPLES.is_file():
                raise MissingDataError(f"data={self.dataset}: the default sequences {UNIPROT_EXAMPLES} are not "
                                       f"installed: apt-get install mmseqs2-examples, or give data.path=<FASTA file>")
            paths = [UNIPROT_EXAMPLES]
        records = [r for p in paths for r in read_fasta(p, self.alphabet)]
        if self.max_sequences is not None:
            records = records[: self.max_sequences]
        if len(records) < 3:
            raise UserError(f"data={self.dataset}: {', '.join(map(str, paths))} hold(s) {len(records)} "
                            f"sequence(s); expected at least 3 (train, val and test)")
        self._names = [name for name, _ in records]
        self._seqs = [seq for _, seq in records]
        self.split = self._homology_split()


__all__ = ["PadProteins", "ProteinBatches", "ProteinSequencesDataModule", "ProteinTokens", "encode_residues",
           "read_fasta"]
