"""DySample against bilinear upsampling, the upstream parameter counts, and a float64 point-sampling loop."""

import math

import pytest
import torch
import torch.nn.functional as F

from patseg.models.layers.dysample import DySample

VARIANTS = [("lp", False), ("lp", True), ("pl", False), ("pl", True)]


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("style,dyscope", VARIANTS)
def test_zero_offset_is_bilinear(scale, style, dyscope):
    channels = 4 * scale * scale  # divisible by groups and, for 'pl', by s²
    up = DySample(channels, scale=scale, groups=4, dyscope=dyscope, style=style)
    torch.nn.init.zeros_(up.offset.weight)
    if up.scope is not None:
        torch.nn.init.normal_(up.scope.weight)  # the scope must not matter when the offset is zero
    x = torch.randn(2, channels, 5, 6)
    expected = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
    torch.testing.assert_close(up(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "style,dyscope,count", [("lp", False, 8224), ("lp", True, 16416), ("pl", False, 520), ("pl", True, 1032)]
)
def test_parameter_counts_match_upstream(style, dyscope, count):
    up = DySample(256, scale=2, groups=4, dyscope=dyscope, style=style)
    assert sum(p.numel() for p in up.parameters()) == count


def test_init_is_near_bilinear_and_offsets_start_at_static_factor():
    up = DySample(16, scale=2, groups=4, dyscope=True)
    assert up.offset.weight.std().item() == pytest.approx(0.001, rel=0.2)
    assert torch.all(up.offset.bias == 0) and torch.all(up.scope.weight == 0)
    x = torch.randn(1, 16, 4, 4)
    bilinear = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    assert (up(x) - bilinear).abs().max() < 1e-2


def _bilinear_border(img, py, px):
    """Read img (C, H, W) at continuous point (py, px) in pixel-edge units, border padding, float64."""
    _, h, w = img.shape
    y = min(max(py - 0.5, 0.0), h - 1.0)
    x = min(max(px - 0.5, 0.0), w - 1.0)
    y0, x0 = math.floor(y), math.floor(x)
    y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
    wy, wx = y - y0, x - x0
    return (
        img[:, y0, x0] * (1 - wy) * (1 - wx)
        + img[:, y0, x1] * (1 - wy) * wx
        + img[:, y1, x0] * wy * (1 - wx)
        + img[:, y1, x1] * wy * wx
    )


def _naive_dysample(up, x):
    """Explicit per-output-pixel loop following tiny-smart/dysample's ``dysample.py``, in float64."""
    x = x.double()
    b, c, h, w = x.shape
    s, g = up.scale, up.groups
    wo = up.offset.weight.double()[:, :, 0, 0]
    bo = up.offset.bias.double()
    ws = None if up.scope is None else up.scope.weight.double()[:, :, 0, 0]
    out = torch.zeros(b, c, h * s, w * s, dtype=torch.float64)
    for n in range(b):
        for oy in range(h * s):
            for ox in range(w * s):
                iy, ix, i, j = oy // s, ox // s, oy % s, ox % s
                if up.style == "lp":
                    feat = x[n, :, iy, ix]
                    chans = [[cd * g * s * s + k * s * s + i * s + j for k in range(g)] for cd in range(2)]
                else:  # the pixel-shuffled input at the output position; conv output channel = cd * g + k
                    feat = torch.stack([x[n, q * s * s + i * s + j, iy, ix] for q in range(c // (s * s))])
                    chans = [[cd * g + k for k in range(g)] for cd in range(2)]
                raw = wo @ feat + bo
                factor = 0.25 * torch.ones_like(raw) if ws is None else 0.5 * torch.sigmoid(ws @ feat)
                raw = raw * factor
                for k in range(g):
                    px = ix + 0.5 + (j - (s - 1) / 2) / s + raw[chans[0][k]].item()
                    py = iy + 0.5 + (i - (s - 1) / 2) / s + raw[chans[1][k]].item()
                    sl = slice(k * c // g, (k + 1) * c // g)
                    out[n, sl, oy, ox] = _bilinear_border(x[n, sl], py, px)
    return out


@pytest.mark.parametrize("scale", [2, 3])
@pytest.mark.parametrize("style,dyscope", VARIANTS)
def test_matches_naive_point_sampling(scale, style, dyscope):
    channels = 2 * scale * scale
    up = DySample(channels, scale=scale, groups=2, dyscope=dyscope, style=style).double()
    # Large random offsets reach several pixels and the border, so every branch of the sampler is used.
    torch.nn.init.normal_(up.offset.weight, std=2.0)
    torch.nn.init.normal_(up.offset.bias, std=1.0)
    if up.scope is not None:
        torch.nn.init.normal_(up.scope.weight, std=1.0)
    x = torch.randn(2, channels, 3, 4, dtype=torch.float64)
    torch.testing.assert_close(up(x), _naive_dysample(up, x), atol=1e-10, rtol=1e-10)


def test_gradients_reach_input_and_offset_conv():
    up = DySample(8, scale=2, groups=2, dyscope=True)
    torch.nn.init.normal_(up.offset.weight, std=0.5)
    x = torch.randn(1, 8, 4, 4, requires_grad=True)
    (up(x) * torch.randn(1, 8, 8, 8)).sum().backward()
    assert x.grad.abs().sum() > 0
    assert up.offset.weight.grad.abs().sum() > 0 and up.scope.weight.grad.abs().sum() > 0


def test_rejects_bad_configuration():
    with pytest.raises(ValueError, match="groups"):
        DySample(6, groups=4)
    with pytest.raises(ValueError, match="scale²"):
        DySample(12, scale=3, groups=4, style="pl")
    with pytest.raises(ValueError, match="style"):
        DySample(16, style="nearest")
