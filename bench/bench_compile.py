"""torch.compile on a default model's training step: the speed-up after warm-up, and what compiling costs.

Contenders, same initial weights and batch (one step = forward, cross-entropy, backward, AdamW):

* ``plain``            -- the network as train.py builds it (attention kernel: the process default, "auto")
* ``compiled``         -- the same network compiled with inductor (training.switches.compile_net, as model.compile=true),
                          same kernel choice ("auto": explicit for the default models' short sequences)
* ``compiled_fused``   -- compiled, attention pinned to the fused SDPA kernel

Timing: the first call of each compiled step (the compilation) is reported on its own, then
bench.common.round_robin over all contenders and paired median ratios against ``plain``.

    python -m bench.bench_compile --json bench/results_compile.json     # ViT default, ~3 min cold on 2 cores
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable

import torch

from bench.common import DEFAULT_INPUTS, default_classifier, load, paired_ratio, parse_bench_args, round_robin, train_step, write_report
from models.attention import fused_attn
from training.switches import compile_net


def contenders(name: str, backend: str) -> dict[str, Callable[[], None]]:
    steps = {}
    for label in ("plain", "compiled", "compiled_fused"):
        net, x, y = default_classifier(name)  # same seed: same weights and batch for each
        if label != "plain":
            compile_net(net, backend=backend)
        step = train_step(net, torch.optim.AdamW(net.parameters(), lr=1e-4), x, y)
        if label == "compiled_fused":
            steps[label] = lambda step=step: _fused(step)
        else:
            steps[label] = step
    return steps


def _fused(step: Callable[[], None]) -> None:
    with fused_attn(True):
        step()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=tuple(DEFAULT_INPUTS), default="vit")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=30, help="most interleaved rounds (default: %(default)s)")
    p.add_argument("--budget", type=float, default=40.0, help="seconds of timed rounds (default: %(default)s)")
    p.add_argument("--backend", default="inductor", help="torch.compile backend (tests: aot_eager)")
    args = parse_bench_args(p, argv)
    print(f"torch {torch.__version__}, {args.threads} threads, model {args.model}, load {load()}")
    steps = contenders(args.model, args.backend)
    first: dict[str, float] = {}
    for label, step in steps.items():  # the first call compiles (and later calls must not recompile)
        start = time.perf_counter()
        step()
        first[label] = time.perf_counter() - start
        print(f"  first step {label:18s} {first[label]:7.2f} s", flush=True)
    t = round_robin(steps, repeats=args.repeats, warmup_s=3.0, budget_s=args.budget)
    ms = {k: 1e3 * sorted(v)[len(v) // 2] for k, v in t.items()}
    speedup = {k: paired_ratio(t["plain"], v) for k, v in t.items() if k != "plain"}
    for k in steps:
        extra = f"  speed-up over plain (paired) {speedup[k]:.3f}" if k in speedup else ""
        print(f"  {k:18s} {ms[k]:7.1f} ms/step{extra}")
    print(f"{len(t['plain'])} rounds, load {load()}")
    return write_report(args, first_step_s=first, ms=ms, speedup=speedup, rounds=len(t["plain"]))


if __name__ == "__main__":
    main()
