"""Speech longer than the one window Whisper hears (30 s), and speech with nothing in it.

Long audio is cut into fixed, consecutive 30 s windows (0-30 s, 30-60 s, ..., the last one shorter), each
transcribed on its own with the same decoding settings, and the texts joined with a space, in order. This is not
OpenAI's long-form decoding, which moves its 30 s window to the last timestamp token the model wrote (its
"seek"), so that no word is cut in two, and conditions each window on the previous text: with fixed windows a
word spoken across a boundary may be lost or heard twice. It needs no timestamp decoding and is what
faster-whisper's `without_timestamps=True` also does, window by window; the `note:` says how many windows.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from torch import Tensor

from data.audio import duration_text


def windows(wave: Tensor, size: int) -> list[Tensor]:
    """(1, samples) -> its consecutive windows of `size` samples (the last one shorter)."""
    return [wave[..., start: start + size] for start in range(0, wave.shape[-1], size)]


def note_silence(wave: Tensor, notes: list[str] | None) -> None:
    """Say so when every sample is 0: the transcript that follows is what the model writes for silence (Whisper
    may write nothing, or a phrase it saw with silent audio in training), not something heard."""
    if notes is not None and not bool(wave.abs().amax() > 0):
        notes.append("every sample is 0 (silence): the transcript is what the model writes for no speech")


def transcribe_windows(predictor: Any, wave: Tensor, rate: int, size: int, maps: bool, beam_size: int | None,
                       notes: list[str] | None, words: bool = False) -> Any:
    """The Prediction of a recording longer than one window: each window through `predictor._transcribe`,
    the texts joined and the token ids concatenated; the attention maps (and the spectrogram drawn beside them)
    are the first window's. words: each window's word timestamps, moved by the window's start."""
    parts = [predictor._transcribe(part, maps and i == 0, beam_size, None, words)
             for i, part in enumerate(windows(wave, size))]
    if notes is not None:
        drawn = "; the attention drawn is the first window's" if maps else ""
        notes.append(f"{duration_text(wave.shape[-1] / rate)} s long: transcribed in {len(parts)} windows of "
                     f"{size / rate:g} s, one after another{drawn}")
    first = parts[0]
    first.input = wave
    first.text = " ".join(p.text for p in parts if p.text)
    first.ids = [t for p in parts for t in p.ids]
    if words:  # times of window i start at i * size samples
        first.words = [replace(w, start=w.start + i * size / rate, end=w.end + i * size / rate)
                       for i, p in enumerate(parts) for w in p.words]
    return first
