"""Training switches (training/switches.py, the LightningModules, configs/trainer/): each one against the plain path.

* grad_checkpointing: identical loss and gradients, blocks really recomputed, far fewer saved activations.
* compile: same outputs and gradients, same state_dict keys (checkpoints interchangeable), and the
  translator compiles once for batches of any length. The default suite compiles with the "aot_eager"
  backend (Dynamo graph capture + AOTAutograd, as inductor sees it, without minutes of C++ codegen on CPU);
  the inductor test is marked slow.
* bf16-mixed: Lightning's own precision plugin, loss and gradients within bfloat16 tolerance of float32.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._dynamo.utils import counters

import training.switches as perf
from training.classification import ClassificationModule
from training.seq2seq import Seq2SeqModule
from models.translator import Translator
from models.video import VideoTransformer
from models.vit import VisionTransformer


def _adamw(params):
    return torch.optim.AdamW(params, lr=1e-3)


def tiny_vit(**kw) -> VisionTransformer:
    return VisionTransformer(img_size=16, patch_size=4, dim=32, depth=2, num_heads=2, stem="patch", **kw)


def tiny_translator(**kw) -> Translator:
    return Translator(vocab_size=40, dim=32, encoder_depth=2, decoder_depth=2, num_heads=2, max_len=32, **kw)


def tiny_video(**kw) -> VideoTransformer:
    return VideoTransformer(img_size=16, num_frames=4, in_chans=1, num_classes=4, patch_size=8, dim=32, depth=2,
                            num_heads=2, stem="patch", **kw)


def text_batch(B: int, S: int, T: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    src, tgt = torch.randint(4, 40, (B, S), generator=g), torch.randint(4, 40, (B, T), generator=g)
    src[0, S // 2:] = 0  # PAD: padding masks in play
    tgt[-1, T // 2:] = 0
    return src, tgt


def seq2seq_loss(net: nn.Module, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    logits = net(src, tgt[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1), tgt[:, 1:].flatten(), ignore_index=0)


# (name, builder, loss on a fixed batch) for every block type the switch wraps
def _vit_case():
    x, y = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 3])
    return tiny_vit(num_classes=4, drop=0.1, drop_path=0.2), lambda net: F.cross_entropy(net(x), y)


def _translator_case():
    src, tgt = text_batch(3, 9, 7)
    return tiny_translator(drop=0.1, drop_path=0.2), lambda net: seq2seq_loss(net, src, tgt)


def _video_case(attention: str):
    def make():
        x, y = torch.randn(2, 1, 4, 16, 16), torch.tensor([1, 3])
        return tiny_video(attention=attention, drop=0.1, drop_path=0.2), lambda net: F.cross_entropy(net(x), y)
    return make


CASES = {"vit": _vit_case, "translator": _translator_case, "video_divided": _video_case("divided"),
         "video_joint": _video_case("joint")}


def _loss_and_grads(net: nn.Module, loss_fn) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    net.zero_grad()
    torch.manual_seed(123)  # the same dropout / drop-path draws for both runs
    loss = loss_fn(net)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("case", sorted(CASES))
def test_grad_checkpointing_gives_identical_loss_and_gradients(case: str) -> None:
    torch.manual_seed(0)
    plain, loss_fn = CASES[case]()
    ckpt = copy.deepcopy(plain)
    n = perf.enable_grad_checkpointing(ckpt)
    assert n == 4 if case in ("translator",) else n == 2
    assert ckpt.state_dict().keys() == plain.state_dict().keys()
    # recomputed for real: a block's MLP is entered twice per training step (forward, then again in
    # backward; a pre-hook, as the recomputation stops once the last saved tensor is rebuilt)
    calls = []
    next(m for m in ckpt.modules() if isinstance(m, perf.CHECKPOINTED_BLOCKS)).mlp.register_forward_pre_hook(
        lambda *_: calls.append(1))
    plain.train(), ckpt.train()
    loss_p, grads_p = _loss_and_grads(plain, loss_fn)
    loss_c, grads_c = _loss_and_grads(ckpt, loss_fn)
    assert len(calls) == 2
    torch.testing.assert_close(loss_c, loss_p, rtol=0, atol=0)  # the forward pass is the same computation
    assert grads_c.keys() == grads_p.keys()
    for name in grads_p:  # dropout masks replayed exactly; only the summation order may differ
        torch.testing.assert_close(grads_c[name], grads_p[name], rtol=1e-5, atol=1e-7, msg=name)
    # eval and no_grad take the plain path (no recomputation to pay for)
    ckpt.eval()
    with torch.no_grad():
        loss_fn(ckpt)
    assert len(calls) == 3


def _saved_activation_bytes(net: nn.Module, loss_fn) -> int:
    """Bytes of the tensors autograd keeps for the backward pass (parameters excluded)."""
    params = {p.data_ptr() for p in net.parameters()}
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        if t.data_ptr() not in params:
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss_fn(net).backward()
    return total


def test_grad_checkpointing_keeps_fewer_activations() -> None:
    """The memory claim, measured without a GPU: activations saved for backward on a bigger input."""
    torch.manual_seed(0)
    net = VisionTransformer(img_size=64, patch_size=4, dim=64, depth=6, num_heads=4, stem="patch")
    x, y = torch.randn(16, 1, 64, 64), torch.randint(0, 10, (16,))
    loss_fn = lambda m: F.cross_entropy(m(x), y)  # noqa: E731
    plain = _saved_activation_bytes(net, loss_fn)
    perf.enable_grad_checkpointing(net)
    ckpt = _saved_activation_bytes(net, loss_fn)
    assert ckpt < plain / 4, (ckpt, plain)  # measured: about 1/9 (block inputs only, 6 blocks of 256 tokens)


def test_grad_checkpointing_through_the_lightning_module() -> None:
    torch.manual_seed(0)
    module = ClassificationModule(tiny_vit(), num_classes=10, optimizer=_adamw, grad_checkpointing=True)
    assert all("forward" in b.__dict__ for b in module.net.modules() if isinstance(b, perf.CHECKPOINTED_BLOCKS))
    with pytest.raises(ValueError, match="no block"):
        perf.enable_grad_checkpointing(nn.Linear(2, 2))


@pytest.fixture
def fast_compile(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(perf, "COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def test_compiled_classifier_matches_plain_and_shares_checkpoints(fast_compile) -> None:
    torch.manual_seed(0)
    plain = ClassificationModule(tiny_vit(), num_classes=10, optimizer=_adamw)
    compiled = ClassificationModule(tiny_vit(), num_classes=10, optimizer=_adamw, compile=True)
    # checkpoints interchangeable: same keys, and a plain state_dict loads strictly into the compiled module
    assert compiled.state_dict().keys() == plain.state_dict().keys()
    compiled.load_state_dict(plain.state_dict())
    x, y = torch.randn(4, 1, 16, 16), torch.tensor([1, 2, 3, 4])
    out_p, out_c = plain(x), compiled(x)
    assert counters["stats"]["unique_graphs"] == 1  # it really ran a compiled graph
    torch.testing.assert_close(out_c, out_p, rtol=1e-5, atol=1e-6)
    F.cross_entropy(out_p, y).backward()
    F.cross_entropy(out_c, y).backward()
    for (name, p), q in zip(plain.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)
    plain.load_state_dict(compiled.state_dict())  # and back


def test_compiled_translator_compiles_once_for_all_lengths(fast_compile) -> None:
    torch.manual_seed(0)
    plain = Seq2SeqModule(tiny_translator(drop=0.0), optimizer=_adamw)
    compiled = Seq2SeqModule(tiny_translator(drop=0.0), optimizer=_adamw, compile=True, grad_checkpointing=True)
    compiled.load_state_dict(plain.state_dict())
    # batches as the bucketing sampler makes them: new lengths, a smaller last batch, one without padding
    shapes = [(8, 5, 7), (8, 9, 12), (8, 13, 4), (8, 21, 30), (8, 6, 6), (3, 17, 11)]
    for i, (B, S, T) in enumerate(shapes):
        src, tgt = text_batch(B, S, T, seed=i)
        if i == 4:
            src[0], tgt[-1] = 5, 5  # nothing padded
        loss_p, loss_c = seq2seq_loss(plain, src, tgt), seq2seq_loss(compiled, src, tgt)
        torch.testing.assert_close(loss_c, loss_p, rtol=1e-5, atol=1e-6)
        loss_c.backward()
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])  # one graph for every length
    # the eval-mode loss (validation) adds exactly one more graph, also for all lengths
    compiled.eval()
    with torch.no_grad():
        for i, (B, S, T) in enumerate(shapes[:3]):
            src, tgt = text_batch(B, S, T, seed=i)
            compiled(src, tgt[:, :-1])
    assert counters["stats"]["unique_graphs"] == 2
    # decoding stays eager and still works
    assert compiled.net.greedy(text_batch(2, 5, 3)[0], max_new_tokens=4).shape[0] == 2


def test_plain_compile_of_the_translator_would_recompile(fast_compile) -> None:
    """Why Seq2SeqModule marks lengths dynamic: without it, a new length recompiles (padding masks are
    always built, so there is no branch on padding left to recompile for)."""
    net = perf.compile_net(tiny_translator(drop=0.0), backend="eager")  # counting graphs needs no backend
    for i, (S, T) in enumerate([(5, 7), (9, 12), (13, 4)]):
        net(*text_batch(4, S, T, seed=i))
    assert counters["stats"]["unique_graphs"] >= 2


@pytest.mark.slow
def test_inductor_compiled_vit_matches_plain() -> None:
    """The real backend (C++ code generation on CPU: ~1-2 minutes on 2 busy cores)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    plain = tiny_vit()
    compiled = perf.compile_net(copy.deepcopy(plain), backend="inductor")
    x = torch.randn(8, 1, 16, 16)
    out_p, out_c = plain(x), compiled(x)
    torch.testing.assert_close(out_c, out_p, rtol=1e-4, atol=1e-5)
    out_p.square().sum().backward()
    out_c.square().sum().backward()
    for (name, p), q in zip(plain.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-5, msg=name)


def _bf16_vs_fp32(module: nn.Module, loss_fn) -> None:
    """A training step's loss and gradients under Lightning's bf16-mixed plugin vs float32."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    plugin = MixedPrecision("bf16-mixed", "cpu")
    module.zero_grad()
    loss32 = loss_fn(module)
    loss32.backward()
    g32 = torch.cat([p.grad.flatten() for p in module.parameters() if p.grad is not None])
    module.zero_grad()
    with plugin.forward_context():
        loss16 = loss_fn(module)
    assert loss16.dtype == torch.float32  # cross-entropy runs in float32 under autocast
    loss16.backward()
    g16 = torch.cat([p.grad.flatten() for p in module.parameters() if p.grad is not None])
    assert all(p.dtype == torch.float32 for p in module.parameters())  # weights stay float32
    # bfloat16 keeps 8 bits of mantissa (relative step 2^-8 = 0.4 %): loss within 1 %, gradient
    # direction within ~1 degree and norm within 5 %.
    torch.testing.assert_close(loss16, loss32, rtol=1e-2, atol=1e-3)
    assert F.cosine_similarity(g16, g32, dim=0) > 0.999
    assert torch.allclose(g16.norm(), g32.norm(), rtol=5e-2)


def test_bf16_mixed_training_step_close_to_fp32_classifier() -> None:
    torch.manual_seed(0)
    module = ClassificationModule(tiny_vit(), num_classes=10, optimizer=_adamw)
    x, y = torch.randn(16, 1, 16, 16), torch.randint(0, 10, (16,))
    _bf16_vs_fp32(module, lambda m: F.cross_entropy(m(x), y))


def test_bf16_mixed_training_step_close_to_fp32_translator() -> None:
    torch.manual_seed(0)
    module = Seq2SeqModule(tiny_translator(drop=0.0), optimizer=_adamw)
    src, tgt = text_batch(8, 11, 9)
    _bf16_vs_fp32(module, lambda m: seq2seq_loss(m, src, tgt))


def test_trainer_configs_build_the_switches(compose_train) -> None:
    from lightning.pytorch.plugins.precision import MixedPrecision
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, ModelParallelStrategy
    from hydra.utils import instantiate

    from utils.build import build_trainer

    cfg = compose_train("trainer.precision=bf16-mixed", "logger=csv")
    trainer = build_trainer(cfg)
    assert isinstance(trainer.precision_plugin, MixedPrecision) and trainer.precision_plugin.precision == "bf16-mixed"

    cfg = compose_train("trainer=ddp")
    assert (cfg.trainer.strategy, cfg.trainer.devices, cfg.trainer.accelerator) == ("ddp", 2, "cpu")
    # the GPU presets (tests/test_sharding.py runs both on 2 CPU processes)
    cfg = compose_train("trainer=fsdp")
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, FSDPStrategy) and not isinstance(strategy, DDPStrategy)
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed"
    cfg = compose_train("trainer=fsdp2", "trainer.devices=4")
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, ModelParallelStrategy)
    assert (strategy._data_parallel_size, strategy._tensor_parallel_size) == (4, 1)

    cfg = compose_train("model=translator", "model.compile=true", "model.grad_checkpointing=true")
    assert cfg.model.compile is True and cfg.model.grad_checkpointing is True
