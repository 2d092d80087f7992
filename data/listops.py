"""Long Range Arena's ListOps (Tay et al. 2020, arXiv 2011.04006), generated offline from the paper's description.

A sequence is a nested expression of MIN / MAX / MED (median) / SM (sum modulo 10) over digits 0-9, e.g.
``[MAX 4 3 [MIN 2 3 ] 1 0 [MED 1 5 8 9 2 ] ]`` -> 5; the label (10 classes) is the value of the whole
expression. As in the paper (and Nangia & Bowman 2018): trees up to depth 10, 2 to 10 arguments per
operator, an argument is an operator with probability 0.25 (below the maximum depth), and sequences of
500 to 2,000 tokens are kept (shorter or longer ones are drawn again); 96K / 2K / 2K train / val / test.
Tokens: one per operator (``[MAX``), closing bracket and digit; no parentheses. A class token starts
each sequence, for the classifier to pool.

Generated once, seeded (about 1 ms a tree), and cached as
``<root>/listops/<version>-<hash of the parameters>/listops.npz``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import secrets
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, SequentialSampler
from tqdm import tqdm

from data.distributed import loader_options
from data.text import BucketBatchSampler

VERSION = 1
PAD_ID, CLS_ID = 0, 1
OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
VOCAB = ("<pad>", "<cls>") + tuple(str(d) for d in range(10)) + OPERATORS + ("]",)
TOKEN_ID = {t: i for i, t in enumerate(VOCAB)}
END_ID = TOKEN_ID["]"]
OPERATOR_P = 0.25  # the paper's VALUE_P: below max_depth, an argument is an operator with this probability
APPLY = {
    "[MIN": min,
    "[MAX": max,
    "[MED": lambda xs: int(statistics.median(xs)),  # the mean of the middle two rounds down, as numpy's int()
    "[SM": lambda xs: sum(xs) % 10,
}


def random_tree(rng: random.Random, depth: int, max_depth: int, max_args: int, out: list[int]) -> int:
    """Append one random expression's token ids to `out` and return its value."""
    if depth < max_depth and rng.random() < OPERATOR_P:
        op = rng.choice(OPERATORS)
        out.append(TOKEN_ID[op])
        args = [random_tree(rng, depth + 1, max_depth, max_args, out) for _ in range(rng.randint(2, max_args))]
        out.append(END_ID)
        return APPLY[op](args)
    value = rng.randrange(10)
    out.append(TOKEN_ID[str(value)])
    return value


def evaluate(tokens: list[str]) -> int:
    """The value of a token sequence (a stack machine, independent of `random_tree`: used by the tests)."""
    stack: list[list] = []
    value = None
    for tok in tokens:
        if tok in APPLY:
            stack.append([tok])
        elif tok == "]":
            op, *args = stack.pop()
            value = APPLY[op](args)
            if stack:
                stack[-1].append(value)
        else:
            value = int(tok)
            if stack:
                stack[-1].append(value)
    if stack or value is None:
        raise ValueError(f"unbalanced ListOps expression: {' '.join(tokens[:20])} ...")
    return value


@dataclass(frozen=True)
class ListOpsSpec:
    """What a generated set depends on (its cache key)."""

    train_size: int = 96_000
    val_size: int = 2_000
    test_size: int = 2_000
    min_length: int = 500
    max_length: int = 2_000
    max_depth: int = 10
    max_args: int = 10
    seed: int = 0

    def key(self) -> str:
        digest = hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]
        return f"{VERSION}-{digest}"


def generate(spec: ListOpsSpec, progress: bool = True) -> dict[str, np.ndarray]:
    """{split_tokens, split_offsets, split_labels}: sequences (class token first) stored end to end."""
    rng = random.Random(spec.seed)
    arrays: dict[str, np.ndarray] = {}
    seen: set[bytes] = set()  # no sequence in two splits (at these lengths repeats are practically impossible)
    for split, size in (("train", spec.train_size), ("val", spec.val_size), ("test", spec.test_size)):
        seqs, labels = [], []
        with tqdm(total=size, desc=f"ListOps {split}", disable=not progress, leave=False) as bar:
            while len(seqs) < size:
                out = [CLS_ID]
                value = random_tree(rng, 1, spec.max_depth, spec.max_args, out)
                seq = np.asarray(out, dtype=np.int8)
                if not spec.min_length < len(out) - 1 < spec.max_length or seq.tobytes() in seen:
                    continue
                seen.add(seq.tobytes())
                seqs.append(seq)
                labels.append(value)
                bar.update()
        arrays[f"{split}_tokens"] = np.concatenate(seqs)
        arrays[f"{split}_offsets"] = np.cumsum([0] + [len(s) for s in seqs])
        arrays[f"{split}_labels"] = np.asarray(labels, dtype=np.int64)
    return arrays


def load_listops(root: str | os.PathLike, spec: ListOpsSpec) -> dict[str, np.ndarray]:
    path = Path(root).expanduser() / "listops" / spec.key() / "listops.npz"
    if path.exists():
        with np.load(path) as f:
            return dict(f)
    arrays = generate(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    # prepare_data runs once per node: nodes sharing a filesystem each need a temp name of their own
    tmp = path.with_suffix(f".{secrets.token_hex(4)}.tmp.npz")
    np.savez_compressed(tmp, **arrays)
    spec_tmp = tmp.with_suffix(".json")
    spec_tmp.write_text(json.dumps(asdict(spec), indent=2) + "\n")
    os.replace(spec_tmp, path.parent / "spec.json")
    os.replace(tmp, path)  # a killed generation leaves no half-written cache
    return arrays


class Sequences(Dataset):
    def __init__(self, tokens: np.ndarray, offsets: np.ndarray, labels: np.ndarray) -> None:
        self.tokens, self.offsets, self.labels = tokens, offsets, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        seq = self.tokens[self.offsets[i]: self.offsets[i + 1]].astype(np.int64)
        return torch.from_numpy(seq), int(self.labels[i])


def pad_batch(samples: list[tuple[Tensor, int]]) -> tuple[Tensor, Tensor]:
    """(B, longest) ids padded with PAD_ID, and (B,) labels."""
    ids = torch.nn.utils.rnn.pad_sequence([s for s, _ in samples], batch_first=True, padding_value=PAD_ID)
    return ids, torch.tensor([y for _, y in samples])


class ListOpsDataModule(L.LightningDataModule):
    """ListOps as (ids, label) batches; every constructor argument is a key of configs/data/listops.yaml."""

    modality = "tokens"  # the kind of input it yields: a network of the same modality trains on it

    def __init__(self, root: str = "data", train_size: int = 96_000, val_size: int = 2_000, test_size: int = 2_000,
                 min_length: int = 500, max_length: int = 2_000, max_depth: int = 10, max_args: int = 10,
                 batch_size: int = 32, eval_batch_size: int = 64, num_workers: int = 0, seed: int = 0,
                 num_classes: int = 10, vocab_size: int = len(VOCAB), dataset: str = "listops") -> None:
        super().__init__()
        if min(train_size, val_size, test_size, batch_size, eval_batch_size) < 1:
            raise ValueError(f"train/val/test sizes and batch sizes must be >= 1, got {train_size}, {val_size}, "
                             f"{test_size}, {batch_size}, {eval_batch_size}")
        if not 0 <= min_length < max_length:
            raise ValueError(f"need 0 <= min_length < max_length, got {min_length}, {max_length}")
        self.root, self.batch_size, self.eval_batch_size = root, batch_size, eval_batch_size
        self.num_workers, self.seed = num_workers, seed
        self.spec = ListOpsSpec(train_size, val_size, test_size, min_length, max_length, max_depth, max_args, seed)
        if (num_classes, vocab_size) != (10, len(VOCAB)):
            raise ValueError(f"ListOps has 10 classes and {len(VOCAB)} token ids, got num_classes={num_classes}, "
                             f"vocab_size={vocab_size}")
        self.num_classes, self.vocab_size, self.max_len = num_classes, vocab_size, max_length + 1
        self.splits: dict[str, Sequences] = {}

    def prepare_data(self) -> None:
        load_listops(self.root, self.spec)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        arrays = load_listops(self.root, self.spec)
        for split in ("train", "val", "test"):
            self.splits[split] = Sequences(arrays[f"{split}_tokens"], arrays[f"{split}_offsets"],
                                           arrays[f"{split}_labels"])

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        data = self.splits[split]
        # Batches of similar lengths (less padding), the translator's sampler; seeded per (seed, epoch).
        sampler = BucketBatchSampler(SequentialSampler(data), batch_size, drop_last=False,
                                     lengths=np.diff(data.offsets).tolist(), seed=self.seed, shuffle=shuffle)
        return DataLoader(data, batch_sampler=sampler, collate_fn=pad_batch,
                          **loader_options(self.num_workers, getattr(self, "trainer", None)))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)
