"""LightningModule for fine-tuning Whisper on transcribed speech (data/transcripts.py, docs/whisper_finetune.md).

Training: teacher-forced cross-entropy over the decoder sequence prompt + transcript tokens + <|endoftext|>,
Whisper's own; the prompt (<|startoftranscript|>, language, task, <|notimestamps|>) is given, not scored: the
first scored position predicts the transcript's first token from the whole prompt. Validation and test decode
greedily with the source's decoding rules (`Whisper.transcribe`) and score the word error rate (training/wer.py).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MeanMetric

from data.transcripts import IGNORE
from models.checks import require_bool, require_int, require_number
from models.whisper import Whisper
from training.base import ZooModule
from training.seq2seq import gathered
from training.wer import word_error_rate
from utils.errors import UserError


class WhisperModule(ZooModule):
    """Fine-tunes a `Whisper`. The decoding settings (prompt ... alignment_heads) are the source's, written into
    the run's config by utils/pretrained.py; the run keeps its own `beam_size` and `max_new_tokens` (validation).

    Args:
        net: the Whisper network; optimizer: partial optimizer (Hydra `_partial_: true`).
        warmup_fraction, min_lr_ratio: warm-up + cosine schedule, per step.
        freeze_encoder: train the decoder only: the encoder (convolutions, blocks) takes no gradient and runs
            without autograd, about a third of a step's time on CPU saved, and it cannot drift from the audio
            features it was trained on.
        encoder_cache_mb: with freeze_encoder, each training and validation utterance's encoder output (its
            1,500 x dim memory: 2.3 MB for tiny.en) is kept, in CPU memory, up to this many MB, and reused in later
            epochs instead of running the encoder again (most of a CPU step's time: the encoder always reads 30 s);
            utterances past the limit are encoded every time; per process (each DDP rank keeps its own); emptied
            when fitting ends. 0: no cache.
        label_smoothing: cross-entropy smoothing on training steps (0: Whisper's).
        prompt, suppress_tokens, begin_suppress_tokens, length_penalty: Whisper.transcribe's (the source's).
        beam_size: predict.py's default beam (validation and test decode greedily).
        max_new_tokens: the decoding budget of validation and test.
        no_timestamps_id, languages, tasks, alignment_heads: the source's, kept with the run (predict.py).
        compile, grad_checkpointing: training/switches.py.
    """

    def __init__(self, *, net: Whisper, optimizer: Callable[..., torch.optim.Optimizer],
                 warmup_fraction: float = 0.1, min_lr_ratio: float = 0.01, freeze_encoder: bool = False,
                 encoder_cache_mb: float = 2048.0, label_smoothing: float = 0.0, prompt: Sequence[int] | None = None,
                 suppress_tokens: Sequence[int] = (), begin_suppress_tokens: Sequence[int] = (),
                 beam_size: int = 1, length_penalty: float = 1.0, max_new_tokens: int = 64,
                 no_timestamps_id: int | None = None, languages: dict[str, int] | None = None,
                 tasks: dict[str, int] | None = None, alignment_heads: list[list[int]] | None = None,
                 compile: bool = False, grad_checkpointing: bool = False) -> None:
        super().__init__()
        require_bool("freeze_encoder", freeze_encoder)
        require_number("encoder_cache_mb", encoder_cache_mb, low=0)
        require_number("label_smoothing", label_smoothing, low=0, high=1, high_open=True)
        require_int("beam_size", beam_size)
        require_int("max_new_tokens", max_new_tokens)
        self.take_net(net, optimizer, warmup_fraction=warmup_fraction, min_lr_ratio=min_lr_ratio, compile=compile,
                      grad_checkpointing=grad_checkpointing)
        self.freeze_encoder = freeze_encoder
        self.encoder_cache_bytes = int(encoder_cache_mb * 2**20) if freeze_encoder else 0
        self._memories: dict[tuple[str, int], Tensor] = {}  # (split, utterance index) -> its encoder output
        self._cached_bytes = 0
        if freeze_encoder:
            for part in (net.conv1, net.conv2, net.encoder):
                part.requires_grad_(False)
        self.prompt = [int(t) for t in (prompt or [net.bos_id])]
        self.suppress_tokens, self.begin_suppress_tokens = list(suppress_tokens), list(begin_suppress_tokens)
        self.beam_size, self.length_penalty, self.max_new_tokens = beam_size, length_penalty, max_new_tokens
        self.label_smoothing = label_smoothing
        self.train_loss = MeanMetric(nan_strategy="disable")
        self.tokenizer: Any = None
        self._outputs: dict[str, list[tuple[int, str]]] = {}

    def decoding(self) -> dict[str, Any]:
        """The source's decoding settings, as predict.py reads a pretrained source's (Predictor.generation)."""
        return dict(prompt=self.prompt, suppress_tokens=self.suppress_tokens,
                    begin_suppress_tokens=self.begin_suppress_tokens, beam_size=self.beam_size,
                    length_penalty=self.length_penalty, max_new_tokens=self.net.max_len - len(self.prompt))

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "longest"):
            return
        self.tokenizer = dm.tokenizer
        dm.setup(stage)
        tokens, path = dm.longest()
        if len(self.prompt) + tokens + 1 > self.net.max_len:  # prompt + transcript + <|endoftext|>
            raise UserError(f"data=transcripts: the transcript of {path} is {tokens} tokens; with the prompt "
                            f"({len(self.prompt)}) and <|endoftext|> more than the decoder's "
                            f"{self.net.max_len} positions; cut it into shorter utterances")

    # --- the loss -------------------------------------------------------------------------------------
    def sequences(self, text: Tensor) -> tuple[Tensor, Tensor]:
        """(decoder input (B, L), labels (B, L)) of a batch of transcript ids (B, T) padded with IGNORE: the
        sequence prompt + transcript + <|endoftext|> (padded with <|endoftext|>, as Whisper pads), shifted by one;
        labels IGNORE where they would be a prompt token or padding."""
        eos, p = self.net.eos_id, len(self.prompt)
        lengths = text.ne(IGNORE).sum(1)
        seq = torch.full((text.shape[0], p + text.shape[1] + 1), eos, dtype=torch.long, device=text.device)
        seq[:, :p] = torch.tensor(self.prompt, device=text.device)
        seq[:, p:-1] = text.masked_fill(text.eq(IGNORE), eos)
        labels = seq[:, 1:].clone()
        position = torch.arange(labels.shape[1], device=text.device)[None]  # label j is token j + 1
        labels[(position < p - 1) | (position >= (p + lengths)[:, None])] = IGNORE
        return seq[:, :-1], labels

    def features(self, wave: Tensor) -> Tensor:
        """The model's own log-mel of 16 kHz waves (B, samples), cut to the frames its encoder positions hold."""
        with torch.no_grad():
            return self.net.features(wave)[..., : 2 * self.net.audio_len]

    def encode(self, mel: Tensor) -> Tensor:
        """The encoder's output (B, positions, dim) of log-mel features. Frozen: without autograd and without the
        input dropout (`net.drop`, shared with the decoder, which keeps it): no randomness in a part that does not
        learn, so an utterance's output is the same every epoch and may be kept (`memory`)."""
        if not self.freeze_encoder:
            return self.net.encode(mel)[0]
        drop, was = self.net.drop, self.net.drop.training
        drop.eval()
        try:
            with torch.no_grad():
                return self.net.encode(mel)[0]
        finally:
            drop.train(was)

    def forward(self, mel: Tensor, tgt_in: Tensor) -> Tensor:
        return self.net.decode(tgt_in, self.encode(mel))

    def loss(self, mel: Tensor | None, text: Tensor, smoothing: float = 0.0,
             memory: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(mean cross-entropy over the scored tokens, logits, labels) of log-mel features and transcript ids;
        `memory`: the encoder's output of those features when it is known already (`mel` is then not read)."""
        tgt_in, labels = self.sequences(text)
        logits = self.net.decode(tgt_in, self.encode(mel) if memory is None else memory)
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE,
                               label_smoothing=smoothing)
        return loss, logits, labels

    def memory(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        """The encoder's output of a batch's utterances. A frozen encoder's outputs of training and validation
        utterances are kept (up to `encoder_cache_mb`) and reused: only the utterances not kept yet run through the
        front end and the encoder. The encoder is in eval mode and takes no gradient there, so a kept output is
        what running it again would give."""
        if not self.encoder_cache_bytes or stage not in ("train", "val"):
            return self.encode(self.features(batch["wave"]))
        keys = [(stage, i) for i in batch["index"].tolist()]
        new = [row for row, key in enumerate(keys) if key not in self._memories]
        fresh: dict[int, Tensor] = {}
        if new:
            with torch.no_grad():
                computed = self.encode(self.features(batch["wave"][new]))
            for row, out in zip(new, computed):
                fresh[row] = out
                size = out.numel() * out.element_size()
                if self._cached_bytes + size <= self.encoder_cache_bytes:
                    self._memories[keys[row]] = out.detach().to("cpu", copy=True)
                    self._cached_bytes += size
        device = batch["wave"].device
        return torch.stack([fresh[row] if row in fresh else self._memories[key].to(device)
                            for row, key in enumerate(keys)])

    def on_fit_end(self) -> None:
        self._memories, self._cached_bytes = {}, 0  # the test that follows reads other utterances

    def _loss(self, batch: dict[str, Tensor], stage: str, memory: Tensor) -> Tensor:
        loss, logits, labels = self.loss(None, batch["text"], self.label_smoothing if stage == "train" else 0.0,
                                         memory=memory)
        real = labels.ne(IGNORE)
        n = real.sum()
        acc = (logits.argmax(-1).eq(labels) & real).sum() / n
        if stage == "train":
            self.train_loss(loss.detach(), n.expand_as(loss))
            self.log("train/loss", self.train_loss, on_step=True, on_epoch=True, prog_bar=True)
        else:
            self.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
        self.log(f"{stage}/acc", acc, on_step=False, on_epoch=True, batch_size=n, sync_dist=True)  # token accuracy
        return loss

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        if self.freeze_encoder:
            self.net.encoder.eval()  # no dropout in a part that does not learn (Whisper has none anyway)
        return self._loss(batch, "train", self.memory(batch, "train"))

    # --- validation and test: greedy transcripts, word error rate ------------------------------------------
    def transcribe(self, mel: Tensor, beam_size: int = 1, memory: Tensor | None = None) -> list[str]:
        """Greedy (or beam) transcripts of log-mel features; `memory`: their encoder output when known."""
        rows = self.net.transcribe(mel, prompt=self.prompt, max_new_tokens=self.max_new_tokens, beam_size=beam_size,
                                   suppress_tokens=self.suppress_tokens, length_penalty=self.length_penalty,
                                   begin_suppress_tokens=self.begin_suppress_tokens,
                                   encoded=None if memory is None else (memory, None))
        return [self.tokenizer.decode(row, skip_special_tokens=True).strip() for row in rows]

    def _eval_step(self, batch: dict[str, Tensor], stage: str) -> None:
        memory = self.memory(batch, stage)  # once for the loss and the transcripts (kept ones not even once)
        self._loss(batch, stage, memory)
        texts = self.transcribe(self.features(batch["wave"]), memory=memory)  # features: a few ms, no encoder
        self._outputs.setdefault(stage, []).extend(zip(batch["index"].tolist(), texts))

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _log_wer(self, stage: str) -> None:
        outputs = gathered(self._outputs.pop(stage, []))
        if not outputs:
            return
        references = self.trainer.datamodule.references(stage)
        wer, words = word_error_rate([references[i] for i, _ in outputs], [h for _, h in outputs])
        self.log(f"{stage}/wer", wer, prog_bar=True)
        self.log(f"{stage}/words", float(words))
        self.log(f"{stage}/utterances", float(len(outputs)))

    def on_validation_epoch_end(self) -> None:
        self._log_wer("val")

    def on_test_epoch_end(self) -> None:
        self._log_wer("test")
