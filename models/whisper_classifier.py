"""A clip classifier on Whisper's encoder: 16 kHz waveform -> Whisper's log-mel frames of the clip -> the encoder
-> mean over the clip's positions -> a linear head (the probe's features, inference/probe.py, trained end to end).

It exists to be started from a pretrained Whisper (`pretrained=<whisper source>`: the encoder's weights are
taken, the decoder's left, the head is new), the way `experiment=finetune_audio` starts the spectrogram
transformer from AST: `python train.py experiment=finetune_whisper_classifier data.root=<folder>` (docs/fsdd.md
measures it on real voices). The encoder is Whisper's own (models/whisper.py `WhisperAudio`): same front end,
convolutions, fixed positions and blocks, so the converted state loads unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.export import Dim

from models.checks import require_int
from models.layers import Activation, check_block_options
from models.network import Network, OnnxSpec
from models.audio import SpecAugment
from models.whisper import WhisperAudio
from models.whisper_frontend import HOP_LENGTH, SAMPLE_RATE

# The Whisper arguments that size the encoder, which a converted Whisper passes on to the classifier.
ENCODER_KEYS = ("n_mels", "dim", "encoder_depth", "num_heads", "mlp_ratio", "audio_len", "norm_eps", "act")


class WhisperClassifier(WhisperAudio, Network):
    """`forward(wave)`: (B, samples) 16 kHz waveforms -> (B, num_classes) logits.

    Args:
        num_classes: the classes of the data.
        n_mels, dim, encoder_depth, num_heads, mlp_ratio, audio_len, norm_eps, act: Whisper's encoder
            (tiny.en's by default; a pretrained source sets them).
        drop, attn_drop, drop_path: regularisation for fine-tuning (Whisper itself: none).
        freq_mask, time_mask, num_masks: SpecAugment on the log-mel frames, training only (0 = off). Masked
            cells become 0, the audio model's rule, which here is not the mean of Whisper's features ((log10 + 4)
            / 4 lies mostly below 0, lowest in silence); off in the measured recipe.
    """

    name = "whisper_classifier"
    modality = "audio"
    task = "classify"
    sample_rate = SAMPLE_RATE

    def __init__(
        self,
        *,
        num_classes: int,
        n_mels: int = 80,
        dim: int = 384,
        encoder_depth: int = 4,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        audio_len: int = 1500,
        norm_eps: float = 1e-5,
        act: Activation = "gelu",
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        freq_mask: int = 0,
        time_mask: int = 0,
        num_masks: int = 1,
    ) -> None:
        super().__init__()
        block_options = dict(num_heads=num_heads, mlp_ratio=mlp_ratio, drop=drop, attn_drop=attn_drop,
                             norm_eps=norm_eps, act=act)
        check_block_options(dim=dim, **block_options)
        require_int("num_classes", num_classes, at_least=2, note=" (classes to tell apart)")
        self.num_classes = num_classes
        self._build_audio(n_mels=n_mels, dim=dim, audio_len=audio_len, depth=encoder_depth, drop_path=drop_path,
                          **block_options)
        self.spec_augment = SpecAugment(freq_mask, time_mask, num_masks)
        self.head = nn.Linear(dim, num_classes)
        nn.init.zeros_(self.head.weight)  # a new head on pretrained features starts from "no opinion"
        nn.init.zeros_(self.head.bias)
        self._zero_key_biases()

    @classmethod
    def adopt(cls, net: dict[str, Any], state: dict[str, Tensor]) -> tuple[dict[str, Any], dict[str, Tensor]] | None:
        """A converted Whisper's config and state -> this classifier's (the encoder's arguments and tensors; the
        decoder's are left), or None for any other source."""
        if net.get("_target_") != "models.whisper.Whisper":
            return None
        audio = ("conv1.", "conv2.", "audio_pos", "encoder.")
        # num_classes: the data's (utils/pretrained.py points it there).
        return ({"_target_": f"{cls.__module__}.{cls.__name__}", "num_classes": None,
                 **{k: net[k] for k in ENCODER_KEYS if k in net}},
                {k: v for k, v in state.items() if k.startswith(audio)})

    def onnx_spec(self) -> OnnxSpec:
        """waveform (B, samples) at 16 kHz -> logits: batch and length dynamic (0.1 s up to the encoder's 30 s; a
        clip is padded to 30 s for the front end's maximum, as Whisper pads it, then its own frames are read)."""
        longest = 2 * self.audio_len * HOP_LENGTH  # what the encoder's positions hold (Whisper: 30 s)
        example = (torch.randn(2, min(SAMPLE_RATE, longest // 2)),)  # not the longest: min() below would be fixed
        batch = Dim("batch", min=1)
        length = Dim("samples", min=min(SAMPLE_RATE // 10, longest // 2), max=longest)
        return OnnxSpec(self, ["waveform"], example, ({0: batch, 1: length},), {"waveform": ["batch", "samples"]})

    def shown_spectrogram(self, wave: Tensor) -> Tensor:
        """(samples,) -> the (n_mels, frames) log-mel frames the encoder reads (predict.py's picture)."""
        return self.clip_features(wave[None])[0]

    def token_grid(self, wave: Tensor) -> tuple[int, int]:
        """The encoder's tokens as a (1, positions) grid over time (each position: 2 frames, 20 ms)."""
        frames = self.clip_features(wave).shape[-1]
        return 1, -(-frames // 2)

    def forward(self, wave: Tensor) -> Tensor:
        mel = self.clip_features(wave)  # (B, n_mels, frames)
        mel = self.spec_augment(mel[:, None])[:, 0]  # training only
        memory, _ = self.encode(mel)
        return self.head(memory.mean(dim=1))
