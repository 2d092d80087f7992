"""Input embeddings: patches of a 2-D plane (images, spectrograms), resizable 2-D position tables, and
the fixed 1-D sinusoidal positions of the translator."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from timm.layers import trunc_normal_

from models.checks import is_int, refuse, require_int_list, show


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def check_patch_fits(patch_size: int | tuple[int, int], img_size: int) -> None:
    """A model's rule between its `patch_size` and `img_size` keys: at least one patch per image."""
    if any(p > img_size for p in _pair(patch_size)):
        raise ValueError(f"patch_size={show(patch_size)} is larger than the image "
                         f"(img_size={img_size}): the model would see no patch")


class _PlaneEmbed(nn.Module):
    """Shared input checks and flattening for embeddings of a 2-D plane into a token grid."""

    img_size: tuple[int, int]
    patch_size: tuple[int, int]
    in_chans: int
    proj: nn.Module

    def _check_fits(self, size: tuple[int, int]) -> None:
        for name, s, p in zip(("height", "width"), size, self.patch_size):
            if s < p:
                raise ValueError(f"input {name} {s} is smaller than one patch ({p})")

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"expected input (batch, {self.in_chans}, H, W), got {tuple(x.shape)}")
        self._check_fits(tuple(x.shape[-2:]))
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, gh*gw, dim)


class PatchEmbed(_PlaneEmbed):
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
        if any(st > p for st, p in zip(self.stride, self.patch_size)):  # the models' key is patch_stride
            raise ValueError(f"patch_stride={show(stride)} is larger than patch_size={show(patch_size)}: pixels "
                             f"between patches would be skipped")
        self.in_chans = in_chans
        self._check_fits(self.img_size)
        self.grid_size = self.grid_for(self.img_size)
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=self.patch_size, stride=self.stride)

    def grid_for(self, size: tuple[int, int]) -> tuple[int, int]:
        """Number of patches along (H, W) for an input of this size."""
        return tuple((s - p) // st + 1 for s, p, st in zip(size, self.patch_size, self.stride))  # type: ignore[return-value]


class PosEmbed2D(nn.Module):
    """Learned position table over a (gh, gw) grid, bicubically resized for other grids (to the grid's size,
    corners not aligned, in float32 whatever the table's precision: transformers' DINOv2 does the same).

    Resizing lets a model trained at one resolution (or clip length) run at another, as in ViT
    fine-tuning at higher resolution. `antialias` low-pass filters when shrinking the table (transformers'
    Dinov2WithRegisters does; its Dinov2 and timm do not).
    """

    def __init__(self, grid_size: tuple[int, int], dim: int, *, antialias: bool = False) -> None:
        super().__init__()
        self.grid_size = tuple(grid_size)
        self.antialias = antialias
        self.weight = nn.Parameter(torch.zeros(1, grid_size[0] * grid_size[1], dim))
        trunc_normal_(self.weight, std=0.02)

    def forward(self, grid_size: tuple[int, int]) -> Tensor:
        """(1, gh*gw, dim) table for the requested grid."""
        if tuple(grid_size) == self.grid_size:
            return self.weight
        gh, gw = self.grid_size
        table = self.weight.reshape(1, gh, gw, -1).permute(0, 3, 1, 2)  # (1, dim, gh, gw)
        resized = F.interpolate(table.float(), size=tuple(grid_size), mode="bicubic", align_corners=False,
                                antialias=self.antialias).to(table.dtype)
        return resized.permute(0, 2, 3, 1).flatten(1, 2)


class ConvStem(_PlaneEmbed):
    """(B, C, H, W) -> (B, gh*gw, dim) through stride-2 3x3 convolutions, then a 1x1 projection.

    A drop-in for PatchEmbed with the same total stride (patch_size = 2 ** number of convs).
    Xiao et al. 2021 ("Early Convolutions Help Transformers See Better") show it makes ViTs
    converge much faster and less sensitive to the learning rate, which is what a minutes-long
    CPU run on 4,000 digits needs. The transformer after it is unchanged.
    """

    def __init__(self, img_size: int | tuple[int, int], patch_size: int, in_chans: int, dim: int,
                 channels: list[int] | None = None) -> None:
        super().__init__()
        # Messages name the models' keys: patch_size, stem (=conv) and stem_channels (`channels` here).
        if not is_int(patch_size) or patch_size < 2 or patch_size & (patch_size - 1):
            raise refuse("patch_size", patch_size, "the conv stem (stem=conv) needs one power of 2 >= 2 "
                         "(2, 4, 8, 16, ...); or use stem=patch")
        n_convs = patch_size.bit_length() - 1
        channels = require_int_list("stem_channels", channels, optional=True)
        channels = channels or [max(8, dim // 2 ** (n_convs - i)) for i in range(n_convs)]
        if len(channels) != n_convs:
            raise refuse("stem_channels", channels, f"patch_size={patch_size} takes {n_convs} stride-2 convs, so "
                         f"stem_channels needs {n_convs} entries (or null)")
        self.img_size, self.patch_size, self.in_chans = _pair(img_size), _pair(patch_size), in_chans
        self._check_fits(self.img_size)
        layers: list[nn.Module] = []
        prev = in_chans
        for ch in channels:
            layers += [nn.Conv2d(prev, ch, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(ch), nn.ReLU()]
            prev = ch
        layers.append(nn.Conv2d(prev, dim, 1))
        self.proj = nn.Sequential(*layers)
        self.grid_size = self.grid_for(self.img_size)

    def grid_for(self, size: tuple[int, int]) -> tuple[int, int]:
        g = size
        for _ in range(len(self.proj) // 3):
            g = tuple((s + 1) // 2 for s in g)  # 3x3, stride 2, padding 1
        return g  # type: ignore[return-value]


class TubeletEmbed(nn.Module):
    """(B, C, T, H, W) -> (B, T // tubelet, gh*gw, dim): one linear map per tubelet of `tubelet` frames x a patch
    (a strided Conv3d, VideoMAE / ViViT's tubelet embedding). Tokens are (time, row, column) in that order."""

    def __init__(self, img_size: int | tuple[int, int], patch_size: int, tubelet: int, in_chans: int,
                 dim: int) -> None:
        super().__init__()
        self.img_size, self.patch_size, self.in_chans = _pair(img_size), _pair(patch_size), in_chans
        self.tubelet = tubelet
        self.grid_size = self.grid_for(self.img_size)
        self.proj = nn.Conv3d(in_chans, dim, kernel_size=(tubelet, *self.patch_size), stride=(tubelet, *self.patch_size))

    def grid_for(self, size: tuple[int, int]) -> tuple[int, int]:
        return tuple(s // p for s, p in zip(size, self.patch_size))  # type: ignore[return-value]

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[2] % self.tubelet:
            raise ValueError(f"a clip of {x.shape[2]} frames does not split into tubelets of {self.tubelet} frames")
        return self.proj(x).flatten(3).permute(0, 2, 3, 1)  # (B, dim, T', gh, gw) -> (B, T', gh*gw, dim)


def prepend_tokens(x: Tensor, tokens: list[Tensor | None], pos: Tensor | None = None) -> Tensor:
    """(B, N, dim) patches -> (B, P + N, dim) with the learned (1, 1, dim) tokens that are not None in front
    (class, distillation), each plus its own learned position when `pos` (1, P, dim) is given."""
    prefix = [t for t in tokens if t is not None]
    if not prefix:
        return x
    head = torch.cat(prefix, dim=1)
    if pos is not None:
        head = head + pos
    return torch.cat([head.expand(x.shape[0], -1, -1), x], dim=1)


def sinusoidal_table(length: int, dim: int, layout: str = "interleaved") -> Tensor:
    """The fixed sin/cos positions of Vaswani et al. (2017), (length, dim): sin and cos of each frequency side by
    side ("interleaved"), or all sines then all cosines ("split", Marian / OPUS-MT's layout)."""
    if layout not in ("interleaved", "split"):
        raise ValueError(f"sinusoid layout {layout!r}: expected 'interleaved' or 'split'")
    pos = torch.arange(length, dtype=torch.float64)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, dtype=torch.float64)
    if layout == "split":
        half = (dim + 1) // 2
        table[:, :half] = torch.sin(pos * freq)
        table[:, half:] = torch.cos(pos * freq)[:, : dim - half]
        return table.float()
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return table.float()
