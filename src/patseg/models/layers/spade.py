"""SPADE: spatially-adaptive normalisation (Park et al., CVPR 2019).

PAT's decoder (Eq. 3) conditions each stage's decoded features on that stage's quantised codes z_q_s: the features
are normalised without learned affine parameters, then re-scaled and re-shifted per pixel by gamma and beta maps
predicted from the codes. Facts (nearest resize of the condition, shared 3x3 conv + ReLU with 128 hidden channels,
separate 3x3 gamma / beta convs, ``out = norm(x) * (1 + gamma) + beta``, xavier-normal init with gain 0.02 and zero
biases so SPADE starts as plain normalisation) come from NVlabs/SPADE ``models/networks/normalization.py`` and
``models/networks/base_network.py``.

PAT-side choice: the parameter-free norm is GroupNorm(32) rather than SPADE's BatchNorm, so a
decoder stage behaves the same for batch size 1 at evaluation as in training.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class SPADE(nn.Module):
    """Spatially-adaptive de-normalisation of ``x`` by a condition map.

    Args:
        channels: Cx, width of the features being normalised (divisible by ``groups``).
        cond_channels: Cs, width of the condition (PAT: the 32-d stage codes).
        hidden: width of the shared conv (SPADE's ``nhidden``, 128).
        kernel_size: odd kernel of the three convs (3).
        groups: groups of the parameter-free GroupNorm (32).
    """

    def __init__(self, channels: int, *, cond_channels: int, hidden: int = 128, kernel_size: int = 3, groups: int = 32):
        super().__init__()
        if channels % groups:
            raise ValueError(f"SPADE channels ({channels}) must be divisible by groups ({groups})")
        if kernel_size % 2 == 0:
            raise ValueError(f"SPADE kernel_size must be odd to keep the grid, got {kernel_size}")
        self.groups = groups
        pad = kernel_size // 2
        shared_conv = nn.Conv2d(cond_channels, hidden, kernel_size, padding=pad)
        self.shared = nn.Sequential(shared_conv, nn.ReLU())
        self.gamma = nn.Conv2d(hidden, channels, kernel_size, padding=pad)
        self.beta = nn.Conv2d(hidden, channels, kernel_size, padding=pad)
        for conv in (shared_conv, self.gamma, self.beta):
            nn.init.xavier_normal_(conv.weight, gain=0.02)
            assert conv.bias is not None  # built with bias=True
            nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        """Modulate ``x`` by ``cond``.

        Args:
            x: (B, Cx, H, W) features.
            cond: (B, Cs, h, w) condition, resized to (H, W) with nearest neighbour as SPADE does.
        Returns:
            (B, Cx, H, W): ``GroupNorm(x) * (1 + gamma(cond)) + beta(cond)``.
        """
        normed = F.group_norm(x, self.groups)  # no affine: the affine is the spatial gamma / beta
        if cond.shape[-2:] != x.shape[-2:]:
            cond = F.interpolate(cond, size=x.shape[-2:], mode="nearest")
        act = self.shared(cond)
        return normed * (1 + self.gamma(act)) + self.beta(act)


class SPADEResBlock(nn.Module):
    """SPADE's residual block at constant width: ``x + Conv(act(SPADE(Conv(act(SPADE(x, c))), c)))``.

    Facts from NVlabs/SPADE ``models/networks/architecture.py`` (``SPADEResnetBlock``): norm before conv, two 3x3
    convolutions through the middle width min(fin, fout) (here both C), LeakyReLU(0.2), identity shortcut when the
    width does not change. The spectral norm of SPADE's GAN generator is left out: nothing here is adversarial.

    Args:
        channels: C, width in and out (divisible by ``groups``).
        cond_channels, hidden, kernel_size, groups: as for :class:`SPADE`.
    """

    def __init__(self, channels: int, *, cond_channels: int, hidden: int = 128, kernel_size: int = 3, groups: int = 32):
        super().__init__()
        self.norm_0 = SPADE(
            channels, cond_channels=cond_channels, hidden=hidden, kernel_size=kernel_size, groups=groups
        )
        self.conv_0 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm_1 = SPADE(
            channels, cond_channels=cond_channels, hidden=hidden, kernel_size=kernel_size, groups=groups
        )
        self.conv_1 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        """(B, C, H, W) features, (B, Cs, h, w) condition -> (B, C, H, W)."""
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, cond), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, cond), 0.2))
        return x + dx
