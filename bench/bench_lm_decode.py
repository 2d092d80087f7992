"""Greedy decoding speed of converted causal LMs: the zoo's CausalLM vs transformers' ``generate``, CPU, float32.

Issue 28, "Benchmark and results", decode speed. Same weights and tokens: each reference (random weights,
transformers' own init, seeded; nothing downloaded) is saved with ``save_pretrained`` and converted through
``models.pretrained.convert`` as ``pretrained=<folder>`` does.

Models (``--models``):

* ``gpt2``  -- GPT-2 small size (124M): 12 layers, width 768, 12 heads, vocab 50257, 1024 positions
* ``llama`` -- a Llama-style model of similar size with GQA: 12 layers, width 768, 12 heads, 4 kv heads,
               intermediate 2048, vocab 32000, rope_theta 10000

Per model and batch (``--batches``, default 1 and 8): a 512-token prompt of random ids (seeded), 128 new tokens,
greedy. Contenders: ``zoo`` (models.generate.generate with its KV cache allocated once) vs ``ref``
(``model.generate(ids, max_new_tokens=N, min_new_tokens=N, do_sample=False, use_cache=True)`` with SDPA
attention). The configs carry no EOS id, so neither side stops early and min_new_tokens masks nothing. The new
tokens must be identical (the first differing position is printed; the script fails after writing its report
if any pair differs). Ratio: ref time / zoo time (>= 1.0: the zoo is at least as fast), the median of
within-round ratios (bench.common.round_robin: rounds interleaved, start rotated).

A compiled static-cache decode step is timed too when models.generate exposes one (a ``compile`` option of
``generate``); otherwise the script says "compiled static-cache path: not available".

Usage::

    python -m bench.bench_lm_decode --threads 2 --out bench/results_lm_decode.json
    python -m bench.bench_lm_decode --models gpt2 --batches 1 --repeats 3
    python -m bench.bench_lm_decode --tiny --repeats 1 --warmup 0      # smoke run: 2 layers, width 64,
                                                                      # prompt 16, 8 new tokens
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from bench.common import load, paired_ratio, parse_bench_args, round_robin, write_report
from models import generate as generate_module
from models.pretrained import convert

MODELS = ("gpt2", "llama")
FULL = {"prompt": 512, "new_tokens": 128}
TINY = {"prompt": 16, "new_tokens": 8}


def reference(name: str, tiny: bool) -> torch.nn.Module:
    """The transformers model at the benchmark size (or tiny), seeded random weights, no EOS id."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if name == "gpt2":
        size = dict(n_embd=64, n_layer=2, n_head=4) if tiny else dict(n_embd=768, n_layer=12, n_head=12)
        return GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_positions=1024, bos_token_id=None, eos_token_id=None,
                                          **size))
    size = (dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=160) if tiny else
            dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
                 intermediate_size=2048))
    return LlamaForCausalLM(LlamaConfig(vocab_size=32000, rope_theta=10000.0, max_position_embeddings=2048,
                                        bos_token_id=None, eos_token_id=None, pad_token_id=None, **size))


def save_tokenizer(folder: Path, vocab: int) -> None:
    """A word-level tokenizer.json over the ids (the converter reads one; decoding here never uses it)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(vocab)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(folder / "tokenizer.json"))


def build(name: str, folder: Path, tiny: bool) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(transformers model with SDPA attention, the zoo's CausalLM converted from its saved folder), eval, float32."""
    ref = reference(name, tiny)
    ref.save_pretrained(folder)
    save_tokenizer(folder, ref.config.vocab_size)
    net = convert(str(folder)).build().float().eval()
    ref = type(ref).from_pretrained(folder, attn_implementation="sdpa", torch_dtype=torch.float32).eval()
    return ref, net


def compile_option() -> str | None:
    """The name of models.generate.generate's compile switch, if it has one."""
    params = inspect.signature(generate_module.generate).parameters
    return next((p for p in ("compile", "compiled", "static_compile") if p in params), None)


def first_difference(a: torch.Tensor, b: torch.Tensor) -> int | None:
    """The first new-token position where any row differs (shapes differing: the shorter length), else None."""
    if a.shape != b.shape:
        return min(a.shape[-1], b.shape[-1])
    diff = (a != b).any(dim=0).nonzero()
    return None if diff.numel() == 0 else int(diff[0])


def measure(name: str, batches: list[int], repeats: int, warmup: float, tiny: bool) -> dict[str, Any]:
    sizes = TINY if tiny else FULL
    P, N = sizes["prompt"], sizes["new_tokens"]
    with tempfile.TemporaryDirectory() as tmp:
        ref, net = build(name, Path(tmp), tiny)
    params = sum(p.numel() for p in ref.parameters())
    out: dict[str, Any] = {"params_m": round(params / 1e6, 1), "prompt": P, "new_tokens": N}
    option = compile_option()
    for B in batches:
        gen = torch.Generator().manual_seed(1000 + B)
        ids = torch.randint(0, ref.config.vocab_size, (B, P), generator=gen)
        prompts = ids.tolist()

        def run_zoo(**extra: Any) -> torch.Tensor:
            return generate_module.generate(net, prompts, max_new_tokens=N, eos_ids=(), **extra)

        def run_ref() -> torch.Tensor:
            with torch.no_grad():
                return ref.generate(ids, max_new_tokens=N, min_new_tokens=N, do_sample=False, use_cache=True,
                                    pad_token_id=0)[:, P:]

        fns: dict[str, Callable[[], Any]] = {"zoo": run_zoo, "ref": run_ref}
        if option is not None:
            fns["zoo_compiled"] = lambda: run_zoo(**{option: True})
        got, expected = run_zoo(), run_ref()
        position = first_difference(got, expected)
        compiled_position = None
        if option is not None:
            compiled_position = first_difference(fns["zoo_compiled"](), expected)
        samples = round_robin(fns, repeats, warmup_s=warmup)
        r: dict[str, Any] = {
            "identical_tokens": position is None,
            "first_differing_position": position,
            "zoo_s": statistics.median(samples["zoo"]), "ref_s": statistics.median(samples["ref"]),
            "speed_ratio": paired_ratio(samples["ref"], samples["zoo"]),
            "zoo_tokens_per_s": B * N / statistics.median(samples["zoo"]),
            "ref_tokens_per_s": B * N / statistics.median(samples["ref"]),
            "samples": samples, "load": load(),
        }
        if option is not None:
            r.update(compiled_identical_tokens=compiled_position is None,
                     compiled_first_differing_position=compiled_position,
                     zoo_compiled_s=statistics.median(samples["zoo_compiled"]),
                     compiled_over_eager=paired_ratio(samples["zoo"], samples["zoo_compiled"]),
                     ref_over_compiled=paired_ratio(samples["ref"], samples["zoo_compiled"]))
        out[f"batch{B}"] = r
        same = "identical" if position is None else f"DIFFER from position {position}"
        line = (f"{name:6s} batch {B}: zoo {r['zoo_s']:.3f} s  transformers {r['ref_s']:.3f} s  "
                f"ratio (transformers / zoo) {r['speed_ratio']:.2f}x  tokens {same}")
        if option is not None:
            line += (f"  compiled {r['zoo_compiled_s']:.3f} s (eager / compiled {r['compiled_over_eager']:.2f}x, "
                     f"tokens {'identical' if compiled_position is None else 'differ'})")
        print(line, flush=True)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of untimed rounds first")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--tiny", action="store_true", help="2 layers, width 64, prompt 16, 8 new tokens (smoke test)")
    p.add_argument("--out", dest="json", type=Path, help="write the results to this JSON file (= --json)")
    args = parse_bench_args(p, argv)
    option = compile_option()
    if option is None:
        print("compiled static-cache path: not available")
    results = {m: measure(m, args.batches, args.repeats, args.warmup, args.tiny) for m in args.models}
    report = write_report(args, {"compile_option": option, **(TINY if args.tiny else FULL)}, results=results)
    bad = [f"{m} {b}: position {r['first_differing_position']}" for m, res in results.items()
           for b, r in res.items() if isinstance(r, dict) and not r["identical_tokens"]]
    assert not bad, f"zoo and transformers tokens differ: {', '.join(bad)}"
    return report


if __name__ == "__main__":
    main()
