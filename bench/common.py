"""Shared helpers of the benchmark scripts: round-robin timing, paired ratios, FLOP counts, load, matmul peak.

Timing rule of every script here: the contenders run round-robin (one call each per round, the starting
one rotated every round) after an untimed warm-up, and results are medians and medians of per-round
ratios, so load from other processes on a shared machine hits both sides of a ratio.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from typing import Any, Callable

import torch
from torch import nn

GIGA = 1e9


def seconds(fn: Callable[[], Any]) -> float:
    """Wall seconds of one call of fn."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def round_robin(fns: dict[str, Callable[[], Any]], repeats: int, warmup_s: float = 1.0, min_warmup: int = 1,
                budget_s: float | None = None, min_repeats: int = 3,
                on_round: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """Seconds per call of each fn, `repeats` interleaved rounds with the start rotated each round.

    Warm-up: whole rounds, untimed, until `warmup_s` has passed (at least `min_warmup` rounds). With
    `budget_s`, the number of rounds is capped so the timed part takes about that long (never fewer than
    `min_repeats`), judged from the last warm-up round.
    """
    start = time.perf_counter()
    done = 0
    while True:
        round_s = sum(seconds(fn) for fn in fns.values())
        done += 1
        if done >= min_warmup and time.perf_counter() - start >= warmup_s:
            break
    if budget_s is not None:
        repeats = min(repeats, max(min_repeats, int(budget_s / max(round_s, 1e-9))))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns)
    for r in range(repeats):
        k = r % len(order)
        for name in order[k:] + order[:k]:
            samples[name].append(seconds(fns[name]))
        if on_round is not None:
            on_round()
    return samples


def paired_ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of a[i] / b[i] (both from the same round)."""
    return statistics.median(x / y for x, y in zip(a, b))


def time_against_reference(fns: dict[str, Callable[[], Any]], repeats: int, warmup: float, *, diff_key: str,
                           diff: float, maps_gb: float, max_maps_gb: float) -> dict[str, Any]:
    """Time `zoo` vs `ref` (and `zoo_maps` vs `ref_maps` unless every layer's maps, kept by both sides at once,
    take more than max_maps_gb) in interleaved rounds: medians, paired ratios (ref / zoo), the machine's load."""
    if maps_gb > max_maps_gb:
        fns = {k: fns[k] for k in ("zoo", "ref")}
    before = load()
    t = round_robin(fns, repeats, warmup_s=warmup)
    result = {diff_key: diff, "seconds": {k: statistics.median(v) for k, v in t.items()},
              "speed_ratio": paired_ratio(t["ref"], t["zoo"]),
              "maps_speed_ratio": paired_ratio(t["ref_maps"], t["zoo_maps"]) if "zoo_maps" in t else None}
    if "zoo_maps_reuse" in t:  # the recorder's `reuse` option against the same reference
        result["maps_reuse_speed_ratio"] = paired_ratio(t["ref_maps"], t["zoo_maps_reuse"])
    return {**result, "maps_gb": maps_gb, "load": [before, load()]}


def load() -> tuple[float, float, float]:
    """1, 5 and 15 minute load averages (2 = both cores of this machine busy)."""
    return tuple(round(v, 2) for v in os.getloadavg())  # type: ignore[return-value]


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"threads": torch.get_num_threads(), "cores": os.cpu_count(), "torch": torch.__version__,
                            "cpu": platform.processor() or platform.machine(),
                            "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    try:
        import timm

        info["timm"] = timm.__version__
    except ImportError:
        pass
    return info


# ---------------------------------------------------------------- FLOPs


def attention_flops(batch: int, n: int, dim: int, backward: bool = True) -> int:
    """Matmul FLOPs of one self-attention layer (multiply-add = 2 FLOPs).

    Forward: qkv projection 2*B*N*D*3D + Q K^T 2*B*N^2*D + A V 2*B*N^2*D + output projection 2*B*N*D*D
    = 8*B*N*D^2 + 4*B*N^2*D (independent of the number of heads). Backward costs twice the forward (for
    every product, one matmul for the gradient of each operand), so fwd+bwd = 3 x forward
    = 24*B*N*D^2 + 12*B*N^2*D. Biases, softmax, scaling and the fused kernel's recomputation are not
    counted: this is the useful work of the layer, the same for every implementation.
    """
    forward = 8 * batch * n * dim * dim + 4 * batch * n * n * dim
    return 3 * forward if backward else forward


def counted_flops(fn: Callable[[], Any]) -> int:
    """FLOPs that torch.utils.flop_counter.FlopCounterMode counts while fn runs (matmuls, convolutions).

    Note: on CPU the fused SDPA kernel (aten._scaled_dot_product_flash_attention_for_cpu) has no FLOP
    formula in FlopCounterMode and counts 0, so count models with the explicit attention path, which
    does the same arithmetic with ordinary (b)mm calls.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


# ---------------------------------------------------------------- matmul peak


def matmul_gflops(n: int, seconds_per_call: float) -> float:
    return 2 * n**3 / seconds_per_call / GIGA


def make_matmul(n: int) -> Callable[[], Any]:
    """One n x n float32 matmul into a preallocated output (no allocation inside the timed call)."""
    a, b, out = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
    return lambda: torch.mm(a, b, out=out)


# ---------------------------------------------------------------- ViT training step


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """One training step as train.py runs it: forward, cross-entropy, backward, AdamW step."""

    def run() -> None:
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return run


def parse_bench_args(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Every script's tail of the command line: adds --json, parses, and applies --threads."""
    from pathlib import Path

    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    return args


def write_report(args: Any, config: dict[str, Any] | None = None, **results: Any) -> dict[str, Any]:
    """{config: this machine, the command line's arguments and `config`, **results}, also written to
    args.json if one was given."""
    import json

    settings = {k: str(v) if k == "json" and v is not None else v for k, v in vars(args).items()}
    report = dict(config={**machine(), **settings, **(config or {})}, **results)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"results written to {args.json}")
    return report


# ---------------------------------------------------------------- the zoo's default models

DEFAULT_INPUTS = {"vit": ((64, 1, 28, 28), 10), "audio": ((64, 16000), 12), "video": ((32, 1, 8, 32, 32), 4)}


def default_classifier(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """configs/model/<name>.yaml's network (random weights) and a random batch of its default data's shape."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    shape, classes = DEFAULT_INPUTS[name]
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "configs"), version_base=None):
        cfg = compose("train", [f"model={name}"])
    torch.manual_seed(seed)
    net = instantiate(cfg.model.net)
    return net, torch.randn(shape), torch.randint(0, classes, (shape[0],))
