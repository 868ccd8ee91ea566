import math

import numpy as np
import pytest

from patseg.evaluation.boundary import BoundaryIoU, boundary_width, mask_boundary

IGNORE = 255


def naive_boundary(mask, d):
    """A mask pixel is boundary when some position within Chebyshev distance d is background or off the image."""
    h, w = mask.shape
    out = np.zeros((h, w), dtype=bool)
    for y in range(h):
        for x in range(w):
            if not mask[y, x]:
                continue
            for dy in range(-d, d + 1):
                for dx in range(-d, d + 1):
                    yy, xx = y + dy, x + dx
                    if not (0 <= yy < h and 0 <= xx < w) or not mask[yy, xx]:
                        out[y, x] = True
    return out


def naive_boundary_iou(pairs, num_classes, ignore, ratio):
    """Float64 reference: per-class boundary intersections and unions summed over images with explicit loops."""
    inter = [0] * num_classes
    union = [0] * num_classes
    for pred, gt in pairs:
        h, w = gt.shape
        d = max(1, int(round(ratio * math.sqrt(h * h + w * w))))
        for c in range(num_classes):
            g_d = naive_boundary(gt == c, d)
            p_d = naive_boundary(pred == c, d)
            for y in range(h):
                for x in range(w):
                    if gt[y, x] == ignore:
                        continue
                    inter[c] += int(g_d[y, x] and p_d[y, x])
                    union[c] += int(g_d[y, x] or p_d[y, x])
    per_class = [100.0 * i / u if u > 0 else math.nan for i, u in zip(inter, union)]
    kept = [v for v in per_class if not math.isnan(v)]
    return per_class, (sum(kept) / len(kept) if kept else math.nan)


def blocky_labels(rng, shape, num_classes, block):
    """Random piecewise-constant labels (blocks of ``block`` pixels) with a few single-pixel flips."""
    h, w = shape
    coarse = rng.integers(0, num_classes, size=(h // block + 1, w // block + 1))
    labels = np.kron(coarse, np.ones((block, block), dtype=np.int64))[:h, :w]
    flips = rng.random(shape) < 0.05
    labels[flips] = rng.integers(0, num_classes, size=int(flips.sum()))
    return labels


def random_pairs(num_classes, shapes, seed):
    rng = np.random.default_rng(seed)
    pairs = []
    for i, shape in enumerate(shapes):
        gt = blocky_labels(rng, shape, num_classes, block=1 + i % 4)
        noise = blocky_labels(rng, shape, num_classes, block=2)
        pred = np.where(rng.random(shape) < 0.7, gt, noise)
        gt[rng.random(shape) < 0.1] = IGNORE  # pred keeps a class under ignored pixels, as a model would
        pairs.append((pred, gt))
    return pairs


def square(size=10, top=3, left=3, side=4):
    labels = np.zeros((size, size), dtype=np.int64)
    labels[top : top + side, left : left + side] = 1
    return labels


@pytest.mark.parametrize("ratio", [0.02, 0.1, 0.15])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_the_loop_reference_on_random_maps(ratio, seed):
    shapes = [(7, 9), (16, 16), (20, 13), (1, 6), (5, 1)]
    pairs = random_pairs(4, shapes, seed)
    metric = BoundaryIoU(4, ignore_index=IGNORE, dilation_ratio=ratio)
    for pred, gt in pairs:
        metric.update(pred, gt)
    out = metric.compute()
    per_class, mean = naive_boundary_iou(pairs, 4, IGNORE, ratio)
    np.testing.assert_allclose(out["per_class"], per_class, rtol=1e-12)
    assert out["mean"] == pytest.approx(mean, rel=1e-12)
    assert 0 < out["mean"] < 100  # the noisy predictions must neither match nor miss every boundary


@pytest.mark.parametrize("d", [1, 2, 3, 5])
def test_mask_boundary_is_chebyshev_distance_to_background_or_edge(d):
    rng = np.random.default_rng(d)
    mask = blocky_labels(rng, (13, 17), 2, block=3) == 1
    np.testing.assert_array_equal(mask_boundary(mask, d), naive_boundary(mask, d))


def test_the_image_edge_counts_as_background():
    full = np.ones((5, 5), dtype=bool)
    expected = np.ones((5, 5), dtype=bool)
    expected[1:4, 1:4] = False  # a 1-pixel ring along the edge, the 3x3 centre survives the erosion
    np.testing.assert_array_equal(mask_boundary(full, 1), expected)
    # the centre is 3 positions from the nearest off-image one: interior for d = 2, boundary for d = 3
    assert np.count_nonzero(mask_boundary(full, 2)) == 24 and not mask_boundary(full, 2)[2, 2]
    assert mask_boundary(full, 3).all()


def test_boundary_width_is_two_percent_of_the_diagonal_at_least_one():
    assert boundary_width(10, 10) == 1  # 0.28 rounds to 0, raised to 1
    assert boundary_width(512, 512) == 14  # 0.02 * 724.08 = 14.48
    assert boundary_width(640, 480, 0.02) == 16  # diagonal 800
    assert boundary_width(3, 4, 0.5) == 2  # 2.5: Python's round, as the reference code uses, goes to even


def test_perfect_prediction_scores_100():
    gt = square()
    metric = BoundaryIoU(3)
    metric.update(gt.copy(), gt)
    out = metric.compute()
    assert out["per_class"][:2] == [100.0, 100.0]
    assert math.isnan(out["per_class"][2])  # class 2 is on no boundary: NaN, left out of the mean
    assert out["mean"] == 100.0


def test_square_shifted_by_one_column():
    # 10 x 10 image -> d = 1. Class 1: two 4x4 squares one column apart; each boundary is its 12-pixel ring and
    # the rings share the top and bottom rows' three common columns: 6 / (12 + 12 - 6).
    # Class 0: the 36-pixel image-edge ring (shared) plus each square's 20-pixel outer ring, of which the top and
    # bottom rows' five common columns are shared: (36 + 10) / (36 + 20 + 20 - 10).
    metric = BoundaryIoU(2)
    metric.update(square(left=4), square(left=3))
    out = metric.compute()
    assert out["intersection"] == [46, 6]
    assert out["union"] == [66, 18]
    assert out["per_class"] == pytest.approx([100 * 46 / 66, 100 / 3], rel=1e-12)
    assert out["mean"] == pytest.approx((100 * 46 / 66 + 100 / 3) / 2, rel=1e-12)


def test_ignored_pixels_leave_both_boundaries_after_they_are_drawn():
    # gt: the square's top row is ignored, so its class-1 mask is the 3x4 block below it, whose boundary (computed
    # with the ignored row as background) is all 12 pixels but the 2 in the middle row's centre: 10 pixels.
    # pred: the full 4x4 square; its 12-pixel ring loses the 4 ignored pixels: 8 pixels, all inside gt's 10.
    gt = square()
    gt[3, 3:7] = IGNORE
    metric = BoundaryIoU(2)
    metric.update(square(), gt)
    out = metric.compute()
    assert (out["intersection"][1], out["union"][1]) == (8, 10)
    assert out["per_class"][1] == pytest.approx(80.0)


def test_counts_accumulate_over_images_before_dividing():
    metric = BoundaryIoU(2)
    metric.update(square(), square())  # class 1: 12 / 12
    metric.update(square(left=4), square(left=3))  # class 1: 6 / 18
    out = metric.compute()
    assert out["per_class"][1] == pytest.approx(100 * 18 / 30)  # not the mean of 100 and 33.3
    metric.reset()
    assert math.isnan(metric.compute()["mean"])


def test_rejects_bad_inputs():
    metric = BoundaryIoU(2)
    with pytest.raises(ValueError, match="value 2"):
        metric.update(np.full((4, 4), 2), np.zeros((4, 4), dtype=np.int64))
    with pytest.raises(ValueError, match="shape"):
        metric.update(np.zeros((4, 4), dtype=np.int64), np.zeros((4, 5), dtype=np.int64))
    with pytest.raises(TypeError):
        metric.update(np.zeros((4, 4)), np.zeros((4, 4), dtype=np.int64))
    with pytest.raises(ValueError, match="collides"):
        BoundaryIoU(300, ignore_index=255)
    # a prediction under an ignored pixel is not a class id the metric needs
    metric.update(np.full((4, 4), 7), np.full((4, 4), IGNORE))
    assert metric.compute()["union"] == [0, 0]
