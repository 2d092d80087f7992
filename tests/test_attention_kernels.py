"""The one kernel call (`attend`): the rule for query rows that see no key, forward and backward on
both kernels, and maps computed with the output in one explicit pass (dense and blocked)."""

from __future__ import annotations

import pytest
import torch
from test_attention import reference

from models import attention
from models.attention import (
    MultiHeadAttention,
    attend,
    attention_maps,
    band_mask,
    fused_attn,
    kernels,
)

DIM, HEADS = 32, 4


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def grads(m: MultiHeadAttention, x: torch.Tensor, **kw) -> tuple[torch.Tensor, ...]:
    """(output, dx, d qkv.weight, d proj.weight) of a weighted sum of the output."""
    x = x.detach().requires_grad_()
    y = m(x, **kw)
    loss = (y * torch.linspace(-1, 1, y.shape[-1])).square().sum()
    return (y, *torch.autograd.grad(loss, [x, m.qkv.weight, m.proj.weight]))


@pytest.mark.parametrize("how", ["padded sample", "masked row"])
def test_rows_that_see_no_key_on_the_dense_fused_path_give_zero_and_finite_grads(how: str) -> None:
    m = MultiHeadAttention(DIM, HEADS, num_kv_heads=2).train()  # train: the backward of a real step
    x = torch.randn(3, 6, DIM)
    kw: dict = {}
    if how == "padded sample":  # every key of sample 1 is padding: its queries see nothing
        pad = torch.zeros(3, 6, dtype=torch.bool)
        pad[1] = True
        pad[2, 4:] = True
        kw = {"key_padding_mask": pad}
        empty = (1, slice(None))
    else:  # one query row of sample 0 masked out, the rest causal
        allowed = torch.ones(3, 1, 6, 6, dtype=torch.bool).tril()
        allowed[0, 0, 3] = False
        kw = {"attn_mask": allowed}
        empty = (0, 3)
    with fused_attn(True):
        fused = grads(m, x, **kw)
    with fused_attn(False):
        explicit = grads(m, x, **kw)
    for got in (fused, explicit):
        assert all(torch.isfinite(t).all() for t in got)
        row = got[0][empty]
        torch.testing.assert_close(row, m.proj.bias.expand_as(row))  # attention output 0
    for f, e in zip(fused, explicit):
        torch.testing.assert_close(f, e, atol=1e-5, rtol=1e-4)
    # The sample's other rows are the formula with nothing shared with the core.
    if how == "padded sample":
        with torch.no_grad():
            ref = reference(m, x[2:], allowed=~pad[2:, None, None, :])[0]
        torch.testing.assert_close(fused[0][2], ref[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fused", [True, False])
def test_attend_empty_rows_get_no_gradient_and_leak_none(fused: bool) -> None:
    q, k, v = (torch.randn(2, 4, 5, 8, requires_grad=True) for _ in range(3))
    mask = torch.rand(2, 1, 5, 5) < 0.6
    mask[0, 0, 1] = False  # a row with no key
    mask[1, 0, :, 0] = True  # every other row of sample 1 sees at least key 0
    out, _ = attend(q, k, v, mask, fused=fused)
    assert torch.equal(out[0, :, 1], torch.zeros(4, 8))
    out.square().sum().backward()
    assert torch.equal(q.grad[0, :, 1], torch.zeros(4, 8))  # the opened keys are not trained by it
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
    explicit, weights = attend(q, k, v, mask, fused=False, need_weights=True)
    torch.testing.assert_close(out, explicit, atol=1e-6, rtol=1e-5)
    assert torch.equal(weights[0, :, 1], torch.zeros(4, 5))
    assert (weights[~mask.expand_as(weights)] == 0).all()


def test_weights_wanted_means_one_explicit_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    sdpa, softmaxes = [], []
    real_sdpa, real_weights = attention.F.scaled_dot_product_attention, kernels.attention_weights
    monkeypatch.setattr(attention.F, "scaled_dot_product_attention",
                        lambda *a, **k: sdpa.append(1) or real_sdpa(*a, **k))
    monkeypatch.setattr(kernels, "attention_weights",
                        lambda *a, **k: softmaxes.append(1) or real_weights(*a, **k))
    net = torch.nn.Sequential(MultiHeadAttention(DIM, HEADS), MultiHeadAttention(DIM, HEADS)).eval()
    x = torch.randn(2, 40, DIM)
    with fused_attn(True):
        plain = net(x)
        assert (len(sdpa), len(softmaxes)) == (2, 0)
        out, maps = attention_maps(net, x, layers=[1])
        # Layer 0 runs fused as usual; layer 1 computes one Q K^T and no SDPA.
        assert (len(sdpa), len(softmaxes)) == (3, 1)
        hidden = net[0](x)
    with fused_attn(False):
        assert torch.equal(out, net[1](hidden))  # the recorded layer: the explicit kernel's output
    torch.testing.assert_close(out, plain, atol=1e-5, rtol=1e-5)
    assert maps["1"].shape == (2, HEADS, 40, 40)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("num_global", [0, 2])
def test_blocked_maps_come_from_the_blocked_pass(causal: bool, num_global: int) -> None:
    win = MultiHeadAttention(DIM, HEADS, num_kv_heads=2, window=4, num_global=num_global,
                             fused=False).eval()
    dense = MultiHeadAttention(DIM, HEADS, num_kv_heads=2, fused=False).eval()
    dense.load_state_dict(win.state_dict())
    x = torch.randn(2, 37, DIM)  # 37 > 3 W, not a multiple of W
    pad = torch.zeros(2, 37, dtype=torch.bool)
    pad[1, 30:] = True
    pad[0, 1] = True
    band = band_mask(37, 37, 4, causal=causal, num_global=num_global)
    out, w = win(x, key_padding_mask=pad, causal=causal, need_weights=True)
    assert torch.equal(out, win(x, key_padding_mask=pad, causal=causal))  # blocked explicit output
    ref_out, ref_w = dense(x, key_padding_mask=pad, causal=causal, attn_mask=band,
                           need_weights=True)
    torch.testing.assert_close(w, ref_w, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out, ref_out, atol=2e-5, rtol=1e-4)
    with fused_attn(True):
        fused_win = MultiHeadAttention(DIM, HEADS, num_kv_heads=2, window=4,
                                       num_global=num_global).eval()
        fused_win.load_state_dict(win.state_dict())
        torch.testing.assert_close(fused_win(x, key_padding_mask=pad, causal=causal), out,
                                   atol=2e-5, rtol=1e-4)


def test_the_explicit_kernel_does_not_overflow_in_float16_and_gives_float32_weights():
    """q.k of 1e5 is inf in float16; scaled first and taken in float32 it is the exact softmax."""
    from models.attention import attend

    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(1, 2, 4, 64, generator=g).half() * 100 for _ in range(2))
    v = torch.randn(1, 2, 4, 64, generator=g).half()
    assert not torch.isfinite(q @ k.transpose(-2, -1)).all()  # the product as the kernel used to take it
    out, weights = attend(q, k, v, fused=False, need_weights=True)
    exact = torch.softmax(q.double() @ k.double().transpose(-2, -1) / 8, dim=-1)
    assert out.dtype == torch.float16 and weights.dtype == torch.float32 and torch.isfinite(out).all()
    torch.testing.assert_close(weights.double(), exact, rtol=0, atol=1e-3)


@pytest.mark.parametrize("masked", [False, True])
def test_the_in_place_softmax_without_grad_gives_the_bits_of_the_grad_path(masked: bool) -> None:
    """Without grad on the CPU the softmax overwrites the fresh scores (`kernels.may_write_in_place`): the same
    bits as the path that keeps them for backward; functorch's jacobian and forward-mode AD still see the softmax."""
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(2, 3, 5, 8, generator=g) for _ in range(2))
    mask = None
    if masked:
        mask = torch.rand(2, 1, 5, 5, generator=g) > 0.4
        mask[0, 0, 1] = False  # a query row that sees no key
    with torch.no_grad():
        assert kernels.may_write_in_place(q @ k.transpose(-2, -1))
        fast = kernels.attention_weights(q, k, mask, 0.35)
    slow = kernels.attention_weights(q.clone().requires_grad_(), k, mask, 0.35)
    assert torch.equal(fast, slow.detach())

    def f(x: torch.Tensor) -> torch.Tensor:
        return kernels.attention_weights(x, k, mask, 0.35)

    expected = torch.autograd.functional.jacobian(f, q)
    torch.testing.assert_close(torch.func.jacrev(f)(q), expected, rtol=0, atol=1e-6)
    tangent = torch.randn(q.shape, generator=g)
    _, jvp = torch.func.jvp(f, (q,), (tangent,))
    by_jacobian = (expected.reshape(jvp.numel(), -1) @ tangent.flatten()).reshape(jvp.shape)
    torch.testing.assert_close(jvp, by_jacobian, rtol=0, atol=1e-5)
