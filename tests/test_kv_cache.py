"""The preallocated KV cache (KVCache(capacity=...)): buffers allocated once, written in place, the
same numbers as the growing cache; and the translator's decoding, which uses it and reads `done`
back only every CHECK_EVERY steps."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from helpers.syncs import count_syncs
from models import translator
from models.attention import KVCache, MultiHeadAttention, RotaryEmbedding, fused_attn
from models.translator import Translator

DIM, HEADS, KV_HEADS, STEPS = 32, 4, 2, 20


class CountCats(TorchDispatchMode):
    """Counts aten.cat calls (a growing cache concatenates its keys and values every step)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.cat.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


def layer(fused: bool, rotary: bool = False, window: int | None = None) -> MultiHeadAttention:
    torch.manual_seed(0)
    rope = RotaryEmbedding(DIM // HEADS) if rotary else None
    return MultiHeadAttention(DIM, HEADS, num_kv_heads=KV_HEADS, fused=fused, rotary=rope, window=window).eval()


def decode(m: MultiHeadAttention, x: torch.Tensor, cache: KVCache, prefill: int = 1) -> torch.Tensor:
    """A prefill, then one position at a time."""
    steps = [m(x[:, :prefill], causal=True, cache=cache)]
    steps += [m(x[:, t:t + 1], causal=True, cache=cache) for t in range(prefill, x.shape[1])]
    return torch.cat(steps, 1)


def test_buffers_are_allocated_once_and_nothing_is_concatenated() -> None:
    m, x = layer(fused=True), torch.randn(2, STEPS, DIM)
    cache, grow = KVCache(capacity=STEPS), KVCache()
    ptrs, cats = set(), []
    with torch.no_grad():
        for t in range(STEPS):
            with CountCats() as counted:
                m(x[:, t:t + 1], causal=True, cache=cache)
            cats.append(counted.count)
            ptrs.add((cache.k.data_ptr(), cache.v.data_ptr()))
            with CountCats() as counted:
                m(x[:, t:t + 1], causal=True, cache=grow)
            cats.append(-counted.count)
    assert len(ptrs) == 1 and cats[::2] == [0] * STEPS  # one buffer, never a cat
    assert cats[3::2] == [-2] * (STEPS - 1)  # the growing cache: k and v concatenated every step
    assert cache.length == STEPS and cache.k.shape == (2, KV_HEADS, STEPS, DIM // HEADS)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("rotary", [False, True])
def test_preallocated_equals_growing_bit_for_bit(fused: bool, rotary: bool) -> None:
    m, x = layer(fused, rotary), torch.randn(3, STEPS, DIM)
    with torch.no_grad():
        grown = decode(m, x, grow := KVCache(), prefill=4)
        pre = decode(m, x, cache := KVCache(capacity=STEPS + 5), prefill=4)
    assert torch.equal(pre, grown)
    assert torch.equal(cache.k, grow.k) and torch.equal(cache.v, grow.v) and cache.position == STEPS


# window - 1 + one step: the smallest that runs; below 2 (window - 1) + 1 the kept keys overlap their new place
@pytest.mark.parametrize("capacity", [4 + 1, 4 + 3, 4 + 4 + 1, 40])
def test_a_rolling_window_in_a_small_buffer_equals_the_growing_rolling_cache(capacity: int) -> None:
    m, x = layer(fused=False, rotary=True, window=5), torch.randn(2, 31, DIM)
    with torch.no_grad():
        grown = decode(m, x, grow := KVCache())
        cache = KVCache(capacity=capacity)
        pre = decode(m, x, cache)
        ptr = cache.k.data_ptr() - cache._start * cache.k.stride(2) * cache.k.element_size()
    assert torch.equal(pre, grown) and torch.equal(cache.k, grow.k)
    assert (cache.offset, cache.position, cache.length) == (grow.offset, grow.position, grow.length) == (27, 31, 4)
    assert ptr == cache._k_buf.data_ptr() and cache._k_buf.shape[2] == capacity  # never reallocated


def test_a_write_past_the_capacity_and_a_bad_capacity_raise() -> None:
    m, x = layer(fused=True), torch.randn(1, 4, DIM)
    cache = KVCache(capacity=3)
    m(x[:, :3], causal=True, cache=cache)
    with pytest.raises(ValueError, match="capacity 3 exceeded"):
        m(x[:, 3:], causal=True, cache=cache)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="capacity"):
            KVCache(capacity=bad)


@pytest.mark.parametrize("rotary", [False, True])
def test_reorder_is_in_place_and_matches_the_growing_cache(rotary: bool) -> None:
    """Beam search: after every step the surviving rows are selected, repeats included."""
    m, x = layer(fused=True, rotary=rotary), torch.randn(4, STEPS, DIM)
    g = torch.Generator().manual_seed(3)
    cache, grow = KVCache(capacity=STEPS + 1), KVCache()
    with torch.no_grad():
        for t in range(STEPS):
            a = m(x[:, t:t + 1], causal=True, cache=cache)
            b = m(x[:, t:t + 1], causal=True, cache=grow)
            assert torch.equal(a, b)
            ptr = cache.k.data_ptr()
            rows = torch.randint(0, 4, (4,), generator=g)
            cache.reorder(rows)
            grow.reorder(rows)
            assert cache.k.data_ptr() == ptr and torch.equal(cache.k, grow.k) and torch.equal(cache.v, grow.v)
            x = x.index_select(0, rows)
        cache.reorder(torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))  # a new batch size: new buffers, same keys
        grow.reorder(torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
        y = torch.randn(8, 1, DIM)
        assert torch.equal(m(y, causal=True, cache=cache), m(y, causal=True, cache=grow))


def tiny(**kw) -> Translator:
    torch.manual_seed(0)
    args = {"dim": 32, "encoder_depth": 1, "decoder_depth": 2, "num_heads": 4, "num_kv_heads": 2, "max_len": 48,
            "drop": 0.0}
    return Translator(23, **{**args, **kw}).eval()


def source(batch: int = 6, length: int = 7) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    src = torch.randint(4, 23, (batch, length), generator=g)
    src[1, 4:] = 0  # a padded row
    return src


def test_a_cached_decoder_step_concatenates_nothing() -> None:
    net, src = tiny(), source()
    memory, pad = net.encode(src)
    with torch.no_grad():
        caches, grow = net.new_caches(10), net.new_caches()
        ids = torch.randint(4, 23, (src.shape[0], 10))
        for t in range(10):
            with CountCats() as counted:
                a = net.decode(ids[:, t:t + 1], memory, pad, caches)
            assert counted.count == 0
            assert torch.equal(a, net.decode(ids[:, t:t + 1], memory, pad, grow))


@pytest.mark.parametrize("window", [None, 3])
def test_decoding_with_the_preallocated_cache_gives_the_growing_caches_tokens(window, monkeypatch) -> None:
    net, src = tiny(attn_window=window), source()
    runs = {}
    for name, capacity in (("pre", True), ("grow", False)):
        if not capacity:
            monkeypatch.setattr(Translator, "new_caches", lambda self, capacity=None: [
                (KVCache(), KVCache(static=True)) for _ in self.decoder])
        with fused_attn(False):
            runs[name] = (net.greedy(src, 30, min_new_tokens=5), net.beam_search(src, 3, 30),
                          net.beam_search(src, 3, 30, length_norm="hf"))
    for a, b in zip(runs["pre"], runs["grow"]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("seed", range(4))
def test_reading_done_every_k_steps_gives_the_same_tokens(seed: int, monkeypatch) -> None:
    """Rows finish at different steps; steps run after the last one finished are cut off."""
    torch.manual_seed(seed)
    net = Translator(9, dim=16, encoder_depth=1, decoder_depth=1, num_heads=2, max_len=40, drop=0.0).eval()
    with torch.no_grad():
        net.head.weight.normal_(0, 1.0)  # a few tokens, EOS likely early: rows end at various steps
    src = torch.randint(4, 9, (5, 6))
    runs = {}
    for every in (1, 8, 64):
        monkeypatch.setattr(translator, "CHECK_EVERY", every)
        runs[every] = [net.greedy(src, n) for n in (3, 13, 39)] + [
            net.beam_search(src, k, n, use_cache=c) for k in (1, 3) for n in (5, 21) for c in (True, False)]
    lengths = [r.shape[1] for r in runs[1]]
    assert min(lengths) < max(lengths)  # some decodings stopped early
    for every in (8, 64):
        for a, b in zip(runs[1], runs[every]):
            assert torch.equal(a, b)


def test_greedy_reads_done_back_once_every_k_steps() -> None:
    net, src = tiny(), source()
    with count_syncs() as syncs:
        net.greedy(src, 40, min_new_tokens=40)  # 40 steps, none stops early
    assert syncs.count == 1 + 40 // translator.CHECK_EVERY, syncs  # encode's padding test, steps 8, 16, .., 40
