"""Small layers shared by several model parts: a channel LayerNorm for feature maps, a 1x1 convolution that keeps
channels-last maps as they are, and a plain MLP."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a ``(B, C, H, W)`` map (ConvNeXt's "channels_first" LayerNorm).

    Deliberately not an ``nn.LayerNorm`` subclass: SAN's fusion norm is detectron2's own LayerNorm, so SAN's
    optimizer applies weight decay to it; an optimizer that exempts ``nn.LayerNorm`` keeps that.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) -> (B, C, H, W), each pixel normalised over C (biased variance), then affine."""
        y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, eps={self.eps}"


class Conv1x1(nn.Conv2d):
    """A 1x1 convolution (``nn.Conv2d``'s parameters and state-dict keys) that runs as a matrix product on
    channels-last maps.

    Maps made from token sequences ((B, H*W, C) viewed as (B, C, H, W), or LayerNorm2d's output) are channels-last
    in memory, and PyTorch's CPU convolution reorders such an input before it runs (2-3x slower for 256 channels at
    160x160). On them the product runs on the (B, H, W, C) view, which is contiguous, and the result keeps that
    layout. A contiguous (B, C, H, W) map is a (C, H*W) matrix per image, and the weight times it is again a plain
    product: about 2x faster than oneDNN's 1x1 convolution on CPU (256 channels at 160x160). Other inputs go to the
    convolution. All are the same sums.
    """

    def __init__(self, in_channels: int, out_channels: int, *, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size=1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, C_out, H, W)."""
        if x.dim() != 4:
            return super().forward(x)
        if x.is_contiguous():
            b, _, h, w = x.shape
            weight, maps = self.weight.flatten(1).expand(b, -1, -1), x.flatten(2)
            out = torch.bmm(weight, maps) if self.bias is None else torch.baddbmm(self.bias[:, None], weight, maps)
            return out.view(b, -1, h, w)
        if x.is_contiguous(memory_format=torch.channels_last):
            return F.linear(x.permute(0, 2, 3, 1), self.weight.flatten(1), self.bias).permute(0, 3, 1, 2)
        return super().forward(x)


class MLP(nn.Module):
    """``num_layers`` affine layers with ReLU between them and none after the last (Mask2Former/SAN ``MLP``).

    ``on_maps=False``: ``nn.Linear`` layers on ``(..., in_dim)`` tokens. ``on_maps=True``: 1x1 ``nn.Conv2d``
    layers on ``(B, in_dim, H, W)`` maps, whose weights are ``(out, in, 1, 1)`` as in SAN's ``pix_mlp`` and
    ``attn_mlp`` checkpoints. Submodules are ``layers.0 .. layers.{num_layers-1}``, SAN's key names.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int, *, on_maps: bool = False) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"MLP needs at least one layer, got num_layers={num_layers}")
        ins = [in_dim] + [hidden_dim] * (num_layers - 1)
        outs = [hidden_dim] * (num_layers - 1) + [out_dim]
        if on_maps:
            self.layers = nn.ModuleList(Conv1x1(i, o) for i, o in zip(ins, outs))
        else:
            self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(ins, outs))

    def hidden(self, x: Tensor) -> Tensor:
        """The input of the last layer: every layer but the last, each followed by ReLU."""
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return x

    def last_affine(self) -> tuple[Tensor, Tensor]:
        """The last layer as an (out_dim, hidden) weight matrix and its (out_dim,) bias."""
        last = self.layers[-1]
        assert isinstance(last, (nn.Linear, nn.Conv2d)) and last.bias is not None  # built with bias=True
        return last.weight.flatten(1), last.bias

    def forward(self, x: Tensor) -> Tensor:
        """(..., in_dim) -> (..., out_dim), or (B, in_dim, H, W) -> (B, out_dim, H, W) when ``on_maps``."""
        return self.layers[-1](self.hidden(x))
