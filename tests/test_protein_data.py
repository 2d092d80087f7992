"""Protein data: FASTA reading, the sequence batches (framing, padding, crops), the ProMod3 structure reader
against bytes parsed again by hand, and the homology split against an independent aligner (Biopython)."""

from __future__ import annotations

import gzip
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from data.protein_sequences import UNIPROT_EXAMPLES, PadProteins, ProteinSequencesDataModule, ProteinTokens, read_fasta
from models.protein_alphabet import Alphabet

needs_mmseqs = pytest.mark.skipif(shutil.which("mmseqs") is None, reason="mmseqs not installed (apt-get install mmseqs2)")
needs_uniprot = pytest.mark.skipif(not UNIPROT_EXAMPLES.is_file(),
                                   reason=f"{UNIPROT_EXAMPLES} absent (apt-get install mmseqs2-examples)")


# --- FASTA ---------------------------------------------------------------------------------------------
def test_fasta_plain_and_gz_give_names_and_clean_residues(tmp_path: Path, capsys) -> None:
    text = ">sp|P1|ONE first protein\nMKTAYIAKQR\nQISFVK\n\n>two\nmkt ayi\n>three\nACDEFGHIKLMNPQRSTVWY\n"
    plain, packed = tmp_path / "a.fasta", tmp_path / "a.fasta.gz"
    plain.write_text(text)
    packed.write_bytes(gzip.compress(text.encode()))
    want = [("sp|P1|ONE", "MKTAYIAKQRQISFVK"), ("two", "MKTAYI"), ("three", "ACDEFGHIKLMNPQRSTVWY")]
    assert read_fasta(plain) == want
    assert "note: " in capsys.readouterr().err  # record two was lower case with a space: said so
    assert read_fasta(packed) == want


# --- batches -------------------------------------------------------------------------------------------
def test_pad_frames_each_sequence_as_the_alphabet_encodes_it() -> None:
    a = Alphabet.named("esm")
    seqs = ["MKTAY", "AC", "WWWWWWW"]
    lut = {t: i for i, t in enumerate(a.tokens)}
    batch = PadProteins(a)([torch.tensor([lut[c] for c in s]) for s in seqs])
    assert batch.dtype == torch.long and batch.shape == (3, 9)
    for row, s in zip(batch.tolist(), seqs):
        framed = a.encode(s)  # [cls, ids..., eos]: the alphabet's own framing
        assert row == framed + [a.pad] * (9 - len(framed))


def test_training_crops_are_random_windows_and_evaluation_crops_are_the_start() -> None:
    ids = np.arange(100, dtype=np.uint8)
    train, evaluate = ProteinTokens([ids], 30, random_crop=True), ProteinTokens([ids], 30, random_crop=False)
    torch.manual_seed(0)
    starts = set()
    for _ in range(50):
        crop = train[0].numpy()
        assert len(crop) == 30 and np.array_equal(crop, np.arange(crop[0], crop[0] + 30))  # one contiguous window
        starts.add(int(crop[0]))
    assert len(starts) > 10 and min(starts) >= 0 and max(starts) <= 70
    assert np.array_equal(evaluate[0].numpy(), np.arange(30)) and np.array_equal(evaluate[0].numpy(),
                                                                                   evaluate[0].numpy())
    short = ProteinTokens([np.arange(10, dtype=np.uint8)], 30, random_crop=True)
    assert np.array_equal(short[0].numpy(), np.arange(10))  # shorter than max_len: whole


@needs_mmseqs
@needs_uniprot
def test_sequence_module_batches_hold_each_split_sequence_once(tmp_path: Path) -> None:
    dm = ProteinSequencesDataModule(root=str(tmp_path), max_len=64, max_sequences=300, batch_size=8,
                                    eval_batch_size=16)
    a = dm.alphabet
    names = {s: [n for n, _ in dm.sequences(s)] for s in ("train", "val", "test")}
    assert not set(names["train"]) & (set(names["val"]) | set(names["test"]))
    assert sum(map(len, names.values())) <= 300 and len(names["val"]) and len(names["test"])
    # validation: every sequence once, framed, its first 64 residues
    rows = [row[row != a.pad].tolist() for batch in dm.val_dataloader() for row in batch]
    assert sorted(rows) == sorted(a.encode(seq[:64]) for _, seq in dm.sequences("val"))
    # training: one pass = every training sequence once, each a 64-residue (or whole) window of it
    train = "|".join(seq for _, seq in dm.sequences("train"))
    seen = 0
    for batch in dm.train_dataloader():
        assert batch.dtype == torch.long and batch.shape[0] <= 8 and batch.shape[1] <= 66
        for row in batch:
            body = row[row != a.pad].tolist()
            assert body[0] == a.cls and body[-1] == a.eos and len(body) <= 66
            assert a.decode(body) in train  # a window of one training sequence
            seen += 1
    assert seen == len(dm.sequences("train"))
    # the unigram baseline: residue counts of the training split by collections.Counter
    counts = Counter("".join(seq for _, seq in dm.sequences("train")))
    total = sum(counts.values())
    want = np.zeros(len(a))
    for letter, n in counts.items():
        want[a.tokens.index(letter)] = n / total
    assert np.allclose(dm.unigram(), want) and abs(dm.unigram().sum() - 1) < 1e-12
