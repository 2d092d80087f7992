"""Contacts from attention (inference/contacts.py, `evaluate.py contacts=true`): precision at L / k against a brute
force count, the regression against scikit-learn fitted on pairs listed by hand, the baselines (the residue-pair one
against counts by loops), and the command end to end on a tiny random ProteinLM and fake structures."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file
from sklearn.linear_model import LogisticRegression
from torch import nn

from helpers.cli import command
from helpers.protein_fakes import FakeStructures, TINY_NET, data_configs, write_protein_run
from inference.contacts import (SEPARATIONS, Encoded, contact_table, fit_contact_regression, fit_residue_pairs,
                                precision_at_l, random_scores, residue_pair_scores, separation_scores,
                                write_contact_head)
from models.protein import ProteinLM
from utils.restore import restore

RANGES = {"short": (6, 11), "medium": (12, 23), "long": (24, 10**9)}  # the paper's ranges, written out again
KS = {"P@L": 1, "P@L/2": 2, "P@L/5": 5}
PAIR_EDGES = (6, 12, 24, 48, 96)  # the residue-pair baseline's separation bins and prior, written out again
PAIR_PRIOR = 10.0


def brute_precision(scores: np.ndarray, contacts: np.ndarray, lo: int, hi: int, divisor: int) -> float:
    """Every pair listed by loops, sorted by (-score, i, j), the first max(1, L // divisor) counted; pairs the
    range lacks count as misses."""
    n = len(scores)
    pairs = sorted(((-scores[i][j], i, j) for i in range(n) for j in range(n) if lo <= j - i <= hi))
    k = max(1, n // divisor)
    return sum(bool(contacts[i][j]) for _, i, j in pairs[:k]) / k


def residue_pairs_by_hand(chains: list[tuple[list[int], np.ndarray]]):
    """The residue-pair baseline counted by loops: scores(ids) -> (L, L), each pair i != j scored by the share of
    training pairs of the same residues (either order; a pair of one type counted once) and separation bin that are
    contacts, with PAIR_PRIOR pairs at the bin's contact rate added."""
    def bin_of(sep: int) -> int:
        return max([k for k, edge in enumerate(PAIR_EDGES) if sep >= edge] or [0])

    hits, seen, in_bin = {}, {}, {}
    for ids, contacts in chains:
        for i in range(len(ids)):
            for j in range(i + 6, len(ids)):
                in_bin.setdefault(bin_of(j - i), []).append(bool(contacts[i][j]))
                for key in {(bin_of(j - i), ids[i], ids[j]), (bin_of(j - i), ids[j], ids[i])}:  # one when alike
                    seen[key] = seen.get(key, 0) + 1
                    hits[key] = hits.get(key, 0) + bool(contacts[i][j])
    rate = {b: float(np.mean(in_bin[b])) if b in in_bin else 0.0 for b in range(len(PAIR_EDGES))}

    def scores(ids: list[int]) -> np.ndarray:
        n = len(ids)
        out = np.zeros((n, n))
        for i in range(n):
            for j in range(n):
                key = (bin_of(abs(i - j)), ids[i], ids[j])
                out[i, j] = (hits.get(key, 0) + PAIR_PRIOR * rate[key[0]]) / (seen.get(key, 0) + PAIR_PRIOR)
        return out
    return scores


def test_the_residue_pair_baseline_counts_as_by_hand_and_finds_a_planted_pair() -> None:
    """fit_residue_pairs / residue_pair_scores equal the counts by loops (random chains, 5 residue types, contacts
    at random); chains whose only contacts are between two cysteines get every top long-range pair right."""
    rng = np.random.default_rng(0)
    chains = []
    for n in (30, 61, 110):
        ids = rng.integers(4, 9, n)
        upper = np.triu(rng.random((n, n)) < 0.2, 1)
        chains.append((ids.tolist(), upper | upper.T))
    encoded = [Encoded(f"c{k}", torch.tensor([[0, *ids, 2]]), c) for k, (ids, c) in enumerate(chains)]
    table = fit_residue_pairs(encoded, vocab=33)
    by_hand = residue_pairs_by_hand(chains)
    for ids, _ in chains:
        assert np.allclose(residue_pair_scores(table, np.array(ids)), by_hand(ids), atol=1e-12)

    def planted(n: int, seed: int) -> Encoded:
        ids = np.random.default_rng(seed).integers(4, 24, n)  # the 20 standard residues; cysteine is 23
        ids[::9] = 23
        cys = ids == 23
        return Encoded(f"p{seed}", torch.tensor([[0, *ids, 2]]), cys[:, None] & cys[None, :] & ~np.eye(n, dtype=bool))

    table = fit_residue_pairs([planted(120, s) for s in range(3)], vocab=33)
    test = planted(150, 10)
    scores = residue_pair_scores(table, test.ids[0, 1:-1].numpy())
    assert precision_at_l(scores, test.contacts, min_sep=24, divisor=5) == 1.0


def test_precision_at_l_equals_a_brute_force_count_on_random_cases() -> None:
    rng = np.random.default_rng(0)
    for case in range(60):
        n = int(rng.integers(1, 45))
        # integer scores in half the cases: many ties, which must go to the earlier pair
        scores = rng.integers(0, 4, (n, n)).astype(float) if case % 2 else rng.random((n, n))
        contacts = rng.random((n, n)) < 0.3
        for name, (lo, hi) in RANGES.items():
            for key, d in KS.items():
                ours = precision_at_l(scores, contacts, min_sep=lo, max_sep=SEPARATIONS[name][1], divisor=d)
                assert ours == pytest.approx(brute_precision(scores, contacts, lo, hi, d)), (case, name, key)
    table = contact_table([scores, scores.T], [contacts, contacts])
    assert table["long/P@L/2"] == pytest.approx((brute_precision(scores, contacts, 24, 10**9, 2)
                                                 + brute_precision(scores.T, contacts, 24, 10**9, 2)) / 2)


def test_separation_baseline_ranks_the_closest_pairs_of_each_range_first() -> None:
    n = 70
    scores = separation_scores(n)
    for name, (lo, hi) in RANGES.items():
        for d in KS.values():
            k = n // d
            closest = sorted((j - i, i, j) for i in range(n) for j in range(n) if lo <= j - i <= hi)[:k]
            top = np.zeros((n, n), bool)
            for _, i, j in closest:
                top[i, j] = True
            assert precision_at_l(scores, top, min_sep=lo, max_sep=SEPARATIONS[name][1], divisor=d) == 1.0
            assert precision_at_l(scores, ~top, min_sep=lo, max_sep=SEPARATIONS[name][1], divisor=d) == 0.0
    r = random_scores(n, 3)
    assert (r == r.T).all() and (random_scores(n, 3) == r).all() and not (random_scores(n, 4) == r).all()


def noisy_chain(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A random symmetric contact map, and features: channel 0 the map plus noise, channels 1-4 noise only."""
    c = np.triu(rng.random((n, n)) < 0.1, 1)
    c = c | c.T
    f = rng.normal(0, 1, (n, n, 5)).astype(np.float32)
    f[..., 0] = c + rng.normal(0, 0.4, (n, n))
    return f, c


def test_the_regression_is_sklearns_l1_fit_on_pairs_six_apart_and_recovers_contacts() -> None:
    rng = np.random.default_rng(1)
    train = [noisy_chain(rng, 40) for _ in range(4)]
    test = [noisy_chain(rng, 50) for _ in range(3)]
    model = fit_contact_regression([f for f, _ in train], [c for _, c in train])
    # the reference: scikit-learn's L1 fit on the pairs i < j, j - i >= 6, listed by loops
    x = [f[i, j] for f, _ in train for i in range(40) for j in range(i + 6, 40)]
    y = [c[i, j] for _, c in train for i in range(40) for j in range(i + 6, 40)]
    ref = l1_fit(np.array(x), y)
    assert np.allclose(model.coef_, ref.coef_, atol=1e-4) and np.allclose(model.intercept_, ref.intercept_, atol=1e-4)
    assert abs(model.coef_[0, 0]) > 10 * abs(model.coef_[0, 1:]).max()  # L1: the noise channels nearly dropped
    net = SimpleNamespace(contact_head=nn.Linear(5, 1))
    write_contact_head(net, model)
    probs = [torch.sigmoid(net.contact_head(torch.from_numpy(f))).squeeze(-1).detach().numpy() for f, _ in test]
    flat = test[0][0].reshape(-1, 5)
    assert np.allclose(probs[0].reshape(-1), ref.predict_proba(flat)[:, 1], atol=1e-4)
    fitted = contact_table(probs, [c for _, c in test])
    chance = contact_table([random_scores(50, k) for k in range(3)], [c for _, c in test])
    assert min(fitted[f"{r}/P@L/5"] for r in RANGES) > 0.9
    assert max(chance[f"{r}/P@L"] for r in RANGES) < 0.3


def l1_fit(x: np.ndarray, y: list, C: float = 0.15) -> LogisticRegression:
    """scikit-learn's L1 logistic regression as Rao et al. spell it (penalty="l1": deprecated since 1.8)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LogisticRegression(penalty="l1", C=C, solver="liblinear", random_state=0).fit(x, y)


def fit_by_hand(net: ProteinLM, chains: list, C: float) -> LogisticRegression:
    """The regression recomputed outside inference/contacts.py: the model's features, pairs listed by loops."""
    x, y = [], []
    for chain in chains:
        ids = torch.tensor([net.alphabet.encode(chain.sequence)])
        with torch.no_grad():
            f = net.contact_features(ids)[1][0].numpy()
        c, n = chain.contacts(), len(chain.sequence)
        x += [f[i, j] for i in range(n) for j in range(i + 6, n)]
        y += [c[i, j] for i in range(n) for j in range(i + 6, n)]
    return l1_fit(np.array(x), y, C)


def test_evaluate_contacts_end_to_end_on_a_tiny_protein_lm(tmp_path: Path) -> None:
    configs = data_configs(tmp_path / "configs")
    ckpt = write_protein_run(tmp_path / "run" / "checkpoints" / "last.ckpt",
                             {"_target_": "helpers.protein_fakes.NoStructures"})
    out = tmp_path / "eval"
    # contacts_C=10: at 0.15 the L1 penalty zeroes every weight of a random model (no fold in its maps)
    proc = command("evaluate.py", f"ckpt_path={ckpt}", "contacts=true", "contacts_train=3", "contacts_eval=3",
                   "contacts_C=10",
                   f"hydra.searchpath=[file://{configs}]", "data=fake_structures", "threads=1",
                   f"hydra.run.dir={out}", check=True)
    metrics = json.loads((out / "metrics.json").read_text())
    keys = {f"contacts/{s}/{r}/{k}" for s in ("model", "random", "separation", "residue_pair") for r in RANGES
            for k in KS}
    assert keys <= set(metrics) and metrics["contacts/train_chains"] == 3 and metrics["contacts/eval_chains"] == 3
    assert metrics["contacts/C"] == 10 and metrics["contacts/threshold_angstrom"] == 8.0
    assert "fitted on 3 train chains, scored on 3 test chains" in proc.stdout and "separation" in proc.stdout

    # the same numbers recomputed: the fit by hand, its probabilities and the baselines counted by brute force
    net = restore(ckpt, data=False).module.net.eval()
    data = FakeStructures(train=4, test=3, length=40)
    ref = fit_by_hand(net, data.chains("train")[:3], C=10)
    assert (ref.coef_ != 0).sum() >= 2  # a head that ranks pairs, not a constant
    pair_scores = residue_pairs_by_hand([(net.alphabet.encode(c.sequence)[1:-1], c.contacts())
                                         for c in data.chains("train")[:3]])
    head = load_file(str(out / "contact_head.safetensors"))
    assert np.allclose(head["weight"].numpy(), ref.coef_, atol=1e-4)
    assert np.allclose(head["bias"].numpy(), ref.intercept_, atol=1e-4)
    for name, (lo, hi) in RANGES.items():
        for key, d in KS.items():
            got = {"model": [], "separation": [], "residue_pair": []}
            for chain in data.chains("test"):
                n = len(chain.sequence)
                ids = torch.tensor([net.alphabet.encode(chain.sequence)])
                with torch.no_grad():
                    f = net.contact_features(ids)[1][0].numpy().reshape(n * n, -1)
                probs = ref.predict_proba(f)[:, 1].reshape(n, n)
                got["model"].append(brute_precision(probs, chain.contacts(), lo, hi, d))
                sep = -np.abs(np.arange(n)[:, None] - np.arange(n)[None, :])
                got["separation"].append(brute_precision(sep, chain.contacts(), lo, hi, d))
                pairs = pair_scores(net.alphabet.encode(chain.sequence)[1:-1])
                got["residue_pair"].append(brute_precision(pairs, chain.contacts(), lo, hi, d))
            for scorer, values in got.items():
                assert metrics[f"contacts/{scorer}/{name}/{key}"] == pytest.approx(np.mean(values), abs=1e-9), \
                    (scorer, name, key)


def test_evaluate_contacts_on_the_runs_own_data_and_of_a_pretrained_source(tmp_path: Path, monkeypatch) -> None:
    data = {"_target_": "helpers.protein_fakes.FakeStructures", "train": 3, "test": 2, "length": 30}
    ckpt = write_protein_run(tmp_path / "run" / "checkpoints" / "last.ckpt", data)
    command("evaluate.py", f"ckpt_path={tmp_path / 'run'}", "contacts=true", "contacts_train=2", "threads=1",
            f"hydra.run.dir={tmp_path / 'own'}", check=True)
    own = json.loads((tmp_path / "own" / "metrics.json").read_text())
    assert own["contacts/train_chains"] == 2 and own["contacts/eval_chains"] == 2

    # a pretrained source: whatever load_source converts (here the same network, as a converter would give it)
    net = restore(ckpt, data=False).module.net.eval()
    import inference.load

    source = SimpleNamespace(net=net, cfg=OmegaConf.create({"pretrained": "pkg:fake", "preprocess": {},
                                                            "model": {"net": {"_target_": "models.protein.ProteinLM",
                                                                              **TINY_NET}}}))
    monkeypatch.setattr(inference.load, "load_source", lambda spec: source)
    configs = data_configs(tmp_path / "configs")
    proc = command("evaluate.py", "pretrained=pkg:fake", "contacts=true", "contacts_train=2",
                   f"hydra.searchpath=[file://{configs}]", "data=fake_structures", "data.train=3", "data.test=2",
                   "data.length=30", "threads=1", f"hydra.run.dir={tmp_path / 'source'}", check=True)
    assert json.loads((tmp_path / "source" / "metrics.json").read_text()) == own  # same weights, same chains
    assert proc.stdout.startswith("pretrained=pkg:fake: contacts from attention on data=fake_structures")


def test_too_many_training_pairs_are_drawn_at_random_and_said() -> None:
    from inference.contacts import encode_chains, fit_on_chains

    torch.manual_seed(0)
    net = ProteinLM(**TINY_NET).eval()
    chains = encode_chains(net, FakeStructures(train=3, length=40).chains("train"), "train", [])
    notes: list[str] = []
    model = fit_on_chains(net, chains, C=10, notes=notes, max_pairs=300)
    total = 3 * sum(40 - d for d in range(6, 40))  # pairs j - i >= 6 of three 40-residue chains
    assert notes == [f"the 3 training chains hold {total} residue pairs at least 6 apart; the regression was fitted "
                     f"on 300 of them drawn at random (16.8% of each chain's; at most about 300 fit in memory)"]
    assert np.allclose(net.contact_head.weight.detach().numpy(), model.coef_)


def test_the_heads_bench_scores_each_map_alone_as_counted_by_hand(tmp_path: Path) -> None:
    from bench import protein_heads

    ckpt = write_protein_run(tmp_path / "run" / "checkpoints" / "last.ckpt",
                             {"_target_": "helpers.protein_fakes.NoStructures"}, num_heads=4)
    net = restore(ckpt, data=False).module.net.eval()
    data = FakeStructures(train=3, test=3, length=50)  # the longest, 56, within max_len
    report = protein_heads.measure(net, data, train=3, evaluate=3)
    table = residue_pairs_by_hand([(net.alphabet.encode(c.sequence)[1:-1], c.contacts()) for c in data.chains("train")])

    def by_hand(split: str) -> tuple[np.ndarray, np.ndarray]:  # (layers, heads) P@L/5 of each map alone, correlation
        precision, correlation = [], []
        for chain in data.chains(split):
            ids = torch.tensor([net.alphabet.encode(chain.sequence)])
            with torch.no_grad():
                f = net.contact_features(ids)[1][0].numpy().reshape(len(chain.sequence), len(chain.sequence), 2, 4)
            i, j = np.triu_indices(len(chain.sequence), 24)
            pairs = table(net.alphabet.encode(chain.sequence)[1:-1])[i, j]
            precision.append([[brute_precision(f[..., a, b], chain.contacts(), 24, 10**9, 5) for b in range(4)]
                              for a in range(2)])
            correlation.append([[np.corrcoef(f[i, j, a, b], pairs)[0, 1] for b in range(4)] for a in range(2)])
        return np.mean(precision, axis=0), np.mean(correlation, axis=0)

    (train, _), (test, corr) = by_hand("train"), by_hand("test")
    names = [f"layer {a} head {b}" for a in range(2) for b in range(4)]
    assert list(report["heads"]) == names
    for a in range(2):
        for b in range(4):
            got = report["heads"][f"layer {a} head {b}"]
            assert got["train"] == pytest.approx(train[a, b], abs=1e-12)
            assert got["test"] == pytest.approx(test[a, b], abs=1e-12)
            assert got["corr_residue_pair"] == pytest.approx(corr[a, b], abs=1e-6)
    picked = np.unravel_index(np.argmax(train), train.shape)
    assert report["picked_on_train"]["head"] == f"layer {picked[0]} head {picked[1]}"
    assert report["picked_on_train"]["test"] == pytest.approx(test[picked], abs=1e-12)
    assert report["best_on_test_oracle"]["test"] == pytest.approx(test.max(), abs=1e-12)
    baseline = [brute_precision(table(net.alphabet.encode(c.sequence)[1:-1]), c.contacts(), 24, 10**9, 5)
                for c in data.chains("test")]
    assert report["residue_pair_test"] == pytest.approx(np.mean(baseline), abs=1e-12)
