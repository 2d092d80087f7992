"""How close to this machine's matmul peak do the attention layer and a ViT training step get? (CPU, float32)

1. Peak: large square float32 matmuls (``--peak-sizes``, default 2048 3072 4096) into a preallocated
   output, best of ``--peak-repeats`` calls per size; the peak is the best GFLOP/s over sizes
   (2 n^3 FLOPs per n x n matmul). This is the physical limit of dense arithmetic here with the stated
   torch thread count.
2. Achieved, measured round-robin in one run (start rotated each round) together with a 4096 matmul as
   the in-run reference, so the load of other tenants hits everything alike:

   * the attention core (``MultiHeadAttention``, fused SDPA kernel and explicit path), self-attention,
     forward + backward, batch ``--batch``, dim ``--dim``, heads ``--heads``, lengths >= 1024. FLOPs are
     analytic (bench.common.attention_flops): fwd = 8*B*N*D^2 (qkv and output projections)
     + 4*B*N^2*D (Q K^T and A V); fwd+bwd = 3 x fwd = 24*B*N*D^2 + 12*B*N^2*D.
   * a ViT training step (forward, cross-entropy, backward, AdamW) of our ViT and of timm's
     (bench.bench_vit_timm, identical architecture), FLOPs counted by
     torch.utils.flop_counter.FlopCounterMode on forward + backward with the explicit attention path
     (on CPU the fused SDPA op has no FLOP formula and would count 0; the optimizer's elementwise
     work is not counted). The counter is checked against the analytic formula on the attention layer.

   Fraction of peak = achieved GFLOP/s (median time) / peak GFLOP/s from step 1; also printed paired:
   median over rounds of achieved / in-round matmul GFLOP/s.

Usage (from the repository root)::

    python -m bench.bench_peak --json bench/results_peak.json          # ~3 min on 2 cores
    python -m bench.bench_peak --lengths 1024 --vit default --repeats 3  # quick
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable

import torch

from bench.common import (GIGA, attention_flops, counted_flops, load, make_matmul, matmul_gflops, parse_bench_args,
                          round_robin, seconds, write_report)
from models.attention import MultiHeadAttention, fused_attn

REF_MATMUL = 4096


def measure_peak(sizes: list[int], repeats: int) -> dict[str, Any]:
    """Best and median GFLOP/s per matmul size; peak = best over sizes."""
    per_size = {}
    for n in sizes:
        mm = make_matmul(n)
        for _ in range(2):  # warm-up: page in the buffers, start the thread pool
            mm()
        gf = [matmul_gflops(n, seconds(mm)) for _ in range(repeats)]
        per_size[n] = {"best_gflops": max(gf), "median_gflops": statistics.median(gf)}
    best = max(per_size, key=lambda n: per_size[n]["best_gflops"])
    return {"sizes": per_size, "peak_gflops": per_size[best]["best_gflops"], "peak_size": best}


def attention_step(n: int, args: argparse.Namespace, fused: bool) -> Callable[[], None]:
    torch.manual_seed(0)
    layer = MultiHeadAttention(args.dim, args.heads, fused=fused).train()
    x = torch.randn(args.batch, n, args.dim, requires_grad=True)
    grad = torch.randn(args.batch, n, args.dim)

    def run() -> None:
        layer.zero_grad(set_to_none=True)
        x.grad = None
        layer(x).backward(grad)

    return run


def check_attention_count(args: argparse.Namespace, n: int = 128) -> dict[str, int]:
    """FlopCounterMode on the explicit path vs the analytic formula (they should be equal)."""
    step = attention_step(n, args, fused=False)
    counted = counted_flops(step)
    return {"n": n, "counted": counted, "analytic": attention_flops(args.batch, n, args.dim)}


def vit_flops(cfg: dict[str, Any]) -> int:
    """FLOPs of forward + backward of our ViT at cfg, counted with the explicit attention path."""
    from bench.bench_vit_timm import build_pair

    ours, _ = build_pair(cfg)
    x = torch.randn(cfg["batch"], cfg["in_chans"], cfg["img_size"], cfg["img_size"])
    y = torch.randint(0, cfg["num_classes"], (cfg["batch"],))

    def fwd_bwd() -> None:
        with fused_attn(False):
            torch.nn.functional.cross_entropy(ours(x), y).backward()

    return counted_flops(fwd_bwd)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.bench_peak",
                                description="Matmul peak GFLOP/s and the fraction of it reached by attention and ViT.")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default: %(default)s)")
    p.add_argument("--peak-sizes", type=int, nargs="+", default=[2048, 3072, 4096])
    p.add_argument("--peak-repeats", type=int, default=10, help="matmuls per size, best counts (default: %(default)s)")
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096])
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--vit", nargs="*", choices=("default", "vit_s16"), default=["default", "vit_s16"],
                   help="ViT sizes of bench.bench_vit_timm to include (default: both)")
    p.add_argument("--batch-s16", type=int, default=32)
    p.add_argument("--repeats", type=int, default=7, help="interleaved rounds (default: %(default)s)")
    p.add_argument("--ref-size", type=int, default=REF_MATMUL, help="in-run reference matmul size")
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # smoke tests: shrink the ViTs
    return parse_bench_args(p, argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    start = time.perf_counter()
    load_start = load()
    peak = measure_peak(args.peak_sizes, args.peak_repeats)
    P = peak["peak_gflops"]
    print(f"matmul float32, {torch.get_num_threads()} threads (load {load_start}):")
    for n, r in peak["sizes"].items():
        print(f"  {n:>5} x {n:<5} best {r['best_gflops']:7.1f} GFLOP/s   median {r['median_gflops']:7.1f}")
    print(f"  peak = {P:.1f} GFLOP/s (n = {peak['peak_size']})")

    check = check_attention_count(args)
    print(f"\nFLOP count check, attention layer fwd+bwd N={check['n']} dim {args.dim}: FlopCounterMode "
          f"{check['counted']:,} vs analytic {check['analytic']:,} -> "
          f"{'equal' if check['counted'] == check['analytic'] else 'DIFFERENT'}")

    # Everything timed round-robin in one run, with the reference matmul as one of the contenders.
    fns: dict[str, Callable[[], None]] = {"matmul": make_matmul(args.ref_size)}
    flops: dict[str, int] = {"matmul": 2 * args.ref_size**3}
    for n in args.lengths:
        for kernel, fused in (("fused", True), ("explicit", False)):
            fns[f"attn_{kernel}_N{n}"] = attention_step(n, args, fused)
            flops[f"attn_{kernel}_N{n}"] = attention_flops(args.batch, n, args.dim)
    vit_info: dict[str, Any] = {}
    if args.vit:
        from bench.bench_vit_timm import make_steps, sizes

        all_sizes = sizes(args.batch_s16)
        for name in args.vit:
            cfg = dict(all_sizes[name])
            if args.tiny:
                cfg.update(depth=1, img_size=2 * cfg["patch_size"], num_classes=10, batch=4)
            steps, info = make_steps(cfg, ("ours_fused", "timm"))
            f = vit_flops(cfg)
            vit_info[name] = {**info, "batch": cfg["batch"], "flops_per_step": f}
            for c, step in steps.items():
                fns[f"vit_{name}_{c}"] = step
                flops[f"vit_{name}_{c}"] = f
    samples = round_robin(fns, args.repeats, warmup_s=0.0, min_warmup=1)
    load_end = load()

    ref = [flops["matmul"] / s / GIGA for s in samples["matmul"]]
    rows = {}
    for name, s in samples.items():
        gf = [flops[name] / t / GIGA for t in s]
        med = flops[name] / statistics.median(s) / GIGA
        rows[name] = {"gflop": flops[name] / GIGA, "ms_median": statistics.median(s) * 1e3, "gflops": med,
                      "fraction_of_peak": med / P,
                      "fraction_of_inrun_matmul_paired": statistics.median(g / r for g, r in zip(gf, ref)),
                      "ms_samples": [t * 1e3 for t in s]}
    print(f"\nachieved, median of {args.repeats} interleaved rounds (load {load_start} -> {load_end}); "
          f"attention: batch {args.batch}, dim {args.dim}, heads {args.heads}, fwd+bwd")
    print(f"  {'what':<28}{'GFLOP':>9}{'ms':>10}{'GFLOP/s':>10}{'of peak':>9}{'of in-run matmul':>18}")
    for name, r in rows.items():
        print(f"  {name:<28}{r['gflop']:>9.2f}{r['ms_median']:>10.1f}{r['gflops']:>10.1f}"
              f"{r['fraction_of_peak']:>9.1%}{r['fraction_of_inrun_matmul_paired']:>18.1%}")
    wall_s = round(time.perf_counter() - start, 1)
    print(f"\n(total wall time {wall_s:.0f} s)")
    return write_report(args, dict(load_start=load_start, load_end=load_end, wall_s=wall_s),
                        peak=peak, flop_count_check=check, vit=vit_info, results=rows)


if __name__ == "__main__":
    main()
