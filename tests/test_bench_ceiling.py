"""bench/ceiling.py: the share of profiled time in weight products, and the ceiling it puts on a speed-up."""

from __future__ import annotations

import torch

from bench.ceiling import measure, product_share


def test_the_product_share_counts_matrix_products_and_nothing_else() -> None:
    # Products of 512 x 512 (milliseconds each): the Python between them stays far below 10 % of the wall time
    # also on a busy machine (256 x 256 gave 0.86 with a training run beside it).
    a, b = torch.randn(512, 512), torch.randn(512, 512)
    share, top = product_share(lambda: [a @ b for _ in range(20)])
    assert share > 0.9 and "aten::mm" in top
    share, _ = product_share(lambda: [(a * 2 + 1).relu() for _ in range(20)])
    assert share == 0.0


def test_the_ceiling_is_the_reference_time_over_the_product_time() -> None:
    a, b = torch.randn(192, 192), torch.randn(192, 192)
    products = lambda: [a @ b for _ in range(10)]  # noqa: E731
    # The reference does the same products plus elementwise work: the zoo could at most skip that work.
    reference = lambda: [(a @ b).exp().sin().cos().tanh() for _ in range(10)]  # noqa: E731
    r = measure(products, reference, goal=100.0, repeats=2)
    expected = r["seconds"]["ref"] / min(r["seconds"][k] * r["product_share"][k] for k in ("zoo", "ref"))
    assert abs(r["ceiling"] - expected) < 1e-9 and r["ceiling"] > 1.0 and r["goal_above_ceiling"]


def test_attention_flops_count_bmm_and_sdpa_and_lower_the_ceiling() -> None:
    from bench.ceiling import profile_call

    B, H, T, S, hd = 2, 4, 96, 128, 32
    q, k, v = torch.randn(B, H, T, hd), torch.randn(B, H, S, hd), torch.randn(B, H, S, hd)
    w = torch.randn(256, 256)
    x = torch.randn(512, 256)
    explicit = lambda: [(q @ k.transpose(-2, -1)).softmax(-1) @ v for _ in range(3)]  # noqa: E731
    fused = lambda: [torch.nn.functional.scaled_dot_product_attention(q, k, v) for _ in range(3)]  # noqa: E731
    expected = 3 * 4 * B * H * T * S * hd  # Q K^T and weights @ V, multiply-add = 2 FLOPs
    assert profile_call(explicit)["attention_flops"] == expected
    assert profile_call(fused)["attention_flops"] == expected
    p = profile_call(lambda: [x @ w for _ in range(20)])
    assert p["attention_flops"] == 0 and p["rate"] > 0
    # A reference that does the zoo's products plus attention: the bound with attention is the tighter one.
    zoo = lambda: ([x @ w for _ in range(20)], fused())  # noqa: E731
    r = measure(zoo, zoo, goal=100.0, repeats=2)
    assert r["attention_gflop"] * 1e9 == expected and r["attention_floor_seconds"] > 0
    assert r["ceiling_with_attention"] < r["ceiling"]
