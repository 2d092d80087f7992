"""The attention core against independent references: the formula, nn.MultiheadAttention,
its own explicit path, full attention for GQA, and a full causal pass for the KV cache."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import models.attention as attention
from models.attention import AttentionRecorder, KVCache, MultiHeadAttention, fused_attn

DIM, HEADS = 32, 4


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def reference(m: MultiHeadAttention, x, context=None, allowed=None):
    """softmax(QK^T/sqrt(d))V written out from the module's weights, with nothing shared with the core."""
    context = x if context is None else context
    w, b = m.qkv.weight, m.qkv.bias
    H, Hkv, hd = m.num_heads, m.num_kv_heads, m.head_dim
    q = (x @ w[: H * hd].T + b[: H * hd]).unflatten(-1, (H, hd)).transpose(1, 2)
    k = (context @ w[H * hd : (H + Hkv) * hd].T + b[H * hd : (H + Hkv) * hd]).unflatten(-1, (Hkv, hd)).transpose(1, 2)
    v = (context @ w[(H + Hkv) * hd :].T + b[(H + Hkv) * hd :]).unflatten(-1, (Hkv, hd)).transpose(1, 2)
    k, v = k.repeat_interleave(H // Hkv, 1), v.repeat_interleave(H // Hkv, 1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, -1e30)
    p = torch.exp(scores - scores.amax(-1, keepdim=True))
    if allowed is not None:
        p = p * allowed
    p = p / p.sum(-1, keepdim=True).clamp_min(1e-30)
    out = (p @ v).transpose(1, 2).flatten(2)
    return out @ m.proj.weight.T + m.proj.bias, p


def torch_mha(m: MultiHeadAttention) -> nn.MultiheadAttention:
    ref = nn.MultiheadAttention(m.dim, m.num_heads, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(m.qkv.weight)
        ref.in_proj_bias.copy_(m.qkv.bias)
        ref.out_proj.weight.copy_(m.proj.weight)
        ref.out_proj.bias.copy_(m.proj.bias)
    return ref


@pytest.mark.parametrize("fused", [True, False])
def test_matches_formula_self_and_cross(fused: bool) -> None:
    m = MultiHeadAttention(DIM, HEADS, fused=fused).eval()
    x, ctx = torch.randn(2, 5, DIM), torch.randn(2, 7, DIM)
    torch.testing.assert_close(m(x), reference(m, x)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(m(x, ctx), reference(m, x, ctx)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fused", [True, False])
def test_matches_torch_multihead_attention(fused: bool) -> None:
    m = MultiHeadAttention(DIM, HEADS, fused=fused).eval()
    ref = torch_mha(m)
    x, ctx = torch.randn(3, 6, DIM), torch.randn(3, 9, DIM)
    pad = torch.zeros(3, 9, dtype=torch.bool)
    pad[1, 6:] = True
    pad[2, 2:] = True
    causal_x = torch.triu(torch.ones(6, 6, dtype=torch.bool), 1)  # torch: True = not allowed
    torch.testing.assert_close(m(x), ref(x, x, x, need_weights=False)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        m(x, ctx, key_padding_mask=pad), ref(x, ctx, ctx, key_padding_mask=pad, need_weights=False)[0],
        atol=1e-5, rtol=1e-5,
    )
    torch.testing.assert_close(
        m(x, causal=True), ref(x, x, x, attn_mask=causal_x, need_weights=False)[0], atol=1e-5, rtol=1e-5
    )
    # Weights: torch averages over heads by default.
    _, w = m(x, ctx, key_padding_mask=pad, need_weights=True)
    _, w_ref = ref(x, ctx, ctx, key_padding_mask=pad)
    torch.testing.assert_close(w.mean(1), w_ref, atol=1e-6, rtol=1e-5)


def masks(B: int, T: int, S: int):
    pad = torch.rand(B, S) < 0.3
    pad[:, 0] = False
    custom = torch.rand(B, 1, T, S) < 0.8
    return pad, custom


@pytest.mark.parametrize("kind", ["none", "padding", "causal", "padding+causal", "custom+padding"])
def test_fused_equals_explicit(kind: str) -> None:
    m = MultiHeadAttention(DIM, HEADS).eval()
    x = torch.randn(4, 8, DIM)
    pad, custom = masks(4, 8, 8)
    kw = {
        "none": {},
        "padding": {"key_padding_mask": pad},
        "causal": {"causal": True},
        "padding+causal": {"key_padding_mask": pad, "causal": True},
        "custom+padding": {"key_padding_mask": pad, "attn_mask": custom},
    }[kind]
    with fused_attn(True):
        out_f, w_f = m(x, need_weights=True, **kw)
    with fused_attn(False):
        out_e, w_e = m(x, need_weights=True, **kw)
    torch.testing.assert_close(out_f, out_e, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w_f, w_e)


def test_switch_really_selects_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    m = MultiHeadAttention(DIM, HEADS).eval()
    x = torch.randn(1, 3, DIM)
    with fused_attn(False):
        m(x)
    assert calls == []
    with fused_attn(True):
        m(x)
    assert calls == [1]
    MultiHeadAttention(DIM, HEADS, fused=False)(x)  # a pinned module ignores the switch
    assert calls == [1]


def test_auto_kernel_runs_explicit_for_short_key_sequences_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    m = MultiHeadAttention(DIM, HEADS).eval()
    limit = attention.AUTO_EXPLICIT_MAX // (DIM // HEADS)  # keys at this head_dim
    short, long_ = torch.randn(2, limit, DIM), torch.randn(2, limit + 1, DIM)
    with fused_attn("auto"):
        out_short = m(short)
        assert calls == []  # <= limit keys on CPU: the explicit formula
        m(long_)
        assert calls == [1]
        m(long_[:, :4], context=long_)  # the number of *keys* decides (4 queries, limit + 1 keys)
        assert calls == [1, 1]
        assert attention.use_fused_attn(8, 16, torch.device("cuda"))  # on GPUs always fused
        assert not attention.use_fused_attn(12, 64) and attention.use_fused_attn(13, 64)  # wider heads: fewer keys
    with fused_attn(True):
        torch.testing.assert_close(m(short), out_short, atol=1e-5, rtol=1e-5)
    assert calls == [1, 1, 1]


def test_kernel_choice_from_the_config_and_bad_names(compose_train) -> None:
    from utils.build import setup_runtime

    before = attention.attention_kernel()
    try:  # seed=null: setup_runtime would otherwise seed this pytest process
        setup_runtime(compose_train("attention_kernel=explicit", "seed=null"))
        assert attention.attention_kernel() == "explicit"
        setup_runtime(compose_train("attention_kernel=true", "seed=null"))  # Hydra parses it as a bool
        assert attention.attention_kernel() == "fused"
        setup_runtime(compose_train("seed=null"))  # null: back to the default, not the last run's choice
        assert attention.attention_kernel() == attention.DEFAULT_KERNEL
        with pytest.raises(ValueError, match="attention kernel 'flash': expected one of fused, explicit, auto"):
            setup_runtime(compose_train("attention_kernel=flash", "seed=null"))
    finally:
        attention.set_attention_kernel(before)


@pytest.mark.parametrize("fused", [True, False])
def test_fully_masked_rows_are_finite_zero(fused: bool) -> None:
    m = MultiHeadAttention(DIM, HEADS, fused=fused).eval()
    x = torch.randn(2, 4, DIM)
    allowed = torch.ones(2, 1, 4, 4, dtype=torch.bool)
    allowed[0, 0, 2] = False  # query 2 of sample 0 sees nothing
    out, w = m(x, attn_mask=allowed, need_weights=True)
    assert torch.isfinite(out).all() and torch.isfinite(w).all()
    assert (w[0, :, 2] == 0).all()
    # That query's attention output is 0, so the layer returns just the output-projection bias.
    torch.testing.assert_close(out[0, 2], m.proj.bias)
    torch.testing.assert_close(out[1], reference(m, x)[0][1], atol=1e-5, rtol=1e-5)
    # Gradients stay finite too.
    m.train()
    m(x.requires_grad_(), attn_mask=allowed).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_weights_sum_to_one_and_zero_on_masked() -> None:
    m = MultiHeadAttention(DIM, HEADS).eval()
    x = torch.randn(3, 6, DIM)
    pad, _ = masks(3, 6, 6)
    _, w = m(x, key_padding_mask=pad, causal=True, need_weights=True)
    allowed = ~pad[:, None, None, :] & torch.ones(6, 6, dtype=torch.bool).tril()
    assert (w[~allowed.expand_as(w)] == 0).all()
    has_key = allowed.any(-1).expand(w.shape[:-1])
    torch.testing.assert_close(w.sum(-1)[has_key], torch.ones(int(has_key.sum())))
    torch.testing.assert_close(w, reference(m, x, allowed=allowed)[1].expand_as(w), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kv_heads", [1, 2])
@pytest.mark.parametrize("fused", [True, False])
def test_gqa_equals_full_attention_with_repeated_heads(kv_heads: int, fused: bool) -> None:
    gqa = MultiHeadAttention(DIM, HEADS, num_kv_heads=kv_heads, fused=fused).eval()
    full = MultiHeadAttention(DIM, HEADS, fused=fused).eval()
    hd, rep = DIM // HEADS, HEADS // kv_heads
    with torch.no_grad():
        q_w, k_w, v_w = gqa.qkv.weight.split([DIM, kv_heads * hd, kv_heads * hd])
        q_b, k_b, v_b = gqa.qkv.bias.split([DIM, kv_heads * hd, kv_heads * hd])
        rep_w = lambda t: t.unflatten(0, (kv_heads, hd)).repeat_interleave(rep, 0).flatten(0, 1)  # noqa: E731
        full.qkv.weight.copy_(torch.cat([q_w, rep_w(k_w), rep_w(v_w)]))
        full.qkv.bias.copy_(torch.cat([q_b, rep_w(k_b), rep_w(v_b)]))
        full.proj.load_state_dict(gqa.proj.state_dict())
    x, ctx = torch.randn(2, 5, DIM), torch.randn(2, 7, DIM)
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[0, 4:] = True
    torch.testing.assert_close(gqa(x, causal=True), full(x, causal=True), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gqa(x, ctx, key_padding_mask=pad), full(x, ctx, key_padding_mask=pad), atol=1e-5, rtol=1e-5)
    assert gqa.qkv.weight.shape[0] == DIM + 2 * kv_heads * hd  # fewer parameters, not just repeated ones


@pytest.mark.parametrize("fused", [True, False])
def test_kv_cache_decoding_equals_full_causal_pass(fused: bool) -> None:
    self_attn = MultiHeadAttention(DIM, HEADS, num_kv_heads=2, fused=fused).eval()
    cross_attn = MultiHeadAttention(DIM, HEADS, fused=fused).eval()
    x, memory = torch.randn(2, 7, DIM), torch.randn(2, 5, DIM)
    mem_pad = torch.zeros(2, 5, dtype=torch.bool)
    mem_pad[1, 3:] = True
    full_self = self_attn(x, causal=True)
    full_cross = cross_attn(x, memory, key_padding_mask=mem_pad)

    self_cache, cross_cache = KVCache(), KVCache(static=True)
    steps_self, steps_cross = [], []
    for t in range(7):
        xt = x[:, t : t + 1]
        steps_self.append(self_attn(xt, causal=True, cache=self_cache))
        ctx = memory if t == 0 else None  # the source is projected once, on the first step
        steps_cross.append(cross_attn(xt, ctx, key_padding_mask=mem_pad, cache=cross_cache))
    assert self_cache.length == 7 and cross_cache.length == 5
    torch.testing.assert_close(torch.cat(steps_self, 1), full_self, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat(steps_cross, 1), full_cross, atol=1e-5, rtol=1e-5)


def test_kv_cache_prefill_then_steps() -> None:
    m = MultiHeadAttention(DIM, HEADS).eval()
    x = torch.randn(1, 6, DIM)
    cache = KVCache()
    out = torch.cat([m(x[:, :4], causal=True, cache=cache), m(x[:, 4:5], causal=True, cache=cache),
                     m(x[:, 5:], causal=True, cache=cache)], 1)
    torch.testing.assert_close(out, m(x, causal=True), atol=1e-5, rtol=1e-5)
    cache.reorder(torch.tensor([0, 0]))
    assert cache.k.shape[0] == 2


def test_dropout_only_in_training() -> None:
    m = MultiHeadAttention(DIM, HEADS, attn_drop=0.5, proj_drop=0.5)
    x = torch.randn(2, 5, DIM)
    m.train()
    assert not torch.equal(m(x), m(x))
    m.eval()
    assert torch.equal(m(x), m(x))
    torch.testing.assert_close(m(x), reference(m, x)[0], atol=1e-5, rtol=1e-5)


def test_asking_for_weights_does_not_change_fused_output() -> None:
    m = MultiHeadAttention(DIM, HEADS).eval()
    x = torch.randn(2, 5, DIM)
    pad = torch.tensor([[False] * 5, [False, False, False, True, True]])
    plain = m(x, key_padding_mask=pad)
    with_w, _ = m(x, key_padding_mask=pad, need_weights=True)
    assert torch.equal(plain, with_w)


def test_recorder_only_touches_chosen_layers() -> None:
    net = nn.Sequential(MultiHeadAttention(DIM, HEADS), MultiHeadAttention(DIM, HEADS)).eval()
    x = torch.randn(2, 5, DIM)
    plain = net(x)
    with AttentionRecorder(net, layers=[-1]) as rec:
        out = net(x)
    assert torch.equal(out, plain)
    assert list(rec.maps) == ["1"] and rec.maps["1"].shape == (2, HEADS, 5, 5)
    assert net[0].last_weights is None and not net[1].store_weights
    with pytest.raises(ValueError, match="out of range"):
        AttentionRecorder(net, layers=[5])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"dim": 30, "num_heads": 4}, "divisible by num_heads"),
        ({"dim": 32, "num_heads": 4, "num_kv_heads": 3}, "multiple of num_kv_heads"),
        ({"dim": 32, "num_heads": 4, "attn_drop": 1.5}, "attn_drop"),
    ],
)
def test_bad_construction_names_the_value(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MultiHeadAttention(**kwargs)


def test_bad_inputs_name_the_shape() -> None:
    m = MultiHeadAttention(DIM, HEADS)
    with pytest.raises(ValueError, match=r"\(batch, length, 32\), got \(2, 5, 16\)"):
        m(torch.randn(2, 5, 16))
    with pytest.raises(ValueError, match="key_padding_mask must have shape"):
        m(torch.randn(2, 5, DIM), key_padding_mask=torch.zeros(2, 4, dtype=torch.bool))
