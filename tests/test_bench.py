"""Smoke tests of the benchmark scripts at tiny sizes (the measurements themselves are not tests)."""

from __future__ import annotations

import torch

from bench import bench_compile, bench_kernels, bench_kv_cache, bench_peak, bench_vit_timm
from bench.common import attention_flops, counted_flops, paired_ratio, round_robin
from models.attention import MultiHeadAttention, attention_kernel


def test_attention_flop_formula_equals_flop_counter() -> None:
    """FlopCounterMode on the explicit path counts exactly 24*B*N*D^2 + 12*B*N^2*D for fwd+bwd."""
    B, N, D = 2, 24, 32
    layer = MultiHeadAttention(D, 4, fused=False)
    x = torch.randn(B, N, D, requires_grad=True)
    assert counted_flops(lambda: layer(x).sum().backward()) == attention_flops(B, N, D) == 24 * B * N * D * D + 12 * B * N * N * D
    with torch.no_grad():
        assert counted_flops(lambda: layer(x)) == attention_flops(B, N, D, backward=False)


def test_round_robin_and_paired_ratio() -> None:
    calls: list[str] = []
    samples = round_robin({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=4, warmup_s=0)
    assert all(len(s) == 4 and min(s) > 0 for s in samples.values())
    assert calls[2:6] == ["a", "b", "b", "a"]  # one warm-up round, then the start rotates
    assert paired_ratio([2.0, 4.0, 6.0], [1.0, 1.0, 3.0]) == 2.0


def test_vit_timm_pair_is_identical_and_throughput_positive() -> None:
    report = bench_vit_timm.main(["--tiny", "--batch", "2", "--repeats", "2", "--warmup", "0", "--threads", "1"])
    for r in report["results"].values():
        assert r["max_abs_logit_diff"] < 1e-5
        assert all(c["images_per_s"] > 0 for c in r["contenders"].values())
        assert r["ours_fused_over_timm"] > 0


def test_peak_reports_positive_gflops() -> None:
    report = bench_peak.main(["--tiny", "--threads", "1", "--peak-sizes", "128", "--peak-repeats", "1",
                              "--lengths", "32", "--repeats", "1", "--ref-size", "128", "--vit", "default"])
    assert report["flop_count_check"]["counted"] == report["flop_count_check"]["analytic"]
    assert report["peak"]["peak_gflops"] > 0
    assert report["vit"]["default"]["flops_per_step"] > 0
    assert all(r["gflops"] > 0 and r["fraction_of_peak"] > 0 for r in report["results"].values())


def test_kernel_bench_times_every_kernel_and_restores_the_choice() -> None:
    before = attention_kernel()
    report = bench_kernels.main(["--threads", "1", "--lengths", "8", "40", "--dims", "32:4", "--tokens", "80",
                                 "--repeats", "1", "--budget", "0.01", "--models", "vit"])
    assert [(r["keys"], r["batch"]) for r in report["layers"]] == [(8, 10), (40, 2)]
    assert all(r["fused_ms"] > 0 and r["explicit_ms"] > 0 for r in report["layers"])
    (vit,) = report["models"]
    assert sorted(vit["ms"]) == ["auto", "explicit", "fused"] and vit["auto_speedup"] > 0
    assert attention_kernel() == before


def test_compile_bench_compiles_each_contender_once_and_reports_speedups() -> None:
    report = bench_compile.main(["--threads", "1", "--repeats", "1", "--budget", "0.01", "--backend", "aot_eager"])
    assert sorted(report["first_step_s"]) == ["compiled", "compiled_fused", "plain"]
    assert sorted(report["speedup"]) == ["compiled", "compiled_fused"] and all(v > 0 for v in report["speedup"].values())


def test_pretrained_bench_pairs_give_the_same_logits() -> None:
    from bench import bench_pretrained

    report = bench_pretrained.main(["--tiny", "--families", "vit", "ast", "dinov2", "--batches", "1", "--repeats", "1",
                                    "--warmup", "0", "--threads", "1"])
    for family in report["results"].values():
        r = family["batch1"]
        assert r["max_abs_logit_diff"] < 1e-5 and r["speed_ratio"] > 0 and r["maps_speed_ratio"] > 0


def test_esm_bench_pairs_give_the_same_hidden_states() -> None:
    from bench import bench_esm

    report = bench_esm.main(["--tiny", "--lengths", "20", "--batches", "1", "2", "--repeats", "1", "--warmup", "0",
                             "--threads", "1"])
    for r in report["results"].values():
        assert r["max_abs_hidden_diff"] < 1e-5 and r["speed_ratio"] > 0 and r["maps_speed_ratio"] > 0
        assert r["maps_reuse_speed_ratio"] > 0


def test_kv_cache_bench_decodes_the_same_outputs_both_ways() -> None:
    report = bench_kv_cache.main(["--steps", "12", "--tail", "4", "--batch", "1", "--dim", "16", "--heads", "2",
                                  "--kv-heads", "1", "--repeats", "2"])
    assert report["identical_outputs"] and report["growing_over_preallocated"] > 0


def test_lm_decode_bench_gives_the_same_tokens_as_transformers(tmp_path) -> None:
    from bench import bench_lm_decode

    out = tmp_path / "lm_decode.json"
    report = bench_lm_decode.main(["--tiny", "--batches", "2", "--repeats", "1", "--warmup", "0", "--threads", "1",
                                   "--out", str(out)])
    assert out.exists() and sorted(report["results"]) == ["gpt2", "llama"]
    for model in report["results"].values():
        r = model["batch2"]
        assert r["identical_tokens"] and r["first_differing_position"] is None
        assert r["zoo_s"] > 0 and r["ref_s"] > 0 and r["speed_ratio"] > 0
    assert bench_lm_decode.first_difference(torch.tensor([[1, 2, 3]]), torch.tensor([[1, 2, 4]])) == 2
