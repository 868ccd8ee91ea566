"""PAT's reconstruction head: decoded features -> the full-resolution image.

The shared decoder's final map ẑ (B, 256, H/2^n, W/2^n) is turned back into pixels by n stride-2 transposed
convolutions (widths halving: 256 -> 128 -> 64 -> 32 for n = 3) and a 3x3 conv to RGB, with a sigmoid so the output
lies in [0, 1] like the target image of the reconstruction loss. The depth n is derived, never fixed: n = log2 of the
final decoder stride (``geometry.final_stride``), e.g. 3 for the default H/8 grid and 5 for Table II's (1x, 1x, 1x)
pyramid.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class ReconstructionHead(nn.Module):
    """Transposed-conv image decoder with a sigmoid output.

    Each step is ConvTranspose2d(kernel 4, stride 2, padding 1) -> GELU: kernel 4 with stride 2 covers every output
    pixel with the same number of taps (no checkerboard from uneven overlap) and exactly doubles the grid.

    Args:
        in_channels: width of the decoded features (PatConfig.decoder_dim, 256).
        num_upsamples: n, the number of x2 steps: ``log2_exact`` of the final decoder stride.
        widths: output width of each step; None halves ``in_channels`` at every step (256 -> 128, 64, 32 for n = 3).
    """

    def __init__(self, in_channels: int = 256, *, num_upsamples: int = 3, widths: Sequence[int] | None = None):
        super().__init__()
        if num_upsamples < 0:
            raise ValueError(f"num_upsamples must be >= 0, got {num_upsamples}")
        if widths is None:
            widths = [max(in_channels >> (k + 1), 1) for k in range(num_upsamples)]
        if len(widths) != num_upsamples:
            raise ValueError(f"widths {tuple(widths)} must have one entry per upsampling step ({num_upsamples})")
        self.num_upsamples = num_upsamples
        layers: list[nn.Module] = []
        ch = in_channels
        for width in widths:
            layers += [nn.ConvTranspose2d(ch, width, kernel_size=4, stride=2, padding=1), nn.GELU()]
            ch = width
        layers.append(nn.Conv2d(ch, 3, kernel_size=3, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, h, w) decoded features -> (B, 3, h * 2^n, w * 2^n) image in [0, 1]."""
        return torch.sigmoid(self.layers(x))
