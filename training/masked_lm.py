"""LightningModule for masked language modelling of proteins (ESM / BERT): 15 % of residues hidden, predicted back."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric, SumMetric

from models.checks import refuse
from training.base import ZooModule


def mask_residues(ids: Tensor, *, residues: Tensor, mask_id: int, pad_id: int, specials: Tensor,
                  mask_prob: float = 0.15, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """BERT's / ESM's corruption: each residue (not a special token, not padding) is chosen with probability
    mask_prob; of the chosen, 80 % become <mask>, 10 % a random standard residue, 10 % stay as they are.
    Returns (corrupted ids, targets): targets hold the original id at chosen positions and -100 elsewhere
    (ignored by cross_entropy)."""
    draw = torch.rand(ids.shape, generator=generator, device=ids.device)
    kind = torch.rand(ids.shape, generator=generator, device=ids.device)
    pick = torch.randint(len(residues), ids.shape, generator=generator, device=ids.device)
    maskable = ~torch.isin(ids, specials) & ids.ne(pad_id)
    chosen = maskable & (draw < mask_prob)
    corrupted = torch.where(chosen & (kind < 0.8), torch.full_like(ids, mask_id), ids)
    corrupted = torch.where(chosen & (kind >= 0.8) & (kind < 0.9), residues.to(ids.device)[pick], corrupted)
    return corrupted, torch.where(chosen, ids, torch.full_like(ids, -100))


class MaskedLMModule(ZooModule):
    """Trains a `net` mapping ids (B, T) to residue logits (B, T, V) (models.protein.ProteinLM) on padded
    batches of `<cls> residues <eos>` ids, corrupted here (mask_residues).

    Logs `train/loss`; `val/loss`, `val/perplexity`, `test/loss`, `test/perplexity` (exp of the mean
    cross-entropy over every masked position of the split) and `test/accuracy` (the share of masked positions
    whose most likely residue is the true one). Validation and test mask with a generator seeded by the batch
    index, so every evaluation of a checkpoint sees the same masks. Where the data module gives the training
    split's residue frequencies (`unigram()`), the test also logs `test/unigram_perplexity`: the perplexity of
    those frequencies on the same masked positions (the baseline a model must beat).

    Args:
        net: the network (models.protein.ProteinLM).
        optimizer: a partial optimizer (Hydra `_partial_: true`), called with the parameter groups.
        mask_prob: share of residues chosen per sequence (ESM, BERT: 0.15).
        warmup_fraction, min_lr_ratio: linear warm-up, then cosine decay to min_lr_ratio x lr.
        compile, grad_checkpointing: training/switches.py.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        mask_prob: float = 0.15,
        warmup_fraction: float = 0.05,
        min_lr_ratio: float = 0.1,
        compile: bool = False,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if not (isinstance(mask_prob, (int, float)) and 0 < mask_prob < 1):
            raise refuse("mask_prob", mask_prob, "expected a share strictly between 0 and 1 (ESM: 0.15)")
        self.take_net(net, optimizer, warmup_fraction=warmup_fraction, min_lr_ratio=min_lr_ratio, compile=compile,
                      grad_checkpointing=grad_checkpointing)
        alphabet = net.alphabet
        self.mask_prob = float(mask_prob)
        self.mask_id, self.pad_id = alphabet.mask, alphabet.pad
        self.register_buffer("residues", torch.tensor(alphabet.residue_ids), persistent=False)
        self.register_buffer("specials", torch.tensor([alphabet.cls, alphabet.eos, alphabet.unk, alphabet.mask]),
                             persistent=False)
        self.train_loss = MeanMetric(nan_strategy="disable")
        # Sums over masked positions (a batch counts for its masked positions, not as one batch).
        keys = ("loss", "tokens", "correct", "unigram")
        self.eval_sums = nn.ModuleDict({f"{s}_{k}": SumMetric(nan_strategy="disable")
                                        for s in ("val", "test") for k in keys})
        self.unigram_logp: Tensor | None = None

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "unigram"):
            freq = np.asarray(dm.unigram(), dtype=np.float64)
            self.unigram_logp = torch.tensor(np.log(np.clip(freq, 1e-12, None)), dtype=torch.float32)

    def forward(self, ids: Tensor) -> Tensor:
        return self.net(ids)

    def _corrupt(self, ids: Tensor, seed: int | None) -> tuple[Tensor, Tensor]:
        generator = None
        if seed is not None:
            generator = torch.Generator(device=ids.device).manual_seed(seed)
        return mask_residues(ids, residues=self.residues, mask_id=self.mask_id, pad_id=self.pad_id,
                             specials=self.specials, mask_prob=self.mask_prob, generator=generator)

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        inputs, targets = self._corrupt(batch, None)
        logits = self.net(inputs, batch.eq(self.pad_id))
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        self.train_loss(loss.detach())
        self.log("train/loss", self.train_loss, on_step=True, on_epoch=True, prog_bar=True)
        return loss

    def _eval_step(self, batch: Tensor, batch_idx: int, stage: str) -> None:
        inputs, targets = self._corrupt(batch, seed=batch_idx + (0 if stage == "val" else 1_000_003))
        logits = self.net(inputs, batch.eq(self.pad_id))
        chosen = targets.ne(-100)
        picked, truth = logits[chosen], targets[chosen]
        sums = self.eval_sums
        sums[f"{stage}_loss"](F.cross_entropy(picked, truth, reduction="sum"))
        sums[f"{stage}_tokens"](torch.tensor(float(truth.numel()), device=batch.device))
        sums[f"{stage}_correct"](picked.argmax(-1).eq(truth).sum().float())
        if self.unigram_logp is not None:
            sums[f"{stage}_unigram"](-self.unigram_logp.to(batch.device)[truth].sum())

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "val")

    def test_step(self, batch: Tensor, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "test")

    def _log_epoch(self, stage: str) -> None:
        sums = {k: self.eval_sums[f"{stage}_{k}"] for k in ("loss", "tokens", "correct", "unigram")}
        if sums["tokens"].update_count == 0:
            return
        tokens = sums["tokens"].compute().clamp(min=1)
        loss = sums["loss"].compute() / tokens
        self.log(f"{stage}/loss", loss, prog_bar=True)
        self.log(f"{stage}/perplexity", torch.exp(loss), prog_bar=True)
        if stage == "test":
            self.log("test/accuracy", sums["correct"].compute() / tokens)
            if sums["unigram"].update_count:
                self.log("test/unigram_perplexity", torch.exp(sums["unigram"].compute() / tokens))
        for metric in sums.values():
            metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")


__all__ = ["MaskedLMModule", "mask_residues"]
