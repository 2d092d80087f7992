"""A tiny folder laid out like FSDD's recordings/: `{digit}_{speaker}_{index}.wav`, 8 kHz 16-bit mono, each clip a
short tone whose pitch is its digit's (so a label can be checked from the audio too)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SPEAKERS = ("george", "jackson", "lucas")


def tone_hz(digit: int) -> float:
    return 300.0 + 150.0 * digit


def write_tiny_fsdd(folder: Path, speakers: tuple[str, ...] = SPEAKERS, takes: int = 2, seconds: float = 0.3,
                    rate: int = 8000) -> Path:
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    for s, speaker in enumerate(speakers):
        for digit in range(10):
            for index in range(takes):
                wave = (0.3 + 0.1 * s) * np.sin(2 * np.pi * tone_hz(digit) * t)
                sf.write(str(folder / f"{digit}_{speaker}_{index}.wav"), wave.astype(np.float32), rate,
                         subtype="PCM_16")
    return folder
