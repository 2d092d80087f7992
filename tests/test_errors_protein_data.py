"""Bad input to the protein data (docs/errors.md, "Protein data"): FASTA files, the structure database, mmseqs."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

import data.protein_sequences as sequences
import data.protein_split as split
import data.protein_structures as structures
from data.protein_sequences import ProteinSequencesDataModule, read_fasta
from data.protein_structures import STRUCTURE_DB, read_structure_db
from utils.errors import FileFormatError, MissingDataError, MissingFileError, UserError


def test_a_fasta_with_no_records_is_one_line_naming_the_file(tmp_path: Path) -> None:
    empty, bare, blank = tmp_path / "empty.fasta", tmp_path / "bare.fasta", tmp_path / "blank.fa.gz"
    empty.write_text("")
    bare.write_text("MKTAYIAKQR\n>one\nMKT\n")  # residues before any header
    blank.write_bytes(gzip.compress(b">one\n\n>two\n"))  # headers without residues
    with pytest.raises(FileFormatError, match=r"empty\.fasta holds no FASTA records \(it is empty or has no '>"):
        read_fasta(empty)
    with pytest.raises(FileFormatError, match=r"bare\.fasta: sequence text before the first '>' header line"):
        read_fasta(bare)
    with pytest.raises(FileFormatError, match=r"blank\.fa\.gz: none of its 2 records holds residues"):
        read_fasta(blank, "esm")
    assert read_fasta(blank) == [("one", ""), ("two", "")]  # without an alphabet: as written, for the caller
    with pytest.raises(MissingFileError, match=r"FASTA file '.*nope\.fasta' does not exist"):
        read_fasta(tmp_path / "nope.fasta")


def test_a_non_utf8_fasta_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.fasta"
    path.write_bytes(b">caf\xe9\nMKT\n")  # Latin-1
    with pytest.raises(FileFormatError, match=r"latin1\.fasta is not UTF-8 text: byte b'\\xe9' at line 1"):
        read_fasta(path)


def test_letters_the_alphabet_lacks_are_refused_naming_the_letter_and_record(tmp_path: Path) -> None:
    path = tmp_path / "odd.fasta"
    path.write_text(">good\nMKTAYI\n>bad\nMKT*AYI\n")
    with pytest.raises(UserError, match=r"odd\.fasta record 'bad': '\*' at residue 4 of 'MKT\*AYI' is not a resid"):
        read_fasta(path, "esm")
    path.write_text(">x\nMKTXAYI\n")  # X (unknown residue) is an ESM token, not an AntiBERTy one
    assert read_fasta(path, "esm") == [("x", "MKTXAYI")]
    with pytest.raises(UserError, match=r"record 'x': 'X' at residue 4 .* of the antiberty alphabet"):
        read_fasta(path, "antiberty")


def test_lower_case_spaces_and_empty_records_are_cleaned_with_a_note(tmp_path: Path, capsys) -> None:
    path = tmp_path / "messy.fasta"
    path.write_text(">a\nmkt ayi\n>empty\n>b\nACD\n")
    assert read_fasta(path, "esm") == [("a", "MKTAYI"), ("b", "ACD")]
    err = capsys.readouterr().err
    assert "note: " in err and "upper-cased residues / removed white space in 1 of 3 records" in err
    assert "skipped 1 record(s) without residues (first: 'empty')" in err
    assert read_fasta(path) == [("a", "mktayi"), ("empty", ""), ("b", "ACD")]  # no alphabet: the caller cleans


def test_missing_packages_say_what_to_install(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(structures, "STRUCTURE_DB", tmp_path / "structure_db.dat")
    with pytest.raises(MissingDataError, match=r"apt-get install promod3-data, or give data.path="):
        read_structure_db()
    with pytest.raises(MissingFileError, match=r"structure database '.*nope\.dat' does not exist"):
        read_structure_db(tmp_path / "nope.dat")
    monkeypatch.setattr(sequences, "UNIPROT_EXAMPLES", tmp_path / "DB.fasta.gz")
    with pytest.raises(MissingDataError, match=r"apt-get install mmseqs2-examples, or give data.path="):
        ProteinSequencesDataModule(root=str(tmp_path)).sequences("train")
    fasta = tmp_path / "three.fasta"
    fasta.write_text(">a\nMKTAYIAKQR\n>b\nACDEFGHIKL\n>c\nWWYYPPLLKK\n")
    monkeypatch.setattr(split.shutil, "which", lambda name: None)
    with pytest.raises(MissingDataError, match=r"needs mmseqs .* apt-get install mmseqs2$"):
        ProteinSequencesDataModule(path=str(fasta), root=str(tmp_path)).sequences("train")


def test_a_damaged_structure_database_is_refused_in_one_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk.dat"
    junk.write_bytes(b"not a database" * 100)
    with pytest.raises(FileFormatError, match=r"junk\.dat: its header does not match .* expected ProMod3 3\.2\.1"):
        read_structure_db(junk)
    if not STRUCTURE_DB.is_file():
        pytest.skip(f"{STRUCTURE_DB} absent (apt-get install promod3-data)")
    head = STRUCTURE_DB.open("rb").read(1 << 21)  # the header, the table of contents and some residues
    cut = tmp_path / "cut.dat"
    cut.write_bytes(head)
    with pytest.raises(FileFormatError, match=r"cut\.dat: it ends at byte 2097152, before its coordinates do"):
        read_structure_db(cut)
    bad = bytearray(head)
    bad[0x55 + 4 + 4 + 4 + 1] ^= 0x01  # the first chain's offset: 0 -> 1
    moved = tmp_path / "moved.dat"
    moved.write_bytes(bytes(bad))
    with pytest.raises(FileFormatError, match=r"offsets and sizes do not tile the residues"):
        read_structure_db(moved)
    (tmp_path / "folder").mkdir()
    with pytest.raises(MissingFileError, match=r"folder/structure_db\.dat' does not exist"):
        read_structure_db(tmp_path / "folder")  # a folder: its structure_db.dat
