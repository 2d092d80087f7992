"""Which attention kernel is faster on this CPU, and where: fused SDPA vs the explicit formula.

1. One attention layer, forward + backward, at key lengths 8 .. 512 (batch x length = 8,192 tokens, so
   every row does the same projection work): where the explicit formula stops being faster. This is
   what `AUTO_EXPLICIT_MAX` (keys x head_dim) in models/attention/kernels.py, the "auto" kernel, is set from.
2. A training step (forward, cross-entropy, backward, AdamW) of each default classifier (configs/model/
   vit|audio|video.yaml on its default data shape) with the kernel "fused", "explicit" and "auto".

Timing: bench.common.round_robin (interleaved rounds, start rotated), paired median ratios.

    python -m bench.bench_kernels --json bench/results_kernels.json     # ~1.5 min on 2 cores
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

import torch

from bench.common import DEFAULT_INPUTS, default_classifier, load, paired_ratio, parse_bench_args, round_robin, train_step, write_report
from models.attention import KERNELS, MultiHeadAttention, fused_attn



def with_kernel(kernel: str, fn: Callable[[], Any]) -> Callable[[], None]:
    def run() -> None:
        with fused_attn(kernel):
            fn()
    return run


def layer_rows(dims: list[tuple[int, int]], lengths: list[int], tokens: int, repeats: int,
               budget: float) -> list[dict[str, Any]]:
    rows = []
    for dim, heads in dims:
        for n in lengths:
            torch.manual_seed(0)
            m = MultiHeadAttention(dim, heads)
            x = torch.randn(max(1, tokens // n), n, dim, requires_grad=True)
            t = round_robin({k: with_kernel(k, lambda: m(x).sum().backward()) for k in ("fused", "explicit")},
                            repeats=repeats, warmup_s=0.5, budget_s=budget)
            rows.append(dict(dim=dim, heads=heads, keys=n, batch=x.shape[0], fused_ms=1e3 * min(t["fused"]),
                             explicit_ms=1e3 * min(t["explicit"]),
                             fused_over_explicit=paired_ratio(t["fused"], t["explicit"])))
            r = rows[-1]
            print(f"  dim {dim:3d} heads {heads} keys {n:4d} batch {r['batch']:4d}: fused {r['fused_ms']:7.1f} ms, "
                  f"explicit {r['explicit_ms']:7.1f} ms, fused / explicit time {r['fused_over_explicit']:.3f}",
                  flush=True)
    return rows


def model_rows(models: list[str], repeats: int, budget: float) -> list[dict[str, Any]]:
    rows = []
    for name in models:
        net, x, y = default_classifier(name)
        step = train_step(net, torch.optim.AdamW(net.parameters(), lr=1e-4), x, y)
        t = round_robin({k: with_kernel(k, step) for k in KERNELS}, repeats=repeats, warmup_s=2.0, budget_s=budget)
        ms = {k: 1e3 * sorted(v)[len(v) // 2] for k, v in t.items()}
        rows.append(dict(model=name, batch=x.shape[0], ms=ms, rounds=len(t["fused"]),
                         auto_speedup=paired_ratio(t["fused"], t["auto"]),
                         explicit_speedup=paired_ratio(t["fused"], t["explicit"])))
        r = rows[-1]
        print(f"  {name:5s} batch {r['batch']}: fused {ms['fused']:6.1f} ms, explicit {ms['explicit']:6.1f} ms, "
              f"auto {ms['auto']:6.1f} ms; speed-up over fused: auto {r['auto_speedup']:.3f}, "
              f"explicit {r['explicit_speedup']:.3f} ({r['rounds']} rounds)", flush=True)
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default: %(default)s)")
    p.add_argument("--lengths", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256, 512])
    p.add_argument("--dims", nargs="+", default=["96:4", "384:6"], help="dim:heads of the layer (default: %(default)s)")
    p.add_argument("--tokens", type=int, default=8192, help="batch x length of the layer runs (default: %(default)s)")
    p.add_argument("--models", nargs="*", choices=tuple(DEFAULT_INPUTS), default=list(DEFAULT_INPUTS))
    p.add_argument("--repeats", type=int, default=15, help="most interleaved rounds (default: %(default)s)")
    p.add_argument("--budget", type=float, default=6.0, help="seconds of timed rounds per row (default: %(default)s)")
    args = parse_bench_args(p, argv)
    dims = [tuple(int(v) for v in d.split(":")) for d in args.dims]
    print(f"torch {torch.__version__}, {args.threads} threads, load {load()}")
    print("one attention layer, forward + backward:")
    layers = layer_rows(dims, args.lengths, args.tokens, args.repeats, args.budget)
    print("default models, one training step:")
    models = model_rows(args.models, 2 * args.repeats, 5 * args.budget)
    print(f"load {load()}")
    return write_report(args, layers=layers, models=models)


if __name__ == "__main__":
    main()
