"""Which heads of a protein LM carry contacts: each layer's and head's map alone, scored as Rao et al.'s regression is.

For every feature the contact regression reads (a layer's head, symmetrized and APC-corrected: `contact_features`),
its long-range (>= 24 apart) precision at L/5 used alone as the score, on the training chains and on the held-out
test chains of `data=protein_structures`, and its correlation with the residue-pair baseline's scores over the same
pairs (does the head rank pairs by residue types?). The head with the best training-chain precision is the one a
user could pick without seeing the test chains; the best head on the test chains is an oracle (chosen on what it
is scored on), an upper bound for one head, not a result. docs/protein.md#is-the-regression-the-limit.

Usage::

    python -m bench.protein_heads <run folder or checkpoint> --train 20 --eval 500 --json heads.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from inference.contacts import (SEPARATIONS, Encoded, chain_features, encode_chains, fit_residue_pairs,
                                precision_at_l, range_pairs, residue_pair_scores)

LONG = SEPARATIONS["long"][0]  # 24


def head_scores(net: torch.nn.Module, chains: Sequence[Encoded], pairs: np.ndarray) -> dict[str, np.ndarray]:
    """(chains, features) long-range P@L/5 of each feature alone, and its (Pearson) correlation with the residue-pair
    scores over the chain's long-range pairs (NaN where either is constant: left out of the means); (chains,) the
    residue-pair baseline's own long-range P@L/5."""
    precision, correlation, baseline = [], [], []
    for chain in tqdm(chains, desc="heads", unit="chain", leave=False):
        x = chain_features(net, chain)
        i, j = range_pairs(chain.length, LONG)
        table = residue_pair_scores(pairs, chain.residues)
        table_ij = table[i, j]
        baseline.append(precision_at_l(table, chain.contacts, min_sep=LONG, divisor=5))
        precision.append([precision_at_l(x[..., f], chain.contacts, min_sep=LONG, divisor=5)
                          for f in range(x.shape[-1])])
        with np.errstate(invalid="ignore", divide="ignore"):
            correlation.append([np.corrcoef(x[i, j, f], table_ij)[0, 1] if len(i) > 1 else np.nan
                                for f in range(x.shape[-1])])
    return {"precision": np.array(precision), "correlation": np.array(correlation), "residue_pair": np.array(baseline)}


def measure(net: torch.nn.Module, dm: Any, train: int, evaluate: int) -> dict[str, Any]:
    """The per-head table of `net` on dm.chains("train")[:train] and dm.chains("test")[:evaluate]."""
    notes: list[str] = []
    train_chains = encode_chains(net, dm.chains("train"), "train", notes, limit=train)
    test_chains = encode_chains(net, dm.chains("test"), "test", notes, limit=evaluate)
    pairs = fit_residue_pairs(train_chains, vocab=len(net.alphabet))
    on_train, on_test = head_scores(net, train_chains, pairs), head_scores(net, test_chains, pairs)
    heads = net.num_heads
    name = [f"layer {f // heads} head {f % heads}" for f in range(on_test["precision"].shape[1])]
    test_p, train_p = on_test["precision"].mean(0), on_train["precision"].mean(0)
    picked, oracle = int(np.argmax(train_p)), int(np.argmax(test_p))
    return {"train_chains": len(train_chains), "test_chains": len(test_chains), "notes": notes,
            "residue_pair_test": float(on_test["residue_pair"].mean()),
            "picked_on_train": {"head": name[picked], "train": float(train_p[picked]), "test": float(test_p[picked])},
            "best_on_test_oracle": {"head": name[oracle], "test": float(test_p[oracle])},
            "heads": {name[f]: {"train": float(train_p[f]), "test": float(test_p[f]),
                                "corr_residue_pair": float(np.nanmean(on_test["correlation"][:, f]))}
                      for f in range(len(name))}}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a training run's folder or checkpoint (model=protein)")
    p.add_argument("--train", type=int, default=20, help="training chains (the regression's 20)")
    p.add_argument("--eval", type=int, default=500, help="test chains")
    p.add_argument("--root", default="datasets", help="where the structure split is cached (paths.data_dir)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from data.protein_structures import ProteinStructuresDataModule
    from utils.restore import restore

    net = restore(args.run, data=False).module.net.eval()
    report = measure(net, ProteinStructuresDataModule(root=args.root), args.train, args.eval)
    for line in report["notes"]:
        print("note:", line)
    top = sorted(report["heads"].items(), key=lambda kv: -kv[1]["test"])[:8]
    print(f"{args.run}: long-range (>= {LONG}) P@L/5 of each head's map alone, {report['test_chains']} test chains "
          f"(residue-pair baseline {100 * report['residue_pair_test']:.1f} %)")
    for head, r in top:
        print(f"  {head}: test {100 * r['test']:.1f} %, train {100 * r['train']:.1f} %, "
              f"correlation with residue-pair scores {r['corr_residue_pair']:+.3f}")
    picked = report["picked_on_train"]
    print(f"picked on the {report['train_chains']} training chains: {picked['head']}, test {100 * picked['test']:.1f} %"
          f" (the best on the test chains, an oracle: {report['best_on_test_oracle']['head']}, "
          f"{100 * report['best_on_test_oracle']['test']:.1f} %)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
