"""Synthesized to human: the audio model trained on espeak-ng digits, tested on every FSDD recording.

Trains `model=audio` on the default synthesized keyword data with the digits as its vocabulary
(`data.words=[zero,...,nine] data.num_classes=10`: espeak-ng voices only, the classes in FSDD's label order), then
tests its best checkpoint (by val accuracy on unseen synthetic voices) on all 3,000 FSDD recordings, read the way
data=fsdd reads them (resampled to 16 kHz, centred in the 1 s clip, `--peak` level). No FSDD clip is seen in
training. Reports the accuracy over all recordings and per speaker, and the training's CPU minutes.

    python -m bench.fsdd_transfer --root <FSDD recordings/> [--json bench/results_fsdd_transfer.json]
        [--ckpt <run dir: skip training>] [--run outputs/fsdd_transfer] [-- extra train.py overrides]

Data: Free Spoken Digit Dataset (Jakobovski et al., github.com/Jakobovski/free-spoken-digit-dataset), CC BY-SA 4.0.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDS = "[zero,one,two,three,four,five,six,seven,eight,nine]"


def train(run_dir: Path, overrides: list[str]) -> tuple[list[str], float, float]:
    cmd = [sys.executable, "train.py", "model=audio", f"data.words={WORDS}", "data.num_classes=10", "threads=1",
           f"hydra.run.dir={run_dir}", *overrides]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"training failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cmd[1:], cpu / 60, wall / 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="FSDD's recordings/ folder")
    parser.add_argument("--ckpt", help="a trained run (or checkpoint) to test instead of training one")
    parser.add_argument("--run", default="outputs/fsdd_transfer", help="run directory of the training")
    parser.add_argument("--peak", type=float, default=0.5, help="scale each recording to this peak (data.peak)")
    parser.add_argument("--json", help="write the results here (e.g. bench/results_fsdd_transfer.json)")
    parser.add_argument("overrides", nargs="*", help="extra train.py overrides (after --)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch

    from data.fsdd import DIGITS, FSDDDataModule
    from utils.build import build_module
    from utils.checkpoint import load_checkpoint, resolve_checkpoint, run_config

    results: dict = {"what": "model=audio trained on espeak-ng digits only (data=keywords data.words=zero..nine), "
                             "tested on every FSDD recording",
                     "data": "Free Spoken Digit Dataset (Jakobovski et al., github.com/Jakobovski/free-spoken-digit-"
                             "dataset), CC BY-SA 4.0"}
    if args.ckpt is None:
        run_dir = Path(args.run).resolve()
        if run_dir.exists() and any(run_dir.iterdir()):
            raise SystemExit(f"{run_dir} is not empty: choose another --run folder, or test it with --ckpt")
        command, cpu_min, wall_min = train(run_dir, args.overrides)
        results.update(train_command=" ".join(command), train_cpu_minutes=cpu_min, train_wall_minutes=wall_min)
        args.ckpt = str(run_dir)
    torch.set_num_threads(1)
    ckpt_file = resolve_checkpoint(args.ckpt)
    ckpt = load_checkpoint(ckpt_file)
    cfg = run_config(ckpt_file, ckpt)
    words = list(cfg.data.get("words") or [])
    if words != list(DIGITS):
        raise SystemExit(f"{ckpt_file} was trained on the classes {words or 'of the default keywords'}, not the "
                         f"digits {', '.join(DIGITS)}")
    module = build_module(cfg)
    module.load_state_dict(ckpt["state_dict"])
    module.eval()
    synthetic = json.loads((Path(ckpt_file).parents[1] / "metrics.json").read_text())
    dm = FSDDDataModule(root=args.root, sample_rate=int(cfg.data.sample_rate),
                        clip_seconds=float(cfg.data.clip_seconds), peak=args.peak)
    data = dm._read(dm.files)
    x, y = data.tensors
    with torch.no_grad():
        pred = torch.cat([module(b.float() / 32768) for b in x.split(256)]).argmax(-1)
    correct = (pred == y).numpy()
    speakers = [f[2] for f in dm.files]
    per_speaker = {s: float(correct[[w == s for w in speakers]].mean()) for s in sorted(set(speakers))}
    confusion = torch.zeros(10, 10, dtype=torch.long)
    confusion.index_put_((y, pred), torch.ones_like(y), accumulate=True)
    results.update(checkpoint=str(ckpt_file), synthetic_test_acc=synthetic.get("test/acc"),
                   synthetic_val_acc_last=synthetic.get("val/acc"), fsdd_clips=len(y), peak=args.peak,
                   fsdd_acc=float(correct.mean()), per_speaker=per_speaker,
                   per_digit={d: float(correct[(y == i).numpy()].mean()) for i, d in enumerate(DIGITS)},
                   confusion_rows_true_cols_pred=confusion.tolist())
    print(f"synthetic test (unseen espeak-ng voices) {results['synthetic_test_acc']}; FSDD, all {len(y)} "
          f"recordings: {100 * correct.mean():.1f} %; per speaker "
          + ", ".join(f"{s} {100 * a:.1f}" for s, a in per_speaker.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
