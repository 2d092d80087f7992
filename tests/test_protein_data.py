"""Protein data: FASTA reading, the sequence batches (framing, padding, crops), the ProMod3 structure reader
against bytes parsed again by hand, and the homology split against an independent aligner (Biopython)."""

from __future__ import annotations

import gzip
import math
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import data.protein_split as protein_split
from data.protein_sequences import UNIPROT_EXAMPLES, PadProteins, ProteinSequencesDataModule, ProteinTokens, read_fasta
from data.protein_structures import STRUCTURE_DB, Chain, ProteinStructuresDataModule, antibody_kind, read_structure_db
from models.protein_alphabet import Alphabet

needs_mmseqs = pytest.mark.skipif(shutil.which("mmseqs") is None,
                                  reason="mmseqs not installed (apt-get install mmseqs2)")
needs_uniprot = pytest.mark.skipif(not UNIPROT_EXAMPLES.is_file(),
                                   reason=f"{UNIPROT_EXAMPLES} absent (apt-get install mmseqs2-examples)")


# --- FASTA ---------------------------------------------------------------------------------------------
def test_fasta_plain_and_gz_give_names_and_clean_residues(tmp_path: Path, capsys) -> None:
    text = ">sp|P1|ONE first protein\nMKTAYIAKQR\nQISFVK\n\n>two\nmkt ayi\n>three\nACDEFGHIKLMNPQRSTVWY\n"
    plain, packed = tmp_path / "a.fasta", tmp_path / "a.fasta.gz"
    plain.write_text(text)
    packed.write_bytes(gzip.compress(text.encode()))
    want = [("sp|P1|ONE", "MKTAYIAKQRQISFVK"), ("two", "MKTAYI"), ("three", "ACDEFGHIKLMNPQRSTVWY")]
    assert read_fasta(plain, "esm") == want
    assert "note: " in capsys.readouterr().err  # record two was lower case with a space: said so
    assert read_fasta(packed, "esm") == want
    assert read_fasta(packed)[1] == ("two", "mktayi")  # no alphabet: as written, white space dropped


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
def test_sequence_module_batches_hold_each_split_sequence_once(tmp_path: Path, monkeypatch) -> None:
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
    # a second module on the same data reads the cached split: mmseqs does not run again
    def no_mmseqs(*args, **kwargs):
        raise AssertionError("the split was computed again")

    monkeypatch.setattr(protein_split, "_compute", no_mmseqs)
    again = ProteinSequencesDataModule(root=str(tmp_path), max_len=64, max_sequences=300)
    assert [n for n, _ in again.sequences("test")] == names["test"]


# --- the ProMod3 structure database --------------------------------------------------------------------
needs_promod3 = pytest.mark.skipif(not STRUCTURE_DB.is_file(),
                                   reason=f"{STRUCTURE_DB} absent (apt-get install promod3-data)")
# Layout of promod3-data 3.2.1 as ../shared/data-notes.md gives it, not as the reader finds it
TOC_AT, SEQ_AT, XYZ_AT = 0x55, 0xAA2B4, 0x503C05  # each block starts with a u64 count


@pytest.fixture(scope="module")
def db():
    return read_structure_db()


def _by_hand(k: int) -> tuple[str, str, list[list[tuple[float, float, float]]]]:
    """Chain k's name, residues and N / CA / C / O coordinates parsed again with struct at hand-made offsets."""
    import struct

    with STRUCTURE_DB.open("rb") as f:
        f.seek(TOC_AT)
        toc = f.read(40 * (k + 1))
        at = 0
        for _ in range(k + 1):  # walk the table of contents: id, chain name, offset, size, first residue, shift
            (n,) = struct.unpack_from("<I", toc, at)
            pdb = toc[at + 4:at + 4 + n].decode()
            at += 4 + n
            (n,) = struct.unpack_from("<I", toc, at)
            chain = toc[at + 4:at + 4 + n].decode()
            at += 4 + n
            offset, size, _first, sx, sy, sz = struct.unpack_from("<IHH3f", toc, at)
            at += 20
        f.seek(SEQ_AT + 8 + offset)
        seq = f.read(size).decode()
        f.seek(XYZ_AT + 8 + 24 * offset)
        raw = f.read(24 * size)
    atoms = []
    for r in range(size):
        v = struct.unpack_from("<12h", raw, 24 * r)
        atoms.append([(v[3 * a] / 100 + sx, v[3 * a + 1] / 100 + sy, v[3 * a + 2] / 100 + sz) for a in range(4)])
    return f"{pdb}.{chain}", seq, atoms


@needs_promod3
def test_structure_reader_matches_bytes_parsed_by_hand_and_real_geometry(db) -> None:
    import math

    assert len(db) == 21119 and int(db.sizes.sum()) == 4_561_225  # the counts of data-notes.md
    for k in (0, 1, 2, 4321, len(db) - 1):
        name, seq, atoms = _by_hand(k)
        chain = db.chain(k)
        assert (chain.name, chain.sequence) == (name, seq)
        assert chain.coords.dtype == np.float32 and chain.coords.shape == (len(seq), 4, 3)
        assert np.allclose(chain.coords, np.array(atoms), atol=1e-4)
        # bond lengths from the hand-parsed atoms: N-CA 1.46 A, CA-C 1.52 A; CA-CA 3.8 A (cis 2.9)
        n_ca = [math.dist(r[0], r[1]) for r in atoms]
        ca_c = [math.dist(r[1], r[2]) for r in atoms]
        ca_ca = [math.dist(a[1], b[1]) for a, b in zip(atoms, atoms[1:])]
        assert 1.44 < sorted(n_ca)[len(n_ca) // 2] < 1.48 and 1.50 < sorted(ca_c)[len(ca_c) // 2] < 1.54
        assert min(n_ca) > 1.2 and max(n_ca) < 1.7 and min(ca_ca) > 2.7 and max(ca_ca) < 4.3
        # virtual C-beta, placed by hand (trRosetta's ideal-geometry formula on the hand-parsed atoms): the same
        # points; CA-CB about 1.53 A (the real bond) and N-CA-CB about 110 degrees (tetrahedral)
        cb = chain.cb
        lengths = []
        for r in range(0, len(seq), 7):
            nn, ca, c = atoms[r][0], atoms[r][1], atoms[r][2]
            b = [y - x for x, y in zip(nn, ca)]
            cc = [y - x for x, y in zip(ca, c)]
            a = [b[1] * cc[2] - b[2] * cc[1], b[2] * cc[0] - b[0] * cc[2], b[0] * cc[1] - b[1] * cc[0]]
            mine = [-0.58273431 * a[i] + 0.56802827 * b[i] - 0.54067466 * cc[i] + ca[i] for i in range(3)]
            assert math.dist(mine, cb[r]) < 1e-3
            lengths.append(math.dist(ca, mine))
            u, v = [x - y for x, y in zip(nn, ca)], [x - y for x, y in zip(mine, ca)]
            angle = math.degrees(math.acos(sum(x * y for x, y in zip(u, v)) / math.hypot(*u) / math.hypot(*v)))
            assert 100 < angle < 120
        assert 1.50 < sorted(lengths)[len(lengths) // 2] < 1.56 and 1.3 < min(lengths) and max(lengths) < 1.8
        # the contact map: every pair's C-beta distance by hand
        if k in (0, len(db) - 1):
            contacts = chain.contacts()
            for i in range(len(seq)):
                for j in range(len(seq)):
                    assert contacts[i, j] == (math.dist(cb[i], cb[j]) < 8.0)


def test_a_residue_without_coordinates_has_no_contacts() -> None:
    coords = np.zeros((4, 4, 3), dtype=np.float32)
    coords[:, :, 0] = np.arange(4)[:, None] * 3.8  # CA-CA 3.8 A along x
    coords[:, 0, 1], coords[:, 2, 2] = -1.0, 1.0  # N and C off the line, so the C-beta is defined
    coords[2] = np.nan
    contacts = Chain("test.A", "AAAA", coords).contacts()
    assert not contacts[2].any() and not contacts[:, 2].any() and contacts[0, 1] and contacts[3, 3]


@needs_mmseqs
@needs_promod3
def test_the_split_leaks_no_homologue_by_an_independent_aligner(tmp_path: Path) -> None:
    """For every test chain against every training chain (300 chains): a Smith-Waterman alignment
    (Biopython's PairwiseAligner, BLOSUM62, gaps 11 / 1), as mmseqs aligns; where it is significant
    (E-value <= 1e-3 against the training set, Karlin-Altschul with BLOSUM62 11/1's lambda 0.267, K 0.041),
    its identity (identical columns / alignment columns, mmseqs' default) is below the split's 0.3."""
    pytest.importorskip("Bio", reason="biopython not installed (pip install biopython)")
    from Bio.Align import PairwiseAligner, substitution_matrices

    dm = ProteinStructuresDataModule(root=str(tmp_path), max_chains=300, val_fraction=0.1, test_fraction=0.1)
    train = [c.sequence for c in dm.chains("train")]
    held = [c.sequence for c in dm.chains("test")]
    assert len(held) >= 20 and len(train) + len(held) + len(dm.chains("val")) + sum(dm.split.dropped.values()) == 300
    aligner = PairwiseAligner(mode="local", substitution_matrix=substitution_matrices.load("BLOSUM62"),
                              open_gap_score=-11, extend_gap_score=-1)
    lam, k = 0.267, 0.041
    space = sum(map(len, train))
    worst = 0.0
    for query in held:
        for target in train:
            score = aligner.score(query, target)
            evalue = k * len(query) * space * math.exp(-lam * score)
            if evalue > 1e-3:
                continue
            aln = aligner.align(query, target)[0]
            columns = aln.shape[1]
            same = sum(a == b for a, b in zip(aln[0], aln[1]) if a != "-")
            worst = max(worst, same / columns)
    assert worst < 0.3


@needs_promod3
def test_the_antibody_rule_takes_variable_domains_not_chains_that_merely_share_a_motif(db) -> None:
    index = {name: i for i, name in enumerate(db.names)}
    kinds = {name: antibody_kind(db.sequence(index[name])) for name in
             ("5C2B.A", "1MQK.B", "2YC1.B", "4HBC.B", "1BHD.B", "3C2G.A", "1R3D.A", "12AS.A")}
    # heavy: a human VH (5C2B.A) and a mouse VH (1MQK.B); light: a kappa VL (2YC1.B) and a Fab light chain
    # (4HBC.B); the others hold W[VIF]RQ or WYQQ outside any immunoglobulin domain, or neither
    assert kinds == {"5C2B.A": "heavy", "1MQK.B": "heavy", "2YC1.B": "light", "4HBC.B": "light",
                     "1BHD.B": None, "3C2G.A": None, "1R3D.A": None, "12AS.A": None}
