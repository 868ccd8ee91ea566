"""point_sample against a float64 bilinear loop; uncertain_point_coords against a replay of its random draws."""

import math

import pytest
import torch

from patseg.losses.point_sampling import point_sample, point_uncertainty, uncertain_point_coords


def naive_point_sample(inputs: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear read with align_corners=False and zero padding, one point at a time in float64."""
    inputs, coords = inputs.double(), coords.double()
    n, c, h, w = inputs.shape
    out = torch.zeros(n, c, coords.shape[1], dtype=torch.float64)
    for i in range(n):
        for p in range(coords.shape[1]):
            x = coords[i, p, 0].item() * w - 0.5  # pixel centres sit at integer + 0.5 in normalised units
            y = coords[i, p, 1].item() * h - 0.5
            x0, y0 = math.floor(x), math.floor(y)
            for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
                for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
                    if 0 <= yy < h and 0 <= xx < w:
                        out[i, :, p] += wy * wx * inputs[i, :, yy, xx]
    return out


def test_point_sample_matches_naive_bilinear():
    inputs = torch.randn(3, 2, 5, 7, dtype=torch.float64)
    coords = torch.rand(3, 20, 2, dtype=torch.float64)
    coords[0, :4] = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.999, 0.01]])  # border blends with zeros
    out = point_sample(inputs, coords)
    assert out.shape == (3, 2, 20)
    torch.testing.assert_close(out, naive_point_sample(inputs, coords), rtol=1e-10, atol=1e-10)


def test_point_sample_reads_pixel_centres_exactly():
    inputs = torch.arange(12.0).view(1, 1, 3, 4)
    rows, cols = torch.meshgrid(torch.arange(3), torch.arange(4), indexing="ij")
    coords = torch.stack([(cols + 0.5) / 4, (rows + 0.5) / 3], dim=-1).view(1, 12, 2)
    torch.testing.assert_close(point_sample(inputs, coords), inputs.view(1, 1, 12))


def test_point_sample_rejects_bad_shapes():
    with pytest.raises(ValueError):
        point_sample(torch.zeros(2, 1, 4, 4), torch.rand(3, 5, 2))
    with pytest.raises(ValueError):
        point_sample(torch.zeros(2, 4, 4), torch.rand(2, 5, 2))


def test_uncertain_points_are_top_k_of_candidates_then_random():
    logits = torch.randn(2, 1, 6, 6)
    num_points, ratio, beta = 10, 3.0, 0.7
    torch.manual_seed(123)
    coords = uncertain_point_coords(logits, num_points, ratio, beta)
    assert coords.shape == (2, 10, 2)

    torch.manual_seed(123)  # replay: candidates first, then the random share
    candidates = torch.rand(2, 30, 2)
    random_points = torch.rand(2, 3, 2)
    uncertainty = -naive_point_sample(logits, candidates)[:, 0].abs()  # (2, 30)
    for i in range(2):
        order = uncertainty[i].argsort(descending=True)[:7]
        torch.testing.assert_close(coords[i, :7], candidates[i, order])
    torch.testing.assert_close(coords[:, 7:], random_points)


def test_uncertain_points_concentrate_on_the_mask_boundary():
    xs = torch.linspace(0, 1, 32)
    logits = (40.0 * (xs - 0.5)).view(1, 1, 1, 32).expand(4, 1, 32, 32).contiguous()  # boundary at x = 0.5
    coords = uncertain_point_coords(logits, 200, 3.0, 0.75)
    important, random_part = coords[:, :150], coords[:, 150:]
    # the top quarter of uniform candidates lies within ~0.125 of the boundary (border pixels, blended with the
    # zero padding, are uncertain too, hence a mean rather than a max)
    assert (important[..., 0] - 0.5).abs().mean() < 0.08
    assert (random_part[..., 0] - 0.5).abs().mean() > 0.15  # uniform points: E|x - 0.5| = 0.25
    assert ((coords >= 0) & (coords <= 1)).all()


def test_uncertain_points_extreme_ratios():
    logits = torch.randn(3, 1, 5, 5)
    torch.manual_seed(7)
    all_random = uncertain_point_coords(logits, 8, 2.0, 0.0)
    torch.manual_seed(7)
    torch.rand(3, 16, 2)
    torch.testing.assert_close(all_random, torch.rand(3, 8, 2))

    torch.manual_seed(7)
    all_uncertain = uncertain_point_coords(logits, 8, 1.0, 1.0)  # ratio 1: every candidate kept, reordered
    torch.manual_seed(7)
    candidates = torch.rand(3, 8, 2)
    for i in range(3):
        assert sorted(map(tuple, all_uncertain[i].tolist())) == sorted(map(tuple, candidates[i].tolist()))


def test_uncertain_point_coords_validates_arguments():
    logits = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError):
        uncertain_point_coords(logits, 8, 0.5, 0.75)
    with pytest.raises(ValueError):
        uncertain_point_coords(logits, 8, 3.0, 1.5)
    with pytest.raises(ValueError):
        uncertain_point_coords(torch.zeros(1, 2, 4, 4), 8, 3.0, 0.75)


def test_point_uncertainty_is_minus_abs():
    torch.testing.assert_close(point_uncertainty(torch.tensor([-2.0, 0.0, 3.0])), torch.tensor([-2.0, 0.0, -3.0]))
