"""Input embeddings: patches of a 2-D plane (images, spectrograms) and resizable position tables."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from timm.layers import trunc_normal_


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class PatchEmbed(nn.Module):
    """(B, C, H, W) -> (B, gh*gw, dim) with a strided convolution (one linear map per patch).

    `stride` smaller than `patch_size` gives overlapping patches (AST uses that on spectrograms).
    """

    def __init__(
        self,
        img_size: int | tuple[int, int],
        patch_size: int | tuple[int, int],
        in_chans: int,
        dim: int,
        stride: int | tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.img_size, self.patch_size = _pair(img_size), _pair(patch_size)
        self.stride = self.patch_size if stride is None else _pair(stride)
        self.in_chans = in_chans
        for name, size, patch in zip(("height", "width"), self.img_size, self.patch_size):
            if size < patch:
                raise ValueError(f"input {name} {size} is smaller than one patch ({patch})")
        self.grid_size = self.grid_for(self.img_size)
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=self.patch_size, stride=self.stride)

    def grid_for(self, size: tuple[int, int]) -> tuple[int, int]:
        """Number of patches along (H, W) for an input of this size."""
        return tuple((s - p) // st + 1 for s, p, st in zip(size, self.patch_size, self.stride))  # type: ignore[return-value]

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"expected input (batch, {self.in_chans}, H, W), got {tuple(x.shape)}")
        H, W = x.shape[-2:]
        if H < self.patch_size[0] or W < self.patch_size[1]:
            raise ValueError(f"input {H}x{W} is smaller than one patch {self.patch_size[0]}x{self.patch_size[1]}")
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, gh*gw, dim)


class PosEmbed2D(nn.Module):
    """Learned position table over a (gh, gw) grid, bicubically resized for other grids.

    Resizing lets a model trained at one resolution (or clip length) run at another, as in ViT
    fine-tuning at higher resolution.
    """

    def __init__(self, grid_size: tuple[int, int], dim: int) -> None:
        super().__init__()
        self.grid_size = tuple(grid_size)
        self.weight = nn.Parameter(torch.zeros(1, grid_size[0] * grid_size[1], dim))
        trunc_normal_(self.weight, std=0.02)

    def forward(self, grid_size: tuple[int, int]) -> Tensor:
        """(1, gh*gw, dim) table for the requested grid."""
        if tuple(grid_size) == self.grid_size:
            return self.weight
        gh, gw = self.grid_size
        table = self.weight.reshape(1, gh, gw, -1).permute(0, 3, 1, 2)  # (1, dim, gh, gw)
        table = F.interpolate(table, size=tuple(grid_size), mode="bicubic", align_corners=False)
        return table.permute(0, 2, 3, 1).flatten(1, 2)
