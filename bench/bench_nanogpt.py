"""The zoo's default `model=lm` recipe against nanoGPT's own CPU run, side by side on the same text and machine.

    python bench/bench_nanogpt.py --nanogpt /path/to/nanoGPT [--threads 2] [--text input.txt] [--out result.json]

`--nanogpt` is a checkout of github.com/karpathy/nanoGPT (read and run from there, never copied into this
repository). Both trainings run one after the other with the same number of threads:

* nanoGPT: `train.py config/train_shakespeare_char.py` with its README's CPU flags (4 layers, 4 heads, width 128,
  context 64, batch 12, 2,000 iterations, dropout 0, eval_iters 20), in a scratch folder that links its code
  and holds the character data prepared as its data/shakespeare_char/prepare.py does (first 90 % / last 10 %);
  `always_save_checkpoint=True` so that its final weights are on disk.
* the zoo: `train.py model=lm data.path=<the same text>` (its defaults are that configuration; test=false).

Then both final models are scored on the same held-out text, nanoGPT's validation part (the last 10 % of the
characters), read as non-overlapping 64-character blocks: mean cross-entropy in nats per character. Also
printed: nanoGPT's own last estimate (20 random batches) and the zoo's validation loss (its 5 % validation
split), wall time of each process, and training tokens per second (iterations x batch x context / time).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data.text_corpus import TINY_SHAKESPEARE, read_corpus  # noqa: E402

CPU_FLAGS = ["--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1", "--block_size=64",
             "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", "--max_iters=2000",
             "--lr_decay_iters=2000", "--dropout=0.0"]
ITERS, BATCH, CONTEXT = 2000, 12, 64


def prepare_nanogpt(checkout: Path, text: str, work: Path) -> Path:
    """A scratch folder to run nanoGPT from: its code linked, data/shakespeare_char/ as its prepare.py writes it."""
    work.mkdir(parents=True, exist_ok=True)
    for name in ("train.py", "model.py", "configurator.py", "config"):
        (work / name).symlink_to(checkout / name)
    data = work / "data" / "shakespeare_char"
    data.mkdir(parents=True)
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    n = len(text)
    np.array([stoi[c] for c in text[:int(n * 0.9)]], dtype=np.uint16).tofile(data / "train.bin")
    np.array([stoi[c] for c in text[int(n * 0.9):]], dtype=np.uint16).tofile(data / "val.bin")
    with open(data / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}, f)
    return work


def timed(cmd: list[str], cwd: Path, threads: int, log: Path) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system) of a command. On a machine shared with other work the CPU
    time is the steadier of the two: waiting for a core counts in the wall time only."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}); see {log}")
    return seconds, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


@torch.no_grad()
def block_loss(forward, ids: torch.Tensor, batch: int = 64) -> float:
    """Mean next-token cross-entropy over the non-overlapping CONTEXT-blocks of ids (each target once)."""
    count = (len(ids) - 1) // CONTEXT
    x = ids[: count * CONTEXT].view(count, CONTEXT)
    y = ids[1: count * CONTEXT + 1].view(count, CONTEXT)
    total = 0.0
    for i in range(0, count, batch):
        logits = forward(x[i:i + batch])
        total += torch.nn.functional.cross_entropy(logits.flatten(0, 1), y[i:i + batch].flatten(), reduction="sum")
    return float(total) / y.numel()


def nanogpt_heldout(checkout: Path, out_dir: Path, heldout: str) -> float:
    sys.path.insert(0, str(checkout))
    from model import GPT, GPTConfig  # nanoGPT's own model, from its checkout

    ckpt = torch.load(out_dir / "ckpt.pt", map_location="cpu", weights_only=False)
    model = GPT(GPTConfig(**ckpt["model_args"]))
    model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()})
    model.eval()
    meta = pickle.loads((out_dir.parent / "data" / "shakespeare_char" / "meta.pkl").read_bytes())
    ids = torch.tensor([meta["stoi"][c] for c in heldout])
    # GPT.forward without targets returns the last position only; with targets, logits at every position.
    return block_loss(lambda x: model(x, torch.zeros_like(x))[0], ids)


def zoo_heldout(run_dir: Path, heldout: str) -> float:
    from utils.restore import restore

    run = restore(run_dir / "checkpoints" / "last.ckpt", switches=False)
    net = run.module.net.eval()
    ids = torch.tensor(run.datamodule.tokenizer.encode(heldout).ids)
    return block_loss(net, ids)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nanogpt", type=Path, required=True, help="a checkout of github.com/karpathy/nanoGPT")
    parser.add_argument("--text", type=Path, default=TINY_SHAKESPEARE, help="the text (default: Tiny Shakespeare)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temporary one)")
    parser.add_argument("--zoo-args", nargs="*", default=[], help="extra train.py overrides for the zoo's run")
    parser.add_argument("--zoo-name", default="zoo", help="the zoo run's folder in --work (another for another recipe)")
    parser.add_argument("--reuse-nanogpt", action="store_true", help="keep a finished nanoGPT run in --work")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_nanogpt_"))
    work.mkdir(parents=True, exist_ok=True)
    text = read_corpus(args.text)
    heldout = text[int(len(text) * 0.9):]  # nanoGPT's val.bin
    plain = work / "input.txt"
    plain.write_text(text, encoding="utf-8")

    nano, nano_log, nano_time = work / "nanogpt", work / "nanogpt.log", work / "nanogpt_wall_s.txt"
    if args.reuse_nanogpt and nano_time.is_file():  # a finished nanoGPT run in this --work folder
        nano_s, nano_cpu = map(float, nano_time.read_text().split())
    else:
        prepare_nanogpt(args.nanogpt.resolve(), text, nano)
        nano_s, nano_cpu = timed([sys.executable, "train.py", "config/train_shakespeare_char.py", *CPU_FLAGS,
                                  "--always_save_checkpoint=True", f"--out_dir={nano / 'out'}"], nano, args.threads,
                                 nano_log)
        nano_time.write_text(f"{nano_s} {nano_cpu}\n")
    log = nano_log.read_text()
    nano_val = float(re.findall(r"step \d+: train loss [\d.]+, val loss ([\d.]+)", log)[-1])
    nano_loop = sum(float(ms) for ms in re.findall(r"iter \d+: loss [\d.]+, time ([\d.]+)ms", log)) / 1000

    zoo_dir = work / args.zoo_name
    zoo_log = work / f"{args.zoo_name}.log"
    zoo_s, zoo_cpu = timed([sys.executable, "train.py", "model=lm", f"data.path={plain}", f"threads={args.threads}",
                   "test=false", "trainer.enable_progress_bar=false", "callbacks.progress_bar=null", f"hydra.run.dir={zoo_dir}", *args.zoo_args],
                           ROOT, args.threads, zoo_log)
    metrics = json.loads((zoo_dir / "metrics.json").read_text())

    tokens = ITERS * BATCH * CONTEXT
    report = {
        "threads": args.threads,
        "text": str(args.text),
        "zoo_args": args.zoo_args,
        "nanogpt": {"wall_s": nano_s, "cpu_s": nano_cpu, "loop_s": nano_loop, "tokens_per_s": tokens / nano_s,
                    "tokens_per_cpu_s": tokens / nano_cpu,
                    "own_val_loss_20_batches": nano_val,
                    "heldout_loss": nanogpt_heldout(args.nanogpt.resolve(), nano / "out", heldout)},
        "zoo": {"wall_s": zoo_s, "cpu_s": zoo_cpu, "fit_s": metrics["fit_seconds"], "tokens_per_s": tokens / zoo_s,
                "tokens_per_cpu_s": tokens / zoo_cpu,
                "val_loss_5pct_split": metrics["val/loss"], "heldout_loss": zoo_heldout(zoo_dir, heldout)},
    }
    report["zoo_over_nanogpt_tokens_per_s"] = report["zoo"]["tokens_per_s"] / report["nanogpt"]["tokens_per_s"]
    report["zoo_over_nanogpt_tokens_per_cpu_s"] = (report["zoo"]["tokens_per_cpu_s"]
                                                   / report["nanogpt"]["tokens_per_cpu_s"])
    report["heldout_loss_zoo_minus_nanogpt"] = report["zoo"]["heldout_loss"] - report["nanogpt"]["heldout_loss"]
    print(f"{'':8} {'wall s':>7} {'cpu s':>7} {'loop s':>7} {'tokens/s':>9} {'tokens/cpu s':>12} {'held-out':>9} "
          f"{'own val':>8}")
    for name, r in (("nanoGPT", report["nanogpt"]), ("zoo", report["zoo"])):
        own = r.get("own_val_loss_20_batches", r.get("val_loss_5pct_split"))
        loop = r.get("loop_s", r.get("fit_s"))
        print(f"{name:8} {r['wall_s']:7.1f} {r['cpu_s']:7.1f} {loop:7.1f} {r['tokens_per_s']:9.0f} "
              f"{r['tokens_per_cpu_s']:12.0f} {r['heldout_loss']:9.4f} {own:8.4f}")
    print(f"zoo / nanoGPT tokens per second: {report['zoo_over_nanogpt_tokens_per_s']:.3f} (wall), "
          f"{report['zoo_over_nanogpt_tokens_per_cpu_s']:.3f} (CPU time); held-out loss "
          f"zoo - nanoGPT: {report['heldout_loss_zoo_minus_nanogpt']:+.4f} nats per character (threads={args.threads})")
    print(f"logs: {nano_log} {zoo_log}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
