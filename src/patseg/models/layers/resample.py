"""Moving features between PAT's pyramid grids: the pixel stem, strided downsampling, and `Resample`.

PAT's pixel branch (Eq. 2, top) starts from a convolutional stem on the image (``x_early``) and strides down from
stage to stage (``x_mid = DownSampler(x_early)``); the CLIP taps and the decoder's features move between grids with
DySample going up and a strided conv going down. Every factor here is derived from the config (stem stride =
H / (scale_early * r), Down stride = scale_{s-1} / scale_s, see ``patseg.models.pat.geometry``), never hard-coded.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch.nn.functional as F
from torch import Tensor, nn

from patseg.models.layers.common import Conv1x1
from patseg.models.layers.dysample import DySample


def log2_exact(value: float, what: str) -> int:
    """k with 2**k == value for a positive integer ``value`` (an int, or a float holding one); else ValueError
    naming ``what``. Bit arithmetic, so exact at any size (a float log2 can round)."""
    if value < 1 or int(value) != value or int(value) & (int(value) - 1):
        raise ValueError(f"{what} must be a power of 2, got {value}")
    return int(value).bit_length() - 1


class PixelStem(nn.Module):
    """Convolutional stem from the image to the early stage grid: ``x_early`` of Eq. (2).

    log2(stride) blocks of [3x3 conv, stride 2 -> GroupNorm -> GELU], widths doubling up to ``out_channels``, then a
    1x1 conv so the output is a plain linear feature that can be added to the projected CLIP tap.

    Args:
        out_channels: C_pix.
        stride: total downsampling, a power of 2 >= 2 (8 for the default 640 crop: 640 -> 80).
    """

    def __init__(self, *, out_channels: int, stride: int):
        super().__init__()
        depth = log2_exact(stride, "PixelStem stride")
        if depth == 0:
            raise ValueError("PixelStem stride must be at least 2")
        self.stride = stride
        widths = [max(out_channels >> (depth - 1 - k), min(out_channels, 16)) for k in range(depth)]
        layers: list[nn.Module] = []
        in_ch = 3
        for width in widths:
            layers += [
                nn.Conv2d(in_ch, width, kernel_size=3, stride=2, padding=1),
                nn.GroupNorm(math.gcd(32, width), width),
                nn.GELU(),
            ]
            in_ch = width
        layers.append(Conv1x1(in_ch, out_channels))
        self.layers = nn.Sequential(*layers)

    def forward(self, image: Tensor) -> Tensor:
        """(B, 3, H, W) normalised image -> (B, C, ceil(H / stride), ceil(W / stride))."""
        return self.layers(image)


class ConvDown(nn.Module):
    """PAT's DownSampler: strided 3x3 convolution(s) at constant width.

    ``factor`` 1 is a stride-1 3x3 conv (Table II's equal stage scales); ``factor`` 2 is one stride-2 3x3 conv;
    larger powers of 2 chain log2(factor) stride-2 3x3 convs, because a single 3x3 kernel with stride 4 would skip
    every fourth row and column. The convs are purely linear (no norm or activation): their output is added to
    other features as a residual.
    """

    def __init__(self, channels: int, *, factor: int):
        super().__init__()
        steps = log2_exact(factor, "ConvDown factor")
        self.factor = factor
        if steps == 0:
            self.convs = nn.Sequential(nn.Conv2d(channels, channels, kernel_size=3, padding=1))
        else:
            self.convs = nn.Sequential(
                *[nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1) for _ in range(steps)]
            )

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, ceil(H / factor), ceil(W / factor)) (exact for grids divisible by factor)."""
        return self.convs(x)


class Resample(nn.Module):
    """Change a feature map's grid by a factor f: DySample up (f > 1), ConvDown (f < 1), identity (f == 1).

    The operator is chosen once here from ``factor``. Allowed factors: a positive integer, or 1 / 2^k.

    Args:
        channels: C (unchanged).
        factor: output grid / input grid.
        groups: DySample channel groups (PatConfig.dysample_groups).
    """

    def __init__(self, channels: int, *, factor: float, groups: int = 4):
        super().__init__()
        ratio = Fraction(factor).limit_denominator(64)
        if ratio <= 0 or abs(float(ratio) - factor) > 1e-9:
            raise ValueError(f"Resample factor must be a positive integer or 1/2^k, got {factor!r}")
        self.factor = float(ratio)
        self.op: nn.Module
        if ratio > 1:
            if ratio.denominator != 1:
                raise ValueError(f"Resample can only upsample by an integer factor (DySample), got {factor!r}")
            self.op = DySample(channels, scale=ratio.numerator, groups=groups)
        elif ratio < 1:
            if ratio.numerator != 1:
                raise ValueError(f"Resample can only downsample by 1/2^k (ConvDown), got {factor!r}")
            self.op = ConvDown(channels, factor=ratio.denominator)
        else:
            self.op = nn.Identity()

    def forward(self, x: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """Resample ``x`` (B, C, H, W) to (B, C, H*f, W*f), or exactly to ``size`` when given.

        Grids that are not multiples of the factor (odd evaluation sizes) leave the operator's output at most one
        input pixel's worth off ``size`` (e.g. a stride-2 conv maps 25 -> 13, the caller may want 12); that last
        difference is removed by bilinear interpolation. A larger mismatch means the caller's grids disagree with
        this module's factor and raises ValueError.
        """
        out = self.op(x)
        if size is None or tuple(out.shape[-2:]) == tuple(size):
            return out
        tolerance = max(1, math.ceil(self.factor))
        got = tuple(out.shape[-2:])
        if any(abs(g - s) > tolerance for g, s in zip(got, size)):
            raise ValueError(
                f"Resample(factor={self.factor}) turned grid {tuple(x.shape[-2:])} into {got}, too far from the "
                f"requested {tuple(size)} (tolerance {tolerance} pixels)"
            )
        return F.interpolate(out, size=tuple(size), mode="bilinear", align_corners=False)
