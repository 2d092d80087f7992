"""Audio Spectrogram Transformer (AST, Gong et al. 2021) from raw waveforms, on the zoo's shared parts.

waveform (B, samples) -> log-mel (B, 1, n_mels, frames; VTLP in training) -> normalise -> SpecAugment (training only)
-> patches over the frequency x time plane -> + 2-D positions -> shared encoder -> pool -> head.

The spectrogram is computed inside the model (torchaudio transforms, on whatever device the model is
on), so a checkpoint takes the same raw audio as the data pipeline gives it: there is no mel setting
to keep in sync between data and model, and SpecAugment follows `model.train()` / `model.eval()`.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
import torchaudio.functional as AF
import torchaudio.transforms as T
from torch import Tensor, nn
from torch.export import Dim
from timm.layers import trunc_normal_

from models.checks import (check_prefix_tokens, refuse, require_bool, require_choice, require_int, require_number, require_range,
                           require_size)
from models.embeddings import ConvStem, PatchEmbed, PosEmbed2D, _pair, prepend_tokens
from models.layers import Activation, Encoder, LayerNorm, check_block_options
from models.network import Network, OnnxSpec
from models.vit import VisionTransformer


KALDI_WINDOWS = ("hamming", "hanning", "povey", "rectangular", "blackman")  # kaldi.fbank's window_type
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

    `utterance_norm` (cepstral mean normalisation in the log-mel domain): each clip's mean log-mel over its
    speech frames (frames within 30 dB of its loudest) is subtracted, per mel band, before dividing by
    norm_std (norm_mean is then unused). A microphone or room multiplies the power spectrum by a fixed
    response, an offset per band in the log domain: this removes it, and the clip's level with it.
    """

    def __init__(self, sample_rate: int, *, n_fft: int, hop_length: int, n_mels: int, f_min: float,
                 f_max: float | None, norm_mean: float, norm_std: float,
                 warp_range: Sequence[float] | None = None, utterance_norm: bool = False) -> None:
        super().__init__()
        require_bool("utterance_norm", utterance_norm)
        self.utterance_norm = utterance_norm
        for name, value in (("sample_rate", sample_rate), ("n_fft", n_fft), ("hop_length", hop_length),
                            ("n_mels", n_mels)):
            require_int(name, value)
        require_number("f_min", f_min, low=0)
        require_number("f_max", f_max, low=0, low_open=True, optional=True)
        top = sample_rate / 2 if f_max is None else f_max
        if not f_min < top <= sample_rate / 2:
            raise ValueError(f"f_min={f_min}, f_max={f_max}: expected f_min < f_max <= sample_rate / 2 = "
                             f"{sample_rate / 2:g} Hz")
        if n_mels > n_fft // 2 + 1:
            raise ValueError(f"n_mels={n_mels} is more mel bands than the {n_fft // 2 + 1} frequency bins of "
                             f"n_fft={n_fft}: some bands would be empty")
        require_number("norm_mean", norm_mean)
        require_number("norm_std", norm_std, low=0, low_open=True)
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.warp_range = require_range("warp_range", warp_range, optional=True)  # Hydra passes a ListConfig
        # torchaudio checks the filterbank for empty bands with real numbers: on the meta device (a build that
        # only checks the arguments) the small bank is computed on the CPU instead.
        meta = torch.get_default_device().type == "meta"
        with torch.device("cpu") if meta else contextlib.nullcontext():
            self.mel = T.MelSpectrogram(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, f_min=f_min,
                                        f_max=f_max, n_mels=n_mels, power=2.0)
        self.norm_mean = norm_mean
        self.norm_std = norm_std
        self._warped: dict[tuple[int, torch.device], Tensor] = {}  # not a buffer: checkpoints stay as they were
        self._banks: dict[tuple[int, int, torch.device], Tensor] = {}  # warp steps stacked, per device

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
            if self.utterance_norm:
                return self.normalise_utterance((spec + 1e-6).log()).div(self.norm_std).unsqueeze(1)
        return ((spec + 1e-6).log() - self.norm_mean).div(self.norm_std).unsqueeze(1)

    @staticmethod
    def normalise_utterance(log_spec: Tensor, floor: float = math.log(1000.0)) -> Tensor:
        """(B, n_mels, frames) log-mel minus each clip's per-band mean over the frames whose mean log power
        is within `floor` (30 dB) of the clip's loudest frame."""
        energy = log_spec.mean(dim=1, keepdim=True)  # (B, 1, frames)
        speech = (energy >= energy.amax(dim=2, keepdim=True) - floor).to(log_spec.dtype)
        mean = (log_spec * speech).sum(dim=2, keepdim=True) / speech.sum(dim=2, keepdim=True)
        return log_spec - mean

    def warp_bank(self, first: int, last: int, device: torch.device) -> Tensor:
        """(last - first + 1, freqs, n_mels): the warped filters of steps first..last, stacked (cached)."""
        key = (first, last, device)
        if key not in self._banks:
            self._banks[key] = torch.stack([self.warped_filters(s / WARP_STEPS, device)
                                            for s in range(first, last + 1)])
        return self._banks[key]

    def warp(self, power: Tensor, factors: Tensor | None = None) -> Tensor:
        """(B, freqs, frames) power -> (B, n_mels, frames) through per-clip warped mel filters (VTLP);
        `factors` (B,) default to uniform draws from `warp_range`. The draws and the filter choice stay
        on power's device, and one batched matmul applies them: no host round trip per batch."""
        if factors is None:
            low, high = self.warp_range or (1.0, 1.0)
            factors = low + (high - low) * torch.rand(power.shape[0], device=power.device)
            first, last = math.floor(low * WARP_STEPS) - 1, math.ceil(high * WARP_STEPS) + 1
        else:  # any factors (analysis, tests): a bank spanning them, read from the host once
            factors = factors.to(power.device)
            steps = torch.round(factors * WARP_STEPS).long()
            first, last = int(steps.min()), int(steps.max())
        steps = torch.round(factors * WARP_STEPS).long()
        banks = self.warp_bank(first, last, power.device)[steps - first]  # (B, freqs, n_mels)
        return torch.bmm(power.transpose(1, 2), banks).transpose(1, 2).contiguous()


class KaldiFbank(nn.Module):
    """(B, samples) waveform -> (B, 1, n_mels, max_frames) normalised Kaldi log-mel filterbank features: the
    front end of the pretrained AST, equal to its feature extractor (`torchaudio.compliance.kaldi.fbank` with
    sample_frequency, window_type and num_mel_bins, every other argument Kaldi's default; tested).

    The same steps as kaldi.fbank with its window and mel banks, over a whole batch (kaldi.fbank takes one clip,
    so a loop would fix the batch size of an exported graph): 25 ms frames every 10 ms (snip_edges), DC offset
    removed, pre-emphasis 0.97, window, 512-point power spectrum, mel banks, log (floored at float eps); then the
    frames zero-padded or cut to `max_frames` and (x - norm_mean) / norm_std (AST: its std x 2)."""

    PREEMPHASIS = 0.97

    def __init__(self, sample_rate: int, *, n_mels: int, max_frames: int, norm_mean: float, norm_std: float,
                 window_type: str = "hanning") -> None:
        super().__init__()
        from torchaudio.compliance import kaldi

        require_int("sample_rate", sample_rate)
        require_int("n_mels", n_mels)
        require_int("max_frames", max_frames)
        require_number("norm_mean", norm_mean)
        require_number("norm_std", norm_std, low=0, low_open=True)
        require_choice("window_type", window_type, KALDI_WINDOWS)
        self.sample_rate = sample_rate
        self.n_mels = n_mels
        self.max_frames = max_frames
        self.norm_mean = norm_mean
        self.norm_std = norm_std
        self.window_type = window_type
        self.hop_length = sample_rate // 100  # Kaldi's 10 ms frame shift
        self.f_min = 20.0  # Kaldi's mel banks: low_freq 20 Hz, high_freq 0 = Nyquist
        self.f_max = sample_rate / 2
        self.n_fft = sample_rate * 25 // 1000  # one 25 ms frame: the shortest clip with a feature
        self.padded = kaldi._next_power_of_2(self.n_fft)
        window = kaldi._feature_window_function(window_type, self.n_fft, 0.42, torch.device("cpu"), torch.float32)
        banks, _ = kaldi.get_mel_banks(n_mels, self.padded, float(sample_rate), 20.0, 0.0, 100.0, -500.0, 1.0)
        self.register_buffer("window", window, persistent=False)  # derived: checkpoints stay as they were
        self.register_buffer("banks", F.pad(banks.float(), (0, 1)).T.contiguous(), persistent=False)  # (freqs, mels)

    def forward(self, wave: Tensor) -> Tensor:
        with torch.autocast(wave.device.type, enabled=False):
            frames = wave.float().unfold(-1, self.n_fft, self.hop_length)  # (B, frames, n_fft)
            frames = frames - frames.mean(dim=-1, keepdim=True)
            previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)  # Kaldi's replicate-padded shift
            frames = (frames - self.PREEMPHASIS * previous) * self.window
            power = torch.fft.rfft(F.pad(frames, (0, self.padded - self.n_fft))).abs().pow(2.0)
            feats = (power @ self.banks).clamp_min(torch.finfo(torch.float32).eps).log()
        missing = self.max_frames - feats.shape[1]
        feats = F.pad(feats, (0, 0, 0, missing)) if missing > 0 else feats[:, : self.max_frames]
        return ((feats - self.norm_mean) / self.norm_std).transpose(1, 2).unsqueeze(1)  # (B, 1, n_mels, frames)


class SpecAugment(nn.Module):
    """Frequency and time masking (Park et al. 2019) on (B, 1, F, T), independent per example.

    Active only in training mode; in eval it returns its input unchanged. Masked cells become 0,
    the mean of the normalised spectrogram.
    """

    def __init__(self, freq_mask: int, time_mask: int, num_masks: int) -> None:
        super().__init__()
        require_int("freq_mask", freq_mask, at_least=0)
        require_int("time_mask", time_mask, at_least=0)
        require_int("num_masks", num_masks, at_least=0)
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
        require_choice("pos_time", mode, ("crop", "resize"))  # the model's key for `mode`
        super().__init__(grid_size, dim)
        self.mode = mode

    def forward(self, grid_size: tuple[int, int]) -> Tensor:
        gh, gw = self.grid_size
        if self.mode == "crop" and grid_size[0] == gh and grid_size[1] <= gw:
            return self.weight.reshape(1, gh, gw, -1)[:, :, : grid_size[1]].flatten(1, 2)
        return super().forward(grid_size)


class AudioSpectrogramTransformer(Network):
    """AST built from the zoo's shared parts; args mirror configs/model/audio.yaml `net:`.

    Input: (B, samples) or (B, 1, samples) float waveforms at `sample_rate`, any length of at least
    `min_samples`; `clip_seconds` only sizes the learned position table. Output: (B, num_classes).
    `stem` "patch" is AST's linear patch embedding (overlapping when patch_stride < patch_size);
    "conv" is stride-2 3x3 convolutions of the same total stride (as the ViT's default stem).
    `patch_size` / `patch_stride` are one int (square) or [mel bins, frames]: [n_mels, 3] with stride
    [n_mels, 2] makes one token per 2 frames spanning the whole spectrum (KWT, Berg et al. 2021).
    `attn_window` / `attn_global`: sliding-window self-attention over the tokens (long clips), see attention.py.

    For the pretrained AST (the defaults are the zoo's own model): `frontend="kaldi_fbank"` (Kaldi
    features padded / cut to `max_frames`, KaldiFbank); `class_token` / `dist_token` with `token_pos` (their
    learned positions; with a distillation token `pool="cls"` reads the mean of the two, as AST); `fc_norm` (a
    LayerNorm on the pooled tokens before the head; AST keeps the encoder's final one too, `final_norm`);
    `norm_eps`, `act`.
    """

    name = "audio"
    modality = "audio"

    def __init__(
        self,
        *,
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
        utterance_norm: bool = False,
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
        frontend: str = "logmel",
        max_frames: int | None = None,
        window_type: str = "hanning",
        class_token: bool | None = None,
        dist_token: bool = False,
        token_pos: bool = False,
        fc_norm: bool = False,
        final_norm: bool = True,
        norm_eps: float = 1e-6,
        act: Activation = "gelu",
    ) -> None:
        super().__init__()
        block_options = dict(num_heads=num_heads, mlp_ratio=mlp_ratio, num_kv_heads=num_kv_heads,
                             qkv_bias=qkv_bias, drop=drop, attn_drop=attn_drop, attn_window=attn_window,
                             attn_global=attn_global, norm_eps=norm_eps, act=act)
        check_block_options(dim=dim, drop_path=drop_path, **block_options)
        require_int("depth", depth)
        require_int("num_classes", num_classes, at_least=2, note=" (classes to tell apart)")
        require_int("sample_rate", sample_rate)
        require_number("clip_seconds", clip_seconds, low=0, low_open=True)
        require_choice("pool", pool, ("cls", "mean"))
        require_choice("frontend", frontend, ("logmel", "kaldi_fbank"))
        require_choice("stem", stem, ("patch", "conv"))
        class_token = check_prefix_tokens(pool, class_token, dist_token)
        for name, value in (("token_pos", token_pos), ("fc_norm", fc_norm), ("final_norm", final_norm)):
            require_bool(name, value)
        self.sample_rate = sample_rate
        self.pool = pool
        if frontend == "logmel":
            self.frontend: LogMel | KaldiFbank = LogMel(
                sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels, f_min=f_min, f_max=f_max,
                norm_mean=norm_mean, norm_std=norm_std, warp_range=warp_range,
                utterance_norm=utterance_norm)
            frames = 1 + int(round(sample_rate * clip_seconds)) // hop_length
        else:
            if max_frames is None:
                raise refuse("max_frames", max_frames, "frontend='kaldi_fbank' needs the number of frames every "
                             "clip is padded / cut to")
            self.frontend = KaldiFbank(sample_rate, n_mels=n_mels, max_frames=max_frames, norm_mean=norm_mean,
                                       norm_std=norm_std, window_type=window_type)
            frames = max_frames
        self.specaugment = SpecAugment(freq_mask, time_mask, num_masks)
        patch = self._check_patch(stem, patch_size, patch_stride, n_mels, frames, clip_seconds, hop_length)
        plane = (n_mels, frames)
        if stem == "patch":
            self.patch_embed = PatchEmbed(plane, patch, 1, dim, stride=patch_stride)
        else:
            self.patch_embed = ConvStem(plane, patch_size, 1, dim, stem_channels)
        # The shortest clip whose spectrogram still covers one patch in time (and the STFT frame).
        if frontend == "logmel":
            self.min_samples = self._min_samples(n_fft, hop_length, self.patch_embed.patch_size[1])
        else:  # clips are padded to max_frames: one 25 ms frame is enough
            self.min_samples = self.frontend.n_fft
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if class_token else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim)) if dist_token else None
        self.num_prefix = int(class_token) + int(dist_token)
        has_prefix_pos = token_pos and self.num_prefix
        self.prefix_pos = nn.Parameter(torch.zeros(1, self.num_prefix, dim)) if has_prefix_pos else None
        self.pos_embed = TimePosEmbed(self.patch_embed.grid_size, dim, pos_time)
        self.pos_drop = nn.Dropout(drop)
        self.encoder = Encoder(dim=dim, depth=depth, drop_path=drop_path, final_norm=final_norm, **block_options)
        self.fc_norm = LayerNorm(dim, norm_eps) if fc_norm else nn.Identity()
        self.head = nn.Linear(dim, num_classes)
        self.apply(VisionTransformer._init_weights)  # the ViT's init: truncated normal Linear weights
        for token in (self.cls_token, self.dist_token, self.prefix_pos):
            if token is not None:
                trunc_normal_(token, std=0.02)

    @staticmethod
    def _min_samples(n_fft: int, hop_length: int, patch_frames: int) -> int:
        """Samples of the shortest clip that fills one STFT frame and one patch of `patch_frames` frames."""
        return max(n_fft // 2 + 1, (patch_frames - 1) * hop_length)

    def _check_patch(self, stem: str, patch_size: Any, patch_stride: Any, n_mels: int, frames: int,
                     clip_seconds: float, hop_length: int) -> int | tuple[int, int]:
        """The patch size, once it is known to fit the (n_mels, frames) plane; a refusal names the key to
        change: patch_size for the mel bins, clip_seconds (or max_frames) for the frames."""
        patch = require_size("patch_size", patch_size)
        require_size("patch_stride", patch_stride, optional=True)
        if stem == "conv" and not isinstance(patch, int):
            raise refuse("patch_size", patch_size, "stem=conv needs one power of 2 >= 2 (square patches)")
        bins, patch_frames = _pair(patch)
        if bins > n_mels:
            raise refuse("patch_size", patch_size, f"{bins} mel bins per patch, but n_mels={n_mels}")
        if frames >= patch_frames:
            return patch
        if not isinstance(self.frontend, LogMel):
            raise refuse("max_frames", frames, f"expected at least one patch ({patch_frames} frames)")
        shortest = self._min_samples(self.frontend.n_fft, hop_length, patch_frames)
        raise refuse("clip_seconds", clip_seconds, f"{frames} spectrogram frame(s) at hop_length={hop_length}, "
                     f"fewer than one patch ({patch_frames} frames); expected clip_seconds >= "
                     f"{shortest / self.sample_rate:g} ({shortest} samples at sample_rate={self.sample_rate})")

    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "dist_token", "prefix_pos", "pos_embed.weight"}

    def onnx_spec(self) -> OnnxSpec:
        """waveform (B, samples): B dynamic; samples from min_samples to the training clip length with
        pos_time=crop, fixed at the training length with pos_time=resize."""
        batch = Dim("batch", min=1)
        frames = self.patch_embed.img_size[1]
        samples = (frames - 1) * self.frontend.hop_length  # the training clip length (frames = 1 + samples // hop)
        example = (torch.randn(2, samples),)
        if self.pos_embed.mode == "crop" and samples > self.min_samples:
            # Every clip up to the training length takes the crop branch of the position table; a longer
            # one would resize it, another graph.
            length = Dim("samples", min=self.min_samples, max=samples)
            return OnnxSpec(self, ["waveform"], example, ({0: batch, 1: length},),
                            {"waveform": ["batch", "samples"]})
        return OnnxSpec(self, ["waveform"], example, ({0: batch},), {"waveform": ["batch"]})

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
        x = prepend_tokens(x, [self.cls_token, self.dist_token], self.prefix_pos)
        return self.encoder(self.pos_drop(x))

    def forward(self, wave: Tensor) -> Tensor:
        tokens = self.forward_features(wave)
        if self.pool == "cls" and self.dist_token is not None:  # AST: the mean of class and distillation tokens
            pooled = tokens[:, : self.num_prefix].mean(dim=1)
        elif self.pool == "cls":
            pooled = tokens[:, 0]
        else:
            pooled = tokens[:, self.num_prefix:].mean(dim=1)
        return self.head(self.fc_norm(pooled))  # (B, num_classes)


__all__ = ["AudioSpectrogramTransformer", "KaldiFbank", "LogMel", "SpecAugment", "TimePosEmbed"]
