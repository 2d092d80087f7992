"""Sliding-window and global-token attention against independent references: the dense kernel with
the band mask, a band written as a loop, FLOP and saved-memory slopes in N, and uncached decoding."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from models.attention import KVCache, MultiHeadAttention, attention_maps, band_mask
from models.audio import AudioSpectrogramTransformer
from models.translator import Translator
from models.vit import VisionTransformer
from test_attention import reference

DIM, HEADS = 32, 4


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def loop_band(n: int, window: int, causal: bool, num_global: int) -> torch.Tensor:
    """The band spelled out one pair at a time, as Longformer / Mistral describe it."""
    allowed = torch.zeros(n, n, dtype=torch.bool)
    for i, j in itertools.product(range(n), range(n)):
        near = 0 <= i - j < window if causal else abs(i - j) < window
        glob = (i < num_global or j < num_global) and (j <= i or not causal)
        allowed[i, j] = near or glob
    return allowed


def pair(window: int, num_global: int = 0, **kw) -> tuple[MultiHeadAttention, MultiHeadAttention]:
    """A windowed layer and a dense one with the same weights."""
    win = MultiHeadAttention(DIM, HEADS, window=window, num_global=num_global, **kw).eval()
    dense = MultiHeadAttention(DIM, HEADS, **kw).eval()
    dense.load_state_dict(win.state_dict())
    return win, dense


def out_and_grad(m: MultiHeadAttention, x: torch.Tensor, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().requires_grad_()
    y = m(x, **kw)
    (grad,) = torch.autograd.grad((y * torch.linspace(-1, 1, y.shape[-1])).square().sum(), x)
    return y, grad


@pytest.mark.parametrize("window, num_global, causal", [(3, 0, False), (3, 0, True), (3, 1, False), (8, 2, True)])
def test_band_mask_is_the_loop(window: int, num_global: int, causal: bool) -> None:
    assert torch.equal(band_mask(21, 21, window, causal=causal, num_global=num_global),
                       loop_band(21, window, causal, num_global))


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("num_global", [0, 2])
@pytest.mark.parametrize("kv_heads", [HEADS, 2])
def test_windowed_equals_dense_with_band_mask(fused: bool, causal: bool, num_global: int, kv_heads: int) -> None:
    # 50 tokens in blocks of 4 or 7 (not a multiple), 13 / 6 tokens (dense path), 5 tokens with W = 9 >= length.
    for n, window in [(50, 4), (50, 7), (13, 4), (6, 5), (5, 9)]:
        win, dense = pair(window, num_global, num_kv_heads=kv_heads, fused=fused)
        x = torch.randn(3, n, DIM)
        pad = torch.zeros(3, n, dtype=torch.bool)
        pad[1, n - 3:] = True  # a padded tail
        pad[2, 1] = True  # a padded key inside the band (and inside the global tokens when G = 2)
        band = loop_band(n, window, causal, num_global)
        for mask in (None, pad):
            y, g = out_and_grad(win, x, key_padding_mask=mask, causal=causal)
            y_ref, g_ref = out_and_grad(dense, x, key_padding_mask=mask, causal=causal, attn_mask=band)
            torch.testing.assert_close(y, y_ref, atol=2e-5, rtol=1e-4)
            torch.testing.assert_close(g, g_ref, atol=2e-5, rtol=1e-4)
        # ... and the formula written out with nothing shared with the core (full heads only).
        if kv_heads == HEADS:
            allowed = band & ~pad[:, None, None, :]
            torch.testing.assert_close(win(x, key_padding_mask=pad, causal=causal),
                                       reference(win, x, allowed=allowed)[0], atol=2e-5, rtol=1e-4)


def test_window_at_least_the_length_is_dense_attention() -> None:
    for causal in (False, True):
        win, dense = pair(window=40)
        x = torch.randn(2, 40, DIM)
        torch.testing.assert_close(win(x, causal=causal), dense(x, causal=causal), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("fused", [True, False])
def test_fully_masked_rows_are_zero_and_gradients_finite(fused: bool) -> None:
    win, _ = pair(window=2, fused=fused)
    x = torch.randn(1, 30, DIM)
    pad = torch.zeros(1, 30, dtype=torch.bool)
    pad[0, 10:20] = True  # queries 12..17 see only padded keys inside their band of 3
    win.proj.bias.data.zero_()
    y, g = out_and_grad(win, x, key_padding_mask=pad)
    assert torch.equal(y[0, 12:18], torch.zeros(6, DIM)) and torch.isfinite(g).all()


def test_dropout_only_in_training() -> None:
    win = MultiHeadAttention(DIM, HEADS, window=4, attn_drop=0.5)
    x = torch.randn(2, 40, DIM)
    assert not torch.equal(win(x), win(x))
    win.eval()
    assert torch.equal(win(x), win(x))


def _slope(ns: list[int], values: list[float]) -> float:
    lx, ly = [math.log(n) for n in ns], [math.log(v) for v in values]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def _flops_and_saved(m: MultiHeadAttention, n: int, causal: bool) -> tuple[int, int]:
    """Forward + backward FLOPs (torch's counter) and the bytes of distinct storages saved for backward."""
    x = torch.randn(1, n, DIM, requires_grad=True)
    params = {p.data_ptr() for p in m.parameters()} | {x.data_ptr()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in params:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with FlopCounterMode(display=False) as counter, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        m(x, causal=causal).sum().backward()
    return counter.get_total_flops(), sum(saved.values())


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("causal", [False, True])
def test_cost_is_linear_in_length(fused: bool, causal: bool) -> None:
    ns = [512, 1024, 2048]
    win = MultiHeadAttention(DIM, HEADS, window=32, num_global=1, fused=fused)
    dense = MultiHeadAttention(DIM, HEADS, fused=False)  # the control: quadratic, and the test can tell
    w = [_flops_and_saved(win, n, causal) for n in ns]
    d = [_flops_and_saved(dense, n, causal) for n in ns]
    assert 0.9 < _slope(ns, [f for f, _ in w]) < 1.1 and 0.9 < _slope(ns, [s for _, s in w]) < 1.1
    assert _slope(ns, [f for f, _ in d]) > 1.6 and _slope(ns, [s for _, s in d]) > 1.6


@pytest.mark.parametrize("fused", [True, False])
def test_rolling_cache_equals_the_uncached_windowed_pass(fused: bool) -> None:
    win = MultiHeadAttention(DIM, HEADS, num_kv_heads=2, window=5, fused=fused).eval()
    x = torch.randn(2, 31, DIM)
    full = win(x, causal=True)
    cache = KVCache()
    steps = [win(x[:, :12], causal=True, cache=cache)]  # a prefill of 12, then one token at a time
    held = [cache.length]
    for t in range(12, 31):
        steps.append(win(x[:, t : t + 1], causal=True, cache=cache))
        held.append(cache.length)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
    assert max(held) == 4 and cache.position == 31 and cache.offset == 27  # never more than W - 1 kept
    assert cache.k.untyped_storage().nbytes() == cache.k.numel() * cache.k.element_size()  # no prefill kept alive


def test_translator_rolling_cache_decodes_the_same_tokens() -> None:
    net = Translator(vocab_size=29, dim=32, encoder_depth=1, decoder_depth=2, num_heads=4, max_len=64,
                     attn_window=4, attn_global=1).eval()
    src = torch.randint(4, 29, (3, 20))
    cached = net.greedy(src, max_new_tokens=40, min_new_tokens=40)
    assert torch.equal(cached, net.greedy(src, max_new_tokens=40, min_new_tokens=40, use_cache=False))
    beams = net.beam_search(src, beam_size=3, max_new_tokens=30, min_new_tokens=30)
    assert torch.equal(beams, net.beam_search(src, beam_size=3, max_new_tokens=30, min_new_tokens=30, use_cache=False))
    caches = net.new_caches()
    memory, pad = net.encode(src)
    ys = torch.full((3, 1), 1)
    for _ in range(12):
        logits = net.decode(ys[:, -1:], memory, pad, caches)
        ys = torch.cat([ys, logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert all(self_cache.length == 3 and self_cache.position == 12 for self_cache, _ in caches)


def test_maps_of_windowed_layers_are_dense_with_zeros_outside_the_band() -> None:
    win, dense = pair(window=4, num_global=1)
    x = torch.randn(2, 40, DIM)
    plain = win(x)
    out, maps = attention_maps(win, x)
    assert torch.equal(out, plain)  # recording never changes the output
    band = loop_band(40, 4, False, 1)
    _, ref_maps = attention_maps(dense, x, attn_mask=band)
    torch.testing.assert_close(maps[""], ref_maps[""], atol=1e-6, rtol=1e-5)
    assert torch.equal(maps[""][..., ~band], torch.zeros_like(maps[""][..., ~band]))


@pytest.mark.parametrize(
    "kwargs, call, message",
    [
        ({"window": 0}, {}, r"window must be a positive number of positions or None, got 0"),
        ({"window": -3}, {}, r"got -3"),
        ({"window": 2.5}, {}, r"got 2.5"),
        ({"window": 4}, {"bad_pad": True}, r"key_padding_mask must have shape \(batch, keys\) = \(2, 6\), got \(1, 6\)"),
        ({"num_global": 2}, {}, r"num_global \(2\).*only with a window"),
        ({"window": 4, "num_global": 9}, {}, r"num_global=9 global tokens but the sequence has only 6"),
        ({"window": 4}, {"context": True}, r"window=4 is for self-attention"),
        ({"window": 4}, {"attn_mask": True}, r"window=4 builds its own band mask.*attn_mask of shape \(6, 6\)"),
        ({"window": 4, "num_global": 1}, {"cache": True}, r"num_global=1 with a key/value cache"),
    ],
)
def test_bad_window_values_name_the_value(kwargs: dict, call: dict, message: str) -> None:
    x = torch.randn(2, 6, DIM)
    extra = {"context": {"context": torch.randn(2, 3, DIM)}, "attn_mask": {"attn_mask": torch.ones(6, 6, dtype=torch.bool)},
             "cache": {"cache": KVCache(), "causal": True}, "bad_pad": {"key_padding_mask": torch.zeros(1, 6, dtype=torch.bool)}}
    with pytest.raises(ValueError, match=message):
        m = MultiHeadAttention(DIM, HEADS, **kwargs)
        m(x, **{k2: v2 for k in call for k2, v2 in extra[k].items()})


def test_models_take_the_window_and_equal_dense_when_it_covers_everything() -> None:
    vit = VisionTransformer(img_size=28, patch_size=4, dim=32, depth=2, num_heads=4, pool="cls",
                            attn_window=3, attn_global=1).eval()
    dense = VisionTransformer(img_size=28, patch_size=4, dim=32, depth=2, num_heads=4, pool="cls").eval()
    dense.load_state_dict(vit.state_dict())
    img = torch.randn(2, 1, 28, 28)
    banded = (vit.forward_features(img) - dense.forward_features(img)).abs().amax()
    assert banded > 0.05  # 50 tokens, window 3: really banded
    for block in vit.encoder.blocks:
        block.attn.window = 1000
    torch.testing.assert_close(vit(img), dense(img), atol=1e-5, rtol=1e-5)
    audio = AudioSpectrogramTransformer(clip_seconds=4.0, n_mels=32, patch_size=[32, 4], patch_stride=[32, 4],
                                        dim=32, depth=1, num_heads=4, attn_window=16).eval()
    assert audio(torch.randn(2, 4 * 16000)).shape == (2, 12)
    assert audio.encoder.blocks[0].attn.window == 16
