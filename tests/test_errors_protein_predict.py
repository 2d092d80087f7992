"""Bad and odd input to predict.py on a protein model (docs/errors.md, "Protein predict"): one `error:` line
naming the text or file and exit 2, or a run with a `note:` saying what was done."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.protein_runs import UBIQUITIN_CA, make_protein_run, predict_in_process, write_pdb


LONG = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ"  # 33 residues, 35 tokens


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_protein_run(tmp_path_factory.mktemp("protein_errors") / "run")




def _one_error(capsys, *args: object) -> str:
    """The command exits 2 with exactly one stderr line, `error: ...`, and prints nothing else; that line."""
    code, out, err = predict_in_process(capsys, *args)
    assert code == 2 and out == "", (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_letters_that_are_not_residues_are_named(run, capsys) -> None:
    line = _one_error(capsys, run, "MKTJAYI")
    assert "'J' at residue 4 of 'MKTJAYI' is not a residue letter of the esm alphabet" in line
    assert "'1' at residue 4" in _one_error(capsys, run, "MKT 123")


def test_lower_case_and_spaces_run_with_a_note(run, capsys) -> None:
    code, out, err = predict_in_process(capsys, run, "mkt ayi akqr")
    assert code == 0, err
    assert out.splitlines()[0] == "sequence_1: 10 residues"
    assert "note: 'mkt ayi akqr': upper-cased and white space dropped (10 residues read)" in err


def test_a_fasta_header_inside_the_text_is_refused(run, capsys) -> None:
    line = _one_error(capsys, run, ">sp|P69905|HBA_HUMAN MVLSPADKTNVKAAW")
    assert "'>sp|P69905|HBA_HUMAN MVLSPADKTNVKAAW' starts with '>', a FASTA header" in line


def test_an_empty_sequence_is_refused(run, capsys) -> None:
    for text in ("", "   "):
        assert _one_error(capsys, run, text) == ("error: the sequence is empty: expected one-letter residue codes "
                                                 "(e.g. MKTAYIAKQR)")


def test_a_fasta_file_with_no_records_or_not_utf8_is_refused(run, capsys, tmp_path) -> None:
    empty = tmp_path / "empty.fasta"
    empty.write_text("")
    assert f"{empty} holds no FASTA records" in _one_error(capsys, run, empty)
    latin = tmp_path / "latin.fasta"
    latin.write_bytes(b">x\nMK\xe9T\n")
    assert f"{latin} is not UTF-8 text: byte b'\\xe9' at line 2" in _one_error(capsys, run, latin)
    headless = tmp_path / "plain.fasta"
    headless.write_text("MKTAYI\n")
    assert "sequence text before the first '>' header line" in _one_error(capsys, run, headless)
    bad = tmp_path / "bad.fasta"
    bad.write_text(">one\nMKTAYI\n>two\nMKTJ\n")
    assert f"{bad} record 'two': 'J' at residue 4" in _one_error(capsys, run, bad)


def test_a_sequence_longer_than_the_model_was_trained_on(tmp_path, capsys) -> None:
    learned = make_protein_run(tmp_path / "learned", positions="learned", max_len=20)
    line = _one_error(capsys, learned, LONG)
    assert line == ("error: sequence_1: 33 residues (35 tokens with <cls> and <eos>) is longer than this model's "
                    "max_len=20 tokens (18 residues): its learned position table ends there; give at most 18 "
                    "residues (e.g. a domain)")
    rotary = make_protein_run(tmp_path / "rotary", max_len=20, attn_window=8)
    code, out, err = predict_in_process(capsys, rotary, LONG)
    assert code == 0 and out.startswith("sequence_1: 33 residues"), err
    assert "is longer than the 20 tokens the model was trained on: run with its rotary positions" in err
    assert "attn_window=8" in err


def test_a_structure_file_without_backbone_coordinates_is_refused(run, capsys, tmp_path) -> None:
    pdb = UBIQUITIN_CA if UBIQUITIN_CA.is_file() else tmp_path / "ca.pdb"
    if not pdb.is_file():  # CA atoms only: a walk's N and C lines left out
        lines = write_pdb(tmp_path / "walk.pdb").read_text().splitlines()
        pdb.write_text("\n".join(line for line in lines if line[12:16].strip() not in ("N", "C")) + "\n")
    assert "has no residue with N, CA and C atoms (backbone coordinates)" in _one_error(capsys, run, pdb)


def test_a_missing_or_wrong_contact_head_file_is_refused(run, capsys, tmp_path) -> None:
    from safetensors.torch import save_file

    line = _one_error(capsys, run, "MKTAYI", "--contact-head", tmp_path / "nope.safetensors")
    assert "--contact-head " in line and "no such file" in line
    other = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(1, 12), "bias": torch.zeros(1)}, str(other))
    line = _one_error(capsys, run, "MKTAYI", "--contact-head", other)
    assert "contact head weight of shape (1, 12), but this model has 2 layers x 2 heads: expected (1, 4)" in line


def test_a_folder_or_an_audio_file_is_refused_naming_what_a_protein_model_takes(run, capsys, tmp_path) -> None:
    takes = ("a protein model takes a sequence, a FASTA file (.fasta, .fa, .faa, .fas, .fna) or a PDB file "
             "(.pdb, .ent)")
    assert _one_error(capsys, run, str(tmp_path)) == f"error: {str(tmp_path)!r} is a folder; {takes}"
    wav = tmp_path / "speech.wav"
    wav.write_bytes(b"RIFF\x00\x00\x00\x00WAVE")
    assert _one_error(capsys, run, str(wav)) == f"error: {wav} is an audio file, but {takes}"
    png = tmp_path / "picture.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    assert _one_error(capsys, run, str(png)) == f"error: {png} is an image file, but {takes}"


def test_decoding_flags_a_protein_model_does_not_read_are_refused(run, capsys) -> None:
    assert _one_error(capsys, run, LONG, "--top-k", "3") == (
        "error: --top-k 3: for classifiers (how many classes to print) and language models (sampling); this protein "
        "model takes no --top-k")
    assert _one_error(capsys, run, LONG, "--beam-size", "3") == (
        "error: --beam-size 3: for translators and speech models; this protein model does not decode text")


def test_a_contact_head_is_looked_for_beside_a_run_only_not_in_the_current_folder(run, tmp_path, monkeypatch) -> None:
    from inference.protein import CONTACT_HEAD_FILE, contact_head_file

    (tmp_path / CONTACT_HEAD_FILE).write_bytes(b"someone else's file")
    monkeypatch.chdir(tmp_path)
    for source in ("pkg:antiberty", "hf:facebook/esm2_t6_8M_UR50D", "esm2_t6_8M_UR50D.pt"):
        assert contact_head_file(source, None) is None, source
    beside = tmp_path / "run"
    (beside / "checkpoints").mkdir(parents=True)
    (beside / CONTACT_HEAD_FILE).write_bytes(b"x")
    (beside / "checkpoints" / "best.ckpt").write_bytes(b"x")
    assert contact_head_file(str(beside), None) == beside / CONTACT_HEAD_FILE
    assert contact_head_file(str(beside / "checkpoints" / "best.ckpt"), None) == beside / CONTACT_HEAD_FILE
