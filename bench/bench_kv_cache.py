"""Benchmark a decoder self-attention KV cache on CPU: growing by torch.cat vs preallocated, in place.

    python -m bench.bench_kv_cache                       # 512 steps, batch 8, dim 256, 8 heads, 2 KV heads
    python -m bench.bench_kv_cache --json bench/results_kv_cache.json

One MultiHeadAttention layer decodes --steps positions one at a time (causal, fused kernel), with
`KVCache()` (every step concatenates the cache with the new keys/values: a copy of the whole cache) and
with `KVCache(capacity=steps)` (buffers allocated on the first step, each step writes its keys in
place). The two must give the same outputs bit for bit (checked). They run round-robin, and the
median of the paired (same-round) ratio growing / preallocated is reported, for the whole decode and
for its last --tail steps (where the growing cache copies the most).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from bench.common import paired_ratio, parse_bench_args, round_robin, write_report
from models.attention import KVCache, MultiHeadAttention


def decode(layer: MultiHeadAttention, x: torch.Tensor, capacity: int | None, tail: int,
           times: list[float] | None = None) -> torch.Tensor:
    """Outputs (B, steps, dim); appends the seconds of the last `tail` steps to `times`."""
    cache, outs = KVCache(capacity=capacity), []
    steps = x.shape[1]
    with torch.inference_mode():
        for t in range(steps):
            if t == steps - tail:
                start = time.perf_counter()
            outs.append(layer(x[:, t:t + 1], causal=True, cache=cache))
    if times is not None:
        times.append(time.perf_counter() - start)
    return torch.cat(outs, 1)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=512)
    p.add_argument("--tail", type=int, default=64, help="the last steps timed on their own")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    args = parse_bench_args(p, argv)
    tail = min(args.tail, args.steps)
    torch.manual_seed(0)
    layer = MultiHeadAttention(args.dim, args.heads, num_kv_heads=args.kv_heads, fused=True).eval()
    x = torch.randn(args.batch, args.steps, args.dim)
    identical = torch.equal(decode(layer, x, None, tail), decode(layer, x, args.steps, tail))
    tails: dict[str, list[float]] = {"growing": [], "preallocated": []}
    fns = {"growing": lambda: decode(layer, x, None, tail, tails["growing"]),
           "preallocated": lambda: decode(layer, x, args.steps, tail, tails["preallocated"])}
    samples = round_robin(fns, args.repeats, warmup_s=0.0)
    timed = {name: t[-args.repeats:] for name, t in tails.items()}  # the warm-up rounds are not timed
    results = {
        "identical_outputs": identical,
        "ms_per_step": {name: 1e3 * statistics.median(s) / args.steps for name, s in samples.items()},
        "tail_ms_per_step": {name: 1e3 * statistics.median(s) / tail for name, s in timed.items()},
        "growing_over_preallocated": paired_ratio(samples["growing"], samples["preallocated"]),
        "tail_growing_over_preallocated": paired_ratio(timed["growing"], timed["preallocated"]),
    }
    print(results)
    return write_report(args, None, **results)


if __name__ == "__main__":
    main()
