"""Host syncs per training step (issue 30): none in a classifier's or the translator's step, none in a
Trainer step with the default NaN guard between its checks. Counted on CPU by helpers.syncs (the ops that
would make the host wait for a GPU); on a GPU the same budgets hold with set_sync_debug_mode."""

from __future__ import annotations

import warnings
from contextlib import ExitStack
from pathlib import Path

import hydra
import lightning as L
import pytest
import torch
from omegaconf import open_dict

from helpers.config import compose_config
from helpers.syncs import SyncCount, count_syncs
from utils.faults import NonFiniteGuard

NUM_CLASSES = 5
NETS = {"vit": ["model.net.depth=1", "model.net.dim=32"],
        "audio": ["model.net.depth=1", "model.net.dim=32"],
        "video": ["model.net.depth=1", "model.net.dim=32"]}


def build(model: str, tmp_path: Path, *overrides: str):
    cfg = compose_config("train", [f"model={model}", *overrides], tmp_path)
    with open_dict(cfg):
        if "num_classes" in cfg.model:
            cfg.model.num_classes = NUM_CLASSES
            cfg.model.net.num_classes = NUM_CLASSES
        if "vocab_size" in cfg.model.net:
            cfg.model.net.vocab_size = 60
    module = hydra.utils.instantiate(cfg.model, _convert_="object")
    return module.train()


def step_syncs(module, batch):
    """Syncs in the second step: the first one fills caches (the audio front end's filter banks)."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module.training_step(batch, 0).backward()
    with warnings.catch_warnings(), count_syncs() as syncs:
        warnings.simplefilter("ignore")  # self.log outside a Trainer
        module.training_step(batch, 0).backward()
    return syncs


@pytest.mark.parametrize("model", sorted(NETS))
def test_a_classifier_training_step_and_backward_never_wait_for_the_device(model, tmp_path):
    module = build(model, tmp_path, *NETS[model])
    x = module.net.onnx_spec().example[0]
    batch = (x, torch.arange(len(x)) % NUM_CLASSES)
    syncs = step_syncs(module, batch)
    assert syncs.count == 0, syncs


def test_a_translator_training_step_never_waits_for_the_device(tmp_path):
    module = build("translator", tmp_path, "model.net.dim=32", "model.net.encoder_depth=1",
                   "model.net.decoder_depth=1")
    g = torch.Generator().manual_seed(0)
    src = torch.randint(4, 60, (3, 7), generator=g)
    tgt = torch.randint(4, 60, (3, 6), generator=g)
    src[0, 5:] = module.net.pad_id  # right padding, as the collate makes it
    tgt[1, 4:] = module.net.pad_id
    syncs = step_syncs(module, {"src": src, "tgt": tgt, "index": torch.arange(3)})
    assert syncs.count == 0, syncs


def test_the_batched_vtlp_warp_equals_a_loop_over_warp_steps(tmp_path):
    """One gather + bmm over the stacked filter banks gives the numbers of one matmul per warp step."""
    from models.audio import WARP_STEPS

    net = build("audio", tmp_path, *NETS["audio"]).net
    front = next(m for m in net.modules() if hasattr(m, "warp_bank"))
    g = torch.Generator().manual_seed(0)
    power = torch.rand(16, front.n_fft // 2 + 1, 20, generator=g) ** 4
    torch.manual_seed(1)
    batched = front.warp(power)
    torch.manual_seed(1)
    low, high = front.warp_range
    steps = torch.round((low + (high - low) * torch.rand(16)) * WARP_STEPS).long()
    looped = torch.empty_like(batched)
    for step in steps.unique().tolist():
        rows = (steps == step).nonzero()[:, 0]
        looped[rows] = (power[rows].transpose(1, 2) @ front.warped_filters(step / WARP_STEPS, power.device)
                        ).transpose(1, 2)
    assert len(steps.unique()) > 5 and torch.equal(batched, looped)
    explicit = front.warp(power, torch.full((16,), 1.1))  # given factors: a bank spanning them
    assert torch.equal(explicit, (power.transpose(1, 2) @ front.warped_filters(1.1, power.device)).transpose(1, 2))


def test_the_videomae_position_table_is_made_once(tmp_path, monkeypatch):
    import models.video as video

    net = build("video", tmp_path, *NETS["video"], "+model.net.pos=sincos_fixed").net.eval()
    x = net.onnx_spec().example[0]
    before = net(x)
    monkeypatch.setattr(video, "sinusoidal_table", lambda *a: pytest.fail("table rebuilt in forward"))
    assert torch.equal(net(x), before)


class CountPerStep(L.Callback):
    """Host syncs in each training step (forward, backward, optimizer, every callback before this one)."""

    def __init__(self) -> None:
        self.counts: list[SyncCount] = []
        self.stack = ExitStack()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step_counters = [s["step"] for s in trainer.optimizers[0].state.values() if "step" in s]
        # AdamW's step counters stay on the host on a GPU too (capturable=False): reading them is no sync.
        self.counts.append(self.stack.enter_context(count_syncs(exempt=step_counters)))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.stack.close()


def test_a_trainer_step_with_the_nan_guard_syncs_only_when_it_reads_its_flags(tmp_path):
    module = build("vit", tmp_path, *NETS["vit"])
    x = module.net.onnx_spec().example[0].repeat(8, 1, 1, 1)  # 8 steps an epoch
    data = torch.utils.data.TensorDataset(x, torch.arange(len(x)) % NUM_CLASSES)
    counter = CountPerStep()
    trainer = L.Trainer(max_steps=7, callbacks=[NonFiniteGuard(check_every_n_steps=3), counter], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, accelerator="cpu", default_root_dir=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=2))
    per_step = [c.count for c in counter.counts]
    # the first step builds the optimizer state; then one read of the guard's flags every third step
    assert per_step[1:] == [0, 1, 0, 0, 1, 0], counter.counts


def test_matmul_precision_and_sdpa_backends_are_applied_and_reset_by_the_next_run(tmp_path, in_process):
    from utils.build import setup_runtime

    setup_runtime(compose_config("train", ["matmul_precision=high", "sdpa_backends=[efficient,math]"], tmp_path))
    assert torch.get_float32_matmul_precision() == "high"
    assert not torch.backends.cuda.flash_sdp_enabled() and not torch.backends.cuda.cudnn_sdp_enabled()
    assert torch.backends.cuda.mem_efficient_sdp_enabled() and torch.backends.cuda.math_sdp_enabled()
    setup_runtime(compose_config("train", [], tmp_path))  # null: today's defaults again
    assert torch.get_float32_matmul_precision() == "highest"
    assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.cudnn_sdp_enabled()
