"""Benchmark translation decoding on CPU: key/value cache vs recomputing the prefix, beam vs greedy.

    python -m bench.bench_decode                       # default translator size, random weights
    python -m bench.bench_decode --ckpt outputs/train/runs/<time>   # a trained translator
    python -m bench.bench_decode --json bench/results_decode.json

Greedy decoding of exactly --tokens tokens (EOS suppressed until then, so both paths do the same
work) for a batch of --batch sources of --src-len tokens:

* ``cached``:   one new token per step through the decoder; self-attention keys/values appended to
  a cache, cross-attention keys/values projected once per sentence.
* ``uncached``: the whole prefix re-run through the decoder at every step (encoder run once).

Both must produce identical tokens (checked). Then batched beam search (beam 4, cached) against
greedy (cached) on the same batch: time per sentence. The variants run round-robin for --rounds
rounds and the paired (same-round) ratio's median is reported, so a noisy machine hits all alike.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Callable

import torch

from models.translator import Translator


def timed(fn: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def build(args: argparse.Namespace) -> Translator:
    if args.ckpt:
        from inference.load import load_trained

        return load_trained(args.ckpt).net.eval()
    torch.manual_seed(0)
    return Translator(args.vocab, dim=args.dim, encoder_depth=args.depth, decoder_depth=args.depth,
                      num_heads=args.heads, mlp_ratio=2.0, max_len=256).eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default=None, help="trained translator checkpoint or run dir (default: random weights)")
    p.add_argument("--vocab", type=int, default=1000)
    p.add_argument("--dim", type=int, default=192)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--tokens", type=int, default=64, help="tokens generated per sentence")
    p.add_argument("--src-len", type=int, default=20)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = build(args)
    V = model.vocab_size
    results = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
               "tokens": args.tokens, "src_len": args.src_len, "beam": args.beam, "batches": {}}
    print(f"decoder {len(model.decoder)} layers, dim {model.dim}, vocab {V}; {args.tokens} tokens per sentence; "
          f"{torch.get_num_threads()} threads")
    for batch in args.batch:
        g = torch.Generator().manual_seed(batch)
        src = torch.randint(4, V, (batch, args.src_len), generator=g)
        n = args.tokens
        variants = {
            "cached": lambda: model.greedy(src, n, use_cache=True, min_new_tokens=n),
            "uncached": lambda: model.greedy(src, n, use_cache=False, min_new_tokens=n),
            f"beam{args.beam}": lambda: model.beam_search(src, args.beam, n, use_cache=True, min_new_tokens=n),
        }
        for fn in variants.values():  # warm-up (thread pool, allocator)
            fn()
        times: dict[str, list[float]] = {k: [] for k in variants}
        names = list(variants)
        for r in range(args.rounds):
            outs = {}
            for name in names[r % len(names):] + names[: r % len(names)]:  # rotate the order each round
                t, outs[name] = timed(variants[name])
                times[name].append(t)
            if not torch.equal(outs["cached"], outs["uncached"]):
                raise SystemExit("cached and uncached greedy decoding produced different tokens")
        speedup = statistics.median(u / c for u, c in zip(times["uncached"], times["cached"]))
        beam_ratio = statistics.median(b / c for b, c in zip(times[f"beam{args.beam}"], times["cached"]))
        med = {k: statistics.median(v) for k, v in times.items()}
        results["batches"][batch] = {"median_s": med, "cache_speedup": speedup, "beam_over_greedy": beam_ratio,
                                     "ms_per_sentence": {k: 1000 * v / batch for k, v in med.items()}}
        print(f"batch {batch:3d}: cached {1000 * med['cached'] / batch:8.1f} ms/sentence, uncached "
              f"{1000 * med['uncached'] / batch:8.1f}, beam{args.beam} {1000 * med[f'beam{args.beam}'] / batch:8.1f}"
              f" | cache speed-up {speedup:.2f}x (paired median), beam/greedy time {beam_ratio:.2f}x; "
              f"tokens identical: yes")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
