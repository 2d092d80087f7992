"""LightningModule for classification (images now; audio and video reuse it)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from models.checks import require_bool, require_int
from training.base import ZooModule
from training.schedules import check_schedule, decay_by_name
from training.switches import apply_switches


class ClassificationModule(ZooModule):
    """Cross-entropy training of any `net` mapping a batch to (B, num_classes) logits.

    Args:
        net: the plain nn.Module (ViT, audio or video transformer).
        num_classes: for the accuracy metrics.
        optimizer: a partial optimizer (Hydra `_partial_: true`), called with the parameters.
        warmup_fraction: share of all steps spent warming the learning rate up.
        min_lr_ratio: final learning rate as a fraction of the peak.
        label_smoothing: cross-entropy label smoothing.
        compile: run the network through `torch.compile` (training/switches.py); state_dict keys do not change,
            so checkpoints of compiled and plain runs load into each other.
        grad_checkpointing: recompute each transformer block's activations in the backward pass instead
            of storing them (less memory, ~1 extra forward of compute); same loss and gradients.
        tta_flip: validation and test average the logits of each image and its mirror image (test-time
            augmentation, for data trained with horizontal flips, e.g. clothes; never for digits or text).
            Costs a second forward pass in evaluation only; training and predict.py are unchanged.
    """

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        optimizer: Callable[..., torch.optim.Optimizer],
        warmup_fraction: float = 0.05,
        min_lr_ratio: float = 0.01,
        label_smoothing: float = 0.0,
        compile: bool = False,
        grad_checkpointing: bool = False,
        tta_flip: bool = False,
    ) -> None:
        super().__init__()
        require_int("num_classes", num_classes, at_least=2, note=" (classes to tell apart)")
        check_schedule(warmup_fraction, min_lr_ratio, label_smoothing)
        for name, value in (("compile", compile), ("grad_checkpointing", grad_checkpointing), ("tta_flip", tta_flip)):
            require_bool(name, value)
        apply_switches(net, compile, grad_checkpointing)
        self.net = net
        self.decays = decay_by_name(net)  # before any wrapping (training/schedules.py)
        self.optimizer_factory = optimizer
        self.warmup_fraction, self.min_lr_ratio = warmup_fraction, min_lr_ratio
        self.label_smoothing = label_smoothing
        self.tta_flip = tta_flip
        self.train_loss = MeanMetric(nan_strategy="disable")  # NaN checks would read the loss on the host
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _step(self, batch: tuple[Tensor, Tensor], stage: str, metric: MulticlassAccuracy) -> Tensor:
        x, y = batch
        logits = self(x)
        if self.tta_flip and stage != "train":
            logits = (logits + self(x.flip(-1))) / 2
        smoothing = self.label_smoothing if stage == "train" else 0.0
        loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
        metric(logits, y)
        # Under DDP the epoch loss is averaged over all processes, as one process would see it (the metrics
        # sync themselves at the epoch's end; sync_dist for the evaluation loss); a no-op on one device. The
        # training step's value is this process's own: `self.log(sync_dist=True)` would all-reduce every step.
        if stage == "train":
            self.train_loss(loss.detach(), torch.full_like(loss.detach(), len(y)))
            self.log("train/loss", self.train_loss, on_step=True, on_epoch=True, prog_bar=True)
        else:
            # A float batch size: Lightning syncs the sample count as a mean over processes, which an integer
            # count truncates when the evaluation shares differ by one (data/distributed.eval_sampler).
            self.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=True, batch_size=float(len(y)), sync_dist=True)
        self.log(f"{stage}/acc", metric, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train", self.train_acc)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "val", self.val_acc)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "test", self.test_acc)

