"""Whisper's log-mel front end: 16 kHz samples -> (n_mels, 3000) features, as OpenAI's `log_mel_spectrogram`
and transformers' `WhisperFeatureExtractor` compute them.

The waveform is zero-padded or trimmed to 30 s, a 25 ms Hann STFT every 10 ms (n_fft 400, hop 160, centred,
reflect-padded) gives the power spectrum, whose last frame is dropped (3001 -> 3000 frames); Slaney-normalised
mel filters on the Slaney mel scale (librosa's, as Whisper's `mel_filters.npz`) map it to 80 or 128 bands; then
log10(max(mel, 1e-10)), clamped from below at the utterance's maximum - 8, and (x + 4) / 4.
Audio at another rate must be resampled to 16 kHz first (the model was trained on 16 kHz only).
"""

from __future__ import annotations

import contextlib

import torch
import torchaudio.functional as AF
from torch import Tensor, nn

from models.checks import require_int

SAMPLE_RATE = 16000
N_FFT = 400  # 25 ms at 16 kHz
HOP_LENGTH = 160  # 10 ms
CHUNK_SECONDS = 30


class WhisperFrontEnd(nn.Module):
    """(B, samples) or (samples,) float waveform at 16 kHz -> (B, n_mels, chunk_seconds * 100) log-mel features.

    Args:
        n_mels: 80 (Whisper tiny .. large-v2) or 128 (large-v3).
        chunk_seconds: the length every input is padded or trimmed to (Whisper: 30 s, 3000 frames).
    """

    def __init__(self, *, n_mels: int = 80, chunk_seconds: int = CHUNK_SECONDS) -> None:
        super().__init__()
        require_int("n_mels", n_mels)
        require_int("chunk_seconds", chunk_seconds)
        self.n_mels = n_mels
        self.n_samples = chunk_seconds * SAMPLE_RATE
        self.frames = self.n_samples // HOP_LENGTH
        # What pictures put on their axes (viz/explorer): time, and the mel scale of the bands.
        self.sample_rate, self.hop_length = SAMPLE_RATE, HOP_LENGTH
        self.f_min, self.f_max, self.mel_scale = 0.0, SAMPLE_RATE / 2, "slaney"
        # torchaudio checks the bank for empty bands with real numbers: on the meta device (a build that only
        # checks the arguments, utils/validate.py) the small bank is computed on the CPU instead.
        meta = torch.get_default_device().type == "meta"
        with torch.device("cpu") if meta else contextlib.nullcontext():
            fbank = AF.melscale_fbanks(N_FFT // 2 + 1, 0.0, SAMPLE_RATE / 2, n_mels, SAMPLE_RATE, norm="slaney",
                                       mel_scale="slaney")  # (freqs, mels)
        # Not in the state dict: computed from the options, as transformers computes its own.
        self.register_buffer("filters", fbank.T.contiguous(), persistent=False)  # (mels, freqs)
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)

    def pad_or_trim(self, wave: Tensor) -> Tensor:
        """(B, samples) -> (B, n_samples): zeros appended, or the end cut off."""
        n = wave.shape[-1]
        if n >= self.n_samples:
            return wave[..., : self.n_samples]
        return torch.nn.functional.pad(wave, (0, self.n_samples - n))

    def forward(self, wave: Tensor, *, clip: bool = False) -> Tensor:
        """clip=False: the (B, n_mels, 3000) features of the 30 s chunk. clip=True: its first frames only, those
        of the clip and a few of the silence after it (ceil(samples / hop) + 4 or more, at most 3000), the same
        numbers at a fraction of the work for a short clip (1 s: 0.24 -> 0.005 s for 16 clips, one thread):
        every frame that touches the clip sees the samples it sees in the chunk, and the frames after it are
        silence, which the chunk's maximum (the clamp) does not come from."""
        if wave.dim() == 1:
            wave = wave[None]
        if wave.dim() != 2:
            raise ValueError(f"expected a waveform (samples,) or (batch, samples), got {tuple(wave.shape)}")
        if clip:  # 2 n_fft of zeros: the centred last frames and their reflect padding see only silence
            wave = torch.nn.functional.pad(wave.float(), (0, 2 * N_FFT))[..., : self.n_samples]
        else:
            wave = self.pad_or_trim(wave.float())
        stft = torch.stft(wave, N_FFT, HOP_LENGTH, window=self.window, return_complex=True)  # (B, freqs, 3001)
        power = stft[..., :-1].abs() ** 2  # Whisper drops the last frame: 3000 frames for 30 s
        mel = self.filters @ power  # (B, mels, frames)
        log = mel.clamp(min=1e-10).log10()
        # Each utterance's own maximum: a quiet recording keeps its 8 decades of dynamic range.
        log = torch.maximum(log, log.amax(dim=(1, 2), keepdim=True) - 8.0)
        return (log + 4.0) / 4.0
