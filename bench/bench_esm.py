"""ESM-2 8M encoder, same weights, CPU, float32: the zoo's ProteinLM vs transformers' EsmModel.

The reference is transformers' `EsmModel` at facebook/esm2_t6_8M_UR50D's config (6 layers, 320 wide, 20 heads,
FFN 1280, rotary, token dropout; random weights, nothing downloaded), saved as the hub stores it and converted
through models.pretrained (as `pretrained=<folder>` does). Both sides compute the final hidden states of random
residue sequences framed `<cls> ... <eos>` (lengths count those two tokens), batch 1 and 8.

Contenders per length and batch: ``zoo`` (its default kernel choice) vs ``ref`` (`attn_implementation="sdpa"`),
and with maps: ``zoo_maps`` (every layer's maps recorded, `models.attention.AttentionRecorder`) vs ``ref_maps``
(`attn_implementation="eager"`, `output_attentions=True`), and ``zoo_maps_reuse``: the same maps computed in buffers
that one recorder keeps from call to call (`AttentionRecorder(reuse=True)`: no fresh memory to fault in at each
call; each call's maps overwrite the last). Ratios are ref time / zoo time (>= 1.0: the zoo is at
least as fast), medians of within-round ratios (bench.common.round_robin: interleaved rounds). Every layer's
float32 maps take 6 x 20 x T^2 x 4 bytes a sequence (T = 1024, batch 8: 4.0 GB a side); above --max-maps-gb
the maps contenders are skipped.

Usage::

    python -m bench.bench_esm --threads 1 --json bench/results_esm.json
    python -m bench.bench_esm --tiny --lengths 32 --batches 1 2 --repeats 2 --warmup 0   # the smoke test
"""

from __future__ import annotations

import argparse
import resource
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from bench.common import parse_bench_args, time_against_reference, write_report
from models.attention import AttentionRecorder
from models.pretrained import convert

ESM2_8M = dict(hidden_size=320, num_hidden_layers=6, num_attention_heads=20, intermediate_size=1280)
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


def build(tiny: bool) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    """(EsmModel with SDPA, the same with eager attention, the zoo's ProteinLM), one set of random weights."""
    from transformers import EsmConfig, EsmModel

    config = EsmConfig(vocab_size=33, **(TINY if tiny else ESM2_8M), position_embedding_type="rotary",
                       token_dropout=True, emb_layer_norm_before=False, layer_norm_eps=1e-5, mask_token_id=32,
                       pad_token_id=1, max_position_embeddings=1026, hidden_dropout_prob=0.0,
                       attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    ref = EsmModel(config, add_pooling_layer=False)
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.02)
    with tempfile.TemporaryDirectory() as folder:
        ref.save_pretrained(folder)
        sdpa = EsmModel.from_pretrained(folder, attn_implementation="sdpa", add_pooling_layer=False).eval()
        eager = EsmModel.from_pretrained(folder, attn_implementation="eager", add_pooling_layer=False).eval()
        net = convert(str(Path(folder))).build()  # an EsmModel: no LM head (a note says so); hidden states only
    return sdpa, eager, net


def residues(batch: int, length: int) -> torch.Tensor:
    """(batch, length) ids: <cls>, random standard residues, <eos>."""
    g = torch.Generator().manual_seed(length * 100 + batch)
    ids = torch.randint(4, 24, (batch, length), generator=g)  # ESM ids 4..23: the 20 standard residues
    ids[:, 0], ids[:, -1] = 0, 2
    return ids


def contenders(sdpa: torch.nn.Module, eager: torch.nn.Module, net: torch.nn.Module, ids: torch.Tensor
               ) -> dict[str, Callable[[], Any]]:
    def zoo_maps() -> Any:
        with AttentionRecorder(net) as rec:
            net.hidden(ids)
        return rec.maps

    reusing = AttentionRecorder(net, reuse=True)  # one recorder for every call: its buffers are kept

    def zoo_maps_reuse() -> Any:
        with reusing:
            net.hidden(ids)
        return reusing.maps

    return {"zoo": lambda: net.hidden(ids), "ref": lambda: sdpa(ids).last_hidden_state,
            "zoo_maps": zoo_maps, "zoo_maps_reuse": zoo_maps_reuse,
            "ref_maps": lambda: eager(ids, output_attentions=True).attentions}


@torch.no_grad()
def measure(lengths: list[int], batches: list[int], repeats: int, warmup: float, tiny: bool,
            max_maps_gb: float) -> dict[str, Any]:
    sdpa, eager, net = build(tiny)
    layers, heads = net.depth, net.num_heads
    out: dict[str, Any] = {}
    for length in lengths:
        for batch in batches:
            ids = residues(batch, length)
            fns = contenders(sdpa, eager, net, ids)
            diff = float((fns["zoo"]() - fns["ref"]()).abs().max())
            maps_gb = 4.0 * layers * heads * length**2 * batch / 1e9
            r = out[f"L{length}_b{batch}"] = time_against_reference(
                fns, repeats, warmup, diff_key="max_abs_hidden_diff", diff=diff, maps_gb=maps_gb,
                max_maps_gb=max_maps_gb)
            r["minor_faults_per_call"] = {name: minor_faults(fn) for name, fn in fns.items()
                                          if name in r["seconds"]}
            before, after = r["load"]
            print(f"L {length:5d} batch {batch}: zoo {r['seconds']['zoo']:.4f} s, sdpa {r['seconds']['ref']:.4f} s "
                  f"-> {r['speed_ratio']:.2f}x; max |diff| {diff:.1e}; load {before} -> {after}", flush=True)
    return out


def minor_faults(fn: Callable[[], Any], calls: int = 3) -> float:
    """Page faults a call takes (after one untimed call): fresh memory the kernel maps in 4 KB at a time."""
    fn()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls


def table(results: dict[str, Any]) -> str:
    """The ratios as a Markdown table (ref time / zoo time)."""
    rows = ["| length | batch | zoo s | SDPA s | SDPA / zoo | zoo + maps s | eager + maps s | eager / zoo, maps "
            "| zoo + maps, reuse s | eager / zoo, maps, reuse |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for key, r in results.items():
        length, batch = key[1:].split("_b")
        s = r["seconds"]
        maps = (f"{s['zoo_maps']:.4f} | {s['ref_maps']:.4f} | {r['maps_speed_ratio']:.2f}x | "
                f"{s['zoo_maps_reuse']:.4f} | {r['maps_reuse_speed_ratio']:.2f}x" if "zoo_maps" in s
                else f"skipped ({r['maps_gb']:.1f} GB) | | | | ")
        rows.append(f"| {length} | {batch} | {s['zoo']:.4f} | {s['ref']:.4f} | {r['speed_ratio']:.2f}x | {maps} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", nargs="+", type=int, default=[256, 1024], help="tokens, <cls> and <eos> included")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of untimed rounds first")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--tiny", action="store_true", help="a tiny model (the smoke test)")
    p.add_argument("--max-maps-gb", type=float, default=4.5, help="skip the maps contenders above this much")
    args = parse_bench_args(p, argv)
    results = measure(args.lengths, args.batches, args.repeats, args.warmup, args.tiny, args.max_maps_gb)
    print(table(results))
    return write_report(args, results=results)


if __name__ == "__main__":
    main()
