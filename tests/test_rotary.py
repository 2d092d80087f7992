"""Rotary position embeddings against independent references: the rotation written out per pair as
a complex product, transformers' Llama (half) and GPT-J (interleaved) code, and inside the attention
core: cached decoding, GQA, the blocked window, and a checkpoint's own frequency table."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig
from transformers.models.gptj.modeling_gptj import apply_rotary_pos_emb as gptj_apply
from transformers.models.gptj.modeling_gptj import create_sinusoidal_positions
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb as llama_apply

from models.attention import KVCache, MultiHeadAttention, RotaryEmbedding, band_mask, fused_attn

DIM, HEADS = 32, 4
HD = DIM // HEADS


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def rotate_by_formula(x: torch.Tensor, positions: torch.Tensor, layout: str, rotary_dim: int,
                      base: float = 10000.0, inv_freq: torch.Tensor | None = None) -> torch.Tensor:
    """Each pair (a, b) as the complex a + ib, times exp(i * position * base^(-2j / rotary_dim))."""
    half = rotary_dim // 2
    if inv_freq is None:
        freqs = [base ** (-2 * j / rotary_dim) for j in range(half)]
        inv_freq = torch.tensor(freqs, dtype=torch.float64)
    angle = positions.double()[:, None] * inv_freq.double()[None, :]  # (L, half)
    x64 = x.double()
    if layout == "half":
        a, b = x64[..., :half], x64[..., half:rotary_dim]
    else:
        a, b = x64[..., 0:rotary_dim:2], x64[..., 1:rotary_dim:2]
    z = torch.complex(a, b) * torch.polar(torch.ones_like(angle), angle)
    out = x64.clone()
    if layout == "half":
        out[..., :half], out[..., half:rotary_dim] = z.real, z.imag
    else:
        out[..., 0:rotary_dim:2], out[..., 1:rotary_dim:2] = z.real, z.imag
    return out.float()


@pytest.mark.parametrize("layout", ["half", "interleaved"])
@pytest.mark.parametrize("rotary_dim", [None, 4])
def test_rotation_is_the_complex_product_per_pair(layout: str, rotary_dim: int | None) -> None:
    rope = RotaryEmbedding(HD, layout=layout, rotary_dim=rotary_dim)
    x = torch.randn(2, HEADS, 11, HD)
    pos = torch.arange(5, 16)
    expected = rotate_by_formula(x, pos, layout, rotary_dim or HD)
    torch.testing.assert_close(rope(x, pos), expected, atol=1e-5, rtol=1e-5)
    # The dot product of q at m and k at n depends on m - n only.
    q, k = torch.randn(1, 1, 1, HD), torch.randn(1, 1, 1, HD)
    dots = [(rope(q, torch.tensor([m])) * rope(k, torch.tensor([m - 3]))).sum()
            for m in (3, 10, 40)]
    torch.testing.assert_close(dots[0], dots[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dots[0], dots[2], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scaling", [None, 4.0])
def test_half_layout_equals_transformers_llama(scaling: float | None) -> None:
    rope_parameters = {"rope_type": "default", "rope_theta": 500000.0}
    if scaling is not None:
        rope_parameters = {"rope_type": "linear", "rope_theta": 500000.0, "factor": scaling}
    config = LlamaConfig(hidden_size=DIM, num_attention_heads=HEADS, num_key_value_heads=2,
                         max_position_embeddings=256, rope_parameters=rope_parameters)
    ref = LlamaRotaryEmbedding(config)
    rope = RotaryEmbedding(HD, base=500000.0, layout="half", scaling=scaling)
    q, k = torch.randn(2, HEADS, 9, HD), torch.randn(2, 2, 9, HD)
    pos = torch.arange(100, 109)
    cos, sin = ref(q, pos[None].expand(2, -1))
    q_ref, k_ref = llama_apply(q, k, cos, sin)
    torch.testing.assert_close(rope.inv_freq, ref.inv_freq, atol=0, rtol=0)
    torch.testing.assert_close(rope(q, pos), q_ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(rope(k, pos), k_ref, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("rotary_dim", [HD, 4])
def test_interleaved_layout_equals_transformers_gptj(rotary_dim: int) -> None:
    rope = RotaryEmbedding(HD, layout="interleaved", rotary_dim=rotary_dim)
    x = torch.randn(2, 7, HEADS, HD)  # GPT-J's layout: (B, T, H, hd)
    pos = torch.arange(30, 37)
    table = create_sinusoidal_positions(64, rotary_dim)[pos]
    sin, cos = torch.split(table, rotary_dim // 2, dim=-1)
    rot = gptj_apply(x[..., :rotary_dim], sin[None], cos[None])  # as GPTJAttention slices it
    expected = torch.cat([rot, x[..., rotary_dim:]], dim=-1)
    got = rope(x.transpose(1, 2), pos).transpose(1, 2)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


def reference_with_rotary(m: MultiHeadAttention, x: torch.Tensor,
                          allowed: torch.Tensor | None) -> torch.Tensor:
    """Attention with rotary written out: project, rotate q, k by the formula, softmax, project."""
    H, Hkv, hd = m.num_heads, m.num_kv_heads, m.head_dim
    qkv = x @ m.qkv.weight.T + m.qkv.bias
    q, k, v = qkv.split([H * hd, Hkv * hd, Hkv * hd], dim=-1)
    q, k, v = (t.unflatten(-1, (-1, hd)).transpose(1, 2) for t in (q, k, v))
    pos = torch.arange(x.shape[1])
    q = rotate_by_formula(q, pos, m.rotary.layout, m.rotary.rotary_dim, m.rotary.base)
    k = rotate_by_formula(k, pos, m.rotary.layout, m.rotary.rotary_dim, m.rotary.base)
    k, v = k.repeat_interleave(H // Hkv, 1), v.repeat_interleave(H // Hkv, 1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).flatten(2)
    return out @ m.proj.weight.T + m.proj.bias


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_attention_with_rotary_equals_the_formula_with_gqa(fused: bool, layout: str) -> None:
    m = MultiHeadAttention(DIM, HEADS, num_kv_heads=2, fused=fused,
                           rotary=RotaryEmbedding(HD, layout=layout)).eval()
    x = torch.randn(2, 10, DIM)
    causal = torch.ones(10, 10, dtype=torch.bool).tril()
    torch.testing.assert_close(m(x), reference_with_rotary(m, x, None), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(m(x, causal=True), reference_with_rotary(m, x, causal),
                               atol=1e-5, rtol=1e-5)
    plain = MultiHeadAttention(DIM, HEADS, num_kv_heads=2, fused=fused).eval()
    plain.load_state_dict(m.state_dict(), strict=False)
    assert (plain(x) - m(x)).abs().max() > 1e-3  # the rotation really acts


@pytest.mark.parametrize("fused", [True, False])
def test_cached_decoding_with_rotary_equals_the_full_causal_pass(fused: bool) -> None:
    rope = RotaryEmbedding(HD)
    m = MultiHeadAttention(DIM, HEADS, num_kv_heads=2, fused=fused, rotary=rope).eval()
    x = torch.randn(2, 9, DIM)
    full = m(x, causal=True)
    cache = KVCache()
    steps = [m(x[:, :4], causal=True, cache=cache)]  # a prefill of 4, then one token at a time
    steps += [m(x[:, t : t + 1], causal=True, cache=cache) for t in range(4, 9)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
    assert cache.position == 9


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("causal", [False, True])
def test_blocked_window_with_rotary_equals_dense_with_band_mask(fused: bool, causal: bool) -> None:
    rope = RotaryEmbedding(HD, layout="interleaved")
    win = MultiHeadAttention(DIM, HEADS, num_kv_heads=2, window=4, num_global=1, fused=fused,
                             rotary=rope).eval()
    dense = MultiHeadAttention(DIM, HEADS, num_kv_heads=2, fused=fused, rotary=rope).eval()
    dense.load_state_dict(win.state_dict())
    x = torch.randn(2, 50, DIM)  # 50 > 3 W: the blocked path, where keys keep absolute positions
    band = band_mask(50, 50, 4, causal=causal, num_global=1)
    torch.testing.assert_close(win(x, causal=causal), dense(x, causal=causal, attn_mask=band),
                               atol=2e-5, rtol=1e-4)


def test_rolling_cache_with_rotary_equals_the_windowed_pass() -> None:
    win = MultiHeadAttention(DIM, HEADS, window=5, rotary=RotaryEmbedding(HD)).eval()
    x = torch.randn(1, 30, DIM)
    full = win(x, causal=True)
    cache = KVCache()
    steps = [win(x[:, :12], causal=True, cache=cache)]
    steps += [win(x[:, t : t + 1], causal=True, cache=cache) for t in range(12, 30)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
    assert cache.offset == 26 and cache.position == 30  # positions stay absolute after the roll


def test_inv_freq_from_a_checkpoint_is_used_not_recomputed() -> None:
    m = MultiHeadAttention(DIM, HEADS, rotary=RotaryEmbedding(HD)).eval()
    x = torch.randn(2, 12, DIM)
    before = m(x)
    state = m.state_dict()
    assert "rotary.inv_freq" in state  # persistent: saved with the weights
    rounded = state["rotary.inv_freq"].half().float()  # what ESM-2 checkpoints store
    perturbed = rounded * 1.01
    state["rotary.inv_freq"] = perturbed
    m.load_state_dict(state)
    torch.testing.assert_close(m.rotary.inv_freq, perturbed, atol=0, rtol=0)
    after = m(x)
    assert (after - before).abs().max() > 1e-4
    # ... and the output is the formula with the loaded table.
    H, hd = HEADS, HD
    q, k, v = (x @ m.qkv.weight.T + m.qkv.bias).split(DIM, dim=-1)
    q, k, v = (t.unflatten(-1, (H, hd)).transpose(1, 2) for t in (q, k, v))
    pos = torch.arange(12)
    q, k = (rotate_by_formula(t, pos, "half", hd, inv_freq=perturbed) for t in (q, k))
    ref = ((q @ k.transpose(-1, -2) / math.sqrt(hd)).softmax(-1) @ v).transpose(1, 2).flatten(2)
    torch.testing.assert_close(after, ref @ m.proj.weight.T + m.proj.bias, atol=1e-5, rtol=1e-5)


def test_rotary_maps_and_kernels_agree() -> None:
    m = MultiHeadAttention(DIM, HEADS, rotary=RotaryEmbedding(HD)).eval()
    x = torch.randn(2, 40, DIM)
    with fused_attn(True):
        fused, w = m(x, causal=True, need_weights=True)
        plain = m(x, causal=True)
    with fused_attn(False):
        explicit = m(x, causal=True)
    assert torch.equal(fused, explicit)  # weights wanted: the one explicit pass
    torch.testing.assert_close(plain, explicit, atol=1e-5, rtol=1e-5)
    assert w.shape == (2, HEADS, 40, 40)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"head_dim": 7}, r"head_dim must be even \(rotary turns pairs of features\), got 7"),
        ({"head_dim": 7, "rotary_dim": 3}, r"rotary_dim .* even and in \[2, head_dim=7\], got 3"),
        ({"head_dim": 8, "rotary_dim": 10}, r"got 10"),
        ({"head_dim": 1}, r"head_dim must be an int >= 2, got 1"),
        ({"head_dim": 8, "layout": "gptj"}, r"layout 'gptj': expected one of half, interleaved"),
        ({"head_dim": 8, "base": 0.0}, r"base must be > 0, got 0.0"),
        ({"head_dim": 8, "scaling": -2.0}, r"scaling .* must be > 0 or None, got -2.0"),
        ({"head_dim": 8, "max_positions": 0}, r"max_positions must be >= 1 or None, got 0"),
    ],
)
def test_bad_rotary_values_name_the_value(kwargs: dict, message: str) -> None:
    head_dim = kwargs.pop("head_dim")
    with pytest.raises(ValueError, match=message):
        RotaryEmbedding(head_dim, **kwargs)


def test_bad_rotary_use_names_the_value() -> None:
    with pytest.raises(ValueError, match=r"rotary was built for head_dim=16; .* = 8 wide"):
        MultiHeadAttention(DIM, HEADS, rotary=RotaryEmbedding(16))
    m = MultiHeadAttention(DIM, HEADS, rotary=RotaryEmbedding(HD, max_positions=8))
    with pytest.raises(ValueError, match=r"rotary embeddings are for self-attention"):
        m(torch.randn(1, 3, DIM), torch.randn(1, 5, DIM))
    with pytest.raises(ValueError, match=r"position 9: expected < max_positions=8"):
        m(torch.randn(1, 10, DIM))


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_the_kept_table_gives_the_bits_of_the_positions_computed_alone(layout: str) -> None:
    """Self-attention's positions start, start + 1, ... come from a table kept between calls (`pair`): sliced at
    any start, grown past its length, the same floats as the positions computed alone; a table built in
    inference mode is not reused where autograd must save it."""
    rope = RotaryEmbedding(HD, layout=layout, rotary_dim=6)
    q, k = torch.randn(2, HEADS, 9, HD), torch.randn(2, 2, 9, HD)
    for start in (0, 3, 60, 200, 7):  # 200 + 9 grows the table
        pos = torch.arange(start, start + 9)
        rq, rk = rope.pair(q, k, start=start)
        assert torch.equal(rq, rope(q, pos)) and torch.equal(rk, rope(k, pos))
        torch.testing.assert_close(rq, rotate_by_formula(q, pos, layout, 6), atol=1e-4, rtol=1e-5)
    m = MultiHeadAttention(DIM, HEADS, rotary=RotaryEmbedding(HD))
    x = torch.randn(2, 12, DIM)
    with torch.inference_mode():
        expected = m(x, causal=True)
    out = m(x, causal=True)
    out.sum().backward()  # an inference-mode table here would fail: it cannot be saved for backward
    assert torch.equal(out.detach(), expected) and m.qkv.weight.grad is not None


def test_the_kept_table_is_bypassed_or_rebuilt_where_it_would_be_wrong() -> None:
    """No table past TABLE_LIMIT (a rolling cache's positions grow without end); none kept under fake tensors
    or functorch (an ensemble through vmap(functional_call)); rebuilt when inv_freq's values change, also
    through .data, which keeps the version counter."""
    import copy

    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.func import functional_call, stack_module_state, vmap

    from models.attention.rotary import TABLE_LIMIT

    rope = RotaryEmbedding(HD)
    q = torch.randn(1, 2, 3, HD)
    far = rope.pair(q, q, start=TABLE_LIMIT + 5)[0]
    assert rope._table is None and torch.equal(far, rope(q, torch.arange(TABLE_LIMIT + 5, TABLE_LIMIT + 8)))
    m = MultiHeadAttention(DIM, HEADS, rotary=RotaryEmbedding(HD))
    x = torch.randn(2, 5, DIM)
    with FakeTensorMode(allow_non_fake_inputs=True) as fake:
        m(fake.from_tensor(x))
    assert type(m(x)) is torch.Tensor
    layers = [MultiHeadAttention(DIM, HEADS, rotary=RotaryEmbedding(HD)) for _ in range(3)]
    params, buffers = stack_module_state(layers)
    base = copy.deepcopy(layers[0]).to("meta")
    stacked = vmap(lambda p, b: functional_call(base, (p, b), (x,)))(params, buffers)
    torch.testing.assert_close(stacked, torch.stack([layer(x) for layer in layers]), atol=1e-6, rtol=1e-6)
    rope.pair(q, q)
    rope.inv_freq.data.mul_(0.5)
    torch.testing.assert_close(rope.pair(q, q, start=3)[0], rotate_by_formula(
        q, torch.arange(3, 6), "half", HD, inv_freq=rope.inv_freq), atol=1e-5, rtol=1e-5)
