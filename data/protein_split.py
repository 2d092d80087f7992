"""The homology-aware train / val / test split of protein sequences, shared by the sequence and structure data.

The rule (docs/protein_data.md), run with Debian's `mmseqs` (package mmseqs2):

1. Cluster all sequences: `mmseqs easy-cluster --min-seq-id <identity> -c 0.8 --cov-mode 0` (members share
   >= `identity` sequence identity with their cluster's representative over >= 80 % of both sequences).
2. Assign whole clusters to test, then val, then train by a seeded shuffle of the clusters, until test holds
   at least `test_fraction` of the sequences and val `val_fraction`.
3. Search val + test against train: `mmseqs easy-search -s 7.5 --comp-bias-corr 0 --min-seq-id <identity>
   -e 1e-3` (the most sensitive prefilter; no composition-bias correction, which hid real homologues, e.g.
   interferons 1B5L.A / 1AU1.A at 40 % identity; no coverage limit, so a shared domain counts). A val / test
   sequence with any hit of identity >= `identity` (identical columns / alignment columns, mmseqs'
   --seq-id-mode 0) and e-value <= 1e-3 is dropped, with a note.

So no val / test sequence has a training sequence it aligns to at >= `identity` identity (as far as mmseqs'
search finds). The result is cached as `<cache_dir>/<hash>.json`, the hash over the sequences and the rule.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from utils.errors import MissingDataError, UserError, note

VERSION = 2  # bump when the rule changes: old cache files are then not read
COVERAGE = 0.8  # clustering: the alignment covers >= 80 % of both sequences (cov-mode 0)
EVALUE = 1e-3  # search: hits this significant or more count
SENSITIVITY = 7.5  # search: mmseqs' most sensitive prefilter (-s); the default 5.7 missed homologues at 30 %
SPLITS = ("train", "val", "test")


@dataclass
class Split:
    """Indices into the sequence list for each split, and what the rule did (`dropped`: val / test sequences
    removed for a training homologue; `seconds`: the time mmseqs took when it was computed)."""

    train: list[int]
    val: list[int]
    test: list[int]
    clusters: int
    dropped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def indices(self, split: str) -> list[int]:
        return {"train": self.train, "val": self.val, "test": self.test}[split]


def mmseqs_binary() -> str:
    """The `mmseqs` executable, or a MissingDataError saying how to install it."""
    found = shutil.which("mmseqs")
    if found is None:
        raise MissingDataError("the protein split needs mmseqs (sequence clustering), which is not installed: "
                               "apt-get install mmseqs2")
    return found


def homology_split(
    sequences: list[str],
    *,
    val_fraction: float,
    test_fraction: float,
    identity: float = 0.3,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    threads: int = 1,
    what: str = "sequences",
    search: bool = True,
) -> Split:
    """Split `sequences` (residue strings) by the rule of this module; read from / written to `cache_dir`.
    `search=False` stops after step 2 (whole clusters apart, no search for homologues across them): for
    families whose members are all homologues of each other (antibody variable domains)."""
    rule = {"version": VERSION, "identity": identity, "coverage": COVERAGE, "evalue": EVALUE,
            "sensitivity": SENSITIVITY, "val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed,
            "search": search}
    digest = hashlib.sha256(json.dumps(rule, sort_keys=True).encode())
    for seq in sequences:
        digest.update(seq.encode() + b"\n")
    cache = Path(cache_dir).expanduser() / f"{digest.hexdigest()[:24]}.json" if cache_dir is not None else None
    if cache is not None and cache.is_file():
        split = Split(**json.loads(cache.read_text()))
    else:
        split = _compute(sequences, rule, threads)
        if cache is not None:  # written whole, then renamed: a run killed midway leaves no half file
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(asdict(split)) + "\n")
            tmp.replace(cache)
    if sum(split.dropped.values()):
        note(f"protein split: dropped {split.dropped.get('val', 0)} val and {split.dropped.get('test', 0)} test "
             f"{what} with a training homologue (identity >= {identity:g}, e-value <= {EVALUE:g}); "
             f"{len(split.train)} / {len(split.val)} / {len(split.test)} train / val / test {what} remain")
    for name in ("val", "test"):
        if not split.indices(name):
            raise UserError(f"the {name} split of {len(sequences)} {what} is empty after removing training "
                            f"homologues; give more {what} (or a larger {name}_fraction)")
    return split


def _compute(sequences: list[str], rule: dict, threads: int) -> Split:
    binary = mmseqs_binary()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="zoo-mmseqs-") as tmp:
        work = Path(tmp)
        _write_fasta(work / "all.fasta", range(len(sequences)), sequences)
        _run([binary, "easy-cluster", str(work / "all.fasta"), str(work / "clu"), str(work / "tmp"),
              "--min-seq-id", str(rule["identity"]), "-c", str(COVERAGE), "--cov-mode", "0",
              "--threads", str(threads), "-v", "1"])
        members: dict[str, list[int]] = {}
        for line in (work / "clu_cluster.tsv").read_text().splitlines():
            rep, member = line.split("\t")
            members.setdefault(rep, []).append(int(member))
        # Sorted first: the shuffle then depends on the seed only, not on mmseqs' output order
        clusters = sorted(sorted(m) for m in members.values())
        random.Random(rule["seed"]).shuffle(clusters)
        n = len(sequences)
        parts: dict[str, list[int]] = {name: [] for name in SPLITS}
        wanted = {"test": rule["test_fraction"] * n, "val": rule["val_fraction"] * n}
        for cluster in clusters:
            name = next((s for s in ("test", "val") if len(parts[s]) < wanted[s]), "train")
            parts[name].extend(cluster)
        dropped = {"val": 0, "test": 0}
        held = parts["val"] + parts["test"]
        if rule["search"] and held and parts["train"]:
            _write_fasta(work / "held.fasta", held, sequences)
            _write_fasta(work / "train.fasta", parts["train"], sequences)
            _run([binary, "easy-search", str(work / "held.fasta"), str(work / "train.fasta"), str(work / "hits.m8"),
                  str(work / "tmp"), "-s", str(SENSITIVITY), "--comp-bias-corr", "0",
                  "--min-seq-id", str(rule["identity"]), "-e", str(EVALUE),
                  "--format-output", "query,target,fident,evalue", "--threads", str(threads), "-v", "1"])
            leaked = set()
            for line in (work / "hits.m8").read_text().splitlines():
                query, _, fident, evalue = line.split("\t")
                if float(fident) >= rule["identity"] and float(evalue) <= EVALUE:
                    leaked.add(int(query))
            for name in ("val", "test"):
                kept = [i for i in parts[name] if i not in leaked]
                dropped[name] = len(parts[name]) - len(kept)
                parts[name] = kept
    return Split(train=sorted(parts["train"]), val=sorted(parts["val"]), test=sorted(parts["test"]),
                 clusters=len(clusters), dropped=dropped, seconds=round(time.perf_counter() - start, 1))


def _write_fasta(path: Path, indices: range | list[int], sequences: list[str]) -> None:
    # Records named by their index: mmseqs reads names up to the first space, and user names may repeat
    path.write_text("".join(f">{i}\n{sequences[i]}\n" for i in indices))


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:  # not the user's input (that was checked): a bug or a broken mmseqs, so no UserError
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{' '.join(command[:2])} failed with exit code {done.returncode}: {' | '.join(tail)}")


__all__ = ["Split", "homology_split", "mmseqs_binary"]
