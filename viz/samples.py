"""Write test examples of the embedded datasets as ordinary files, to try `predict.py` on.

    python -m viz.samples samples/            # samples/digit_<label>.png, keyword_<word>.wav, motion_<label>.mp4
    python -m viz.samples samples/ --n 5 --only image

Images and clips come from the test splits (never seen in training); keywords are synthesized
speech (espeak-ng) from the test voices; the video is written losslessly enough (H.264, CRF 10)
that the model sees what it saw in testing, give or take compression.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from inference.inputs import slug

KINDS = ("image", "audio", "video")


def write_png(image: torch.Tensor, path: Path) -> Path:
    """uint8 (C, H, W) -> PNG."""
    from PIL import Image

    array = image.permute(1, 2, 0).numpy()
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(path)
    return path


def write_wav(wave: torch.Tensor, sample_rate: int, path: Path) -> Path:
    """float (samples,) in [-1, 1] or int16 -> 16-bit PCM wav."""
    import soundfile as sf

    data = wave.numpy()
    data = data if data.dtype == np.int16 else (np.clip(data, -1, 1) * 32767).astype(np.int16)
    sf.write(str(path), data, sample_rate, subtype="PCM_16")
    return path


def write_mp4(clip: torch.Tensor, path: Path, fps: int = 8) -> Path:
    """uint8 (C, T, H, W), C = 1 or 3 -> H.264 mp4 (gray is written as RGB)."""
    import av

    frames = clip.expand(3, -1, -1, -1) if clip.shape[0] == 1 else clip
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height = int(frames.shape[-1]), int(frames.shape[-2])
        stream.pix_fmt = "yuv444p"  # no chroma subsampling: small frames keep their edges
        stream.options = {"crf": "10"}
        for frame in frames.permute(1, 2, 3, 0).numpy():
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def spread(total: int, n: int) -> range:
    """n indices spread over a test set (some are sorted by class)."""
    step = max(1, total // max(n, 1))
    return range(0, min(total, step * n), step)


def write_samples(out_dir: Path, n: int, kinds: tuple[str, ...], data_dir: str) -> list[Path]:
    from data.audio import AudioDataModule
    from data.images import ImageDataModule
    from data.video import VideoDataModule

    out_dir.mkdir(parents=True, exist_ok=True)
    makers = {  # kind: (data module, file writer for one (example, label) at test index i)
        "image": (lambda: ImageDataModule("mnist", root=data_dir),
                  lambda dm, x, y, i: write_png(x, out_dir / f"digit_{i}_label{int(y)}.png")),
        "audio": (lambda: AudioDataModule("keywords", root=data_dir),
                  lambda dm, x, y, i: write_wav(x, dm.sample_rate, out_dir / f"keyword_{i}_{slug(dm.class_names[int(y)])}.wav")),
        "video": (lambda: VideoDataModule("moving_digits", root=data_dir),
                  lambda dm, x, y, i: write_mp4(x, out_dir / f"motion_{i}_{slug(dm.class_names[int(y)])}.mp4")),
    }
    written: list[Path] = []
    for kind in kinds:
        make, write = makers[kind]
        dm = make()
        dm.setup("test")
        written += [write(dm, *dm.test_dataset[i], i) for i in spread(len(dm.test_dataset), n)]
    return written


def main() -> None:
    import os

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--n", type=int, default=3, help="examples per kind")
    parser.add_argument("--only", choices=KINDS, default=None)
    parser.add_argument("--data-dir", default=os.environ.get("ZOO_DATA_DIR", "datasets"),
                        help="where the embedded keyword set is cached (as for train.py)")
    args = parser.parse_args()
    for path in write_samples(args.out_dir, args.n, (args.only,) if args.only else KINDS, args.data_dir):
        print(path)


if __name__ == "__main__":
    main()
