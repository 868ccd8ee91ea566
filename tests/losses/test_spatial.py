"""Spatial-alignment losses (FeatUp sampled CRF and TV) against float64 double loops."""

import math
import typing

import pytest
import torch
import torch.nn.functional as F

from patseg.config import SpatialInner
from patseg.losses import spatial
from patseg.losses.spatial import (
    SPATIAL_INNER_WEIGHTS,
    crf_loss,
    imagenet_normalize,
    sample_pixels,
    spatial_alignment_loss,
    tv_loss,
)

CRF_ARGS = dict(alpha=0.1, beta=0.15, gamma=0.005, w1=10.0, w2=3.0)


def _naive_crf(guidance, feats, flat, *, alpha, beta, gamma, w1, w2):
    """mean over (b, i, j) of k_ij |F_i - F_j|^2 with the FeatUp kernel, one pair at a time."""
    batch, channels, height, width = feats.shape
    total = 0.0
    for b in range(batch):
        for i in flat.tolist():
            for j in flat.tolist():
                ri, ci, rj, cj = i // width, i % width, j // width, j % width
                pos = (ri / height - rj / height) ** 2 + (ci / width - cj / width) ** 2
                col = float(((guidance[b, :, ri, ci] - guidance[b, :, rj, cj]) ** 2).sum())
                kernel = w1 * math.exp(-pos / (2 * alpha) - col / (2 * beta)) + w2 * math.exp(-pos / (2 * gamma))
                total = total + kernel * ((feats[b, :, ri, ci] - feats[b, :, rj, cj]) ** 2).sum()
    return total / (batch * len(flat) ** 2)


def _inputs(batch=2, channels=5, height=4, width=6):
    guidance = imagenet_normalize(torch.rand(batch, 3, height, width, dtype=torch.float64))
    return guidance, torch.randn(batch, channels, height, width, dtype=torch.float64)


def test_crf_equals_naive_double_loop_on_the_same_points():
    guidance, feats = _inputs()
    feats.requires_grad_(True)
    loss = crf_loss(guidance, feats, num_points=12, generator=torch.Generator().manual_seed(3), **CRF_ARGS)
    flat = sample_pixels(4, 6, 12, generator=torch.Generator().manual_seed(3))
    feats_ref = feats.detach().clone().requires_grad_(True)
    expected = _naive_crf(guidance, feats_ref, flat, **CRF_ARGS)
    assert torch.allclose(loss, expected, rtol=1e-10)
    loss.backward()
    expected.backward()
    assert torch.allclose(feats.grad, feats_ref.grad, atol=1e-12)


def test_crf_kernel_parameters_matter():
    guidance, feats = _inputs()
    base = crf_loss(guidance, feats, num_points=12, generator=torch.Generator().manual_seed(1))
    for change in ({"alpha": 0.5}, {"beta": 1.0}, {"gamma": 0.05}, {"w1": 1.0}, {"w2": 0.0}):
        other = crf_loss(guidance, feats, num_points=12, generator=torch.Generator().manual_seed(1), **change)
        assert not torch.allclose(base, other, rtol=1e-6), change


def test_crf_is_zero_for_constant_features():
    guidance, _ = _inputs()
    feats = torch.ones(2, 5, 4, 6, dtype=torch.float64) * torch.randn(1, 5, 1, 1, dtype=torch.float64)
    assert crf_loss(guidance, feats, num_points=30).abs().item() < 1e-12


def test_crf_gradient_flows_to_features_only():
    guidance, feats = _inputs(channels=3)
    guidance.requires_grad_(True)
    feats.requires_grad_(True)
    crf_loss(guidance, feats, num_points=20).backward()
    assert guidance.grad is None
    assert feats.grad is not None and feats.grad.abs().sum() > 0


def test_crf_prefers_features_that_follow_the_image():
    """Features constant on the image's two colour regions cost less than features that cut across them."""
    images = torch.zeros(1, 3, 8, 8, dtype=torch.float64)
    images[..., 4:] = 1.0  # left half black, right half white
    guidance = imagenet_normalize(images)
    aligned = images[:, :1].clone()
    crossing = aligned.transpose(-1, -2).clone()  # top/bottom split instead of left/right
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert crf_loss(guidance, aligned, num_points=64, generator=gen()) < crf_loss(
        guidance, crossing, num_points=64, generator=gen()
    )


def test_crf_shape_mismatch_and_autocast():
    with pytest.raises(ValueError, match="share"):
        crf_loss(torch.randn(1, 3, 4, 4), torch.randn(1, 2, 4, 5))
    guidance, feats = torch.randn(1, 3, 4, 4), torch.randn(1, 8, 4, 4)
    reference = crf_loss(guidance, feats, num_points=10, generator=torch.Generator().manual_seed(0))
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        low = crf_loss(guidance, feats, num_points=10, generator=torch.Generator().manual_seed(0))
    assert low.dtype == torch.float32 and torch.allclose(low, reference)


def test_sample_pixels_range_and_replacement():
    flat = sample_pixels(3, 2, 500, generator=torch.Generator().manual_seed(0))
    assert flat.dtype == torch.long and flat.min() >= 0 and flat.max() < 6
    assert set(flat.tolist()) == set(range(6))  # every pixel drawn, many repeats: with replacement


def _naive_tv(x):
    batch, channels, height, width = x.shape
    total = 0.0
    for b in range(batch):
        for c in range(channels):
            for h in range(height):
                for w in range(width):
                    if h + 1 < height:
                        total += float(x[b, c, h + 1, w] - x[b, c, h, w]) ** 2
                    if w + 1 < width:
                        total += float(x[b, c, h, w + 1] - x[b, c, h, w]) ** 2
    return total / (batch * channels * height * width)


def test_tv_equals_naive_loop():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    assert tv_loss(x).item() == pytest.approx(_naive_tv(x), rel=1e-12)


def test_tv_linear_ramp_closed_form():
    a, b, height, width = 0.3, -1.7, 5, 7
    rows = torch.arange(height, dtype=torch.float64).view(height, 1)
    cols = torch.arange(width, dtype=torch.float64).view(1, width)
    ramp = (a * rows + b * cols).expand(2, 3, height, width)
    expected = a**2 * (height - 1) / height + b**2 * (width - 1) / width
    assert tv_loss(ramp).item() == pytest.approx(expected, rel=1e-12)
    assert tv_loss(torch.full((1, 2, 3, 3), 4.0)).item() == 0.0


def test_imagenet_normalize_values():
    images = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    assert torch.allclose(imagenet_normalize(images), torch.zeros(1, 3, 2, 2), atol=1e-7)
    ones = imagenet_normalize(torch.ones(1, 3, 1, 1)).flatten()
    expected = torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225])
    assert torch.allclose(ones, expected)


def test_spatial_alignment_loss_composes_resize_crf_and_tv():
    images = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    feats = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    out = spatial_alignment_loss(
        images, feats, crf_weight=0.5, tv_weight=2.0, num_points=16, generator=torch.Generator().manual_seed(5)
    )
    guidance = imagenet_normalize(F.interpolate(images, size=(8, 8), mode="bilinear", antialias=True))
    crf = crf_loss(guidance, feats, num_points=16, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(out.crf, 0.5 * crf)
    assert torch.allclose(out.tv, 2.0 * tv_loss(feats))
    assert torch.allclose(out.total, out.crf + out.tv)


def test_spatial_inner_table_names_match_the_config() -> None:
    assert sorted(SPATIAL_INNER_WEIGHTS) == sorted(typing.get_args(SpatialInner))
    assert SPATIAL_INNER_WEIGHTS["equal"] == (1.0, 1.0)
    assert SPATIAL_INNER_WEIGHTS["featup"] == (0.001, 0.0)  # FeatUp's JBU training configuration


def test_a_term_with_weight_zero_is_not_computed(monkeypatch: pytest.MonkeyPatch) -> None:
    images = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    feats = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    called = []
    monkeypatch.setattr(spatial, "tv_loss", lambda x: called.append("tv") or tv_loss(x))
    monkeypatch.setattr(spatial, "crf_loss", lambda *a, **k: called.append("crf") or crf_loss(*a, **k))

    crf_only = spatial_alignment_loss(images, feats, crf_weight=0.001, tv_weight=0.0, num_points=16)
    assert called == ["crf"] and crf_only.tv.item() == 0.0 and torch.equal(crf_only.total, crf_only.crf)

    called.clear()
    torch.manual_seed(4)
    untouched = torch.randint(1000, (8,))
    torch.manual_seed(4)
    tv_only = spatial_alignment_loss(images, feats, crf_weight=0.0, tv_weight=2.0, num_points=16)
    assert called == ["tv"] and tv_only.crf.item() == 0.0
    assert tv_only.total.item() == pytest.approx(2.0 * _naive_tv(feats), rel=1e-12)
    assert torch.equal(torch.randint(1000, (8,)), untouched)  # the CRF left out drew no pixels
