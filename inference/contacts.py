"""Contacts read from attention (Rao et al. 2020): an L1 logistic regression over a protein model's attention maps,
fitted on a few chains of known structure, scored as precision at L, L/2, L/5 by sequence separation.

    head = fit_contact_regression(train_features, train_contacts)     # scikit-learn, C = 0.15
    write_contact_head(net, head)                                    # into net.contact_head
    table = contact_table([chain_scores(net, c) for c in test], [c.contacts for c in test])

The features are `ProteinLM.contact_features` (every layer's and head's map, symmetrized and APC-corrected); a
contact is a C-beta pair closer than 8 A (models/protein_geometry.py). docs/protein_contacts.md states the protocol.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from models.protein_alphabet import SequenceError
from models.protein_geometry import CONTACT_ANGSTROM
from utils.errors import UserError

# Separation ranges |i - j| of ESM's evaluation (esm/examples: short 6 <= s < 12, medium 12 <= s < 24, long 24 <=).
SEPARATIONS: dict[str, tuple[int, int | None]] = {"short": (6, 11), "medium": (12, 23), "long": (24, None)}
DIVISORS = {"P@L": 1, "P@L/2": 2, "P@L/5": 5}  # top L // k pairs of a range
TRAIN_MIN_SEP = 6  # Rao et al. fit on residue pairs at least 6 apart (the short, medium and long ranges)
C = 0.15  # the inverse L1 strength of Rao et al.
# liblinear copies its input as float64 and again as (index, value) nodes: about 4.5 GB of memory per million pairs
# of an ESM-2 8M model's 120 features (measured: 1.5 GB, 47 s of fitting for 300,000), and 20 chains of 250
# residues give about 0.6 million.
MAX_TRAIN_PAIRS = 600_000
# The residue-pair baseline: separation bins of its table (lower edges; the last is open: contact odds keep falling
# within the long range), and the weight, in pairs, of the bin's overall contact rate added to every cell (so a pair of
# residues seldom seen in the training chains scores near that rate, not 0 or 1).
PAIR_BINS = (6, 12, 24, 48, 96)
PAIR_PRIOR = 10.0


# --- scoring ------------------------------------------------------------------------------------------


def range_pairs(length: int, min_sep: int, max_sep: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) of the pairs i < j with min_sep <= j - i <= max_sep (no upper bound when None), row by row."""
    i, j = np.triu_indices(length, max(min_sep, 1))
    if max_sep is not None:
        keep = j - i <= max_sep
        i, j = i[keep], j[keep]
    return i, j


def precision_at_l(scores: np.ndarray, contacts: np.ndarray, *, min_sep: int, max_sep: int | None = None,
                   divisor: int = 1) -> float:
    """The share of true contacts among the top max(1, L // divisor) scored pairs i < j with min_sep <= j - i <=
    max_sep (L = the protein's length). Ties go to the earlier pair (row by row); when the range holds fewer
    pairs than that, the missing ones count as misses (ESM pads its top-k with non-contacts)."""
    scores, contacts = np.asarray(scores), np.asarray(contacts, dtype=bool)
    if scores.ndim != 2 or scores.shape[0] != scores.shape[1] or scores.shape != contacts.shape:
        raise ValueError(f"expected two (L, L) maps, got scores {scores.shape} and contacts {contacts.shape}")
    length = scores.shape[0]
    i, j = range_pairs(length, min_sep, max_sep)
    k = max(1, length // divisor)
    top = np.argsort(-scores[i, j], kind="stable")[:k]  # stable: equal scores keep the row-by-row order
    return float(contacts[i[top], j[top]].sum() / k)


def chain_precisions(scores: np.ndarray, contacts: np.ndarray) -> dict[str, float]:
    """{"short/P@L": ..., ..., "long/P@L/5": ...} of one chain."""
    return {f"{name}/{key}": precision_at_l(scores, contacts, min_sep=lo, max_sep=hi, divisor=d)
            for name, (lo, hi) in SEPARATIONS.items() for key, d in DIVISORS.items()}


def contact_table(per_chain_scores: Sequence[np.ndarray], per_chain_contacts: Sequence[np.ndarray]) -> dict[str, float]:
    """chain_precisions averaged over the chains (each chain counts once, whatever its length)."""
    if not per_chain_scores or len(per_chain_scores) != len(per_chain_contacts):
        raise ValueError(f"expected as many score maps as contact maps (>= 1), got {len(per_chain_scores)} and "
                         f"{len(per_chain_contacts)}")
    return mean_rows([chain_precisions(s, c) for s, c in zip(per_chain_scores, per_chain_contacts)])


def mean_rows(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """Each key's mean over the chains' rows (chain_precisions)."""
    return {key: float(np.mean([row[key] for row in rows])) for key in rows[0]}


def random_scores(length: int, seed: int) -> np.ndarray:
    """A symmetric (L, L) map of uniform random scores: the chance baseline."""
    x = np.random.default_rng(seed).random((length, length))
    return np.triu(x, 1) + np.triu(x, 1).T


def separation_scores(length: int) -> np.ndarray:
    """-|i - j|: closer in sequence, more likely in contact (the baseline a model must beat to know any fold)."""
    pos = np.arange(length)
    return -np.abs(pos[:, None] - pos[None, :]).astype(np.float64)


# --- the regression -----------------------------------------------------------------------------------


def training_pairs(features: np.ndarray, contacts: np.ndarray,
                   min_sep: int = TRAIN_MIN_SEP) -> tuple[np.ndarray, np.ndarray]:
    """(X (n, depth * heads), y (n,)) of one chain: the pairs i < j with j - i >= min_sep (the maps are symmetric:
    each pair once)."""
    i, j = range_pairs(features.shape[0], min_sep)
    return features[i, j], np.asarray(contacts, dtype=bool)[i, j]


def fit_contact_regression(features_list: Sequence[np.ndarray], contacts_list: Sequence[np.ndarray],
                           C: float = C, min_sep: int = TRAIN_MIN_SEP) -> Any:
    """scikit-learn's L1 logistic regression (liblinear, C) on the pairs i < j, j - i >= min_sep of every chain:
    features (L, L, depth * heads), contacts (L, L) bool. A UserError when those pairs hold no contact or only."""
    pairs = [training_pairs(f, c, min_sep) for f, c in zip(features_list, contacts_list)]
    return fit_pairs(pairs, C, min_sep)


def fit_pairs(pairs: Sequence[tuple[np.ndarray, np.ndarray]], C: float = C, min_sep: int = TRAIN_MIN_SEP) -> Any:
    """The regression on (X, y) pairs of each chain (training_pairs), stacked."""
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate([p[0] for p in pairs]) if pairs else np.zeros((0, 1), np.float32)
    y = np.concatenate([p[1] for p in pairs]) if pairs else np.zeros(0, bool)
    if len(np.unique(y)) < 2:
        raise UserError(f"contacts: the {len(pairs)} training chain(s) hold {int(y.sum())} contacts among {len(y)} "
                        f"residue pairs at least {min_sep} apart; the regression needs contacts and non-contacts")
    # l1_ratio=1 is penalty="l1" (scikit-learn 1.8 renamed it); random_state: liblinear shuffles its coordinates.
    model = LogisticRegression(l1_ratio=1.0, C=C, solver="liblinear", random_state=0)
    return model.fit(x, y)


def write_contact_head(net: nn.Module, model: Any) -> None:
    """The fitted regression's weights and intercept into net.contact_head (nn.Linear(depth * heads, 1))."""
    head: nn.Linear = net.contact_head
    coef = torch.as_tensor(np.asarray(model.coef_), dtype=head.weight.dtype)
    if coef.shape != head.weight.shape:
        raise ValueError(f"the regression has {coef.shape[1]} weights; contact_head takes {head.weight.shape[1]}")
    with torch.no_grad():
        head.weight.copy_(coef)
        head.bias.copy_(torch.as_tensor(np.asarray(model.intercept_), dtype=head.bias.dtype))


# --- chains of known structure -------------------------------------------------------------------------


@dataclass
class Encoded:
    """A chain ready for the network: its ids (1, T) framed as the model was trained, its (L, L) contacts (None for
    a record of known sequence only)."""

    name: str
    ids: torch.Tensor
    contacts: np.ndarray | None

    @property
    def length(self) -> int:
        return int(self.contacts.shape[0])

    @property
    def residues(self) -> np.ndarray:
        """(L,) the residues' token ids: the chain's ids without <cls> and <eos>."""
        return self.ids[0, 1:-1].numpy()


def encode_chains(net: nn.Module, chains: Iterable[Any], split: str, notes: list[str],
                  limit: int | None = None) -> list[Encoded]:
    """The first `limit` (all when None) chains the network can read, as it reads them: cropped to the first
    max_len - 2 residues (the longest it was trained on, <cls> and <eos> aside) with their contacts; chains with
    letters its alphabet lacks skipped. Both said in `notes`. A record without `contacts()` (a FASTA record:
    name and sequence only) gets contacts None."""
    most = int(net.max_len) - 2
    out: list[Encoded] = []
    cropped, skipped = [], []
    for chain in chains:
        if limit is not None and len(out) >= limit:
            break
        try:
            ids = net.alphabet.encode(chain.sequence)
        except SequenceError as err:
            skipped.append((chain.name, str(err)))
            continue
        contacts = np.asarray(chain.contacts(), dtype=bool) if hasattr(chain, "contacts") else None
        if contacts is not None and len(ids) - 2 != contacts.shape[0]:
            raise UserError(f"contacts: chain {chain.name} has {len(ids) - 2} residues but a "
                            f"{contacts.shape[0]}x{contacts.shape[1]} contact map")
        if len(ids) - 2 > most:
            cropped.append(chain.name)
            ids = ids[: most + 1] + [net.alphabet.eos]
            contacts = None if contacts is None else contacts[:most, :most]
        out.append(Encoded(chain.name, torch.tensor([ids]), contacts))
    if cropped:
        notes.append(f"{len(cropped)} {split} chain(s) longer than the model's {most} residues (max_len="
                     f"{net.max_len} tokens) cropped to their first {most} residues (first: {cropped[0]})")
    if skipped:
        notes.append(f"{len(skipped)} {split} chain(s) skipped: letters the {net.alphabet.name} alphabet lacks "
                     f"(first: {skipped[0][0]}: {skipped[0][1]})")
    return out


def chain_features(net: nn.Module, chain: Encoded) -> np.ndarray:
    """(L, L, depth * heads) contact features of one chain (no gradients)."""
    with torch.no_grad():
        _, features = net.contact_features(chain.ids)
    return features[0].float().numpy()


def chain_scores(net: nn.Module, chain: Encoded) -> np.ndarray:
    """(L, L) contact probabilities of one chain, from net.contact_head (what predict.py shows)."""
    with torch.no_grad():
        return net.contacts(chain.ids)[0].float().numpy()


def fit_on_chains(net: nn.Module, chains: Sequence[Encoded], C: float = C, notes: list[str] | None = None,
                  max_pairs: int = MAX_TRAIN_PAIRS, seed: int = 0) -> Any:
    """Features of the training chains one by one (a progress bar on stderr), only the pairs the fit reads kept,
    the regression fitted and written into net.contact_head; returns the fitted scikit-learn model. More than
    `max_pairs` pairs in all: the same share of each chain's pairs drawn at random (said in `notes`)."""
    total = sum(len(range_pairs(chain.length, TRAIN_MIN_SEP)[0]) for chain in chains)
    share = min(1.0, max_pairs / max(total, 1))
    rng = np.random.default_rng(seed)
    pairs = []
    for chain in tqdm(chains, desc="contacts: train chains", unit="chain", leave=False):
        x, y = training_pairs(chain_features(net, chain), chain.contacts)
        if share < 1.0:
            keep = np.sort(rng.choice(len(y), size=min(len(y), max(1, round(share * len(y)))), replace=False))
            x, y = x[keep], y[keep]
        pairs.append((x, y))
    if share < 1.0 and notes is not None:
        notes.append(f"the {len(chains)} training chains hold {total} residue pairs at least {TRAIN_MIN_SEP} apart; "
                     f"the regression was fitted on {sum(len(p[1]) for p in pairs)} of them drawn at random "
                     f"({share:.1%} of each chain's; at most about {max_pairs} fit in memory)")
    model = fit_pairs(pairs, C)
    write_contact_head(net, model)
    return model


def score_chains(net: nn.Module, chains: Sequence[Encoded], seed: int,
                 pairs: np.ndarray) -> dict[str, dict[str, float]]:
    """{"model", "random", "separation", "residue_pair": table} over the chains (contact_table of each scorer,
    one chain's maps at a time: 500 chains of maps would not fit); the random baseline of chain k draws with
    seed + k; `pairs` is fit_residue_pairs' table."""
    rows: dict[str, list[dict[str, float]]] = {"model": [], "random": [], "separation": [], "residue_pair": []}
    for k, chain in enumerate(tqdm(chains, desc="contacts: test chains", unit="chain", leave=False)):
        scorers = {"model": chain_scores(net, chain), "random": random_scores(chain.length, seed + k),
                   "separation": separation_scores(chain.length),
                   "residue_pair": residue_pair_scores(pairs, chain.residues)}
        for name, scores in scorers.items():
            rows[name].append(chain_precisions(scores, chain.contacts))
    return {name: mean_rows(table) for name, table in rows.items()}


# --- the residue-pair baseline -------------------------------------------------------------------------


def _pair_bins(separation: np.ndarray) -> np.ndarray:
    """The PAIR_BINS index of each separation (smaller ones than PAIR_BINS[0] get bin 0; no range reads such pairs)."""
    return np.maximum(np.searchsorted(PAIR_BINS, separation, side="right") - 1, 0)


def fit_residue_pairs(chains: Sequence[Encoded], vocab: int, prior: float = PAIR_PRIOR) -> np.ndarray:
    """The residue-pair baseline, (len(PAIR_BINS), vocab, vocab): for residues a, b (token ids) at a separation in
    each bin, the share of such pairs (at least 6 apart, counted both ways round) that are contacts in the given
    chains, with `prior` pairs at the bin's overall contact rate added to every cell. It knows residue identity and
    separation, nothing of the fold: a model whose attention holds contacts should beat it
    (docs/protein_contacts.md)."""
    hits, pairs = np.zeros((len(PAIR_BINS), vocab, vocab)), np.zeros((len(PAIR_BINS), vocab, vocab))
    for chain in chains:
        a = chain.residues
        i, j = range_pairs(len(a), TRAIN_MIN_SEP)
        b, contact = _pair_bins(j - i), chain.contacts[i, j]
        for x, y in ((a[i], a[j]), (a[j], a[i])):
            np.add.at(pairs, (b, x, y), 1)
            np.add.at(hits, (b, x, y), contact)
    rate = hits.sum(axis=(1, 2)) / np.maximum(pairs.sum(axis=(1, 2)), 1)  # each bin's contact rate (all counted twice)
    same = np.arange(vocab)
    pairs[:, same, same] /= 2  # a pair of one residue type went into its cell both ways round: once
    hits[:, same, same] /= 2
    return (hits + prior * rate[:, None, None]) / (pairs + prior)


def residue_pair_scores(table: np.ndarray, residues: np.ndarray) -> np.ndarray:
    """(L, L) scores of one chain's residues (token ids, (L,)) from fit_residue_pairs' table."""
    pos = np.arange(len(residues))
    bins = _pair_bins(np.abs(pos[:, None] - pos[None, :]))
    return table[bins, residues[:, None], residues[None, :]]


# --- the evaluation (evaluate.py contacts=true) -------------------------------------------------------


def require_contact_model(net: nn.Module, what: str) -> None:
    """A UserError unless the network reads contacts from its attention (a ProteinLM)."""
    if not callable(getattr(net, "contact_features", None)) or not isinstance(getattr(net, "contact_head", None),
                                                                              nn.Linear):
        raise UserError(f"contacts=true: {what} is a {type(net).__name__}, which has no contact features (attention "
                        "maps over residues); expected a protein language model (model=protein, pretrained=pkg:"
                        "antiberty)")


def require_structures(dm: Any, what: str) -> None:
    """A UserError unless the data module holds chains of known structure (`chains(split)`)."""
    if not callable(getattr(dm, "chains", None)):
        raise UserError(f"contacts=true: {what} ({type(dm).__name__}) holds no structures (no chains with "
                        "coordinates); give data=protein_structures")


@dataclass
class ContactResult:
    """What `evaluate.py contacts=true` measured: a contact_table per scorer, and the chains it used."""

    tables: dict[str, dict[str, float]]
    train_chains: int
    eval_chains: int
    model: Any  # the fitted scikit-learn regression
    C: float = C

    def metrics(self) -> dict[str, float]:
        """Flat, under contacts/: <scorer>/<range>/P@L..., the chain counts and the rule's numbers."""
        out = {f"contacts/{scorer}/{key}": value for scorer, table in self.tables.items()
               for key, value in table.items()}
        return {**out, "contacts/train_chains": float(self.train_chains), "contacts/eval_chains":
                float(self.eval_chains), "contacts/C": float(self.C), "contacts/train_min_sep": float(TRAIN_MIN_SEP),
                "contacts/threshold_angstrom": CONTACT_ANGSTROM}

    def table(self) -> str:
        """The precisions in percent, one row per scorer, three columns per separation range."""
        head = f"{'':<12}" + "".join(f"{_range_title(name):<21}" for name in SEPARATIONS)
        sub = f"{'':<12}" + "".join(f"{k[2:]:>7}" for _ in SEPARATIONS for k in DIVISORS)  # L, L/2, L/5
        rows = [f"{scorer:<12}" + "".join(f"{100 * table[f'{name}/{k}']:>7.1f}" for name in SEPARATIONS
                                          for k in DIVISORS) for scorer, table in self.tables.items()]
        return "\n".join([head, sub, *rows])


def _range_title(name: str) -> str:
    lo, hi = SEPARATIONS[name]
    return f"  {name} ({lo}-{hi})" if hi is not None else f"  {name} (>= {lo})"


def run_contacts(net: nn.Module, dm: Any, *, train: int, evaluate: int, seed: int, notes: list[str],
                 C: float = C) -> ContactResult:
    """Fit the regression (L1 strength C) on the first `train` chains of the data's train split that the network
    reads, write it into net.contact_head, score the first `evaluate` test chains with it and the three baselines."""
    net.eval()
    train_chains = encode_chains(net, dm.chains("train"), "train", notes, limit=train)
    if len(train_chains) < train:
        raise UserError(f"contacts_train={train}: the data's train split holds {len(train_chains)} chain(s) this "
                        f"model reads; give contacts_train <= {len(train_chains)}")
    test_chains = encode_chains(net, dm.chains("test"), "test", notes, limit=evaluate)
    if not test_chains:
        raise UserError("contacts=true: the data's test split holds no chain this model reads; nothing to evaluate")
    if len(test_chains) < evaluate:
        notes.append(f"contacts_eval={evaluate}: the test split holds {len(test_chains)} chain(s); all of them used")
    model = fit_on_chains(net, train_chains, C, notes, seed=seed)
    pairs = fit_residue_pairs(train_chains, vocab=len(net.alphabet))
    if not np.any(model.coef_):
        notes.append(f"the regression kept no feature (contacts_C={C:g}): this model's maps told contacts from "
                     "non-contacts no better than the L1 penalty costs, so its scores are one constant, ranked row by "
                     "row (an untrained model's are)")
    return ContactResult(score_chains(net, test_chains, seed, pairs), len(train_chains), len(test_chains), model, C)


def save_contact_head(net: nn.Module, path: Path, source: str, C: float = C) -> None:
    """net.contact_head as safetensors ("weight" (1, depth * heads), "bias" (1,)), what it was fitted on in its
    metadata: nn.Linear.load_state_dict reads it back."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().clone() for k, v in net.contact_head.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"source": source, "C": str(C), "train_min_sep": str(TRAIN_MIN_SEP),
                                          "rule": rule(C)})


def rule(C: float = C) -> str:
    """The protocol in one sentence (printed with the table, kept in the saved head)."""
    return (f"L1 logistic regression (C={C:g}) over the symmetrized, APC-corrected attention maps of every layer and "
            f"head, fitted on residue pairs i < j with j - i >= {TRAIN_MIN_SEP}; contact: C-beta distance < "
            f"{CONTACT_ANGSTROM:g} A; precision of the top L/k pairs of each separation range, mean over chains")


__all__ = ["C", "ContactResult", "DIVISORS", "Encoded", "MAX_TRAIN_PAIRS", "PAIR_BINS", "PAIR_PRIOR", "SEPARATIONS",
           "TRAIN_MIN_SEP", "chain_features", "chain_precisions", "chain_scores", "contact_table", "encode_chains",
           "fit_contact_regression", "fit_on_chains", "fit_pairs", "fit_residue_pairs", "mean_rows", "precision_at_l",
           "random_scores", "range_pairs", "require_contact_model", "require_structures", "residue_pair_scores", "rule",
           "run_contacts", "save_contact_head", "score_chains", "separation_scores", "training_pairs",
           "write_contact_head"]
