"""PixelStem, ConvDown and Resample: operator choice, values against functional forms, grid handling."""

import pytest
import torch
import torch.nn.functional as F

from patseg.models.layers.dysample import DySample
from patseg.models.layers.resample import ConvDown, PixelStem, Resample, log2_exact


def test_pixel_stem_matches_functional_form():
    stem = PixelStem(out_channels=64, stride=8)
    image = torch.randn(2, 3, 32, 40)
    h = image
    convs = [m for m in stem.layers if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in stem.layers if isinstance(m, torch.nn.GroupNorm)]
    assert [c.out_channels for c in convs] == [16, 32, 64, 64] and [c.stride for c in convs] == [(2, 2)] * 3 + [(1, 1)]
    for conv, norm in zip(convs[:-1], norms):
        h = F.conv2d(h, conv.weight, conv.bias, stride=2, padding=1)
        h = F.gelu(F.group_norm(h, norm.num_groups, norm.weight, norm.bias))
    h = F.conv2d(h, convs[-1].weight, convs[-1].bias)
    out = stem(image)
    assert out.shape == (2, 64, 4, 5)
    torch.testing.assert_close(out, h)


def test_log2_exact_accepts_only_powers_of_two():
    assert [log2_exact(v, "v") for v in (1, 2, 8, 1024, 2**60, 32.0)] == [0, 1, 3, 10, 60, 5]
    for bad in (0, -4, 3, 12, 2**60 + 1, 8.5):
        with pytest.raises(ValueError, match=f"stride must be a power of 2, got {bad}"):
            log2_exact(bad, "stride")


def test_pixel_stem_small_width_and_bad_stride():
    assert PixelStem(out_channels=8, stride=4)(torch.randn(1, 3, 16, 16)).shape == (1, 8, 4, 4)
    with pytest.raises(ValueError, match="power of 2"):
        PixelStem(out_channels=8, stride=6)


@pytest.mark.parametrize("factor,steps,stride", [(1, 1, 1), (2, 1, 2), (4, 2, 2)])
def test_conv_down_structure_and_values(factor, steps, stride):
    down = ConvDown(8, factor=factor)
    convs = list(down.convs)
    assert len(convs) == steps and all(c.kernel_size == (3, 3) and c.stride == (stride, stride) for c in convs)
    x = torch.randn(2, 8, 12, 16)
    expected = x
    for c in convs:
        expected = F.conv2d(expected, c.weight, c.bias, stride=stride, padding=1)
    out = down(x)
    assert out.shape == (2, 8, 12 // factor, 16 // factor)
    torch.testing.assert_close(out, expected)


def test_conv_down_by_four_sees_every_input_pixel():
    down = ConvDown(4, factor=4)
    x = torch.randn(1, 4, 16, 16, requires_grad=True)
    down(x).sum().backward()
    assert (x.grad.abs().sum(1) > 0).all()  # a single stride-4 3x3 kernel would leave holes


def test_resample_picks_operator_from_factor():
    assert isinstance(Resample(16, factor=4.0).op, DySample) and Resample(16, factor=4.0).op.scale == 4
    assert isinstance(Resample(16, factor=0.5).op, ConvDown) and Resample(16, factor=0.25).op.factor == 4
    ident = Resample(16, factor=1.0)
    assert sum(p.numel() for p in ident.parameters()) == 0
    x = torch.randn(1, 16, 5, 5)
    assert torch.equal(ident(x), x)
    assert Resample(16, factor=2, groups=8).op.groups == 8
    for bad in (1.5, 1 / 3, 0.75, 0.0, -2.0):
        with pytest.raises(ValueError):
            Resample(16, factor=bad)


@pytest.mark.parametrize("factor,expected", [(2.0, (10, 12)), (4.0, (20, 24)), (0.5, (3, 3)), (1.0, (5, 6))])
def test_resample_output_grid(factor, expected):
    x = torch.randn(1, 16, 5, 6)
    rs = Resample(16, factor=factor)
    out = rs(x)
    assert out.shape == (1, 16, *expected)
    torch.testing.assert_close(rs(x, size=expected), out)  # exact size given: no interpolation


def test_resample_size_removes_last_pixel_difference():
    rs = Resample(8, factor=0.5)
    x = torch.randn(1, 8, 25, 24)
    raw = rs(x)
    assert raw.shape[-2:] == (13, 12)
    out = rs(x, size=(12, 12))
    torch.testing.assert_close(out, F.interpolate(raw, size=(12, 12), mode="bilinear", align_corners=False))
    with pytest.raises(ValueError, match="too far"):
        rs(x, size=(10, 12))


def test_resample_up_gradient_flows():
    rs = Resample(8, factor=2.0)
    x = torch.randn(1, 8, 4, 4, requires_grad=True)
    rs(x).square().sum().backward()
    assert x.grad.abs().sum() > 0 and rs.op.offset.weight.grad.abs().sum() > 0
