"""ZooModule: the Lightning hooks every zoo LightningModule shares (optimizer and schedule, FSDP2, clipping)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn

from training.schedules import optimizer_with_schedule
from training.sharding import clip_gradients, shard_blocks


class ZooModule(L.LightningModule):
    """A LightningModule that trains `self.net`: AdamW-style optimizer with the warm-up + cosine schedule,
    per-block sharding under FSDP2, gradient clipping that also works under FSDP1."""

    net: nn.Module

    def configure_optimizers(self) -> dict[str, Any]:
        return optimizer_with_schedule(self, self.net)

    def configure_model(self) -> None:
        shard_blocks(self, self.net)  # FSDP2 (trainer=fsdp2) only; a no-op under other strategies

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm)  # also under FSDP1
