"""Circling digits: real MNIST digits travelling round a ring, labelled by the sense and speed of travel.

Each clip shows one digit (random, upright) whose centre visits the `num_frames` points of a ring
spaced 360 / num_frames degrees apart, starting at a uniformly random angle `theta0`, stepping
`STEPS[label]` points per frame:

    class 0: +1 point/frame (clockwise)          class 1: -1 (counter-clockwise)
    class 2: +3 points/frame (clockwise, fast)   class 3: -3 (counter-clockwise, fast)

Why this design (the issue asks for a label that only the motion carries):

* 1 and 3 are coprime with num_frames (8 by default), so in every class the T frames visit each of the
  T ring points exactly once: the *set* of frames of a clip is identical for all four labels given
  (digit, theta0), only their order differs. A model shown the frames shuffled in time is at chance by
  construction (tests check the sets frame for frame), which makes the shuffled control a clean test
  that temporal attention does the work.
* theta0 is uniform and the digit drawn independently of the label, so a single frame is a random
  digit at a uniformly random point of the ring whatever the label: a one-frame model is at chance too.
* A digit bouncing off the canvas edges (Moving-MNIST style) was rejected: with a direction label the
  unordered frames leak it (a bounce off the right wall within the clip only happens to digits that set
  off to the right), so a time-blind control would score above chance.
* The ring stays inside the canvas, so digits are never cut by an edge.

Generation is vectorised numpy (~0.1 s for 5,000 clips of 8 x 32 x 32), so clips are made in memory
on every run, deterministically from the seed, instead of being cached on disk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

STEPS: tuple[int, ...] = (1, -1, 3, -3)  # ring points per frame, indexed by label (+ = clockwise on screen)
CLASS_NAMES: tuple[str, ...] = ("clockwise", "counter-clockwise", "clockwise fast", "counter-clockwise fast")


def check_geometry(num_frames: int, image_size: int, digit_size: int) -> None:
    """Fail early on settings where the four motions would not visit the same points or would coincide."""
    if not isinstance(num_frames, int) or num_frames < 5 or num_frames % 3 == 0:
        # gcd(3, T) = 1: every class visits all T points; T >= 5: steps +-1 and +-3 stay distinct modulo T
        raise ValueError(
            f"moving_digits: num_frames={num_frames!r} not supported; use an integer >= 5 not divisible by 3 "
            f"(e.g. 5, 7, 8, 10, 11, 16) so that steps {STEPS} visit every ring point and stay distinct"
        )
    if not 4 <= digit_size < image_size:
        raise ValueError(f"moving_digits: digit_size={digit_size} must be >= 4 and smaller than "
                         f"image_size={image_size} (the digit needs room to move)")
    if ring_radius(image_size, digit_size) < 2:
        raise ValueError(f"moving_digits: image_size={image_size} leaves a ring radius under 2 pixels for "
                         f"digit_size={digit_size}; use a larger canvas or a smaller digit")


def ring_radius(image_size: int, digit_size: int) -> float:
    """Largest radius that keeps the whole digit box on the canvas at every angle."""
    return (image_size - digit_size) / 2


def ring_corners(theta0: np.ndarray, labels: np.ndarray, num_frames: int, image_size: int,
                 digit_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corner (row, col) of the digit box in every frame, each (N, T) int: frame t sits at ring
    point `STEPS[label] * t`, i.e. at angle theta0 + STEPS[label] * t * 2 pi / T (y axis pointing down)."""
    t = np.arange(num_frames)
    points = (np.asarray(STEPS)[labels][:, None] * t[None]) % num_frames  # (N, T) ring point index
    angle = theta0[:, None] + points * (2 * math.pi / num_frames)
    r, c = ring_radius(image_size, digit_size), (image_size - digit_size) / 2  # box corner of the centred digit
    rows = np.rint(c + r * np.sin(angle)).astype(np.int64)
    cols = np.rint(c + r * np.cos(angle)).astype(np.int64)
    return rows.clip(0, image_size - digit_size), cols.clip(0, image_size - digit_size)


@dataclass
class MovingDigits:
    """Generated clips and the ground truth of their motion (tests check the pixels against it)."""

    clips: Tensor  # uint8 (N, 1, T, H, W)
    labels: Tensor  # int64 (N,)
    digits: np.ndarray  # (N,) index of the source digit in the array given to `make_moving_digits`
    theta0: np.ndarray  # (N,) starting angle in radians
    rows: np.ndarray  # (N, T) top row of the digit box in each frame
    cols: np.ndarray  # (N, T) left column of the digit box in each frame


def render(small: np.ndarray, rows: np.ndarray, cols: np.ndarray, image_size: int) -> np.ndarray:
    """Paste digit i (small: (N, S, S) uint8) at (rows[i, t], cols[i, t]) on a black canvas -> (N, T, L, L)."""
    n, s = small.shape[0], small.shape[-1]
    T, L = rows.shape[1], image_size
    frames = np.zeros((n, T, L, L), np.uint8)
    dr, dc = np.arange(s)[:, None], np.arange(s)[None, :]  # (S, 1), (1, S) offsets inside the box
    idx_n, idx_t = np.arange(n)[:, None, None, None], np.arange(T)[None, :, None, None]
    frames[idx_n, idx_t, rows[:, :, None, None] + dr, cols[:, :, None, None] + dc] = small[:, None]
    return frames


def make_moving_digits(
    digits: Tensor, num_clips: int, num_frames: int = 8, image_size: int = 32, digit_size: int = 16, seed: int = 0
) -> MovingDigits:
    """`num_clips` clips from uint8 digits (D, 1, 28, 28); each digit is used equally often (+-1).

    Labels are balanced (num_clips // 4 per class, the remainder spread); digit, start angle and label
    are drawn independently, so nothing but the motion carries the label.
    """
    check_geometry(num_frames, image_size, digit_size)
    if digits.dim() != 4 or digits.shape[1] != 1 or digits.dtype != torch.uint8:
        raise ValueError(f"digits must be uint8 (D, 1, H, W), got {digits.dtype} {tuple(digits.shape)}")
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    rng = np.random.default_rng(seed)
    which = np.resize(rng.permutation(len(digits)), num_clips)  # cycle through all digits before repeating one
    labels = rng.permutation(np.arange(num_clips) % len(STEPS))
    theta0 = rng.uniform(0.0, 2 * math.pi, num_clips)
    rows, cols = ring_corners(theta0, labels, num_frames, image_size, digit_size)
    small = TF.resize(digits, [digit_size, digit_size], antialias=True).numpy()[:, 0]  # (D, S, S)
    frames = render(small[which], rows, cols, image_size)
    return MovingDigits(torch.from_numpy(frames).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)),
                        which, theta0, rows, cols)


__all__ = ["CLASS_NAMES", "STEPS", "MovingDigits", "check_geometry", "make_moving_digits", "render", "ring_corners"]
