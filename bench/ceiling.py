"""How much faster than its reference could the zoo be? The speed goals of issues 26-28 against the time both
sides spend in the same weight products.

    python -m bench.ceiling --threads 1 --json bench/results_ceiling.json [--cases opus_b1 esm_maps_256_b1 ...]
    python -m bench.ceiling --nanogpt <checkout of karpathy/nanoGPT> --cases nanogpt_step --threads 2

Each case is a speed goal "the zoo at least G x its reference" (same weights, float32, this CPU). Both sides run
the same weight products: every linear layer (aten::mm / aten::addmm; the output layer over the vocabulary
included) and convolution (aten::mkldnn_convolution), with the same shapes and weights through the same BLAS.
Whatever else the zoo does better, its time cannot fall below the time of those products, so

    ref time / zoo time  <=  ceiling = ref time / product time

where the product time is the smaller of the two sides' (wall time x the share of one profiled call's wall time
spent in those ops; the profiler's own cost only lengthens that call, so the share is if anything too small and
the ceiling too high: a goal above it is out of reach for any implementation of the same float32 products). The
attention kernels (flash, bmm) are not counted: which kernel runs is the zoo's choice.

A second, tighter bound adds the attention's own products. Exact attention multiplies Q K^T and the weights by V:
4 x batch x heads x queries x keys x head_dim FLOPs a call (bmm's FLOPs as the profiler counts them, SDPA's from
its input shapes), whichever kernel runs. Done at the fastest rate a weight product reached in the same profile
(FLOPs of one aten::mm / addmm shape over its time: the BLAS at its best on this CPU), they take at least
attention FLOPs / that rate, so

    ceiling_with_attention = ref time / (product time + attention FLOPs / product FLOP rate)

(the smaller attention count of the two sides, the higher rate: the bound errs upward). It assumes no kernel does
those products faster than the BLAS does the weights' at its fastest (true of the CPU kernels here: flash ran at
0.75x that rate over Whisper's 1,500 positions) and no algorithm skips them (exact attention, no pruning).

Timing: bench.common.round_robin (interleaved rounds, start rotated), medians, the median of per-round ratios;
the profile is one more call of each side after the timed rounds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from bench.common import load, paired_ratio, parse_bench_args, round_robin, write_report

# The weight products (forward and backward of linear layers, convolutions): the work both sides must do.
PRODUCT_OPS = ("aten::mm", "aten::addmm", "aten::_addmm_activation", "aten::mkldnn_convolution")


# Ops whose FLOPs the profiler counts and that set the BLAS rate; the explicit attention's products; SDPA.
RATE_OPS = ("aten::mm", "aten::addmm")
ATTENTION_PRODUCT_OPS = ("aten::bmm", "aten::baddbmm")
SDPA_OP = "aten::scaled_dot_product_attention"


def profile_call(fn: Callable[[], Any]) -> dict[str, Any]:
    """One profiled call of fn: `share` of its wall time spent in PRODUCT_OPS (of the wall time, not of the ops'
    summed time: Python between the ops counts too, and the profiler's own cost only adds to the wall time, so the
    share is if anything too small), `top` seconds per op name of the top ops, `rate` FLOP/s of the weight products
    (RATE_OPS: the fastest shape's), `attention_flops` (bmm / baddbmm FLOPs + SDPA's 2 x B x H x T x S x
    (hd_qk + hd_v))."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_flops=True) as prof:
        start = time.perf_counter()
        fn()
        wall = time.perf_counter() - start
    events = prof.key_averages(group_by_input_shape=True)
    products = sum(e.self_cpu_time_total for e in events if e.key in PRODUCT_OPS) / 1e6
    # The fastest weight product of the call (by shape; over 1 ms in all, so the timer's resolution does not count)
    rates = [e.flops / (e.self_cpu_time_total / 1e6) for e in events
             if e.key in RATE_OPS and e.self_cpu_time_total >= 1000 and e.flops]
    attention = sum(e.flops for e in events if e.key in ATTENTION_PRODUCT_OPS)
    for e in events:
        if e.key == SDPA_OP:
            (b, h, t, hd_qk), (_, _, s, _), (*_, hd_v) = e.input_shapes[:3]
            attention += e.count * 2 * b * h * t * s * (hd_qk + hd_v)
    by_op: dict[str, float] = {}
    for e in events:
        by_op[e.key] = by_op.get(e.key, 0.0) + e.self_cpu_time_total / 1e6
    top = sorted(by_op.items(), key=lambda kv: -kv[1])[:6]
    return {"share": products / max(wall, 1e-9), "top": {k: round(v, 4) for k, v in top},
            "rate": max(rates, default=0.0), "attention_flops": attention}


def product_share(fn: Callable[[], Any]) -> tuple[float, dict[str, float]]:
    """(share of fn's profiled wall time spent in PRODUCT_OPS, seconds per op name of the top ops): profile_call."""
    p = profile_call(fn)
    return p["share"], p["top"]


def measure(zoo: Callable[[], Any], ref: Callable[[], Any], goal: float, repeats: int) -> dict[str, Any]:
    """Side-by-side times, the measured ratio and the ceiling of ref / zoo from the product time."""
    before = load()
    t = round_robin({"zoo": zoo, "ref": ref}, repeats, warmup_s=0.0, min_warmup=1)
    seconds = {k: statistics.median(v) for k, v in t.items()}
    profiles = {name: profile_call(fn) for name, fn in (("zoo", zoo), ("ref", ref))}
    shares = {k: p["share"] for k, p in profiles.items()}
    products = {k: seconds[k] * shares[k] for k in seconds}
    ceiling = seconds["ref"] / min(products.values())
    rate = max(p["rate"] for p in profiles.values())
    attention_flops = min(p["attention_flops"] for p in profiles.values())
    floor = attention_flops / rate if rate > 0 else 0.0
    with_attention = seconds["ref"] / (min(products.values()) + floor)
    return {"goal": goal, "seconds": seconds, "ratio": paired_ratio(t["ref"], t["zoo"]),
            "product_share": shares, "product_seconds": products, "ceiling": ceiling,
            "goal_above_ceiling": goal > ceiling, "product_gflops_per_s": rate / 1e9,
            "attention_gflop": attention_flops / 1e9, "attention_floor_seconds": floor,
            "ceiling_with_attention": with_attention, "goal_above_ceiling_with_attention": goal > with_attention,
            "top_ops_seconds": {k: p["top"] for k, p in profiles.items()}, "rounds": len(t["zoo"]),
            "load": [before, load()]}


# ---------------------------------------------------------------- the cases (built by the benchmarks that time them)


def opus(batch: int, beam: int) -> tuple[Callable, Callable]:
    """Issue 28: OPUS-MT-size decoding vs MarianMTModel.generate (bench/bench_text_pretrained.py), 32 tokens."""
    from bench.bench_text_pretrained import opus_size_pair

    ref, net = opus_size_pair(58101)
    pad, n = net.pad_id, 32
    src = torch.randint(1, 58100, (batch, 24), generator=torch.Generator().manual_seed(batch))
    mask = src.ne(pad).long()

    @torch.no_grad()
    def hf() -> Any:
        return ref.generate(input_ids=src, attention_mask=mask, num_beams=beam, max_new_tokens=n, min_new_tokens=n,
                            bad_words_ids=[[pad]], forced_eos_token_id=None, length_penalty=1.0, do_sample=False,
                            early_stopping=False)

    def zoo() -> Any:
        if beam == 1:
            return net.greedy(src, n, min_new_tokens=n, banned=(pad,))
        return net.beam_search(src, beam, n, 1.0, min_new_tokens=n, length_norm="hf", banned=(pad,))

    return zoo, hf


def lm(name: str, batch: int) -> tuple[Callable, Callable]:
    """Issue 28: a 124M causal LM, 512-token prompt + 128 new tokens, vs generate (bench/bench_lm_decode.py)."""
    from bench import bench_lm_decode as b

    with tempfile.TemporaryDirectory() as tmp:
        ref, net = b.build(name, Path(tmp), tiny=False)
    P, N = b.FULL["prompt"], b.FULL["new_tokens"]
    ids = torch.randint(0, ref.config.vocab_size, (batch, P), generator=torch.Generator().manual_seed(1000 + batch))

    @torch.no_grad()
    def hf() -> Any:
        return ref.generate(ids, max_new_tokens=N, min_new_tokens=N, do_sample=False, use_cache=True, pad_token_id=0)

    return (lambda: b.generate_module.generate(net, ids.tolist(), max_new_tokens=N, eos_ids=())), hf


def esm_maps(length: int, batch: int) -> tuple[Callable, Callable]:
    """Issue 26: the ESM-2 8M encoder with every attention map vs EsmModel eager, output_attentions
    (bench/bench_esm.py)."""
    from bench.bench_esm import build, contenders, residues

    sdpa, eager, net = build(tiny=False)
    fns = contenders(sdpa, eager, net, residues(batch, length))
    return torch.no_grad()(fns["zoo_maps"]), torch.no_grad()(fns["ref_maps"])


def whisper(batch: int, threads: int) -> tuple[Callable, Callable]:
    """Issue 27: Whisper tiny.en transcription of FSDD recordings vs generate (bench/bench_whisper.py), 8 files."""
    from bench.bench_whisper import FSDD, SPEAKERS, engines
    from data.audio import read_audio

    fns, net = engines(threads)
    paths = [FSDD / f"{i % 10}_{s}_{i}.wav" for i, s in zip(range(8), SPEAKERS)]
    waves = [read_audio(p, 16000) for p in paths]
    n = max(len(w) for w in waves)
    with torch.no_grad():
        mel = net.features(torch.stack([torch.nn.functional.pad(w, (0, n - len(w))) for w in waves]))
    parts = [mel[i: i + batch] for i in range(0, len(paths), batch)]
    return ((lambda: [fns["zoo"](x) for x in parts]), (lambda: [fns["transformers"](x) for x in parts]))


def nanogpt_step(checkout: Path) -> tuple[Callable, Callable]:
    """Issue 28: one training step at nanoGPT's CPU configuration (4 layers, 4 heads, width 128, context 64, batch
    12, no biases, dropout 0): the zoo's default CausalLM vs nanoGPT's own GPT from its checkout (forward,
    cross-entropy, backward, clipping at 1.0, AdamW)."""
    sys.path.insert(0, str(checkout))
    from model import GPT, GPTConfig  # nanoGPT's own model, run from its checkout

    from models.lm import CausalLM

    torch.manual_seed(0)
    theirs = GPT(GPTConfig(block_size=64, vocab_size=65, n_layer=4, n_head=4, n_embd=128, dropout=0.0, bias=False))
    ours = CausalLM(65, 64, dim=128, depth=4, num_heads=4, bias=False, positions="rotary")
    x, y = torch.randint(0, 65, (12, 64)), torch.randint(0, 65, (12, 64))

    def step(model: torch.nn.Module, forward: Callable[[], torch.Tensor]) -> Callable[[], None]:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)

        def run() -> None:
            forward().backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

        return run

    def zoo_loss() -> torch.Tensor:
        return torch.nn.functional.cross_entropy(ours(x).flatten(0, 1), y.flatten())

    zoo, ref = step(ours, zoo_loss), step(theirs, lambda: theirs(x, y)[1])
    # Many steps per call: one step is ~50 ms, below the timer's and the profiler's resolution of the shares.
    return (lambda: [zoo() for _ in range(20)]), (lambda: [ref() for _ in range(20)])


# name -> (goal, what, builder(args) -> (zoo, ref))
CASES: dict[str, tuple[float, str, Callable[[argparse.Namespace], tuple[Callable, Callable]]]] = {
    "opus_b1": (1.5, "OPUS-MT size, batch 1, greedy, 32 tokens vs generate", lambda a: opus(1, 1)),
    "opus_b1_beam4": (1.5, "OPUS-MT size, batch 1, beam 4, 32 tokens vs generate", lambda a: opus(1, 4)),
    "gpt2_b1": (2.0, "GPT-2 124M, batch 1, 512 + 128 tokens vs generate", lambda a: lm("gpt2", 1)),
    "llama_b1": (2.0, "Llama-style 124M (GQA), batch 1, 512 + 128 tokens vs generate", lambda a: lm("llama", 1)),
    "esm_maps_256_b1": (1.5, "ESM-2 8M, 256 tokens, batch 1, every map vs eager", lambda a: esm_maps(256, 1)),
    "esm_maps_256_b8": (1.5, "ESM-2 8M, 256 tokens, batch 8, every map vs eager", lambda a: esm_maps(256, 8)),
    "whisper_b1": (1.5, "Whisper tiny.en, 8 FSDD files one by one vs generate", lambda a: whisper(1, a.threads)),
    "whisper_b8": (1.5, "Whisper tiny.en, 8 FSDD files in one batch vs generate", lambda a: whisper(8, a.threads)),
    "nanogpt_step": (1.2, "20 training steps at nanoGPT's CPU configuration vs nanoGPT's GPT",
                     lambda a: nanogpt_step(a.nanogpt)),
}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", nargs="+", choices=list(CASES), default=[c for c in CASES if c != "nanogpt_step"])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--nanogpt", type=Path, default=None, help="a checkout of github.com/karpathy/nanoGPT "
                   "(for nanogpt_step)")
    args = parse_bench_args(p, argv)
    if "nanogpt_step" in args.cases and (args.nanogpt is None or not (args.nanogpt / "model.py").is_file()):
        p.error(f"--cases nanogpt_step needs --nanogpt <a nanoGPT checkout with model.py>, got {args.nanogpt}")
    results = {}
    for name in args.cases:
        goal, what, builder = CASES[name]
        zoo, ref = builder(args)
        r = results[name] = {"what": what, **measure(zoo, ref, goal, args.rounds)}
        print(f"{name:16s} zoo {r['seconds']['zoo']:.3f} s  ref {r['seconds']['ref']:.3f} s  ratio {r['ratio']:.2f}x  "
              f"products {100 * r['product_share']['zoo']:.0f} / {100 * r['product_share']['ref']:.0f} % "
              f"(zoo / ref)  ceiling {r['ceiling']:.2f}x, with attention {r['ceiling_with_attention']:.2f}x  "
              f"goal {goal:g}x{'  (above the ceiling)' if r['goal_above_ceiling'] else ''}"
              f"{'  (above the ceiling with attention)' if r['goal_above_ceiling_with_attention'] else ''}",
              flush=True)
    args.nanogpt = None if args.nanogpt is None else str(args.nanogpt)  # JSON
    return write_report(args, {"product_ops": list(PRODUCT_OPS)}, results=results)


if __name__ == "__main__":
    main()
