"""ZooModule: the Lightning hooks every zoo LightningModule shares (optimizer and schedule, FSDP2, clipping)."""

from __future__ import annotations

from typing import Any, Callable

import lightning as L
import torch
from torch import nn

from models.checks import require_bool
from training.schedules import check_schedule, decay_by_name, optimizer_with_schedule
from training.sharding import clip_gradients, shard_blocks
from training.switches import apply_switches


class ZooModule(L.LightningModule):
    """A LightningModule that trains `self.net`: AdamW-style optimizer with the warm-up + cosine schedule,
    per-block sharding under FSDP2, gradient clipping that also works under FSDP1."""

    net: nn.Module

    def take_net(self, net: nn.Module, optimizer: Callable[..., torch.optim.Optimizer], *, warmup_fraction: float,
                 min_lr_ratio: float, compile: bool, grad_checkpointing: bool) -> None:
        """Check the schedule and switches, apply the switches, keep `net` and its optimizer settings. Weight decay
        spares biases, norms and (minGPT's rule) embedding tables: a row of a rare token would otherwise shrink
        at every step although it is seldom read. Called before any wrapping (training/schedules.py)."""
        check_schedule(warmup_fraction, min_lr_ratio, 0.0)
        for name, value in (("compile", compile), ("grad_checkpointing", grad_checkpointing)):
            require_bool(name, value)
        apply_switches(net, compile, grad_checkpointing)
        self.net = net
        tables = {f"{name}.weight" for name, m in net.named_modules() if isinstance(m, nn.Embedding)}
        self.decays = {n: decay and n not in tables for n, decay in decay_by_name(net).items()}
        self.optimizer_factory = optimizer
        self.warmup_fraction, self.min_lr_ratio = warmup_fraction, min_lr_ratio

    def configure_optimizers(self) -> dict[str, Any]:
        return optimizer_with_schedule(self, self.net)

    def configure_model(self) -> None:
        shard_blocks(self, self.net)  # FSDP2 (trainer=fsdp2) only; a no-op under other strategies

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm)  # also under FSDP1
