"""Learning-rate schedules and optimizer parameter groups shared by the LightningModules."""

from __future__ import annotations

import math
from typing import Any, Callable

import lightning as L
import torch
from torch import nn

from models.checks import require_fraction, require_number


def check_schedule(warmup_fraction: float, min_lr_ratio: float, label_smoothing: float) -> None:
    """The schedule and loss settings every LightningModule takes (ValueError naming the key)."""
    require_fraction("warmup_fraction", warmup_fraction)
    require_number("min_lr_ratio", min_lr_ratio, low=0, high=1)
    require_fraction("label_smoothing", label_smoothing)


def warmup_cosine(warmup_steps: int, total_steps: int, min_lr_ratio: float) -> Callable[[int], float]:
    """LR multiplier: linear warm-up from ~0 to 1, then cosine decay to `min_lr_ratio`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


# Names the wrappers insert into parameter names (FSDP1 units, Lightning's activation checkpointing,
# torch.compile of a submodule); the plain network has none of them.
WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def plain_name(name: str) -> str:
    """A parameter's name in the unwrapped network."""
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def decay_by_name(net: nn.Module) -> dict[str, bool]:
    """Whether each parameter of the plain network gets weight decay, decided by its name and shape.

    No weight decay on biases, norms, and what the net lists (position tables, tokens): the standard ViT
    recipe, timm's `no_weight_decay()` convention. Called at construction, before DDP / FSDP wrap the
    network: FSDP1 replaces every parameter by a flat 1-D view of its shard, so a shape test made in
    `configure_optimizers` would put every weight in the no-decay group.
    """
    skip = set(getattr(net, "no_weight_decay", lambda: set())())
    return {n: p.dim() >= 2 and n not in skip for n, p in net.named_parameters()}


def optimizer_with_schedule(module: L.LightningModule, net: nn.Module) -> dict[str, Any]:
    """AdamW-style param groups (the module's `decays`, from `decay_by_name`) and a per-step warm-up +
    cosine schedule, for any of our modules. Reads `optimizer_factory`, `decays`, `warmup_fraction` and
    `min_lr_ratio` from the module."""
    params = [(plain_name(n), p) for n, p in net.named_parameters() if p.requires_grad]
    unknown = [n for n, _ in params if n not in module.decays]
    if unknown:  # a parameter added after construction: its group was never decided
        raise RuntimeError(f"parameters {unknown[:3]} were not in the network at construction")
    decay = [p for n, p in params if module.decays[n]]
    no_decay = [p for n, p in params if not module.decays[n]]
    optimizer = module.optimizer_factory([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}])
    total = int(module.trainer.estimated_stepping_batches)
    warmup = max(1, int(module.warmup_fraction * total))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup, total, module.min_lr_ratio))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
