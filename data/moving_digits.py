"""Moving digits: real MNIST digits hopping around a wrap-around canvas, labelled by their motion only.

The canvas (image_size x image_size) is a torus cut into `num_frames` vertical slots of
`image_size / num_frames` pixels. A digit starts at a uniformly random pixel (x0, y0) and moves
horizontally by `STEPS[label]` slots per frame, wrapping around the edges:

    class 0: +1 slot/frame (right, slow)   class 1: -1 (left, slow)
    class 2: +3 slots/frame (right, fast)  class 3: -3 (left, fast)

Why these four: 1 and 3 are coprime with num_frames (8 by default), so in every class the T frames
visit each of the T slots exactly once. Hence

* a single frame is a random digit at a uniformly random position whatever the label, and
* the *set* of frames of a clip is the same (in distribution) for all four classes: only their
  order tells the label. A model shown the frames shuffled in time is at chance by construction,
  which is what makes the shuffled control a clean test that temporal attention does the work.

(Up/down/left/right would fail the second point: an unordered set of frames already tells
horizontal from vertical motion, so a time-blind model would score 50 %, not 25 %.)

Generation is vectorised numpy, ~0.1 s for 5,000 clips, so clips are made in memory on every run
(deterministic from the seed) instead of being cached on disk.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

STEPS: tuple[int, ...] = (1, -1, 3, -3)  # slots per frame, indexed by label
CLASS_NAMES: tuple[str, ...] = ("right slow", "left slow", "right fast", "left fast")


def check_geometry(num_frames: int, image_size: int, digit_size: int) -> None:
    """Fail early on a canvas where the four motions would not cover the same slots or would coincide."""
    steps_distinct = len({s % num_frames for s in STEPS}) == len(STEPS)
    if num_frames < 5 or num_frames % 3 == 0 or not steps_distinct:
        # gcd(3, T) = 1: every class visits all T slots; T >= 5: +-1 and +-3 are distinct modulo T
        raise ValueError(
            f"moving_digits: num_frames={num_frames} not supported; use a number >= 5 not divisible by 3 "
            f"(e.g. 5, 7, 8, 10, 11, 16) so that steps {STEPS} visit every slot and stay distinct"
        )
    if image_size % num_frames != 0:
        raise ValueError(
            f"moving_digits: image_size={image_size} must be a multiple of num_frames={num_frames} "
            f"(the canvas is cut into num_frames slots of whole pixels)"
        )
    if not 1 <= digit_size <= image_size:
        raise ValueError(f"moving_digits: digit_size={digit_size} must be between 1 and image_size={image_size}")


@dataclass
class MovingDigits:
    """Generated clips and the ground truth of their motion (tests check the pixels against it)."""

    clips: Tensor  # uint8 (N, 1, T, H, W)
    labels: Tensor  # int64 (N,)
    digits: np.ndarray  # (N,) index of the source digit in the array given to `make_moving_digits`
    x: np.ndarray  # (N, T) column of the digit box's left edge in each frame (mod image_size)
    y: np.ndarray  # (N,) row of the digit box's top edge (fixed: the motion is horizontal)


def make_moving_digits(
    digits: Tensor, num_clips: int, num_frames: int = 8, image_size: int = 32, digit_size: int = 16, seed: int = 0
) -> MovingDigits:
    """`num_clips` clips from uint8 digits (D, 1, 28, 28); each digit is used equally often (+-1).

    Labels are balanced (num_clips // 4 per class, the remainder spread); digit, start position
    and label are drawn independently, so nothing but the motion carries the label.
    """
    check_geometry(num_frames, image_size, digit_size)
    if digits.dim() != 4 or digits.shape[1] != 1 or digits.dtype != torch.uint8:
        raise ValueError(f"digits must be uint8 (D, 1, H, W), got {digits.dtype} {tuple(digits.shape)}")
    rng = np.random.default_rng(seed)
    n, L, T = num_clips, image_size, num_frames
    which = np.resize(rng.permutation(len(digits)), n)  # cycle through all digits before repeating one
    labels = rng.permutation(np.arange(n) % len(STEPS))
    x0, y0 = rng.integers(0, L, n), rng.integers(0, L, n)
    step_px = np.asarray(STEPS)[labels] * (L // T)  # (N,)
    x = (x0[:, None] + step_px[:, None] * np.arange(T)[None]) % L  # (N, T)

    small = TF.resize(digits, [digit_size, digit_size], antialias=True).numpy()[:, 0]  # (D, S, S)
    base = np.zeros((n, L, L), np.uint8)  # each clip's digit in the top-left corner, then shifted on the torus
    base[:, :digit_size, :digit_size] = small[which]
    rows = (np.arange(L)[None, :] - y0[:, None]) % L  # (N, L): frame row r shows base row r - y
    cols = (np.arange(L)[None, None, :] - x[:, :, None]) % L  # (N, T, L)
    frames = base[np.arange(n)[:, None, None, None], rows[:, None, :, None], cols[:, :, None, :]]  # (N, T, L, L)
    return MovingDigits(
        torch.from_numpy(frames).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)), which, x, y0
    )


__all__ = ["CLASS_NAMES", "STEPS", "MovingDigits", "check_geometry", "make_moving_digits"]
