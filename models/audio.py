"""Audio Spectrogram Transformer (AST, Gong et al. 2021) from raw waveforms, on the zoo's shared parts.

waveform (B, samples) -> log-mel (B, 1, n_mels, frames; VTLP in training) -> normalise -> SpecAugment (training only)
-> patches over the frequency x time plane -> + 2-D positions -> shared encoder -> pool -> head.

The spectrogram is computed inside the model (torchaudio transforms, on whatever device the model is
on), so a checkpoint takes the same raw audio as the data pipeline gives it: there is no mel setting
to keep in sync between data and model, and SpecAugment follows `model.train()` / `model.eval()`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torchaudio.functional as AF
import torchaudio.transforms as T
from torch import Tensor, nn
from timm.layers import trunc_normal_

from models.embeddings import ConvStem, PatchEmbed, PosEmbed2D
from models.layers import Encoder
from models.vit import VisionTransformer


# Warp factors are rounded to multiples of 1 / WARP_STEPS, so a batch needs only a few filterbanks (cached).
WARP_STEPS = 50


class LogMel(nn.Module):
    """(B, samples) waveform -> (B, 1, n_mels, frames) normalised log-mel power spectrogram.

    log(mel power + 1e-6), then (x - norm_mean) / norm_std with fixed dataset statistics, as AST
    does: the model keeps absolute loudness (which separates silence from speech), and the encoder
    sees inputs of roughly unit scale. Frames: 1 + samples // hop_length (centred STFT).

    `warp_range` [low, high] (training only): vocal tract length perturbation (VTLP, Jaitly & Hinton
    2013). Each clip gets a factor a drawn uniformly from the range, and its mel filters
    read the power spectrum at frequency f / a where they would read f: mel band i then shows what a
    vocal tract a times shorter would put there (formants and pitch harmonics x a), while durations
    stay as they are (unlike speed perturbation). Filters past Nyquist / a (a < 1) read nothing.
    """

    def __init__(self, sample_rate: int, n_fft: int, hop_length: int, n_mels: int, f_min: float,
                 f_max: float | None, norm_mean: float, norm_std: float,
                 warp_range: Sequence[float] | None = None) -> None:
        super().__init__()
        if norm_std <= 0:
            raise ValueError(f"norm_std must be > 0, got {norm_std}")
        if warp_range is not None:
            warp_range = tuple(float(v) for v in warp_range)  # Hydra passes a ListConfig
            if len(warp_range) != 2 or not 0 < warp_range[0] <= warp_range[1]:
                raise ValueError(f"warp_range must be [low, high] with 0 < low <= high, got {list(warp_range)}")
        self.n_fft, self.hop_length, self.warp_range = n_fft, hop_length, warp_range
        self.mel = T.MelSpectrogram(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, f_min=f_min,
                                    f_max=f_max, n_mels=n_mels, power=2.0)
        self.norm_mean, self.norm_std = norm_mean, norm_std
        self._warped: dict[tuple[int, torch.device], Tensor] = {}  # not a buffer: checkpoints stay as they were

    def warped_filters(self, factor: float, device: torch.device) -> Tensor:
        """(n_fft // 2 + 1, n_mels) mel filters warped by `factor` (rounded to 1 / WARP_STEPS): the usual
        filters evaluated at factor x each FFT bin's frequency, i.e. on the bin grid of a sample rate
        factor times higher (exact: the triangles are piecewise linear in Hz)."""
        step = round(factor * WARP_STEPS)
        if (step, device) not in self._warped:
            scale = self.mel.mel_scale
            with warnings.catch_warnings():  # a < 1: the top filters lie past the grid and read nothing
                warnings.filterwarnings("ignore", message=".*all zero values.*")
                fb = AF.melscale_fbanks(self.n_fft // 2 + 1, scale.f_min, scale.f_max, scale.n_mels,
                                        round(scale.sample_rate * step / WARP_STEPS), scale.norm, scale.mel_scale)
            self._warped[step, device] = fb.to(device)
        return self._warped[step, device]

    def forward(self, wave: Tensor) -> Tensor:
        # The STFT runs in float32 even under autocast: log-power of float16 underflows.
        with torch.autocast(wave.device.type, enabled=False):
            power = self.mel.spectrogram(wave.float())  # (B, n_fft // 2 + 1, frames)
            if self.training and self.warp_range is not None:
                spec = self.warp(power)
            else:
                spec = self.mel.mel_scale(power)  # (B, n_mels, frames)
        return ((spec + 1e-6).log() - self.norm_mean).div(self.norm_std).unsqueeze(1)

    def warp(self, power: Tensor, factors: Tensor | None = None) -> Tensor:
        """(B, freqs, frames) power -> (B, n_mels, frames) through per-clip warped mel filters (VTLP);
        `factors` (B,) default to uniform draws from `warp_range`."""
        if factors is None:
            low, high = self.warp_range or (1.0, 1.0)
            factors = low + (high - low) * torch.rand(power.shape[0])
        steps = torch.round(factors * WARP_STEPS).long()
        out = power.new_empty(power.shape[0], self.mel.mel_scale.n_mels, power.shape[-1])
        for step in steps.unique().tolist():
            idx = (steps == step).nonzero()[:, 0].to(power.device)
            fb = self.warped_filters(step / WARP_STEPS, power.device)
            out[idx] = (power[idx].transpose(1, 2) @ fb).transpose(1, 2)
        return out


class SpecAugment(nn.Module):
    """Frequency and time masking (Park et al. 2019) on (B, 1, F, T), independent per example.

    Active only in training mode; in eval it returns its input unchanged. Masked cells become 0,
    the mean of the normalised spectrogram.
    """

    def __init__(self, freq_mask: int, time_mask: int, num_masks: int) -> None:
        super().__init__()
        if min(freq_mask, time_mask, num_masks) < 0:
            raise ValueError(f"freq_mask, time_mask, num_masks must be >= 0, got {freq_mask}, {time_mask}, {num_masks}")
        self.num_masks = num_masks
        self.freq = T.FrequencyMasking(freq_mask, iid_masks=True) if freq_mask else None
        self.time = T.TimeMasking(time_mask, iid_masks=True) if time_mask else None

    def forward(self, spec: Tensor) -> Tensor:
        if not self.training:
            return spec
        for _ in range(self.num_masks):
            for mask in (self.freq, self.time):
                if mask is not None:
                    spec = mask(spec)
        return spec


class TimePosEmbed(PosEmbed2D):
    """2-D position table over (frequency, time) patches that adapts to the clip length.

    The frequency extent never changes (n_mels is fixed). In time, `mode="crop"` gives a shorter
    clip the first columns of the table, the exact positions it had in training; a longer clip has
    no learned positions past the end, so the table is resized (bicubic) in time. `mode="resize"`
    always resizes (the ViT convention; it rescales time, as if the word were spoken slower).
    """

    def __init__(self, grid_size: tuple[int, int], dim: int, mode: str = "crop") -> None:
        super().__init__(grid_size, dim)
        if mode not in ("crop", "resize"):
            raise ValueError(f"pos_time must be 'crop' or 'resize', got {mode!r}")
        self.mode = mode

    def forward(self, grid_size: tuple[int, int]) -> Tensor:
        gh, gw = self.grid_size
        if self.mode == "crop" and grid_size[0] == gh and grid_size[1] <= gw:
            return self.weight.reshape(1, gh, gw, -1)[:, :, : grid_size[1]].flatten(1, 2)
        return super().forward(grid_size)


class AudioSpectrogramTransformer(nn.Module):
    """AST built from the zoo's shared parts; args mirror configs/model/audio.yaml `net:`.

    Input: (B, samples) or (B, 1, samples) float waveforms at `sample_rate`, any length of at least
    `min_samples`; `clip_seconds` only sizes the learned position table. Output: (B, num_classes).
    `stem` "patch" is AST's linear patch embedding (overlapping when patch_stride < patch_size);
    "conv" is stride-2 3x3 convolutions of the same total stride (as the ViT's default stem).
    `patch_size` / `patch_stride` are one int (square) or [mel bins, frames]: [n_mels, 3] with stride
    [n_mels, 2] makes one token per 2 frames spanning the whole spectrum (KWT, Berg et al. 2021).
    `attn_window` / `attn_global`: sliding-window self-attention over the tokens (long clips), see attention.py.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        clip_seconds: float = 1.0,
        num_classes: int = 12,
        n_mels: int = 64,
        n_fft: int = 400,
        hop_length: int = 160,
        f_min: float = 20.0,
        f_max: float | None = None,
        norm_mean: float = 0.0,
        norm_std: float = 1.0,
        warp_range: Sequence[float] | None = None,
        freq_mask: int = 8,
        time_mask: int = 16,
        num_masks: int = 2,
        stem: str = "patch",
        patch_size: int | Sequence[int] = 16,
        patch_stride: int | Sequence[int] | None = 10,
        stem_channels: list[int] | None = None,
        pos_time: str = "crop",
        dim: int = 96,
        depth: int = 4,
        num_heads: int = 4,
        num_kv_heads: int | None = None,
        mlp_ratio: float = 2.0,
        qkv_bias: bool = True,
        pool: str = "mean",
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        attn_window: int | None = None,
        attn_global: int = 0,
    ) -> None:
        super().__init__()
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', got {pool!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if sample_rate <= 0 or clip_seconds <= 0:
            raise ValueError(f"sample_rate and clip_seconds must be > 0, got {sample_rate}, {clip_seconds}")
        self.sample_rate, self.pool = sample_rate, pool
        self.frontend = LogMel(sample_rate, n_fft, hop_length, n_mels, f_min, f_max, norm_mean, norm_std,
                               warp_range)
        self.specaugment = SpecAugment(freq_mask, time_mask, num_masks)
        frames = 1 + int(round(sample_rate * clip_seconds)) // hop_length
        plane = (n_mels, frames)
        if stem == "patch":
            size = patch_size if isinstance(patch_size, int) else tuple(patch_size)
            stride = patch_stride if patch_stride is None or isinstance(patch_stride, int) else tuple(patch_stride)
            self.patch_embed = PatchEmbed(plane, size, 1, dim, stride=stride)
        elif stem == "conv":
            if not isinstance(patch_size, int):
                raise ValueError(f"stem 'conv' needs one int patch_size (a power of 2), got {patch_size!r}")
            self.patch_embed = ConvStem(plane, patch_size, 1, dim, stem_channels)
        else:
            raise ValueError(f"stem must be 'patch' or 'conv', got {stem!r}")
        # The shortest clip whose spectrogram still covers one patch in time (and the STFT frame).
        self.min_samples = max(n_fft // 2 + 1, (self.patch_embed.patch_size[1] - 1) * hop_length)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if pool == "cls" else None
        self.pos_embed = TimePosEmbed(self.patch_embed.grid_size, dim, pos_time)
        self.pos_drop = nn.Dropout(drop)
        self.encoder = Encoder(dim, depth, num_heads, mlp_ratio, num_kv_heads, qkv_bias, drop, attn_drop, drop_path,
                               attn_window, attn_global)
        self.head = nn.Linear(dim, num_classes)
        self.apply(VisionTransformer._init_weights)  # the ViT's init: truncated normal Linear weights
        if self.cls_token is not None:
            trunc_normal_(self.cls_token, std=0.02)

    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "pos_embed.weight"}

    def spectrogram(self, wave: Tensor) -> Tensor:
        """(B, samples) or (B, 1, samples) -> normalised (B, 1, n_mels, frames), SpecAugment if training."""
        if wave.dim() == 3 and wave.shape[1] == 1:
            wave = wave[:, 0]
        if wave.dim() != 2:
            raise ValueError(f"expected mono waveforms (batch, samples) or (batch, 1, samples), got {tuple(wave.shape)}")
        if wave.shape[-1] < self.min_samples:
            raise ValueError(
                f"clip too short: {wave.shape[-1]} samples ({wave.shape[-1] / self.sample_rate:.3f} s at "
                f"{self.sample_rate} Hz); this model needs at least {self.min_samples} samples"
            )
        return self.specaugment(self.frontend(wave))

    def forward_features(self, wave: Tensor) -> Tensor:
        """Waveforms -> (B, [1 +] gh*gw, dim) encoded patch tokens."""
        spec = self.spectrogram(wave)
        grid = self.patch_embed.grid_for(tuple(spec.shape[-2:]))
        x = self.patch_embed(spec) + self.pos_embed(grid)  # (B, gh*gw, dim)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.encoder(self.pos_drop(x))

    def forward(self, wave: Tensor) -> Tensor:
        tokens = self.forward_features(wave)
        pooled = tokens[:, 0] if self.cls_token is not None else tokens.mean(dim=1)
        return self.head(pooled)  # (B, num_classes)


__all__ = ["AudioSpectrogramTransformer", "LogMel", "SpecAugment", "TimePosEmbed"]
