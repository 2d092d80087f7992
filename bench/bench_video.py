"""Divided vs joint space-time attention: one block, forward + backward, time and memory side by side.

Tokens x of shape (batch, T, N, dim), by default 8 frames x 14 x 14 patches (TimeSformer's ViT-B/16 grid
at 224 px) at ViT-Tiny width (dim 192, 3 heads):

* ``divided`` -- models.spacetime.DividedSpaceTimeBlock: attention over the T frames at each position,
  then over the N patches of each frame (T*N*(T+N) scores per head)
* ``joint``   -- models.spacetime.JointSpaceTimeBlock: one attention over all T*N tokens ((T*N)^2 scores)

Both blocks include their LayerNorms and MLP, as in the model; divided has one attention more (two
qkv / output projections), so the ratio is that of whole blocks, not of attention kernels alone.
Each runs on the fused kernel (SDPA, the default) and on the explicit softmax(QK^T)V path
(``--kernels``), which materialises the score matrices and shows the quadratic memory of joint attention.

Usage (from the repository root)::

    python -m bench.bench_video                       # defaults below, about 2 minutes on 1 thread
    python -m bench.bench_video --scope attention     # the attention sub-layers alone
    python -m bench.bench_video --frames 8 --grid 14 --dim 192 --heads 3 --json bench/results_video.json

Time: the blocks run round-robin (start rotated each round) after a warm-up, and the median per-round
ratio joint / divided is reported (paired, so load from other processes hits both sides).
Memory: peak RSS increase of one fwd+bwd in a fresh subprocess per (block, kernel), reset through
``/proc/self/clear_refs`` (bench.bench_attention.peak_rss_increase_mib), and the bytes autograd saves
for backward. Threads: 1 by default (steady on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bench.bench_attention import MIB, ROOT, peak_rss_increase_mib
from models.attention import fused_attn
from models.spacetime import DividedSpaceTimeBlock, JointSpaceTimeBlock

BLOCKS = {"divided": DividedSpaceTimeBlock, "joint": JointSpaceTimeBlock}
KERNELS = ("fused", "explicit")
SCOPES = ("block", "attention")


class AttentionOnly(nn.Module):
    """Only the attention sub-layers of a block (no norms, MLP or residuals): where the two designs differ."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: Tensor) -> Tensor:
        b = self.block
        B, T, N, D = x.shape
        if isinstance(b, DividedSpaceTimeBlock):
            h = b.attn_time(x.transpose(1, 2).reshape(B * N, T, D)).reshape(B, N, T, D).transpose(1, 2)
            return b.attn_space(h.reshape(B * T, N, D)).reshape(B, T, N, D)
        return b.attn(x.reshape(B, T * N, D)).reshape(B, T, N, D)


def build(block: str, args: argparse.Namespace) -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(0)
    module = BLOCKS[block](args.dim, args.heads, mlp_ratio=4.0).train()
    if args.scope == "attention":
        module = AttentionOnly(module)
    x = torch.randn(args.batch, args.frames, args.grid * args.grid, args.dim, requires_grad=True)
    return module, x, torch.randn_like(x)


def step(module: nn.Module, x: Tensor, grad: Tensor, kernel: str) -> None:
    with fused_attn(kernel == "fused"):
        module(x).backward(grad)


def timed(module: nn.Module, x: Tensor, grad: Tensor, kernel: str) -> float:
    module.zero_grad(set_to_none=True)
    x.grad = None
    start = time.perf_counter()
    step(module, x, grad, kernel)
    return (time.perf_counter() - start) * 1e3


def saved_mib(module: nn.Module, x: Tensor, grad: Tensor, kernel: str) -> float:
    """Distinct storages autograd keeps for backward (not parameters, not the input), plus the output."""
    skip = {p.untyped_storage().data_ptr() for p in module.parameters()} | {x.untyped_storage().data_ptr()}
    saved: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        if t.untyped_storage().data_ptr() not in skip:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with fused_attn(kernel == "fused"), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = module(x)
    saved.setdefault(out.untyped_storage().data_ptr(), out.untyped_storage().nbytes())
    out.backward(grad)
    return sum(saved.values()) / MIB


def memory_worker(block: str, kernel: str, args: argparse.Namespace) -> dict[str, Any]:
    module, x, grad = build(block, args)
    small = torch.randn(args.batch, 2, 4, args.dim, requires_grad=True)
    step(module, small, torch.randn_like(small), kernel)  # one-time costs: thread pool, kernel setup
    rss, method = peak_rss_increase_mib(lambda: step(module, x, grad, kernel))
    x.grad = None
    return {"rss_mb": rss, "saved_mb": saved_mib(module, x, grad, kernel), "rss_method": method}


def measure_memory(block: str, kernel: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.bench_video", "--worker", block, kernel, "--frames", str(args.frames),
           "--grid", str(args.grid), "--dim", str(args.dim), "--heads", str(args.heads),
           "--batch", str(args.batch), "--threads", str(args.threads), "--scope", args.scope]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"memory run {block}/{kernel} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def time_kernel(kernel: str, args: argparse.Namespace) -> dict[str, list[float]]:
    runs = {b: build(b, args) for b in BLOCKS}
    for _ in range(2):  # warm-up: first calls allocate and pick kernels
        for b, (m, x, g) in runs.items():
            timed(m, x, g, kernel)
    samples: dict[str, list[float]] = {b: [] for b in BLOCKS}
    order = list(BLOCKS)
    for r in range(args.repeats):
        for b in order[r % 2:] + order[: r % 2]:
            samples[b].append(timed(*runs[b], kernel))
    return samples


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.bench_video",
                                description="Divided vs joint space-time block, fwd+bwd time and memory on CPU.")
    p.add_argument("--frames", type=int, default=8, help="frames T (default: %(default)s)")
    p.add_argument("--grid", type=int, default=14, help="patches per side, N = grid^2 (default: %(default)s)")
    p.add_argument("--dim", type=int, default=192, help="model width (default: %(default)s)")
    p.add_argument("--heads", type=int, default=3, help="attention heads (default: %(default)s)")
    p.add_argument("--batch", type=int, default=1, help="clips per batch (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=7, help="timed rounds per kernel (default: %(default)s)")
    p.add_argument("--kernels", nargs="+", choices=KERNELS, default=list(KERNELS))
    p.add_argument("--scope", choices=SCOPES, default="block",
                   help="whole blocks (norms, MLP, residuals included) or their attention sub-layers only "
                        "(default: %(default)s)")
    p.add_argument("--skip-memory", action="store_true", help="time only, no memory subprocesses")
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    p.add_argument("--worker", nargs=2, metavar=("BLOCK", "KERNEL"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(memory_worker(*args.worker, args)))
        return
    start = time.perf_counter()
    T, N = args.frames, args.grid * args.grid
    print(f"Space-time {args.scope} fwd+bwd: batch {args.batch}, {T} frames x {args.grid}x{args.grid} patches "
          f"({T * N} tokens), dim {args.dim}, heads {args.heads}, {args.threads} thread(s), torch {torch.__version__}")
    print(f"scores per head: joint {(T * N) ** 2:,}, divided {T * N * (T + N):,} "
          f"(ratio {(T * N) ** 2 / (T * N * (T + N)):.1f})")
    rows: dict[str, Any] = {}
    for kernel in args.kernels:
        samples = time_kernel(kernel, args)
        row: dict[str, Any] = {b: {"ms_median": statistics.median(s), "ms_samples": s} for b, s in samples.items()}
        row["time_ratio_joint_over_divided"] = statistics.median(j / d for j, d in zip(samples["joint"],
                                                                                         samples["divided"]))
        if not args.skip_memory:
            for b in BLOCKS:
                row[b].update(measure_memory(b, kernel, args))
            for key in ("rss_mb", "saved_mb"):
                row[f"{key}_ratio_joint_over_divided"] = row["joint"][key] / max(row["divided"][key], 1e-9)
        rows[kernel] = row

    print(f"\n{'kernel':<10}{'block':<9}{'ms':>9}{'rss MB':>9}{'saved MB':>10}")
    for kernel, row in rows.items():
        for b in BLOCKS:
            r = row[b]
            print(f"{kernel:<10}{b:<9}{r['ms_median']:>9.1f}{r.get('rss_mb', float('nan')):>9.1f}"
                  f"{r.get('saved_mb', float('nan')):>10.1f}")
    print("\njoint / divided (time: median of per-round paired ratios)")
    for kernel, row in rows.items():
        mem = "" if args.skip_memory else (f", peak rss {row['rss_mb_ratio_joint_over_divided']:.2f}x"
                                            f", saved for backward {row['saved_mb_ratio_joint_over_divided']:.2f}x")
        print(f"  {kernel:<9} time {row['time_ratio_joint_over_divided']:.2f}x{mem}")
    wall = time.perf_counter() - start
    print(f"\n(total wall time {wall:.0f} s)")
    if args.json:
        config = {k: getattr(args, k) for k in ("frames", "grid", "dim", "heads", "batch", "threads", "repeats",
                                                 "scope")}
        config.update(torch=torch.__version__, wall_s=round(wall, 1))
        args.json.write_text(json.dumps({"config": config, "results": rows}, indent=2) + "\n")
        print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
