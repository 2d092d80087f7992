"""Settings tried for the Fashion-MNIST ViT recipe (docs/results.md#fashion-mnist), run side by side.

    python -m bench.fashion_sweep --jobs 2                    # CPU: two runs at a time, one thread each
    python -m bench.fashion_sweep --jobs 12 --gpu --root DIR  # the same runs on a GPU machine (float32)

Each named setting is `python train.py data=fashion_mnist <overrides>` (the recipe in
configs/experiment/vit_fashion.yaml plus the overrides), seed 42, one thread. Epochs are given per
setting so that each costs about the same CPU time (relative step costs measured on this 2-core machine).
Settings are chosen on val/acc (6,000 images held out of the training set); the table prints test/acc
too, but nothing is selected on it. On a GPU the runs are numerically float32 like the CPU runs, only
faster: the sweep is a way to try many settings within the CPU recipe's budget, not a GPU benchmark.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# Round 1: around a first guess (width 96, mean pooling, EMA of weights, test-time flips, 11 epochs), each
# setting with the epochs at which it costs about the same CPU time (relative step costs measured here).
EMA = ["+callbacks.ema._target_=lightning.pytorch.callbacks.EMAWeightAveraging", "+callbacks.ema.decay=0.999"]
R1 = ["model.net.dim=96", "model.net.pool=mean", "trainer.max_epochs=11", *EMA]
GRID: dict[str, list[str]] = {
    "r1_base": R1,
    "no_tta": [*R1, "model.tta_flip=false"],
    "no_ema": R1[:3],
    "lr1e-3": [*R1, "model.optimizer.lr=1e-3"],
    "lr4e-3": [*R1, "model.optimizer.lr=4e-3"],
    "ls0": [*R1, "model.label_smoothing=0.0"],
    "wd0.1": [*R1, "model.optimizer.weight_decay=0.1"],
    "droppath0.1": [*R1, "model.net.drop_path=0.1"],
    "dim64_22ep": [*R1, "model.net.dim=64", "trainer.max_epochs=22"],
    "dim128_8ep": [*R1, "model.net.dim=128", "trainer.max_epochs=8"],
    "depth6_9ep": [*R1, "model.net.depth=6", "trainer.max_epochs=9"],
    "mlp4_9ep": [*R1, "model.net.mlp_ratio=4.0", "trainer.max_epochs=9"],
    "stem32_64": [*R1, "model.net.stem_channels=[32,64]"],
    "heads6": [*R1, "model.net.num_heads=6"],
    "pool_cls": [*R1, "model.net.pool=cls"],
    "batch64_8ep": [*R1, "data.batch_size=64", "trainer.max_epochs=8"],
    "batch256": [*R1, "data.batch_size=256"],
    "22ep": [*R1, "trainer.max_epochs=22"],
    "33ep": [*R1, "trainer.max_epochs=33"],
}
# Round 2: what round 1 pointed to (narrow and longer, class token, no EMA) is the recipe; variations of it.
GRID2: dict[str, list[str]] = {
    "recipe": [],
    "recipe_seed1": ["seed=1"],
    "recipe_seed2": ["seed=2"],
    "mean_pool": ["model.net.pool=mean"],
    "stem32_64": ["model.net.stem_channels=[32,64]"],
    "heads2": ["model.net.num_heads=2"],
    "lr3e-3": ["model.optimizer.lr=3e-3"],
    "with_ema": EMA,
    "dim48_33ep": ["model.net.dim=48", "model.net.num_heads=3", "trainer.max_epochs=33"],
}
GRIDS = {1: GRID, 2: GRID2}


def run_one(name: str, overrides: list[str], args: argparse.Namespace) -> dict:
    run_dir = Path(args.out) / name
    seed = [] if any(o.startswith("seed=") for o in overrides) else [f"seed={args.seed}"]
    cmd = [sys.executable, "train.py", "data=fashion_mnist", *seed, "threads=1", "overwrite=true",
           f"hydra.run.dir={run_dir}", "callbacks.progress_bar=null", *overrides, *args.extra]
    if args.root:
        cmd.append(f"data.root={args.root}")
    if args.gpu:
        cmd += ["trainer.accelerator=gpu", "trainer.precision=32-true"]
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    row = {"name": name, "overrides": " ".join(overrides), "wall_s": round(time.time() - start)}
    metrics = run_dir / "metrics.json"
    if proc.returncode == 0 and metrics.is_file():
        m = json.loads(metrics.read_text())
        row.update(val=m.get("val/acc"), test=m.get("test/acc"), fit_s=m.get("fit_seconds"))
    else:
        row["error"] = (proc.stderr or proc.stdout)[-800:]
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--root", default=None, help="data.root holding FashionMNIST/raw (else Debian's package)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--round", type=int, default=1, choices=sorted(GRIDS), help="which grid (the rounds tried)")
    p.add_argument("--only", nargs="*", help="names of the grid to run (default: all)")
    p.add_argument("--out", default="outputs/fashion_sweep")
    p.add_argument("--extra", nargs="*", default=[], help="overrides added to every run (e.g. a quick check)")
    args = p.parse_args()
    grid = GRIDS[args.round]
    names = args.only or list(grid)
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda n: run_one(n, grid[n], args), names))
    print(f"\n| setting | overrides | val acc | test acc | fit s ({'GPU' if args.gpu else 'CPU'}) |")
    print("| --- | --- | --- | --- | --- |")
    for r in sorted(rows, key=lambda r: -(r.get("val") or 0)):
        val, test = r.get("val"), r.get("test")
        cells = (f"{100 * val:.2f}", f"{100 * test:.2f}", f"{r['fit_s']:.0f}") if val is not None else ("error", "", "")
        print(f"| {r['name']} | {r['overrides'] or '(recipe)'} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
