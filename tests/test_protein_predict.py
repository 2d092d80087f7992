"""predict.py on proteins (inference/protein.py): the printed pseudo-perplexity and contacts against direct
computations, PDB / FASTA input, the contact head file, the pictures and the explorer page."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.protein_runs import (UBIQUITIN, UBIQUITIN_SEQUENCE, make_protein_run, net_of, predict_in_process, write_pdb)
from safetensors.torch import save_file

from viz.explorer.encoding import unpack

SEQUENCE = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ"  # 33 residues: top L/5 = 6 contacts
TOL = 1.0 / 65535 + 1e-6  # the page's uint16 precision


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("protein_runs")
    return {"fitted": make_protein_run(base / "fitted"), "unfitted": make_protein_run(base / "unfitted", fitted=False)}




def _ids(net, sequence: str) -> torch.Tensor:
    a = net.alphabet
    return torch.tensor([[a.cls] + [a.tokens.index(c) for c in sequence] + [a.eos]])


def _loop_pseudo_perplexity(net, sequence: str) -> float:
    """Mask one residue at a time, one forward pass each: exp of the mean NLL of the true residues."""
    ids, nll = _ids(net, sequence), 0.0
    with torch.no_grad():
        for k in range(1, ids.shape[1] - 1):
            masked = ids.clone()
            masked[0, k] = net.alphabet.mask
            nll -= net(masked)[0, k].double().log_softmax(-1)[ids[0, k]].item()
    return math.exp(nll / len(sequence))


def _top_pairs(probs: torch.Tensor, k: int) -> list[tuple[int, int, float]]:
    """The k largest probabilities over pairs i < j at least 6 apart, by a plain sort over every pair."""
    L = probs.shape[0]
    pairs = [(float(probs[i, j]), i + 1, j + 1) for i in range(L) for j in range(i + 6, L)]
    pairs.sort(key=lambda t: -t[0])
    return [(i, j, p) for p, i, j in pairs[:k]]


def _parse(out: str) -> tuple[list[str], list[float], list[list[tuple[int, int, float]]]]:
    """(header lines, pseudo-perplexities, contact lines) of each protein printed."""
    heads, ppls, contacts = [], [], []
    for line in out.splitlines():
        if line.startswith("pseudo-perplexity "):
            ppls.append(float(line.split()[1]))
        elif line.startswith("contact "):
            assert re.fullmatch(r"contact \d+ \d+ \d\.\d{3}", line), line
            _, i, j, p = line.split()
            contacts[-1].append((int(i), int(j), float(p)))
        elif not line.startswith("  "):
            heads.append(line)
            contacts.append([])
    return heads, ppls, contacts


def test_printed_pseudo_perplexity_and_contacts_equal_direct_computations(runs, capsys) -> None:
    code, out, err = predict_in_process(capsys, runs["fitted"], SEQUENCE)
    assert code == 0, err
    heads, ppls, contacts = _parse(out)
    assert heads == [f"sequence_1: {len(SEQUENCE)} residues"]
    net = net_of(runs["fitted"])
    assert ppls[0] == pytest.approx(_loop_pseudo_perplexity(net, SEQUENCE), abs=1e-3)
    with torch.no_grad():
        probs = net.contacts(_ids(net, SEQUENCE))[0]
    expected = _top_pairs(probs, len(SEQUENCE) // 5)
    assert len(contacts[0]) == 6
    assert [(i, j) for i, j, _ in contacts[0]] == [(i, j) for i, j, _ in expected]
    for (i, j, p), (_, _, q) in zip(contacts[0], expected):
        assert i < j and j - i >= 6 and p == pytest.approx(q, abs=5e-4)


def test_a_fasta_file_gives_every_record(runs, capsys, tmp_path) -> None:
    fasta = tmp_path / "two.fasta"
    fasta.write_text(f">first some words\n{SEQUENCE[:20]}\n{SEQUENCE[20:]}\n>second\nACDEFGHIKLMNPQ\n")
    code, out, err = predict_in_process(capsys, runs["fitted"], fasta)
    assert code == 0, err
    heads, ppls, contacts = _parse(out)
    assert heads == [f"first: {len(SEQUENCE)} residues", "second: 14 residues"]
    net = net_of(runs["fitted"])
    assert ppls[1] == pytest.approx(_loop_pseudo_perplexity(net, "ACDEFGHIKLMNPQ"), abs=1e-3)
    assert len(contacts[1]) == 14 // 5


def test_an_unfitted_head_prints_no_contacts_and_says_how_to_fit_it_or_uses_the_given_file(runs, capsys,
                                                                                         tmp_path) -> None:
    code, out, err = predict_in_process(capsys, runs["unfitted"], SEQUENCE)
    assert code == 0 and "contact " not in out
    assert "not fitted" in err and "evaluate.py ckpt_path=" in err and "contacts=true" in err
    net = net_of(runs["unfitted"])
    g = torch.Generator().manual_seed(1)
    weight, bias = torch.randn(1, 4, generator=g) * 3, torch.tensor([-0.5])
    save_file({"weight": weight, "bias": bias}, str(tmp_path / "contact_head.safetensors"))
    code, out, err = predict_in_process(capsys, runs["unfitted"], SEQUENCE, "--contact-head",
                              tmp_path / "contact_head.safetensors")
    assert code == 0, err
    with torch.no_grad():  # ESM's head by hand: the features through the given logistic regression
        _, features = net.contact_features(_ids(net, SEQUENCE))
        probs = torch.sigmoid(features[0] @ weight[0] + bias)
    _, _, contacts = _parse(out)
    expected = _top_pairs(probs, len(SEQUENCE) // 5)
    assert [(i, j) for i, j, _ in contacts[0]] == [(i, j) for i, j, _ in expected]
    # The file in the run directory is found without the flag, also when the checkpoint file is named.
    copy = Path(shutil.copytree(runs["unfitted"], tmp_path / "run"))
    shutil.copy(tmp_path / "contact_head.safetensors", copy / "contact_head.safetensors")
    code, again, err = predict_in_process(capsys, copy / "checkpoints" / "best.ckpt", SEQUENCE)
    assert code == 0 and again == out, err
    assert f"is not fitted: using {copy / 'contact_head.safetensors'}" in err


def _pdb_backbone(path: Path) -> tuple[str, np.ndarray]:
    """(sequence, (L, L) contacts) read from the ATOM lines by column, CB placed by the trRosetta formula."""
    three = {"ALA": "A", "ARG": "R", "ASN": "N", "ASP": "D", "CYS": "C", "GLN": "Q", "GLU": "E", "GLY": "G",
             "HIS": "H", "ILE": "I", "LEU": "L", "LYS": "K", "MET": "M", "PHE": "F", "PRO": "P", "SER": "S",
             "THR": "T", "TRP": "W", "TYR": "Y", "VAL": "V"}
    atoms: dict[tuple[str, int], dict[str, np.ndarray]] = {}
    for line in path.read_text().splitlines():
        if line.startswith("ENDMDL"):
            break
        if line.startswith("ATOM") and line[12:16].strip() in ("N", "CA", "C") and line[16] in " A":
            key = (line[17:20], int(line[22:26]))
            atoms.setdefault(key, {})[line[12:16].strip()] = np.array(
                [float(line[30:38]), float(line[38:46]), float(line[46:54])])
    keys = sorted((k for k, v in atoms.items() if len(v) == 3), key=lambda k: k[1])
    n, ca, c = (np.stack([atoms[k][a] for k in keys]) for a in ("N", "CA", "C"))
    b, cc = ca - n, c - ca
    cb = -0.58273431 * np.cross(b, cc) + 0.56802827 * b - 0.54067466 * cc + ca
    d = np.sqrt(((cb[:, None] - cb[None]) ** 2).sum(-1))
    return "".join(three[k[0]] for k in keys), d < 8.0


def test_a_pdb_file_draws_predicted_beside_true_contacts_and_writes_the_page(runs, capsys, tmp_path) -> None:
    pdb = UBIQUITIN if UBIQUITIN.is_file() else write_pdb(tmp_path / "walk.pdb")
    sequence, true = _pdb_backbone(pdb)
    if pdb == UBIQUITIN:
        assert sequence == UBIQUITIN_SEQUENCE  # real data: ubiquitin's 76 residues
    pictures, html = tmp_path / "pictures", tmp_path / "page.html"
    code, out, err = predict_in_process(capsys, runs["fitted"], pdb, "--attention-dir", pictures, "--html", html)
    assert code == 0, err
    heads, _, contacts = _parse(out)
    assert heads == [f"{pdb.stem}: {len(sequence)} residues"] and len(contacts[0]) == len(sequence) // 5
    stem = f"000_{pdb.stem}"
    assert sorted(p.name for p in pictures.iterdir()) == [f"{stem}_attention.png", f"{stem}_contacts.png",
                                                          f"{stem}_layer1_heads.png"]  # --layer: the last
    for png in pictures.iterdir():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    text = html.read_text(encoding="utf-8")
    data = json.loads(re.search(r'<script type="application/json" id="data">(.*?)</script>', text, re.S)
                      .group(1).replace("<\\/", "</"))
    assert data["contacts"]["residues"] == sequence
    np.testing.assert_array_equal(unpack(data["contacts"]["true"]), true.astype(float))
    net = net_of(runs["fitted"])
    with torch.no_grad():
        probs = net.contacts(_ids(net, sequence))[0]
    np.testing.assert_allclose(unpack(data["contacts"]["predicted"]), probs.numpy(), atol=TOL)
    (group,) = data["groups"]
    assert group["rows"] == ["<cls>", *sequence, "<eos>"] and len(group["layers"]) == 2
    assert unpack(group["maps"]).shape == (2, 2, len(sequence) + 2, len(sequence) + 2)


def test_the_protein_page_shows_the_head_view_and_both_contact_maps_in_chromium(runs, capsys, tmp_path) -> None:
    from helpers.browser import Browser

    pdb = write_pdb(tmp_path / "walk.pdb", n=24)
    html = tmp_path / "page.html"
    code, _, err = predict_in_process(capsys, runs["fitted"], pdb, "--html", html)
    assert code == 0, err
    browser = Browser()
    try:
        page = browser.open(html.as_uri())
        page.wait_for_selector("body[data-ready='1']")
        assert page.locator(".col.left .tok").count() == 26  # <cls> 24 residues <eos>
        assert page.locator("#contacts-predicted").count() == 1 and page.locator("#contacts-true").count() == 1
        page.hover("#contacts-true", position={"x": 5, "y": 5})
        assert page.inner_text("#contact-readout").startswith("residues 1 G and 1 G: predicted ")
        assert browser.errors == [], browser.errors
        assert all(u.startswith(("file:", "data:")) for u in browser.requests), browser.requests
    finally:
        browser.close()


def test_a_rotary_model_runs_a_protein_longer_than_it_was_trained_on_with_a_note(tmp_path, capsys) -> None:
    run = make_protein_run(tmp_path / "short", max_len=20)
    code, out, err = predict_in_process(capsys, run, SEQUENCE)
    assert code == 0, err
    assert "33 residues (35 tokens with <cls> and <eos>) is longer than the 20 tokens" in err
    assert "rotary" in err
    _, ppls, _ = _parse(out)
    assert ppls[0] == pytest.approx(_loop_pseudo_perplexity(net_of(run), SEQUENCE), abs=1e-3)


class _FastaSplit:
    """A data module's protein side without structures (as data=protein_sequences is): `sequences(split)`."""

    modality = "protein"

    def __init__(self, records: list[tuple[str, str]]) -> None:
        self.records = records

    def setup(self, stage: str | None = None) -> None:
        pass

    def sequences(self, split: str) -> list[tuple[str, str]]:
        return self.records if split == "test" else []


def test_evaluate_save_attention_draws_whole_test_proteins_with_true_contacts_when_known(runs, tmp_path,
                                                                                          capsys) -> None:
    """`evaluate.py save_attention=N` on a protein run: the first N test proteins, whole when the model takes them,
    each with its pseudo-perplexity, pictures and page; a structure set's chains carry their true contact maps."""
    from evaluate import save_test_pictures
    from helpers.protein_fakes import FakeStructures
    from inference.predictor import Predictor

    net = net_of(runs["fitted"])
    structures = FakeStructures(train=1, test=3, length=24)
    lines = save_test_pictures(Predictor(net, None, "test", datamodule=structures), 2, tmp_path / "s")
    chains = structures.chains("test")[:2]
    heads = [line for line in lines if not line.startswith("  ")]
    assert len(heads) == 2
    for k, (chain, head) in enumerate(zip(chains, heads)):
        name, rest = head.split(": ", 1)
        assert name == chain.name and rest.startswith(f"{len(chain.sequence)} residues, pseudo-perplexity ")
        assert rest.endswith("(true contacts known)")
        ppl = float(rest.split("pseudo-perplexity ")[1].split()[0])
        assert ppl == pytest.approx(_loop_pseudo_perplexity(net, chain.sequence), abs=1e-3)
        text = (tmp_path / "s" / f"test{k:03d}.html").read_text(encoding="utf-8")
        data = json.loads(re.search(r'<script type="application/json" id="data">(.*?)</script>', text, re.S)
                          .group(1).replace("<\\/", "</"))
        assert data["contacts"]["residues"] == chain.sequence
        np.testing.assert_array_equal(unpack(data["contacts"]["true"]), chain.contacts().astype(float))
        assert (tmp_path / "s" / f"test{k:03d}_{chain.name}_contacts.png").is_file()
    # FASTA records: no structure, whole sequences (longer than any training crop)
    fasta = _FastaSplit([("sp|P1|ONE", SEQUENCE), ("two", "ACDEFGHIKLMNPQ")])
    lines = save_test_pictures(Predictor(net, None, "test", datamodule=fasta), 5, tmp_path / "f")
    heads = [line for line in lines if not line.startswith("  ")]
    assert [h.split(",")[0] for h in heads] == [f"sp|P1|ONE: {len(SEQUENCE)} residues", "two: 14 residues"]
    assert all(h.endswith("(no structure)") for h in heads)
    assert (tmp_path / "f" / "test000_sp_P1_ONE_attention.png").is_file()
    # longer than the model's positions: cropped as the contact evaluation crops; a letter it lacks: skipped
    short = net_of(make_protein_run(tmp_path / "short", max_len=20))
    odd = _FastaSplit([("long", SEQUENCE), ("odd", "ACDJK"), ("plain", "ACDEFGHIK")])
    capsys.readouterr()
    lines = save_test_pictures(Predictor(short, None, "test", datamodule=odd), 5, tmp_path / "o")
    heads = [line.split(",")[0] for line in lines if not line.startswith("  ")]
    assert heads == ["long: 18 residues", "plain: 9 residues"]
    err = capsys.readouterr().err
    assert ("save_attention: 1 test chain(s) longer than the model's 18 residues (max_len=20 tokens) cropped to "
            "their first 18 residues (first: long)") in err
    assert "save_attention: 1 test chain(s) skipped: letters the esm alphabet lacks (first: odd: 'J' at residue 4" in err


def test_the_app_tab_answers_a_typed_sequence_as_predict_prints_it(runs, capsys, tmp_path) -> None:
    """app.py's protein tab: the same lines as predict.py (pseudo-perplexity, top L / 5 contacts), the protein page
    and pictures; a FASTA header names it; bad or empty input, and a file name, are answered with a message."""
    from app import build_app
    from helpers.app_server import served
    from inference.load import load

    code, printed, err = predict_in_process(capsys, runs["fitted"], SEQUENCE)
    assert code == 0, err
    with served(build_app([load(str(runs["fitted"]))], tmp_path), tmp_path) as client:
        message, shown, explorer, pictures = client.predict(SEQUENCE, api_name="/protein")
        assert message == "" and shown == printed.strip().replace("sequence_1:", "sequence:")
        assert explorer.startswith("<iframe") and "&quot;contacts&quot;" in explorer and len(pictures) == 3
        message, shown, _, _ = client.predict(f">my_protein some words\n{SEQUENCE[:20]}\n{SEQUENCE[20:]}",
                                              api_name="/protein")
        assert message == f"note: my_protein: white space dropped ({len(SEQUENCE)} residues read)"
        assert shown.splitlines()[0] == f"my_protein: {len(SEQUENCE)} residues"
        fasta = tmp_path / "p.fasta"  # a real file: its path is typed text, never opened
        fasta.write_text(f">p\n{SEQUENCE}\n")
        for bad, expected in (("   ", "the sequence is empty"), ("MKT1", "'1' at residue 4"),
                              (str(fasta), "is not a residue letter"),
                              ("A" * 1025, "1025 residues; the app answers proteins of at most 1024 (--max-residues")):
            message, shown, explorer, pictures = client.predict(bad, api_name="/protein")
            assert message.startswith("error: ") and expected in message and not shown, (bad, message)
    from app import Demo

    _, shown, _, _ = Demo(load(str(runs["unfitted"])), tmp_path, 20.0).answer(SEQUENCE)
    assert shown.splitlines()[-1].startswith("no contacts: the contact head is not fitted")
