"""LightningModule for causal language modelling: next-token cross-entropy, loss and perplexity per split."""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric, SumMetric

from training.base import ZooModule


def next_token_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy (nats per token) of logits (B, T, V) against the next tokens (B, T)."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


class CausalLMModule(ZooModule):
    """Trains any `net` mapping ids (B, T) to next-token logits (B, T, V) on batches (x, y) of a text corpus.

    Logs `train/loss`, `val/loss`, `test/loss` (mean nats per token over the split) and `val/perplexity`,
    `test/perplexity`: exp of that mean, so exactly exp(loss) of the same epoch, never a mean of per-batch
    perplexities.

    Args:
        net: the plain nn.Module (models.lm.CausalLM).
        optimizer: a partial optimizer (Hydra `_partial_: true`), called with the parameter groups
            (no weight decay on biases, norms and what the net lists in `no_weight_decay()`).
        warmup_fraction, min_lr_ratio: per-step linear warm-up, then cosine decay to min_lr_ratio x lr.
        compile: `torch.compile` the network (training/switches.py); checkpoints stay interchangeable.
        grad_checkpointing: recompute each block's activations in the backward pass (less memory).
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        warmup_fraction: float = 0.05,
        min_lr_ratio: float = 0.1,
        compile: bool = False,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.take_net(net, optimizer, warmup_fraction=warmup_fraction, min_lr_ratio=min_lr_ratio, compile=compile,
                      grad_checkpointing=grad_checkpointing)
        # Metrics sync themselves under DDP; NaN checks would read the loss on the host. Every training batch
        # has batch_size x block_size tokens, so a mean over batches is the mean over tokens. The evaluation
        # means are sums of token losses over token counts (torchmetrics 1.9's MeanMetric drops its weights
        # when nan_strategy="disable"; a last, smaller batch must count for its tokens only).
        self.train_loss = MeanMetric(nan_strategy="disable")
        self.eval_sums = nn.ModuleDict({f"{s}_{k}": SumMetric(nan_strategy="disable")
                                        for s in ("val", "test") for k in ("loss", "tokens")})
        self.tokenizer: Any = None

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "prepare_tokenizer"):
            self.tokenizer = dm.prepare_tokenizer()  # for generation from a restored run

    def forward(self, ids: Tensor) -> Tensor:
        return self.net(ids)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = next_token_loss(self(x), y)
        # The step's value is this process's own; the epoch mean is over all processes' tokens.
        self.train_loss(loss.detach())
        self.log("train/loss", self.train_loss, on_step=True, on_epoch=True, prog_bar=True)
        return loss

    def _eval_step(self, batch: tuple[Tensor, Tensor], stage: str) -> None:
        x, y = batch
        loss = next_token_loss(self(x), y)
        self.eval_sums[f"{stage}_loss"](loss * y.numel())
        self.eval_sums[f"{stage}_tokens"](torch.full_like(loss, y.numel()))

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _log_epoch(self, stage: str) -> None:
        total, tokens = self.eval_sums[f"{stage}_loss"], self.eval_sums[f"{stage}_tokens"]
        if tokens.update_count == 0:  # e.g. limit_val_batches=0
            return
        loss = total.compute() / tokens.compute()  # the mean over every token of the split (all processes)
        total.reset()
        tokens.reset()
        self.log(f"{stage}/loss", loss, prog_bar=True)
        self.log(f"{stage}/perplexity", torch.exp(loss), prog_bar=stage == "test")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

