"""Benchmark one attention layer (forward + backward, training mode, dropout 0) on CPU.

Self-attention on x of shape (batch, N, dim) for four implementations:

* ``core_fused``    -- ``models.attention.MultiHeadAttention(fused=True)`` (SDPA kernel; the default `auto` uses it beyond short sequences)
* ``core_explicit`` -- the same class with ``fused=False``: softmax(Q K^T / sqrt(d)) V written out
* ``torch_mha``     -- ``torch.nn.MultiheadAttention(batch_first=True)``, called with need_weights=False
* ``timm``          -- ``timm.layers.Attention(qkv_bias=True)`` with ``fused_attn = True``

Usage (from the repository root)::

    python -m bench.bench_attention                                  # full run, a few minutes on 2 cores
    python -m bench.bench_attention --lengths 256 512 --repeats 3    # quick run
    python -m bench.bench_attention --json bench/attention.json      # also write the results as JSON
    python -m bench.bench_attention --help

Time. Every implementation is built once per length and warmed up with untimed rounds (>= 1 s). Then
the implementations run round-robin, one fwd+bwd each per round, with the starting implementation
rotated every round, and the median per implementation is reported. The speed ratio of the fused
core to the best other implementation is printed twice: as a ratio of medians, and as the median over
rounds of the ratio within a round (paired, the one the verdict uses). Interleaving means slow drifts of
a noisy machine (other tenants, clock changes) hit all implementations alike, so the ratios stay fair
even when absolute numbers wander. The number of rounds is ``--repeats`` capped so one length takes
about ``--budget`` seconds (never fewer than 3 rounds): the explicit path at N=4096 costs seconds
per step. Threads: torch's default (one per core) unless ``--threads`` is given.

Memory. CPU torch has no ``max_memory_allocated``, so two numbers are reported:

* ``rss``: peak resident-set increase of one fwd+bwd, measured in a fresh subprocess per
  (implementation, length). The subprocess builds the layer and inputs, runs one tiny fwd+bwd
  (N=16: starts the thread pool, loads kernels), resets the kernel's peak-RSS counter
  (``/proc/self/clear_refs`` <- 5; falls back to ``ru_maxrss``, which may understate), then runs the
  measured fwd+bwd and reports ``VmHWM - VmRSS(before)``. This counts every transient buffer the
  step touches (scores, softmax grads, kernel workspaces), which is what can run a machine out of
  memory. A fresh process matters: in one long-lived process, memory freed by an earlier
  measurement stays in malloc's cache and would be reused without raising RSS.
  Small-N values include a roughly constant allocator overhead (a few MB), so judge growth at large N.
* ``saved``: bytes of the distinct storages that autograd keeps for backward (seen through
  ``torch.autograd.graph.saved_tensors_hooks``), excluding parameters and the input, plus the output.
  Deterministic and shows linear vs quadratic growth cleanly, but misses transients.

Throughput. ``GFLOP/s`` = analytic matmul FLOPs of one fwd+bwd / median time, the same count for every
implementation (bench.common.attention_flops: 24*B*N*D^2 + 12*B*N^2*D, i.e. 3 x the forward's qkv and
output projections and Q K^T and A V products). With ``--peak-gflops`` (from ``python -m bench.bench_peak``)
it is also printed as a fraction of the machine's matmul peak. The load average (``os.getloadavg``) at
the start and end of the timing is printed and stored.

Growth from the smallest to the largest length is printed as MB per 1k tokens and as the exponent of
a least-squares log-log fit (about 1 = linear in N, about 2 = quadratic), over all lengths and over
the two largest only (constant and linear terms pull the all-lengths fit down at small N).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from bench.common import attention_flops, load
from models.attention import MultiHeadAttention

IMPLS: tuple[str, ...] = ("core_fused", "core_explicit", "torch_mha", "timm")
ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
MIN_REPEATS = 3
WARMUP_S = 1.0


@dataclass
class Layer:
    module: nn.Module
    fn: Callable[[Tensor], Tensor]  # x -> output (B, N, dim), hides the call conventions


def build(impl: str, dim: int, heads: int) -> Layer:
    """One attention layer in training mode with dropout 0 (every implementation has qkv and out biases)."""
    if impl in ("core_fused", "core_explicit"):
        # Pin the kernel: fused=None would follow the ZOO_FUSED_ATTN environment variable.
        core = MultiHeadAttention(dim, heads, fused=impl == "core_fused")
        return Layer(core.train(), core)
    if impl == "torch_mha":
        mha = nn.MultiheadAttention(dim, heads, batch_first=True).train()
        return Layer(mha, lambda x: mha(x, x, x, need_weights=False)[0])
    if impl == "timm":
        from timm.layers import Attention  # imported here: it adds seconds to every memory subprocess

        attn = Attention(dim, heads, qkv_bias=True)
        attn.fused_attn = True  # timm decides this from TIMM_FUSED_ATTN at build time; pin it
        return Layer(attn.train(), attn)
    raise ValueError(f"unknown implementation {impl!r}; choose from {IMPLS}")


def make_inputs(batch: int, n: int, dim: int) -> tuple[Tensor, Tensor]:
    """Input that needs a gradient (as inside a network) and a fixed upstream gradient for backward."""
    x = torch.randn(batch, n, dim, requires_grad=True)
    return x, torch.randn(batch, n, dim)


def step(layer: Layer, x: Tensor, grad: Tensor) -> None:
    layer.fn(x).backward(grad)


def timed_step(layer: Layer, x: Tensor, grad: Tensor) -> float:
    """Milliseconds of one fwd+bwd; gradients are cleared outside the timed region."""
    layer.module.zero_grad(set_to_none=True)
    x.grad = None
    start = time.perf_counter()
    step(layer, x, grad)
    return (time.perf_counter() - start) * 1e3


# ---------------------------------------------------------------- progress


class _Lines:
    """Fallback progress when tqdm is missing: one line to stderr per update."""

    def __init__(self, total: int, desc: str) -> None:
        self.total, self.desc, self.n = total, desc, 0

    def update(self, k: int = 1) -> None:
        self.n += k
        print(f"{self.desc}: {self.n}/{self.total}", file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


def progress(total: int, desc: str) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:
        return _Lines(total, desc)
    return tqdm(total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)


# ---------------------------------------------------------------- time


def time_length(n: int, args: argparse.Namespace) -> tuple[dict[str, list[float]], int]:
    """Median-ready samples (ms) per implementation at length n, and the number of rounds run."""
    torch.manual_seed(0)
    layers = {impl: build(impl, args.dim, args.heads) for impl in args.impls}
    x, grad = make_inputs(args.batch, n, args.dim)
    bar = progress(total=1 + args.repeats, desc=f"time N={n}")
    # Warm-up: first calls allocate and pick kernels, and small N needs many calls before times settle,
    # so repeat rounds for WARMUP_S (at least one). The last round's cost sizes the number of rounds.
    warm_start = time.perf_counter()
    while True:
        round_ms = sum(timed_step(layer, x, grad) for layer in layers.values())
        if time.perf_counter() - warm_start >= WARMUP_S:
            break
    repeats = min(args.repeats, max(MIN_REPEATS, int(args.budget * 1e3 / round_ms)))
    bar.total = 1 + repeats
    bar.update()
    samples: dict[str, list[float]] = {impl: [] for impl in layers}
    order = list(layers)
    for r in range(repeats):
        # Rotate the start so no implementation always runs right after the same neighbour.
        for impl in order[r % len(order):] + order[: r % len(order)]:
            samples[impl].append(timed_step(layers[impl], x, grad))
        bar.update()
    bar.close()
    return samples, repeats


# ---------------------------------------------------------------- memory (runs in a subprocess)


def _proc_status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        match = re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.MULTILINE)
    if match is None:
        raise OSError(f"{key} not in /proc/self/status")
    return int(match.group(1))


def peak_rss_increase_mib(fn: Callable[[], None]) -> tuple[float, str]:
    """Peak RSS increase while fn runs, and the method used."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux: reset VmHWM (peak RSS) to the current RSS

        def read() -> int:
            return _proc_status_kib("VmHWM")

        method = "VmHWM after clear_refs"
    except OSError:
        # ru_maxrss cannot be reset: if an earlier peak was higher, the increase is understated.

        def read() -> int:
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux

        method = "ru_maxrss"
    before = read()
    fn()
    return (read() - before) / 1024, method


def saved_mib(layer: Layer, x: Tensor, grad: Tensor) -> float:
    """Distinct storages saved for backward (not parameters, not the input) plus the output."""
    existing = {p.untyped_storage().data_ptr() for p in layer.module.parameters()}
    existing.add(x.untyped_storage().data_ptr())
    saved: dict[int, int] = {}  # storage address -> bytes; views of one buffer count once

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in existing:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = layer.fn(x)
    saved.setdefault(out.untyped_storage().data_ptr(), out.untyped_storage().nbytes())
    out.backward(grad)
    return sum(saved.values()) / MIB


def memory_worker(impl: str, n: int, args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    layer = build(impl, args.dim, args.heads)
    step(layer, *make_inputs(args.batch, 16, args.dim))  # one-time costs: thread pool, kernel setup
    x, grad = make_inputs(args.batch, n, args.dim)
    rss, method = peak_rss_increase_mib(lambda: step(layer, x, grad))
    x.grad = None
    return {"rss_mb": rss, "saved_mb": saved_mib(layer, x, grad), "rss_method": method}


def measure_memory(impl: str, n: int, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.bench_attention", "--worker", impl, str(n),
           "--dim", str(args.dim), "--heads", str(args.heads), "--batch", str(args.batch)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"memory run {impl} N={n} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def memory_all(args: argparse.Namespace) -> dict[tuple[str, int], dict[str, Any]]:
    """All (implementation, length) memory runs; a few in parallel (RSS is per process, so they don't mix)."""
    tasks = [(impl, n) for n in args.lengths for impl in args.impls]
    bar = progress(total=len(tasks), desc="memory")
    results: dict[tuple[str, int], dict[str, Any]] = {}

    def run(task: tuple[str, int]) -> None:
        results[task] = measure_memory(*task, args)
        bar.update()

    with ThreadPoolExecutor(max_workers=args.mem_jobs) as pool:
        list(pool.map(run, tasks))
    bar.close()
    return results


# ---------------------------------------------------------------- report


def loglog_exponent(ns: list[int], values: list[float]) -> float | None:
    """Least-squares slope of log(value) against log(N): ~1 linear, ~2 quadratic."""
    pairs = [(math.log(n), math.log(v)) for n, v in zip(ns, values) if v > 0]
    if len(pairs) < 2:
        return None
    mx = statistics.fmean(p[0] for p in pairs)
    my = statistics.fmean(p[1] for p in pairs)
    return sum((a - mx) * (b - my) for a, b in pairs) / sum((a - mx) ** 2 for a, _ in pairs)


def _fmt(v: float | None, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def summarize(args: argparse.Namespace, times: dict[int, tuple[dict[str, list[float]], int]],
              memory: dict[tuple[str, int], dict[str, Any]]) -> dict[str, Any]:
    rows = []
    for n in args.lengths:
        samples, repeats = times[n]
        flops = attention_flops(args.batch, n, args.dim)
        impls = {impl: {"ms_median": statistics.median(s), "gflops": flops / statistics.median(s) / 1e6,
                        "ms_samples": s} for impl, s in samples.items()}
        for impl in impls:
            if (impl, n) in memory:
                impls[impl].update({k: memory[impl, n][k] for k in ("rss_mb", "saved_mb")})
        row: dict[str, Any] = {"n": n, "repeats": repeats, "gflop": flops / 1e9, "impls": impls}
        if args.peak_gflops:
            for r in impls.values():
                r["fraction_of_peak"] = r["gflops"] / args.peak_gflops
        others = {k: v["ms_median"] for k, v in impls.items() if k != "core_fused"}
        if "core_fused" in impls and others:
            row["best_other"] = min(others, key=others.get)
            row["time_ratio_vs_best_other"] = impls["core_fused"]["ms_median"] / others[row["best_other"]]
            # Paired: compare with the same (best-by-median) implementation within each round, then take
            # the median over rounds; a burst of load from other processes then hits both sides of a
            # ratio instead of skewing one median. (A per-round min over the others would be biased low.)
            best = samples[row["best_other"]]
            row["time_ratio_paired"] = statistics.median(f / b for f, b in zip(samples["core_fused"], best))
        if memory and {"core_fused", "core_explicit"} <= impls.keys():
            fused, explicit = impls["core_fused"], impls["core_explicit"]
            row["mem_ratio_vs_explicit"] = {
                k: fused[k] / explicit[k] if explicit[k] > 0 else None for k in ("rss_mb", "saved_mb")}
        rows.append(row)

    growth: dict[str, dict[str, float | None]] = {}
    if memory and len(args.lengths) > 1:
        ns, span = args.lengths, (args.lengths[-1] - args.lengths[0]) / 1000
        for impl in args.impls:
            growth[impl] = {}
            for key in ("rss_mb", "saved_mb"):
                vals = [memory[impl, n][key] for n in ns]
                growth[impl][f"{key}_per_1k_tokens"] = (vals[-1] - vals[0]) / span
                growth[impl][f"{key}_exponent"] = loglog_exponent(ns, vals)
                # The two largest lengths alone: closest to the asymptotic growth, as constant and
                # linear terms (projections, allocator overhead) blur the fit at small N.
                growth[impl][f"{key}_exponent_top2"] = loglog_exponent(ns[-2:], vals[-2:])

    config = {k: getattr(args, k) for k in ("dim", "heads", "batch", "lengths", "impls", "budget", "tolerance",
                                             "peak_gflops")}
    config.update(max_repeats=args.repeats, threads=torch.get_num_threads(), torch=torch.__version__,
                  cpu=platform.processor() or platform.machine(),
                  cpu_capability=torch.backends.cpu.get_cpu_capability(),
                  rss_method=next(iter(memory.values()))["rss_method"] if memory else None)
    try:
        import timm

        config["timm"] = timm.__version__
    except ImportError:
        pass
    return {"config": config, "results": rows, "growth": growth}


def print_report(report: dict[str, Any], tolerance: float) -> None:
    cfg = report["config"]
    print(f"\nAttention fwd+bwd, CPU, {cfg['threads']} threads, load {cfg.get('load_start')} -> {cfg.get('load_end')}, torch {cfg['torch']}, timm {cfg.get('timm')}, "
          f"batch {cfg['batch']}, dim {cfg['dim']}, heads {cfg['heads']}")
    for row in report["results"]:
        print(f"\nN={row['n']}  (median of {row['repeats']} interleaved rounds, {row['gflop']:.2f} GFLOP per fwd+bwd)")
        print(f"  {'implementation':<15}{'ms':>10}{'GFLOP/s':>10}{'of peak':>9}{'rss MB':>10}{'saved MB':>10}")
        for impl, r in row["impls"].items():
            frac = r.get("fraction_of_peak")
            print(f"  {impl:<15}{r['ms_median']:>10.1f}{r['gflops']:>10.1f}{'n/a' if frac is None else format(frac, '.1%'):>9}"
                  f"{_fmt(r.get('rss_mb'), '.1f'):>10}{_fmt(r.get('saved_mb'), '.1f'):>10}")
        if "time_ratio_vs_best_other" in row:
            print(f"  time core_fused / best other ({row['best_other']}): {row['time_ratio_vs_best_other']:.2f}"
                  f"  (per-round paired median: {row['time_ratio_paired']:.2f})")
        if "mem_ratio_vs_explicit" in row:
            m = row["mem_ratio_vs_explicit"]
            print(f"  memory core_fused / core_explicit: rss {_fmt(m['rss_mb'], '.3f')}, "
                  f"saved {_fmt(m['saved_mb'], '.3f')}")

    if report["growth"]:
        lo, hi = cfg["lengths"][0], cfg["lengths"][-1]
        print(f"\nMemory growth N={lo} -> {hi}: MB per 1k tokens; exponent of a log-log fit over all lengths "
              f"and over the two largest (~1 linear, ~2 quadratic)")
        print(f"  {'implementation':<15}{'rss MB/1k':>11}{'exp all':>9}{'exp top2':>10}"
              f"{'saved MB/1k':>13}{'exp all':>9}{'exp top2':>10}")
        for impl, g in report["growth"].items():
            print(f"  {impl:<15}{g['rss_mb_per_1k_tokens']:>11.1f}{_fmt(g['rss_mb_exponent'], '.2f'):>9}"
                  f"{_fmt(g['rss_mb_exponent_top2'], '.2f'):>10}{g['saved_mb_per_1k_tokens']:>13.2f}"
                  f"{_fmt(g['saved_mb_exponent'], '.2f'):>9}{_fmt(g['saved_mb_exponent_top2'], '.2f'):>10}")

    ratios = [(row["time_ratio_paired"], row["n"]) for row in report["results"] if "time_ratio_paired" in row]
    if ratios:
        worst, at = max(ratios)
        verdict = "not slower" if worst <= 1 + tolerance else "SLOWER"
        print(f"\ncore_fused vs best other: worst per-round paired ratio {worst:.2f} at N={at} -> {verdict} "
              f"(<= {1 + tolerance:.2f} counts as a tie within noise)")


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.bench_attention",
                                description="Time and memory of one attention layer (fwd+bwd) on CPU.")
    p.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096],
                   help="sequence lengths N (default: %(default)s)")
    p.add_argument("--dim", type=int, default=256, help="model width (default: %(default)s)")
    p.add_argument("--heads", type=int, default=4, help="attention heads (default: %(default)s)")
    p.add_argument("--batch", type=int, default=1, help="batch size (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's choice, one per core); 1 is steadier "
                        "on a machine shared with other jobs")
    p.add_argument("--repeats", type=int, default=25,
                   help="most timed rounds per length (default: %(default)s); fewer at large N, see --budget")
    p.add_argument("--budget", type=float, default=40.0,
                   help="seconds of timed rounds per length; caps --repeats, at least 3 rounds (default: %(default)s)")
    p.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS),
                   help="implementations to compare (default: all)")
    p.add_argument("--tolerance", type=float, default=0.10,
                   help="paired time ratio up to 1 + this counts as 'not slower' (default: %(default)s); "
                        "shared 2-core machines swing 2x between identical runs")
    p.add_argument("--peak-gflops", type=float, default=None,
                   help="matmul peak of this machine (python -m bench.bench_peak) to print GFLOP/s as a fraction of")
    p.add_argument("--skip-memory", action="store_true", help="time only, no memory subprocesses")
    p.add_argument("--mem-jobs", type=int, default=2, help="memory subprocesses run at once (default: %(default)s)")
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    p.add_argument("--worker", nargs=2, metavar=("IMPL", "N"), help=argparse.SUPPRESS)  # internal: one memory run
    args = p.parse_args(argv)
    args.lengths = sorted(set(args.lengths))
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(memory_worker(args.worker[0], int(args.worker[1]), args)))
        return
    start = time.perf_counter()
    # Time first, alone: the memory subprocesses would compete for the two cores.
    load_start = load()
    times = {n: time_length(n, args) for n in args.lengths}
    load_end = load()
    memory = {} if args.skip_memory else memory_all(args)
    report = summarize(args, times, memory)
    report["config"].update(load_start=load_start, load_end=load_end)
    report["config"]["wall_s"] = round(time.perf_counter() - start, 1)
    print_report(report, args.tolerance)
    print(f"\n(total wall time {report['config']['wall_s']:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
