"""DySample: learning to upsample by point sampling (Liu et al., ICCV 2023).

PAT upsamples the CLIP taps into its feature pyramid, and the decoder's features from stage to stage, with DySample.
Instead of a fixed bilinear kernel, every output pixel reads the input at a *learned* sub-pixel position: a 1x1 conv
predicts a small offset per output sub-pixel and per channel group, the offset is added to the position plain bilinear
upsampling would use, and ``grid_sample`` reads the input there.

Facts (layer shapes, offset layout, initial positions, init, scope factors) come from tiny-smart/dysample,
file ``dysample.py`` (commit 81a1de5). Paper names:
DySample = ``lp`` + static scope, DySample+ = ``lp`` + dynamic, DySample-S = ``pl`` + static, DySample-S+ = ``pl`` +
dynamic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_STYLES = ("lp", "pl")


def initial_positions(
    scale: int, groups: int, *, device: torch.device | None = None, dtype: torch.dtype | None = None
) -> Tensor:
    """Sub-pixel offsets, in input pixels, at which bilinear upsampling samples each output sub-pixel.

    Output sub-pixel (i, j) of input pixel (h, w) sits at ``(h + 0.5 + h_i, w + 0.5 + h_j)`` with
    ``h_k = (k - (s - 1) / 2) / s``; with zero learned offset DySample is exactly bilinear upsampling.

    Returns:
        (1, 2 * groups * s * s, 1, 1): channel layout [coord (x, y)] x [group] x [sub-row i] x [sub-col j].
    """
    h = (torch.arange(scale, device=device, dtype=torch.float64) - (scale - 1) / 2) / scale
    x_part = h.view(1, scale).expand(scale, scale)  # x follows the sub-column j
    y_part = h.view(scale, 1).expand(scale, scale)  # y follows the sub-row i
    pos = torch.stack([x_part, y_part])  # (2, s, s)
    pos = pos.unsqueeze(1).expand(2, groups, scale, scale)
    return pos.reshape(1, 2 * groups * scale * scale, 1, 1).to(dtype or torch.get_default_dtype())


class DySample(nn.Module):
    """Content-aware upsampler by learned point sampling.

    Args:
        channels: C, the input and output width; must be divisible by ``groups`` (and by s² for ``pl``).
        scale: integer upsampling factor s.
        groups: channel groups g; each group reads the input at its own sample points.
        dyscope: False = static scope (offsets scaled by 0.25); True = dynamic scope
            (offsets scaled by ``0.5 * sigmoid(scope_conv(x))``, which is 0.25 at init).
        style: ``"lp"`` predicts offsets on the low-resolution input (linear then pixel-shuffle);
            ``"pl"`` pixel-shuffles the input first and predicts on the high-resolution grid (cheaper).
    """

    def __init__(self, channels: int, *, scale: int = 2, groups: int = 4, dyscope: bool = False, style: str = "lp"):
        super().__init__()
        if style not in _STYLES:
            raise ValueError(f"DySample style must be one of {_STYLES}, got {style!r}")
        if scale < 1 or int(scale) != scale:
            raise ValueError(f"DySample scale must be a positive integer, got {scale!r}")
        if channels < groups or channels % groups:
            raise ValueError(f"DySample channels ({channels}) must be a positive multiple of groups ({groups})")
        if style == "pl" and channels % (scale * scale):
            raise ValueError(f"DySample style 'pl' needs channels ({channels}) divisible by scale² ({scale * scale})")
        self.channels, self.scale, self.groups, self.style = channels, scale, groups, style
        if style == "lp":
            conv_in, conv_out = channels, 2 * groups * scale * scale
        else:
            conv_in, conv_out = channels // (scale * scale), 2 * groups
        self.offset = nn.Conv2d(conv_in, conv_out, kernel_size=1)
        # Upstream init: tiny random offsets, zero bias, so training starts from bilinear upsampling.
        nn.init.normal_(self.offset.weight, std=0.001)
        assert self.offset.bias is not None  # built with bias=True
        nn.init.zeros_(self.offset.bias)
        self.scope = nn.Conv2d(conv_in, conv_out, kernel_size=1, bias=False) if dyscope else None
        if self.scope is not None:
            nn.init.zeros_(self.scope.weight)  # sigmoid(0) * 0.5 = 0.25: dynamic starts equal to static

    def offsets(self, x: Tensor) -> Tensor:
        """Sample offsets relative to each input pixel centre, in input pixels.

        Args:
            x: (B, C, H, W).
        Returns:
            (B, 2 * g * s * s, H, W), layout [coord (x, y)] x [group] x [sub-row] x [sub-col].
        """
        src = x if self.style == "lp" else F.pixel_shuffle(x, self.scale)
        raw = self.offset(src)
        if self.scope is None:
            raw = 0.25 * raw
        else:
            raw = 0.5 * torch.sigmoid(self.scope(src)) * raw
        if self.style == "pl":
            raw = F.pixel_unshuffle(raw, self.scale)  # back to the [coord][group][i][j] layout of 'lp'
        # Built per call in the input's dtype (not a float32 buffer) so float64 runs are exact for s = 3.
        return raw + initial_positions(self.scale, self.groups, device=x.device, dtype=x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        """Upsample ``x`` (B, C, H, W) to (B, C, s*H, s*W)."""
        b, c, h, w = x.shape
        s, g = self.scale, self.groups
        off = self.offsets(x).view(b, 2, g, s, s, h, w)
        # Absolute sample points in input pixels (pixel edges at integers, centres at +0.5).
        cols = torch.arange(w, device=x.device, dtype=x.dtype) + 0.5
        rows = torch.arange(h, device=x.device, dtype=x.dtype) + 0.5
        px = off[:, 0] + cols.view(1, 1, 1, 1, 1, w)
        py = off[:, 1] + rows.view(1, 1, 1, 1, h, 1)
        # grid_sample coordinates with align_corners=False: -1 and 1 are the outer pixel edges.
        grid = torch.stack([2 * px / w - 1, 2 * py / h - 1], dim=-1)  # (B, g, s, s, H, W, 2)
        # Output pixel (h*s + i, w*s + j) takes sub-pixel (i, j) of input pixel (h, w).
        grid = grid.permute(0, 1, 4, 2, 5, 3, 6).reshape(b * g, h * s, w * s, 2)
        out = F.grid_sample(
            x.reshape(b * g, c // g, h, w), grid, mode="bilinear", padding_mode="border", align_corners=False
        )
        return out.view(b, c, h * s, w * s)

    def extra_repr(self) -> str:
        dyscope = self.scope is not None
        return f"{self.channels}, scale={self.scale}, groups={self.groups}, style={self.style!r}, dyscope={dyscope}"
