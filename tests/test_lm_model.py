"""models.lm.CausalLM and models.generate on their own: cached decoding (preallocated, rolling) against the
uncached forward, batched prompts against one by one, the sampling filters against transformers' warpers,
the options' checks and defaults."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers.generation.logits_process import (TemperatureLogitsWarper, TopKLogitsWarper,
                                                    TopPLogitsWarper)

from models.attention import KVCache
from models.generate import cache_capacity, filter_logits, fixed_decoder, left_pad
from models.layers import EncoderBlock
from models.lm import CausalLM

V = 50
LEARNED = dict(dim=32, depth=2, num_heads=4)
LLAMA_LIKE = dict(dim=32, depth=2, num_heads=4, num_kv_heads=2, positions="rotary", norm="rmsnorm",
                  ffn="swiglu", ffn_dim=48, bias=False, act="silu")
WINDOWED = dict(LLAMA_LIKE, attn_window=4)
KINDS = {"learned": LEARNED, "rotary": LLAMA_LIKE, "window": WINDOWED}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def lm(kind: str, block_size: int = 64) -> CausalLM:
    net = CausalLM(V, block_size, **KINDS[kind]).eval()
    with torch.no_grad():  # larger weights than GPT-2's init, so that greedy tokens vary
        for p in net.parameters():
            p.mul_(8.0 if p.dim() > 1 else 1.0)
    return net


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_preallocated_cache_decode_equals_the_uncached_forward(kind: str) -> None:
    net = lm(kind)
    ids = torch.randint(0, V, (2, 20))
    P = 6
    caches = net.new_caches(capacity=cache_capacity(P, 20 - P, net.attn_window))
    with torch.no_grad():
        full = net(ids)
        steps = [net(ids[:, :P], caches=caches)] + [net(ids[:, t:t + 1], caches=caches) for t in range(P, 20)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    buffers = {c._k_buf.data_ptr() for c in caches}  # allocated once: the same storage after every step
    assert len(buffers) == len(caches)


def test_rolling_cache_memory_stays_constant_past_the_window() -> None:
    net, P, new = lm("window"), 3, 40
    caches = net.new_caches(capacity=cache_capacity(P, new, net.attn_window))
    ids = torch.randint(0, V, (1, P + new))
    with torch.no_grad():
        full = net(ids)  # the windowed forward (blocked path: 43 tokens > 2 x window)
        logits = [net(ids[:, :P], caches=caches)]
        for t in range(P, P + new):
            logits.append(net(ids[:, t:t + 1], caches=caches))
            assert caches[0].length == net.attn_window - 1 and caches[0]._k_buf.shape[2] == 3 + P
    torch.testing.assert_close(torch.cat(logits, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_cached_generation_equals_recomputing_the_prefix(kind: str) -> None:
    net = lm(kind)
    prompts = [torch.randint(0, V, (n,)).tolist() for n in (2, 9, 5)]
    cached = net.generate(prompts, max_new_tokens=12)
    assert torch.equal(cached, net.generate(prompts, max_new_tokens=12, use_cache=False))
    assert cached.shape == (3, 12) and len(set(cached.flatten().tolist())) > 3


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_batched_prompts_of_different_lengths_equal_one_by_one(kind: str) -> None:
    net = lm(kind)
    prompts = [torch.randint(0, V, (n,)).tolist() for n in (1, 13, 4)]  # 13 > 3 x window: blocked prefill
    batched = net.generate(prompts, max_new_tokens=10)
    for row, prompt in zip(batched, prompts):
        assert row.tolist() == net.generate([prompt], max_new_tokens=10)[0].tolist()


def test_rows_stop_at_eos_and_pad_after_it() -> None:
    net = lm("learned")
    first = net.generate([[1, 2, 3], [4, 5]], max_new_tokens=6)
    eos = int(first[0, 1])
    out = net.generate([[1, 2, 3], [4, 5]], max_new_tokens=6, eos_ids=[eos], pad_id=V - 1)
    assert out[0, :2].tolist() == [int(first[0, 0]), eos] and (out[0, 2:] == V - 1).all()
    assert net.generate([[1, 2, 3]], max_new_tokens=20, eos_ids=[eos]).tolist() == [first[0, :2].tolist()]


def test_a_seeded_generator_repeats_its_draws() -> None:
    net = lm("rotary")
    draw = dict(max_new_tokens=16, temperature=1.0, top_p=0.95)
    a = net.generate([[1, 2, 3]], generator=torch.Generator().manual_seed(7), **draw)
    b = net.generate([[1, 2, 3]], generator=torch.Generator().manual_seed(7), **draw)
    c = net.generate([[1, 2, 3]], generator=torch.Generator().manual_seed(8), **draw)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, 5, 0.9), (1.0, None, 0.5), (1.3, 12, None)])
def test_sampling_filters_equal_transformers_warpers(temperature: float, top_k: int | None,
                                                     top_p: float | None) -> None:
    logits = torch.randn(4, V) * 3
    expected = logits.clone()
    for warper in ([TemperatureLogitsWarper(temperature)] + ([TopKLogitsWarper(top_k)] if top_k else [])
                   + ([TopPLogitsWarper(top_p)] if top_p else [])):
        expected = warper(None, expected)
    got = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    assert torch.equal(got.isinf(), expected.isinf())
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


def test_the_rotary_table_is_stored_once_and_shared_by_every_block() -> None:
    net = lm("rotary")
    state = net.state_dict()
    assert [k for k in state if "inv_freq" in k] == ["rope.inv_freq"]
    twin = CausalLM(V, 64, **LLAMA_LIKE, rope_base=10.0)  # another table: loading must replace it
    twin.load_state_dict(state)
    assert all(b.attn.rotary is twin.rope for b in twin.blocks)
    ids = torch.randint(0, V, (1, 9))
    torch.testing.assert_close(twin.eval()(ids), net(ids), atol=0, rtol=0)


def test_llama3_rope_scaling_changes_only_the_long_wavelengths() -> None:
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}
    plain = CausalLM(V, 64, **LLAMA_LIKE).rope.inv_freq
    scaled = CausalLM(V, 64, **LLAMA_LIKE, rope_scaling=scaling).rope.inv_freq
    wavelen = 2 * math.pi / plain
    assert torch.equal(scaled[wavelen < 4], plain[wavelen < 4])
    torch.testing.assert_close(scaled[wavelen > 16], plain[wavelen > 16] / 8)


def test_gpt2_init_and_tied_head() -> None:
    net = CausalLM(V, 64, dim=64, depth=8, num_heads=4)
    assert net.head.weight is net.tok_embed.weight
    std = net.blocks[0].mlp.fc2.weight.std().item()
    assert abs(std - 0.02 / math.sqrt(16)) < 0.002
    assert abs(net.blocks[0].mlp.fc1.weight.std().item() - 0.02) < 0.002
    assert not CausalLM(V, 64, tie_embeddings=False).head.weight is None


def test_options_are_checked_with_their_names() -> None:
    for bad, message in [(dict(norm="batchnorm"), "norm='batchnorm': expected one of layernorm, rmsnorm"),
                         (dict(positions="alibi"), "positions='alibi': expected one of learned, rotary"),
                         (dict(ffn_dim=0), "ffn_dim=0: expected an integer >= 1"),
                         (dict(bias="no"), "bias='no'"),
                         (dict(rope_scaling={"rope_type": "yarn"}), "rope_scaling.rope_type='yarn'")]:
        with pytest.raises(ValueError, match=message):
            CausalLM(V, 16, **bad)
    with pytest.raises(ValueError, match="block_size=16"):
        CausalLM(V, 16)(torch.zeros(1, 17, dtype=torch.long))


def test_the_block_defaults_are_the_zoo_s_old_block() -> None:
    block = EncoderBlock(32, 4)
    assert isinstance(block.norm1, nn.LayerNorm) and block.norm1.eps == 1e-6
    assert block.attn.proj.bias is not None and block.mlp.fc1.bias is not None and block.attn.rotary is None
    assert block.mlp.fc1.out_features == 128


def test_generation_past_the_learned_positions_is_refused() -> None:
    with pytest.raises(ValueError, match="max_new_tokens=10: a prompt of 8 tokens"):
        CausalLM(V, 16, **LEARNED).generate([[1] * 8], max_new_tokens=10)


@pytest.mark.slow  # about 10 s on one core: the dynamo export
def test_exports_to_onnx_with_dynamic_batch_and_length(tmp_path) -> None:
    import onnxruntime as ort

    spec = lm("rotary", block_size=16).onnx_spec()
    with torch.no_grad():
        program = torch.onnx.export(spec.module, spec.example, dynamo=True, input_names=spec.input_names,
                                    output_names=["logits"], dynamic_shapes=spec.dynamic_shapes, verbose=False)
    program.save(str(tmp_path / "lm.onnx"))
    session = ort.InferenceSession(str(tmp_path / "lm.onnx"), providers=["CPUExecutionProvider"])
    for ids in (spec.example[0], torch.randint(0, V, (3, 7))):
        with torch.no_grad():
            expected = spec.module(ids)
        got = torch.from_numpy(session.run(["logits"], {"ids": ids.numpy()})[0])
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_a_state_without_the_rotary_table_keeps_the_computed_one() -> None:
    scaling = {"rope_type": "linear", "factor": 4.0}
    net = CausalLM(V, 64, **LLAMA_LIKE, rope_scaling=scaling)
    table = net.rope.inv_freq.clone()
    state = {k: v for k, v in CausalLM(V, 64, **LLAMA_LIKE).state_dict().items() if "inv_freq" not in k}
    net.load_state_dict(state, strict=True)
    expected = 1.0 / 10000.0 ** (torch.arange(0, 8, 2).float() / 8) / 4  # head_dim 8, linear factor 4
    assert torch.equal(net.rope.inv_freq, table) and torch.equal(table, expected)


@pytest.mark.parametrize("kind", ["learned", "rotary"])
def test_a_compiled_decode_step_traces_once_for_every_length(kind: str) -> None:
    """The preallocated cache's keys are views that grow by one a step: with dynamic shapes the step is
    traced once (the length is symbolic), not once per length, and gives the eager numbers."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    net, P, new = lm(kind), 5, 10
    ids = torch.randint(0, V, (2, P + new))
    # One slot spare, as generate() leaves it (its last token is never fed back): a view of the whole buffer
    # would be contiguous, another trace.
    caches = net.new_caches(capacity=P + new + 1)

    def step(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return net(x, positions=positions, caches=caches)

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(step, backend="eager", dynamic=True)
    with torch.no_grad():
        full = net(ids)
        logits = [net(ids[:, :P], caches=caches)]
        logits += [compiled(ids[:, t:t + 1].clone(), torch.full((2, 1), t)) for t in range(P, P + new)]
    assert counters["stats"]["unique_graphs"] == 1
    torch.testing.assert_close(torch.cat(logits, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["learned", "rotary"])
def test_fixed_cache_steps_equal_the_uncached_forward_on_a_padded_batch(kind: str) -> None:
    """The static cache of the compiled path (whole buffers as keys, written at a tensor slot, the unwritten
    slots masked), run eagerly: every step's logits equal the full forward of each row alone."""
    net, new = lm(kind), 8
    rows = [torch.randint(0, V, (n + new,)) for n in (3, 7)]
    prompts = [r[:-new].tolist() for r in rows]
    ids, pad, lengths = left_pad(prompts, pad_id=0)
    positions = ((~pad).long().cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        first, decode = fixed_decoder(net, ids, pad, lengths, new, positions)
        got = [first] + [decode(torch.stack([r[len(p) + t] for r, p in zip(rows, prompts)])[:, None])
                         for t in range(new - 1)]
        want = [torch.stack([net(r[None])[0, len(p) - 1 + t] for r, p in zip(rows, prompts)]) for t in range(new)]
    torch.testing.assert_close(torch.stack(got), torch.stack(want), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["learned", "rotary"])
def test_compile_traces_the_decode_step_once_and_gives_the_eager_tokens(kind: str, monkeypatch) -> None:
    import torch._dynamo
    from torch._dynamo.utils import counters

    import models.generate as generation

    torch._dynamo.reset()
    counters.clear()
    monkeypatch.setattr(generation, "_compiled_step",
                        torch.compile(generation._fixed_step, backend="eager", dynamic=False))
    net = lm(kind, block_size=256)
    prompts = [torch.randint(0, V, (n,)).tolist() for n in (2, 9, 5)]
    for draw, new in ((dict(), 20), (dict(temperature=0.9, top_k=20, top_p=0.9), 31)):
        eager = net.generate(prompts, max_new_tokens=new, generator=torch.Generator().manual_seed(3), **draw)
        compiled = net.generate(prompts, max_new_tokens=new, generator=torch.Generator().manual_seed(3),
                                compile=True, **draw)
        assert torch.equal(compiled, eager)
    # 19 + 30 steps, 29 and 40 slots needed: one capacity bucket (128 slots), one trace.
    assert counters["stats"]["unique_graphs"] == 1
    net.generate(prompts, max_new_tokens=130, compile=True)  # 139 slots: the next bucket, a second trace
    assert counters["stats"]["unique_graphs"] == 2


def test_compile_with_inductor_gives_the_eager_tokens() -> None:
    """The real thing (torch.compile's default backend, C++ kernels): about 8 s to compile on one core."""
    net = lm("rotary")
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
    assert torch.equal(net.generate(prompts, max_new_tokens=10, compile=True), net.generate(prompts, max_new_tokens=10))


def test_compile_and_fixed_caches_refuse_what_they_cannot_do() -> None:
    with pytest.raises(ValueError, match="attn_window=4"):
        lm("window").generate([[1, 2]], max_new_tokens=3, compile=True)
    with pytest.raises(ValueError, match="use_cache=False"):
        lm("learned").generate([[1, 2]], max_new_tokens=3, compile=True, use_cache=False)
    with pytest.raises(ValueError, match="compile='yes'"):
        lm("learned").generate([[1, 2]], max_new_tokens=3, compile="yes")
    with pytest.raises(ValueError, match="needs a capacity"):
        KVCache(fixed=True)
    cache = KVCache(capacity=4, fixed=True)
    with pytest.raises(ValueError, match=r"expected a \(2,\) tensor of slots, got None"):
        cache.append(torch.zeros(1, 1, 2, 8), torch.zeros(1, 1, 2, 8))
    for kind in ("rotary", "learned"):
        net = lm(kind)
        with pytest.raises(ValueError, match="need.* each token's `positions`"):
            net(torch.zeros(1, 2, dtype=torch.long), caches=net.new_caches(4, fixed=True))
    cache.write_at = torch.arange(2)
    cache.append(torch.zeros(1, 1, 2, 8), torch.zeros(1, 1, 2, 8))
    for refused in (lambda: cache.reorder(torch.tensor([0])), lambda: cache.roll(1)):
        with pytest.raises(ValueError, match="a fixed cache keeps"):
            refused()
