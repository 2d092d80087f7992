"""ViT training-step throughput: our VisionTransformer vs timm's, identical architecture and weights, CPU.

Contenders (one training step each = forward, cross-entropy, backward, AdamW step):

* ``ours_fused``    -- models.vit.VisionTransformer, attention pinned to the fused SDPA kernel (`auto`, the default, runs explicit at the default size's 16 tokens)
* ``ours_explicit`` -- the same model under ``fused_attn(False)``: softmax(Q K^T / sqrt(d)) V written out
* ``timm``          -- timm.models.vision_transformer.VisionTransformer (its default, fused SDPA)

Architectures are made identical: ``stem="patch"`` on our side (our default config uses the conv stem,
which timm has no equivalent of), same depth / width / heads / MLP ratio / patch size / qkv bias,
LayerNorm eps 1e-6, pooling as configured (``mean``: timm ``global_pool="avg", class_token=False,
fc_norm=False``; ``cls``: class token, position table not over the class token, timm
``no_embed_class=True``). timm's model is loaded with our initial weights and the script checks that
both give the same logits before timing (so both also do the same optimizer work).

Sizes (``--sizes``):

* ``default``: the dims of configs/model/vit.yaml on the embedded MNIST data (28 px, 1 channel, 10 classes,
  patch 8 -> 3x3 = 9 tokens with the patch stem, dim 96, depth 4, heads 4, MLP 2, mean pool),
  batch 64 (configs/data/mnist.yaml)
* ``vit_s16``: ViT-S/16 at 224 px (dim 384, depth 12, heads 6, MLP 4, patch 16, class token, 196 + 1
  tokens, 1000 classes), batch 32 by default (``--batch-s16``)

Usage (from the repository root)::

    python -m bench.bench_vit_timm --json bench/results_vit_timm.json     # ~4 min on 2 cores
    python -m bench.bench_vit_timm --sizes default --repeats 30            # the small model only
    python -m bench.bench_vit_timm --profile                               # + torch.profiler top ops

Timing: bench.common.round_robin (round-robin, start rotated each round, warm-up first), images/s from
the median step time, and the ratio ours / timm as the median over rounds of the within-round ratio of
throughputs (>= 1.0: ours at least as fast). The load average is printed before and after each size.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from bench.common import load, paired_ratio, parse_bench_args, round_robin, train_step, write_report
from models.attention import fused_attn
from models.vit import VisionTransformer

CONTENDERS = ("ours_fused", "ours_explicit", "timm")
ROOT = Path(__file__).resolve().parent.parent


def default_dims() -> dict[str, Any]:
    """The transformer dims of configs/model/vit.yaml and the image format of configs/data/mnist.yaml."""
    from omegaconf import OmegaConf

    net = OmegaConf.load(ROOT / "configs/model/vit.yaml").net
    data = OmegaConf.load(ROOT / "configs/data/mnist.yaml")
    return dict(img_size=data.image_size, in_chans=data.in_chans, num_classes=data.num_classes,
                patch_size=net.patch_size, dim=net.dim, depth=net.depth, num_heads=net.num_heads,
                mlp_ratio=net.mlp_ratio, qkv_bias=net.qkv_bias, pool=net.pool, batch=data.batch_size)


def sizes(batch_s16: int) -> dict[str, dict[str, Any]]:
    return {
        "default": default_dims(),
        "vit_s16": dict(img_size=224, in_chans=3, num_classes=1000, patch_size=16, dim=384, depth=12, num_heads=6,
                        mlp_ratio=4.0, qkv_bias=True, pool="cls", batch=batch_s16),
    }


def build_pair(cfg: dict[str, Any], seed: int = 0) -> tuple[VisionTransformer, nn.Module]:
    """Our ViT (patch stem) and timm's with the same architecture, loaded with our weights."""
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    torch.manual_seed(seed)
    ours = VisionTransformer(img_size=cfg["img_size"], patch_size=cfg["patch_size"], in_chans=cfg["in_chans"],
                             num_classes=cfg["num_classes"], dim=cfg["dim"], depth=cfg["depth"],
                             num_heads=cfg["num_heads"], mlp_ratio=cfg["mlp_ratio"], qkv_bias=cfg["qkv_bias"],
                             pool=cfg["pool"], stem="patch")
    cls = cfg["pool"] == "cls"
    theirs = TimmViT(img_size=cfg["img_size"], patch_size=cfg["patch_size"], in_chans=cfg["in_chans"],
                     num_classes=cfg["num_classes"], embed_dim=cfg["dim"], depth=cfg["depth"],
                     num_heads=cfg["num_heads"], mlp_ratio=cfg["mlp_ratio"], qkv_bias=cfg["qkv_bias"],
                     class_token=cls, global_pool="token" if cls else "avg", fc_norm=False, no_embed_class=True)
    sd = {"pos_embed": ours.pos_embed.weight, "norm.weight": ours.encoder.norm.weight,
          "norm.bias": ours.encoder.norm.bias, "head.weight": ours.head.weight, "head.bias": ours.head.bias,
          "patch_embed.proj.weight": ours.patch_embed.proj.weight, "patch_embed.proj.bias": ours.patch_embed.proj.bias}
    if cls:
        sd["cls_token"] = ours.cls_token
    for i, blk in enumerate(ours.encoder.blocks):
        for name, p in blk.state_dict().items():
            sd[f"blocks.{i}.{name}"] = p
    missing, unexpected = theirs.load_state_dict({k: v.detach().clone() for k, v in sd.items()}, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"timm ViT does not match ours: missing {missing}, unexpected {unexpected}")
    return ours.train(), theirs.train()


def check_same_logits(ours: nn.Module, theirs: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        diff = (ours(x) - theirs(x)).abs().max().item()
    if diff > 1e-4:
        raise RuntimeError(f"our ViT and timm's disagree by {diff:.2e}: the architectures differ")
    return diff


def make_steps(cfg: dict[str, Any], contenders: tuple[str, ...] = CONTENDERS
               ) -> tuple[dict[str, Callable[[], None]], dict[str, Any]]:
    """One training-step closure per contender (each with its own model copy and AdamW), and checks."""
    ours, theirs = build_pair(cfg)
    x = torch.randn(cfg["batch"], cfg["in_chans"], cfg["img_size"], cfg["img_size"])
    y = torch.randint(0, cfg["num_classes"], (cfg["batch"],))
    info = {"max_abs_logit_diff": check_same_logits(ours, theirs, x[:4]),
            "tokens": ours.patch_embed.grid_size[0] * ours.patch_embed.grid_size[1] + (cfg["pool"] == "cls"),
            "params": sum(p.numel() for p in ours.parameters())}
    models: dict[str, nn.Module] = {"timm": theirs}
    if "ours_fused" in contenders:
        models["ours_fused"] = ours
    if "ours_explicit" in contenders:
        twin, _ = build_pair(cfg)  # same seed, same weights; its own optimizer state
        models["ours_explicit"] = twin
    steps: dict[str, Callable[[], None]] = {}
    for name in contenders:
        m = models[name]
        step = train_step(m, torch.optim.AdamW(m.parameters(), lr=1e-4, weight_decay=0.05), x, y)
        if name == "ours_explicit":
            steps[name] = lambda step=step: _explicit(step)
        elif name == "ours_fused":
            steps[name] = lambda step=step: _fused(step)
        else:
            steps[name] = step
    return steps, info


def _explicit(step: Callable[[], None]) -> None:
    with fused_attn(False):
        step()


def _fused(step: Callable[[], None]) -> None:
    with fused_attn(True):  # pinned: the process default follows ZOO_FUSED_ATTN
        step()


def profile(steps: dict[str, Callable[[], None]], rows: int) -> dict[str, str]:
    """torch.profiler table (self CPU time) of 3 steps per contender, after the timing run."""
    from torch.profiler import ProfilerActivity, profile as tprofile

    tables = {}
    for name, step in steps.items():
        step()
        with tprofile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                step()
        tables[name] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    return tables


def run_size(name: str, cfg: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    load_before = load()
    steps, info = make_steps(cfg, tuple(args.contenders))
    samples = round_robin(steps, args.repeats, warmup_s=args.warmup, min_warmup=2, budget_s=args.budget)
    load_after = load()
    batch = cfg["batch"]
    res: dict[str, Any] = {"config": cfg, **info, "repeats": len(next(iter(samples.values()))),
                           "load_before": load_before, "load_after": load_after, "contenders": {}}
    for c, s in samples.items():
        med = statistics.median(s)
        res["contenders"][c] = {"ms_median": med * 1e3, "ms_min": min(s) * 1e3, "images_per_s": batch / med,
                                "ms_samples": [v * 1e3 for v in s]}
    if "timm" in samples:
        # throughput ratio ours/timm within a round = timm time / our time
        for c in samples:
            if c != "timm":
                res[f"{c}_over_timm"] = paired_ratio(samples["timm"], samples[c])
    if args.profile:
        res["profile"] = profile(steps, args.profile_rows)
    return res


def print_size(name: str, r: dict[str, Any]) -> None:
    cfg = r["config"]
    print(f"\n{name}: {cfg['img_size']} px, patch {cfg['patch_size']} ({r['tokens']} tokens), dim {cfg['dim']}, "
          f"depth {cfg['depth']}, heads {cfg['num_heads']}, MLP {cfg['mlp_ratio']}, pool {cfg['pool']}, "
          f"batch {cfg['batch']}, {r['params'] / 1e6:.2f} M params; max |logit diff| ours vs timm "
          f"{r['max_abs_logit_diff']:.1e}; median of {r['repeats']} rounds; load {r['load_before']} -> "
          f"{r['load_after']}")
    print(f"  {'contender':<15}{'ms/step':>10}{'min ms':>10}{'images/s':>10}{'ours/timm (paired)':>21}")
    for c, v in r["contenders"].items():
        ratio = r.get(f"{c}_over_timm")
        print(f"  {c:<15}{v['ms_median']:>10.1f}{v['ms_min']:>10.1f}{v['images_per_s']:>10.1f}"
              f"{'' if ratio is None else format(ratio, '.3f'):>21}")
    for c, table in r.get("profile", {}).items():
        print(f"\nprofile {name} / {c} (3 steps, self CPU time):\n{table}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.bench_vit_timm",
                                description="ViT training-step throughput, ours vs timm, identical architecture.")
    p.add_argument("--sizes", nargs="+", choices=("default", "vit_s16"), default=["default", "vit_s16"])
    p.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=list(CONTENDERS))
    p.add_argument("--batch-s16", type=int, default=32, help="batch of the ViT-S/16 run (default: %(default)s)")
    p.add_argument("--batch", type=int, default=None, help="override the batch of every size (smoke tests)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=40, help="most timed rounds per size (default: %(default)s)")
    p.add_argument("--budget", type=float, default=90.0,
                   help="seconds of timed rounds per size; caps --repeats, at least 3 rounds (default: %(default)s)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of untimed warm-up rounds (default: %(default)s)")
    p.add_argument("--profile", action="store_true", help="also print torch.profiler tables per contender")
    p.add_argument("--profile-rows", type=int, default=15)
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # smoke test: shrink every size
    return parse_bench_args(p, argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    start = time.perf_counter()
    all_sizes = sizes(args.batch_s16)
    results: dict[str, Any] = {}
    for name in args.sizes:
        cfg = dict(all_sizes[name])
        if args.batch:
            cfg["batch"] = args.batch
        if args.tiny:
            cfg.update(depth=1, img_size=2 * cfg["patch_size"], num_classes=10)
        results[name] = run_size(name, cfg, args)
        print_size(name, results[name])
    wall_s = round(time.perf_counter() - start, 1)
    print(f"\n(torch {torch.__version__}, {torch.get_num_threads()} threads, total wall time {wall_s:.0f} s)")
    return write_report(args, dict(wall_s=wall_s), results=results)


if __name__ == "__main__":
    main()
