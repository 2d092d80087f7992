"""Sliding-window attention vs dense: one layer forward + backward from 1K to 128K tokens, and decoding.

Layers (width 256, 4 heads, fp32, batch 1): ``dense_fused`` (SDPA), ``dense_explicit`` (the formula, only up
to ``--explicit-max`` tokens: its N x N scores need 16 GB at 32K), ``win256`` and ``win1024``
(``MultiHeadAttention(window=W)``, blocked). Dense beyond ``--dense-max`` is not run: its time is
extrapolated from the exponent fitted to the two largest measured lengths (printed as such).

Time: at each length the layers run round-robin (bench.common.round_robin), so load hits all alike; the
figure is the median, and ``dense / win`` ratios are medians of per-round ratios. Memory: peak RSS increase
of one fwd+bwd in a fresh subprocess per (layer, length) (bench.bench_attention.peak_rss_increase_mib).

Decoding (``--decode``): a 2-layer decoder (Translator, width 256) generates ``--decode-tokens`` tokens one
at a time with a full key/value cache and with a rolling cache (window 256); tokens/s per segment of
512 positions shows whether the cost per token stays flat.

    python -m bench.bench_window                            # the README figures (about 25 minutes)
    python -m bench.bench_window --lengths 1024 4096 --no-decode --repeats 2   # quick look
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench.bench_attention import loglog_exponent, peak_rss_increase_mib
from bench.common import paired_ratio, parse_bench_args, round_robin, write_report
from models.attention import KVCache, MultiHeadAttention

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"dense_fused": (None, True), "dense_explicit": (None, False), "win256": (256, None), "win1024": (1024, None)}


def build(name: str, dim: int, heads: int) -> MultiHeadAttention:
    window, fused = LAYERS[name]
    return MultiHeadAttention(dim, heads, window=window, fused=fused)


def step(layer: MultiHeadAttention, x: torch.Tensor, grad: torch.Tensor) -> None:
    layer(x).backward(grad)
    x.grad = None


def runs(name: str, n: int, args: argparse.Namespace) -> bool:
    if name == "dense_explicit":
        return n <= args.explicit_max
    return n <= args.dense_max or not name.startswith("dense")


def memory_worker(name: str, n: int, args: argparse.Namespace) -> dict[str, float]:
    torch.manual_seed(0)
    layer = build(name, args.dim, args.heads)
    step(layer, torch.randn(1, 64, args.dim, requires_grad=True), torch.randn(1, 64, args.dim))  # one-time costs
    x, grad = torch.randn(1, n, args.dim, requires_grad=True), torch.randn(1, n, args.dim)
    start = time.perf_counter()
    rss, _ = peak_rss_increase_mib(lambda: step(layer, x, grad))
    return {"rss_mb": rss, "seconds": time.perf_counter() - start}


def measure_memory(name: str, n: int, args: argparse.Namespace) -> dict[str, float]:
    cmd = [sys.executable, "-m", "bench.bench_window", "--worker", name, str(n), "--threads", str(args.threads),
           "--dim", str(args.dim), "--heads", str(args.heads)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"memory run {name} N={n} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def layer_table(args: argparse.Namespace) -> list[dict]:
    rows = []
    for n in args.lengths:
        names = [name for name in LAYERS if runs(name, n, args)]
        torch.manual_seed(0)
        x, grad = torch.randn(1, n, args.dim, requires_grad=True), torch.randn(1, n, args.dim)
        fns = {name: (lambda layer=build(name, args.dim, args.heads): step(layer, x, grad)) for name in names}
        samples = round_robin(fns, args.repeats, warmup_s=0.0, budget_s=args.budget, min_repeats=1)
        row = {"n": n, "seconds": {k: statistics.median(v) for k, v in samples.items()},
               "rounds": len(next(iter(samples.values())))}
        row["dense_over"] = {w: paired_ratio(samples["dense_fused"], samples[w])
                             for w in ("win256", "win1024") if "dense_fused" in samples}
        row["memory"] = {name: measure_memory(name, n, args) for name in names}
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("n", "seconds", "dense_over")}), flush=True)
    return rows


def extrapolate(rows: list[dict], name: str, n: int) -> float | None:
    """Seconds at n from the log-log slope of the two largest lengths where `name` ran."""
    have = [(r["n"], r["seconds"][name]) for r in rows if name in r["seconds"]][-2:]
    if len(have) < 2:
        return None
    slope = loglog_exponent([a for a, _ in have], [b for _, b in have])
    return have[-1][1] * (n / have[-1][0]) ** slope


def decode_rates(window: int | None, args: argparse.Namespace) -> list[float]:
    """Tokens/s of each segment of 512 generated positions (batch 1, greedy step = one decode call)."""
    from models.translator import Translator

    torch.manual_seed(0)
    net = Translator(vocab_size=1000, dim=args.dim, encoder_depth=1, decoder_depth=2, num_heads=args.heads,
                     max_len=args.decode_tokens + 1, attn_window=window).eval()
    src = torch.randint(4, 1000, (1, 32))
    rates, token = [], torch.full((1, 1), 1)
    with torch.no_grad():
        memory, pad = net.encode(src)
        caches = net.new_caches()
        start = time.perf_counter()
        for t in range(1, args.decode_tokens + 1):
            token = net.decode(token, memory, pad, caches)[:, -1].argmax(-1, keepdim=True)
            if t % 512 == 0:
                rates.append(512 / (time.perf_counter() - start))
                start = time.perf_counter()
    held = caches[0][0].length
    print(f"decode window={window}: held {held} keys at the end; tokens/s per 512: {[round(r) for r in rates]}")
    return rates


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384, 65536, 131072])
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5, help="rounds per length (fewer when over --budget)")
    p.add_argument("--budget", type=float, default=20.0, help="seconds of timed rounds per length")
    p.add_argument("--dense-max", type=int, default=65536, help="longest length dense layers run at")
    p.add_argument("--explicit-max", type=int, default=8192, help="longest length the explicit dense layer runs at")
    p.add_argument("--decode-tokens", type=int, default=4096)
    p.add_argument("--no-decode", action="store_true")
    p.add_argument("--worker", nargs=2, metavar=("LAYER", "N"), help=argparse.SUPPRESS)
    args = parse_bench_args(p, argv)
    if args.worker:
        print(json.dumps(memory_worker(args.worker[0], int(args.worker[1]), args)))
        return {}
    rows = layer_table(args)
    longest = args.lengths[-1]
    guess = extrapolate(rows, "dense_fused", longest) if longest > args.dense_max else None
    print(f"\n{'N':>7} | " + " | ".join(f"{k:>22}" for k in LAYERS) + " | dense/win256 | dense/win1024")
    for r in rows:
        cells = [f"{r['seconds'][k]:8.3f} s {r['memory'][k]['rss_mb']:8.0f} MB" if k in r["seconds"] else f"{'-':>22}"
                 for k in LAYERS]
        ratios = [f"{r['dense_over'].get(w, float('nan')):12.1f}" for w in ("win256", "win1024")]
        print(f"{r['n']:>7} | " + " | ".join(cells) + " | " + " | ".join(ratios))
    for name in LAYERS:
        ns = [r["n"] for r in rows if name in r["seconds"]]
        if len(ns) > 1:
            slope = loglog_exponent(ns, [r["seconds"][name] for r in rows if name in r["seconds"]])
            print(f"{name}: time exponent {slope:.2f} over N = {ns[0]}..{ns[-1]}")
    if guess is not None:
        print(f"dense_fused at N={longest}: not run; extrapolated {guess:.1f} s from the two largest measured lengths")
    decode = {}
    if not args.no_decode:
        decode = {"full": decode_rates(None, args), "rolling256": decode_rates(256, args)}
    return write_report(args, rows=rows, dense_extrapolated_s=guess, decode_tokens_per_s=decode)


if __name__ == "__main__":
    main()
