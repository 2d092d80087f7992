"""Sharded training (training/sharding.py): FSDP1 (trainer=fsdp) and FSDP2 (trainer=fsdp2) on 2 CPU processes
(gloo) through the command line, against one process with the same global batch (as tests/test_distributed.py
does for DDP, whose docstring says why the runs see the same samples), plus the mixed-precision policy.

The runs use SGD with a small clip: Adam divides out any constant factor of the gradient, so it would hide a
wrong clipping norm; under SGD a per-shard norm (instead of the global one) or a lost weight decay (FSDP1
hands configure_optimizers flat 1-D shards) moves the weights far beyond the tolerance. With momentum:
Lightning's FSDP resume indexes the first optimizer state entry, which plain SGD does not have.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from helpers.cli import run, run_cli
from helpers.config import compose_config
from utils.checkpoint import load_checkpoint

TINY = ["threads=1", "model.net.stem=patch", "model.net.depth=1", "model.net.dim=32", "trainer.max_epochs=2",
        "trainer.limit_train_batches=4", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2",
        "trainer.log_every_n_steps=1", "data.augment=false", "data.shuffle=false", "keep_epoch_checkpoints=1",
        "trainer.precision=32-true", "model.optimizer._target_=torch.optim.SGD", "model.optimizer.lr=0.5",
        "+model.optimizer.momentum=0.5", "trainer.gradient_clip_val=0.01", "logger=csv", "callbacks.progress_bar=null",
        "trainer.enable_progress_bar=false"]
TWO = ["trainer.accelerator=cpu", "trainer.devices=2", "data.batch_size=16"]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    """The reference: one process, global batch 32, 2 epochs, then resumed for a third (in this process)."""
    base = tmp_path_factory.mktemp("one_process")
    run("train.py", *TINY, "data.batch_size=32", f"hydra.run.dir={base / 'run'}")
    run("train.py", *TINY, "data.batch_size=32", "trainer.max_epochs=3", f"ckpt_path={base / 'run'}",
        f"hydra.run.dir={base / 'resumed'}")
    return base


def assert_same_weights(a: Path, b: Path) -> dict:
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    assert ca["global_step"] == cb["global_step"]
    assert ca["state_dict"].keys() == cb["state_dict"].keys()
    for name, w in cb["state_dict"].items():
        torch.testing.assert_close(ca["state_dict"][name], w, rtol=1e-4, atol=1e-5, msg=name)
    return ca


def groups(ckpt: dict) -> list[tuple[int, float]]:
    """(number of parameters, weight decay) of each optimizer parameter group."""
    return [(len(g["params"]), g["weight_decay"]) for g in ckpt["optimizer_states"][0]["param_groups"]]


def test_fsdp_trains_resumes_and_evaluates_as_one_process(one_process: Path, tmp_path: Path) -> None:
    run_dir, resumed = tmp_path / "fsdp", tmp_path / "resumed"
    run_cli("train.py", *TINY, *TWO, "trainer=fsdp", f"hydra.run.dir={run_dir}")
    final = assert_same_weights(run_dir / "checkpoints" / "epoch001.ckpt",
                                one_process / "run" / "checkpoints" / "epoch001.ckpt")
    assert final["global_step"] == 8  # 2 epochs x 4 steps of the same global batch of 32
    # decay / no-decay groups as one process decides them on unwrapped shapes: 2-D weights decay
    # (patch embedding, qkv, proj, 2 MLP, head), biases / norms / position table / class token do not
    reference = load_checkpoint(one_process / "run" / "checkpoints" / "epoch001.ckpt")
    assert groups(final) == groups(reference) == [(6, 0.05), (13, 0.0)]

    # resume from the run directory on 2 processes: the third epoch as one process resumes it
    run_cli("train.py", *TINY, *TWO, "trainer=fsdp", "trainer.max_epochs=3", f"ckpt_path={run_dir}",
            f"hydra.run.dir={resumed}")
    third = assert_same_weights(resumed / "checkpoints" / "epoch002.ckpt",
                                one_process / "resumed" / "checkpoints" / "epoch002.ckpt")
    assert third["global_step"] == 12

    # the post-fit test (best.ckpt reloaded through the strategy) and evaluate.py in one process agree:
    # 2 processes x 2 test batches of 16 are the first 64 test samples, 4 batches of 16 in one process
    trained = json.loads((run_dir / "metrics.json").read_text())
    run("evaluate.py", f"ckpt_path={run_dir}", "threads=1", "trainer.limit_test_batches=4",
        f"hydra.run.dir={tmp_path / 'eval'}")
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for key in ("test/loss", "test/acc"):
        assert abs(trained[key] - evaluated[key]) < 1e-5, (key, trained[key], evaluated[key])
    assert all(torch.isfinite(torch.tensor(v)) for v in trained.values())


def test_fsdp2_compiled_with_sharded_checkpoints_trains_as_one_process(one_process: Path, tmp_path: Path,
                                                                       monkeypatch) -> None:
    """ModelParallelStrategy + configure_model (fully_shard per block), the network compiled (traced at its first
    forward, after sharding; aot_eager: no code generation), checkpoints as directories of shards: the post-fit
    reload reads them through the strategy; the other commands refuse them until consolidated."""
    run_dir = tmp_path / "fsdp2"
    monkeypatch.setenv("ZOO_COMPILE_BACKEND", "aot_eager")
    run_cli("train.py", *TINY, *TWO, "trainer=fsdp2", "trainer.strategy.save_distributed_checkpoint=true",
            "model.compile=true", f"hydra.run.dir={run_dir}")
    sharded = run_dir / "checkpoints" / "epoch001.ckpt"
    assert sorted(p.name for p in sharded.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp", "meta.pt"]
    refused = run_cli("evaluate.py", f"ckpt_path={run_dir}", "threads=1", f"hydra.run.dir={tmp_path / 'ev'}",
                      check=False)
    assert refused.returncode == 2 and "lightning.fabric.utilities.consolidate_checkpoint" in refused.stderr
    run_cli("-m", "lightning.fabric.utilities.consolidate_checkpoint", str(sharded))
    assert_same_weights(Path(f"{sharded}.consolidated"), one_process / "run" / "checkpoints" / "epoch001.ckpt")
    reference = json.loads((one_process / "run" / "metrics.json").read_text())
    trained = json.loads((run_dir / "metrics.json").read_text())
    for key in ("val/loss", "test/loss", "test/acc"):
        assert abs(trained[key] - reference[key]) < 1e-5, (key, trained[key], reference[key])


def test_fsdp_preset_keeps_buffers_float32_and_the_audio_front_ends_run(tmp_path: Path) -> None:
    """P0-4: under bf16-mixed, Lightning's own FSDP policy casts every buffer to bf16, and both audio front
    ends then fail (a float32 spectrogram @ bf16 mel banks); the preset's keeps buffers and the gradient
    reduction float32. One process (FSDP casts buffers the same at any world size); Lightning autocasts
    on CUDA only, so the CPU autocast stands in for it."""
    from hydra.utils import instantiate
    from lightning.pytorch.plugins.precision import FSDPPrecision
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    from models.audio import AudioSpectrogramTransformer
    from models.translator import Translator
    from training.switches import block_classes

    cfg = compose_config("train", ["trainer=fsdp"], tmp_path)
    strategy = instantiate(cfg.trainer.strategy)
    strategy.precision_plugin = FSDPPrecision(cfg.trainer.precision)
    policy = strategy.mixed_precision_config
    assert (policy.param_dtype, policy.reduce_dtype, policy.buffer_dtype) == (torch.bfloat16, torch.float32,
                                                                              torch.float32)
    lightnings = FSDPPrecision("bf16-mixed").mixed_precision_config
    assert lightnings.buffer_dtype == torch.bfloat16  # what the preset replaces

    def wrapped(net: torch.nn.Module, mp) -> FSDP:
        return FSDP(net, mixed_precision=mp, auto_wrap_policy=ModuleWrapPolicy(block_classes()),
                    device_id=torch.device("cpu"))

    dist.init_process_group("gloo", init_method=f"file://{tempfile.mktemp(dir=tmp_path)}", rank=0, world_size=1)
    try:
        wave = torch.randn(2, 16000) * 0.1
        for frontend, extra in (("logmel", {}), ("kaldi_fbank", {"max_frames": 50})):
            for mp, works in ((policy, True), (lightnings, False)):
                torch.manual_seed(0)
                net = AudioSpectrogramTransformer(dim=32, depth=1, num_heads=2, num_classes=5, frontend=frontend,
                                                  **extra).eval()
                plain = net(wave)
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    if works:
                        out = wrapped(net, mp)(wave)
                        torch.testing.assert_close(out.float(), plain, atol=0.1, rtol=0.1)  # bf16 weights
                    else:
                        with pytest.raises(RuntimeError, match="same dtype"):
                            wrapped(net, mp)(wave)
                dtypes = {name: b.dtype for name, b in net.named_buffers()}
                assert len(dtypes) == 2 and set(dtypes.values()) == {torch.float32 if works else torch.bfloat16}
        for mp, dtype in ((policy, torch.float32), (lightnings, torch.bfloat16)):
            net = Translator(vocab_size=40, dim=32, encoder_depth=1, decoder_depth=1, num_heads=2, max_len=32)
            with FSDP.summon_full_params(wrapped(net, mp)):  # FSDP casts buffers at its first use
                pass
            assert net.pos.dtype == dtype  # the sinusoidal position table
    finally:
        dist.destroy_process_group()


def test_a_resumed_run_carries_sharded_best_checkpoints_over(tmp_path: Path) -> None:
    """ResumableCheckpoint copies the old run's best checkpoints into the new run directory: directories of
    shards too, replacing a stale one of the same name."""
    from utils.checkpoint import ResumableCheckpoint

    old, new = tmp_path / "old" / "checkpoints", tmp_path / "new" / "checkpoints"
    (old / "best.ckpt").mkdir(parents=True)
    for name, data in ((".metadata", b"index"), ("__0_0.distcp", b"shard 0"), ("__1_0.distcp", b"shard 1")):
        (old / "best.ckpt" / name).write_bytes(data)
    (new / "best.ckpt").mkdir(parents=True)
    (new / "best.ckpt" / "stale").write_bytes(b"")
    callback = ResumableCheckpoint(dirpath=str(new), monitor="val/acc", mode="max")
    best = str(old / "best.ckpt")
    callback.load_state_dict({"dirpath": str(old), "best_k_models": {best: torch.tensor(0.5)}, "best_model_path": best,
                              "best_model_score": torch.tensor(0.5), "kth_best_model_path": best,
                              "last_model_path": ""})
    assert callback.best_model_path == str(new / "best.ckpt")
    assert sorted(p.name for p in (new / "best.ckpt").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert (new / "best.ckpt" / "__1_0.distcp").read_bytes() == b"shard 1"


def test_decay_groups_are_decided_by_name_on_the_plain_network() -> None:
    """2-D weights decay; biases, norms and what the net lists (class token, position table) do not. Wrapper
    names (FSDP1 units, Lightning's activation checkpointing, compile) map back to the plain names."""
    from models.vit import VisionTransformer
    from training.schedules import decay_by_name, plain_name

    net = VisionTransformer(img_size=16, patch_size=4, dim=32, depth=1, num_heads=2, stem="patch")
    decays = decay_by_name(net)
    block = "encoder.blocks.0."
    assert sorted(n for n, d in decays.items() if d) == [
        f"{block}attn.proj.weight", f"{block}attn.qkv.weight", f"{block}mlp.fc1.weight", f"{block}mlp.fc2.weight",
        "head.weight", "patch_embed.proj.weight"]
    assert {"cls_token", "pos_embed.weight", f"{block}norm1.weight", "head.bias"} <= {n for n, d in decays.items()
                                                                                      if not d}
    assert plain_name(f"{block}_fsdp_wrapped_module._checkpoint_wrapped_module.attn._orig_mod.qkv.weight") == (
        f"{block}attn.qkv.weight")
