"""Inference with the same weights: the zoo's converted models vs their reference implementations, CPU, float32.

Pairs (reference sizes, random weights, nothing downloaded; each reference is saved as the hub stores it and
loaded through models.pretrained, as `pretrained=<folder>` does):

* ``vit``          -- timm ``vit_small_patch16_224`` (ViT-S/16, 224 px, 197 tokens) vs the zoo's VisionTransformer
* ``ast``          -- transformers ASTForAudioClassification at the Speech Commands v2 checkpoint's config
                      (base: dim 768, depth 12; 128 mel x 128 frames, 146 tokens; 35 classes) vs the zoo's
                      AudioSpectrogramTransformer; both from the fbank features (the front ends are the same
                      Kaldi computation and are timed apart: ``--frontend``)
* ``videomae``     -- transformers VideoMAEForVideoClassification, VideoMAE-S (dim 384, depth 12, 16 frames of
                      224 px: 1568 tokens) vs the zoo's VideoTransformer (joint blocks)
* ``timesformer``  -- transformers TimesformerForVideoClassification at its reference config (base: dim 768,
                      depth 12, 8 frames of 224 px, divided attention) vs the zoo's VideoTransformer (divided)
* ``dinov2``, ``dinov2_518`` -- transformers Dinov2Model at facebook/dinov2-small's config (ViT-S/14, position
                      table for 518 px) at 224 px (257 tokens, the table resized) and 518 px (1370 tokens) vs the
                      zoo's VisionTransformer without head; both return the pooler output

Contenders per pair and batch: ``zoo`` (its default kernel choice) vs ``ref`` (timm's fused path /
transformers' default SDPA), and with maps: ``zoo_maps`` (the zoo recording every layer's maps: output and
map from one explicit pass per layer) vs ``ref_maps`` (transformers in eager mode with output_attentions=True; timm: its explicit path with
hooks that keep each layer's softmax). Ratios are ref time / zoo time (>= 1.0: the zoo is at least as fast),
medians of within-round ratios (bench.common.round_robin).

Usage::

    python -m bench.bench_pretrained --threads 1 --json bench/results_pretrained.json
    python -m bench.bench_pretrained --families vit ast --batches 1 --repeats 3
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from bench.common import parse_bench_args, time_against_reference, write_report
from models.attention import AttentionRecorder, fused_attn
from models.pretrained import convert

FAMILIES = ("vit", "ast", "videomae", "timesformer", "dinov2", "dinov2_518")


def _random(model: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    return model.eval()


def build(family: str, folder: Path, tiny: bool) -> tuple[Any, torch.nn.Module, Callable[[int], tuple]]:
    """(reference model, zoo model, batch -> (reference input, zoo input))."""
    if family == "vit":
        import timm
        from timm.models._hub import save_for_hf

        kw = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2) if tiny else {}
        ref = _random(timm.create_model("vit_small_patch16_224", pretrained=False, **kw))
        save_for_hf(ref, str(folder), safe_serialization=True)
        size = 32 if tiny else 224
        return ref, convert(str(folder)).build(), lambda b: (x := torch.randn(b, 3, size, size), x)
    if family == "ast":
        from transformers import ASTConfig, ASTForAudioClassification

        kw = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64) if tiny else {}
        ref = _random(ASTForAudioClassification(ASTConfig(max_length=128, num_labels=35, **kw)))
        ref.save_pretrained(folder)
        net = convert(str(folder)).build()
        # Both take the same features: the zoo's network from its patch embedding on (see forward_features).
        return ref, net, lambda b: (f := torch.randn(b, 128, 128), f.transpose(1, 2).unsqueeze(1))
    if family.startswith("dinov2"):
        from transformers import Dinov2Config, Dinov2Model

        kw = {"hidden_size": 384, "num_attention_heads": 6, "image_size": 518}  # facebook/dinov2-small
        if tiny:
            kw = {"hidden_size": 32, "num_attention_heads": 2, "num_hidden_layers": 2, "image_size": 56}
        ref = _random(Dinov2Model(Dinov2Config(**kw)))
        ref.save_pretrained(folder)
        size = (56 if tiny else 518) if family == "dinov2_518" else (28 if tiny else 224)
        return ref, convert(str(folder)).build(), lambda b: (x := torch.randn(b, 3, size, size), x)
    from transformers import (TimesformerConfig, TimesformerForVideoClassification, VideoMAEConfig,
                              VideoMAEForVideoClassification)

    if family == "videomae":
        kw = dict(hidden_size=384, intermediate_size=1536, num_attention_heads=6)  # VideoMAE-S
        frames = 16
        config, cls = VideoMAEConfig, VideoMAEForVideoClassification
    else:
        kw, frames, config, cls = {}, 8, TimesformerConfig, TimesformerForVideoClassification
    if tiny:
        kw = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2, image_size=32,
                  patch_size=8)
        frames = 4
    ref = _random(cls(config(num_frames=frames, num_labels=400, **kw)))
    ref.save_pretrained(folder)
    size = 32 if tiny else 224
    return ref, convert(str(folder)).build(), lambda b: (x := torch.randn(b, frames, 3, size, size), x.transpose(1, 2))


class FromFeatures(torch.nn.Module):
    """The zoo's AST from fbank features (B, 1, mels, frames): its forward without the front end."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        net = self.net
        x = net.patch_embed(spec) + net.pos_embed(net.patch_embed.grid_for(tuple(spec.shape[-2:])))
        from models.embeddings import prepend_tokens

        tokens = net.encoder(prepend_tokens(x, [net.cls_token, net.dist_token], net.prefix_pos))
        return net.head(net.fc_norm(tokens[:, : net.num_prefix].mean(dim=1)))


def contenders(family: str, ref: Any, net: torch.nn.Module, x_ref: torch.Tensor, x_zoo: torch.Tensor
               ) -> dict[str, Callable[[], Any]]:
    zoo = FromFeatures(net) if family == "ast" else net
    hf = family != "vit"

    def run_ref() -> Any:
        if family.startswith("dinov2"):
            return ref(x_ref).pooler_output
        return ref(x_ref) if not hf else ref(x_ref).logits

    def run_ref_maps() -> Any:
        if family == "timesformer":  # its own attention is always the eager formula
            return ref(x_ref, output_attentions=True).attentions
        if hf:
            ref.set_attn_implementation("eager")
            try:
                return ref(x_ref, output_attentions=True).attentions
            finally:
                ref.set_attn_implementation("sdpa")
        maps: list[torch.Tensor] = []
        hooks = [b.attn.attn_drop.register_forward_hook(lambda m, a, o: maps.append(a[0])) for b in ref.blocks]
        for b in ref.blocks:
            b.attn.fused_attn = False
        try:
            ref(x_ref)
        finally:
            for b, h in zip(ref.blocks, hooks):
                b.attn.fused_attn = True
                h.remove()
        return maps

    def run_zoo_maps() -> Any:
        with fused_attn(True), AttentionRecorder(zoo) as rec:
            zoo(x_zoo)
        return rec.maps

    return {"zoo": lambda: zoo(x_zoo), "ref": run_ref, "zoo_maps": run_zoo_maps, "ref_maps": run_ref_maps}


def maps_memory(net: torch.nn.Module, x: torch.Tensor) -> float:
    """Bytes of every layer's float32 maps for input x (one recording; the reference keeps as many)."""
    shapes = []
    hooks = [m.register_forward_hook(lambda m, a, o: shapes.append(m.num_heads * a[0].shape[0] * a[0].shape[1] ** 2))
             for m in net.modules() if type(m).__name__ == "MultiHeadAttention"]
    with torch.no_grad():
        net(x[:1])
    for h in hooks:
        h.remove()
    return 4.0 * sum(shapes) * x.shape[0]


@torch.no_grad()
def measure(family: str, batches: list[int], repeats: int, warmup: float, tiny: bool,
            max_maps_gb: float = 4.0) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        ref, net, inputs = build(family, Path(folder), tiny)
    out: dict[str, Any] = {}
    for batch in batches:
        x_ref, x_zoo = inputs(batch)
        fns = contenders(family, ref, net, x_ref, x_zoo)
        diff = float((fns["zoo"]() - fns["ref"]()).abs().max())
        maps_bytes = maps_memory(FromFeatures(net) if family == "ast" else net, x_zoo)
        r = out[f"batch{batch}"] = time_against_reference(
            fns, repeats, warmup, diff_key="max_abs_logit_diff", diff=diff, maps_gb=maps_bytes / 1e9,
            max_maps_gb=max_maps_gb)
        before, after = r["load"]
        maps = (f"with maps: zoo {r['seconds']['zoo_maps']:.3f} s, ref (eager) {r['seconds']['ref_maps']:.3f} s -> "
                f"{r['maps_speed_ratio']:.2f}x" if r["maps_speed_ratio"] is not None else
                f"maps skipped ({maps_bytes / 1e9:.1f} GB of maps > --max-maps-gb {max_maps_gb:g})")
        print(f"{family:12s} batch {batch}: zoo {r['seconds']['zoo']:.3f} s, ref {r['seconds']['ref']:.3f} s -> "
              f"{r['speed_ratio']:.2f}x; {maps}; max |diff| {diff:.1e}; load {before} -> {after}", flush=True)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of untimed rounds first")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--tiny", action="store_true", help="tiny models (the smoke test)")
    p.add_argument("--max-maps-gb", type=float, default=4.0, help="skip the maps contenders above this much")
    args = parse_bench_args(p, argv)
    results = {f: measure(f, args.batches, args.repeats, args.warmup, args.tiny, args.max_maps_gb)
               for f in args.families}
    return write_report(args, results=results)


if __name__ == "__main__":
    main()
