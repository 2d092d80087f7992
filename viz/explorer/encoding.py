"""How the explorer page stores what it shows: attention weights as base64 uint16 (w * 65535: 1.5e-5 precision at
2 bytes a weight), pictures as PNG and audio as WAV data: URLs, and the size budget that averages heads when a page
would grow too large. page.py and speech.py both build on these."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import torch
from torch import Tensor

MAX_WEIGHTS = 1_500_000  # weights per page before heads are averaged (~4 MB of base64)
SCALE = 65535
SCALE = 65535


def pack(t: Tensor) -> dict[str, Any]:
    """A tensor of weights in [0, 1] -> {"shape", "b64"} of little-endian uint16 (round(w * 65535))."""
    q = (t.detach().float().clamp(0, 1) * SCALE).round().to(torch.int32).numpy().astype("<u2")
    return {"shape": list(t.shape), "b64": base64.b64encode(q.tobytes()).decode("ascii")}


def unpack(packed: dict[str, Any]) -> np.ndarray:
    """The inverse of pack, as the page decodes it (for tests and tools)."""
    q = np.frombuffer(base64.b64decode(packed["b64"]), dtype="<u2")
    return (q.astype(np.float64) / SCALE).reshape(packed["shape"])


def png_data_url(image: Tensor) -> str:
    """(C, H, W) or (H, W) in [0, 1] -> a PNG data: URL."""
    from PIL import Image

    array = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    array = array.numpy() if array.dim() == 2 else array.permute(1, 2, 0).numpy()
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def wav_data_url(wave: Tensor, sample_rate: int) -> str:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(
        buf, wave.detach().float().clamp(-1, 1).numpy(), sample_rate, format="WAV", subtype="PCM_16"
    )
    return "data:audio/wav;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def budget(maps: Tensor, notes: list[str]) -> tuple[Tensor, list[str]]:
    """(L, H, ...) maps and head labels; heads averaged when they would make the page too large."""
    if maps.numel() <= MAX_WEIGHTS or maps.shape[1] == 1:
        return maps, [str(h) for h in range(maps.shape[1])]
    notes.append(
        f"{maps.shape[1]} heads x {maps.numel() // maps.shape[1]:,} weights would make the page too "
        f"large: this page shows the mean over heads"
    )
    return maps.mean(dim=1, keepdim=True), ["mean"]
