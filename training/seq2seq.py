"""LightningModule for translation: teacher-forced label-smoothed training, BLEU / chrF on decoded text."""

from __future__ import annotations

from typing import Callable

import sacrebleu
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import Tensor
from torchmetrics import MeanMetric

from models.checks import require_bool, require_choice, require_int, require_number
from models.tokenizer import decode, encode
from models.translator import Translator
from training.base import ZooModule
from training.schedules import check_schedule, decay_by_name
from training.switches import apply_switches


class Seq2SeqModule(ZooModule):
    """Trains a `Translator`; validation decodes greedily, test with beam search.

    Args:
        net: the Translator.
        optimizer: partial optimizer (Hydra `_partial_: true`).
        warmup_fraction, min_lr_ratio: warm-up + cosine schedule, per step.
        label_smoothing: cross-entropy smoothing on target tokens.
        beam_size: beam width for test / translate (1 = greedy).
        length_penalty: alpha of the GNMT length penalty ((5 + len) / 6) ** alpha.
        max_new_tokens: decoding limit per sentence.
        length_norm: "gnmt" (the penalty above) or "hf" (Hugging Face generate's beam search, sum of log-probs /
            length ** length_penalty); banned_tokens, forced_eos, renormalize_logits, early_stopping: generate's
            bad_words_ids (single tokens), forced_eos_token_id, renormalize_logits, early_stopping. Pretrained
            OPUS-MT models take these from their generation_config.json (models/pretrained/marian.py).
        compile: `torch.compile` the teacher-forced forward (training and validation loss; decoding stays
            eager). Source and target lengths are marked dynamic and padding masks always built, so one
            graph serves batches of every length instead of one recompilation per new length.
        grad_checkpointing: recompute each block's activations in the backward pass (less memory).
    """

    def __init__(
        self,
        net: Translator,
        optimizer: Callable[..., torch.optim.Optimizer],
        warmup_fraction: float = 0.05,
        min_lr_ratio: float = 0.01,
        label_smoothing: float = 0.1,
        beam_size: int = 4,
        length_penalty: float = 0.6,
        max_new_tokens: int = 64,
        compile: bool = False,
        grad_checkpointing: bool = False,
        length_norm: str = "gnmt",
        banned_tokens: list[int] | None = None,
        forced_eos: bool = False,
        renormalize_logits: bool = False,
        early_stopping: bool = False,
    ) -> None:
        super().__init__()
        check_schedule(warmup_fraction, min_lr_ratio, label_smoothing)
        require_int("beam_size", beam_size)
        require_number("length_penalty", length_penalty, low=0)
        require_int("max_new_tokens", max_new_tokens)
        require_choice("length_norm", length_norm, ("gnmt", "hf"))
        for name, value in (("compile", compile), ("grad_checkpointing", grad_checkpointing)):
            require_bool(name, value)
        apply_switches(net, compile, grad_checkpointing)
        self.net = net
        self.decays = decay_by_name(net)  # before any wrapping (training/schedules.py)
        self.compiled = compile
        self.optimizer_factory = optimizer
        self.warmup_fraction, self.min_lr_ratio, self.label_smoothing = warmup_fraction, min_lr_ratio, label_smoothing
        self.beam_size, self.length_penalty, self.max_new_tokens = beam_size, length_penalty, max_new_tokens
        self.length_norm, self.banned_tokens, self.forced_eos = length_norm, tuple(banned_tokens or ()), forced_eos
        self.renormalize_logits, self.early_stopping = renormalize_logits, early_stopping
        self.train_loss = MeanMetric(nan_strategy="disable")  # NaN checks would read the loss on the host
        self.tokenizer: Tokenizer | None = None
        self._outputs: dict[str, list[tuple[int, str]]] = {}

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "prepare_tokenizer"):
            self.tokenizer = dm.prepare_tokenizer()

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        if not self.compiled:
            return self.net(src, tgt_in)
        # Batch size and both lengths as symbols from the first call (not after a recompilation), and
        # masks built even when nothing is padded (no graph break on `pad.any()`): one graph per mode.
        for ids in (src, tgt_in):
            torch._dynamo.maybe_mark_dynamic(ids, 0)
            torch._dynamo.maybe_mark_dynamic(ids, 1)
        return self.net(src, tgt_in, always_mask=True)

    def _loss(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        tgt_in, labels = batch["tgt"][:, :-1], batch["tgt"][:, 1:]
        logits = self(batch["src"], tgt_in)
        smoothing = self.label_smoothing if stage == "train" else 0.0
        pad_id = self.net.pad_id
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=pad_id, label_smoothing=smoothing)
        real = labels.ne(pad_id)
        acc = (logits.argmax(-1).eq(labels) & real).sum() / real.sum()
        n = real.sum()  # a tensor: weighting by it needs no host read (a GPU sync) per step
        # Epoch means over the tokens of all processes under DDP (a no-op on one device); the training step's
        # value is this process's own (training/classification.py says why).
        if stage == "train":
            self.train_loss(loss.detach(), n.expand_as(loss))
            self.log("train/loss", self.train_loss, on_step=True, on_epoch=True, prog_bar=True)
        else:
            self.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
        self.log(f"{stage}/acc", acc, on_step=False, on_epoch=True, prog_bar=True, batch_size=n,
                 sync_dist=True)  # token accuracy
        return loss

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._loss(batch, "train")

    def _eval_step(self, batch: dict[str, Tensor], stage: str, beam_size: int) -> None:
        self._loss(batch, stage)
        hyps = self.generate(batch["src"], beam_size)
        self._outputs.setdefault(stage, []).extend(zip(batch["index"].tolist(), hyps))

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val", beam_size=1)  # greedy: cheap enough to run every epoch

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test", beam_size=self.beam_size)

    def _log_text_metrics(self, stage: str) -> None:
        outputs = gathered(self._outputs.pop(stage, []))
        if not outputs:
            return
        refs_all = self.trainer.datamodule.references(stage)
        hyps = [h for _, h in outputs]
        refs = [refs_all[i] for i, _ in outputs]
        scores = text_metrics(hyps, refs)
        scores["sentences"] = len(outputs)  # how many the corpus scores cover (all of them, also under DDP)
        if stage == "test":  # the floor a model must clear: "translate" by copying the source
            sources = self.trainer.datamodule.sources(stage)
            scores["copy_bleu"] = text_metrics([sources[i] for i, _ in outputs], refs)["bleu"]
        for name, value in scores.items():
            self.log(f"{stage}/{name}", value, prog_bar=name == "bleu")

    def on_validation_epoch_end(self) -> None:
        self._log_text_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_text_metrics("test")

    # --- decoding ---------------------------------------------------------------------------------
    def generate(self, src: Tensor, beam_size: int | None = None) -> list[str]:
        """Detokenized translations of a batch of source ids."""
        return [decode(self.tokenizer, row) for row in self.decode_ids(src, beam_size).tolist()]

    def decode_ids(self, src: Tensor, beam_size: int | None = None) -> Tensor:
        """Generated ids (B, <= max_new_tokens) with this module's decoding settings (beam_size 1 = greedy)."""
        beam = self.beam_size if beam_size is None else beam_size
        extra = dict(banned=self.banned_tokens, forced_eos=self.forced_eos)
        if beam == 1:
            return self.net.greedy(src, self.max_new_tokens, **extra)
        return self.net.beam_search(src, beam, self.max_new_tokens, self.length_penalty, length_norm=self.length_norm,
                                    early_stopping=self.early_stopping, renormalize=self.renormalize_logits, **extra)

    @torch.no_grad()
    def translate(self, sentences: list[str], beam_size: int | None = None) -> list[str]:
        """Translate raw sentences (the `predict.py` path). Long ones are truncated to the model's limit."""
        if self.tokenizer is None:
            raise RuntimeError("no tokenizer: load one from the checkpoint (Seq2SeqModule.tokenizer) first")
        empty = [i for i, s in enumerate(sentences) if not s.strip()]
        if empty:
            raise ValueError(f"sentence {empty[0]} is empty; give text to translate")
        pad_id = self.net.pad_id
        ids = [torch.tensor(encode(self.tokenizer, s, self.net.max_len) or [pad_id]) for s in sentences]
        src = torch.nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=pad_id).to(self.device)
        was_training = self.training
        self.eval()
        try:
            return self.generate(src, beam_size)
        finally:
            self.train(was_training)



def gathered(outputs: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """(example index, decoded text) of every process, sorted by index. Under DDP each process decoded its own
    share: BLEU / WER are corpus scores, so gather all of them. The distributed sampler pads shares to equal size
    with repeats: one output per index."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        shares: list[list[tuple[int, str]]] = [[] for _ in range(torch.distributed.get_world_size())]
        torch.distributed.all_gather_object(shares, outputs)
        outputs = list(dict(o for share in shares for o in share).items())
    return sorted(outputs)


def text_metrics(hyps: list[str], refs: list[str]) -> dict[str, float]:
    """Corpus BLEU and chrF (sacrebleu, its default 13a tokenization) and the exact-match rate, in %."""
    return {
        "bleu": sacrebleu.corpus_bleu(hyps, [refs]).score,
        "chrf": sacrebleu.corpus_chrf(hyps, [refs]).score,
        "exact": 100.0 * sum(h == r for h, r in zip(hyps, refs)) / max(1, len(refs)),
    }
