"""The bounded argmax of SAN's semantic inference: the same labels as scoring every class densely in
float64, on smooth region-like masks, on noisy masks where pruning is weak, at sizes that do not fill whole blocks,
with exact ties, tiny and large vocabularies, and with the batched score tensors forced into many chunks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from patseg.models.san.semantic_argmax import (
    FullMasks,
    ResizedMasks,
    _candidates,
    _critical,
    output_masks,
    resize_matrix,
    semantic_argmax,
    upsample_masks,
)


def dense_labels(probs: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 reference: (H, W) argmax over every class and the (H, W) gap between the best two scores."""
    scores = torch.einsum("qc,qhw->chw", probs.double(), logits.double().sigmoid())
    top = scores.topk(min(2, scores.shape[0]), dim=0).values
    gap = top[0] - top[1] if top.shape[0] == 2 else torch.full_like(top[0], float("inf"))
    return scores.argmax(0), gap


def region_case(classes: int, size: tuple[int, int], *, queries: int = 30, regions: int = 6, seed: int = 0):
    """Masks that own Voronoi regions of a coarse grid, upsampled as SAN does; confident class probabilities."""
    g = torch.Generator().manual_seed(seed)
    grid = 12
    centres = torch.rand(regions, 2, generator=g) * grid
    yy, xx = torch.meshgrid(torch.arange(grid) + 0.5, torch.arange(grid) + 0.5, indexing="ij")
    region = ((yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2).argmin(0)
    owner = torch.randint(0, regions, (queries,), generator=g)
    low = torch.where(region == owner[:, None, None], 4.0, -4.0) + torch.randn(queries, grid, grid, generator=g)
    logits = F.interpolate(low[None], size=size, mode="bilinear", align_corners=False)[0]
    cls = torch.randint(0, classes, (regions,), generator=g)
    class_logits = torch.randn(queries, classes + 1, generator=g) * 2
    class_logits[torch.arange(queries), cls[owner]] += 8
    return class_logits.softmax(-1)[:, :-1], logits


def noise_case(classes: int, size: tuple[int, int], *, queries: int = 30, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(queries, *size, generator=g) * 4
    return (torch.randn(queries, classes + 1, generator=g) * 3).softmax(-1)[:, :-1], logits


def assert_same_labels(probs: torch.Tensor, logits: torch.Tensor, **kwargs) -> None:
    ref, gap = dense_labels(probs, logits)
    got = semantic_argmax(probs, logits, **kwargs)
    assert got.shape == logits.shape[1:] and got.dtype == torch.int64
    decided = gap > 1e-5  # float32 summation order may legitimately flip a near-tie
    assert decided.float().mean() > 0.99
    assert torch.equal(got[decided], ref[decided])


@pytest.mark.parametrize("case", [region_case, noise_case])
@pytest.mark.parametrize("classes", [1, 2, 20, 300])
def test_labels_equal_dense_argmax(case, classes: int) -> None:
    probs, logits = case(classes, (45, 67))  # neither side a multiple of the block
    assert_same_labels(probs, logits)


@pytest.mark.parametrize("block", [1, 3, 8, 16, 64])
def test_any_block_size(block: int) -> None:
    probs, logits = region_case(50, (40, 50), seed=1)
    assert_same_labels(probs, logits, block=block)


def test_tiny_chunks_give_the_same_labels() -> None:
    probs, logits = noise_case(40, (33, 40), seed=2)
    assert_same_labels(probs, logits, max_elements=1)
    assert_same_labels(probs, logits, max_elements=200)


def test_ties_go_to_the_lower_class() -> None:
    """Duplicated class columns score identically: the lower index wins, as in a dense first-maximum argmax."""
    probs, logits = region_case(10, (24, 24), seed=3)
    probs = torch.cat([probs, probs], 1)  # classes 10..19 copy 0..9
    labels = semantic_argmax(probs, logits)
    assert labels.max() < 10
    ref, _ = dense_labels(probs[:, :10], logits)
    assert torch.equal(labels, ref)


def test_block_bounds_hold_for_every_pixel() -> None:
    """lower_c <= score_c(x) <= upper_c for every pixel of every block, and the winner is always a candidate."""
    probs, logits = noise_case(7, (20, 28), seed=4)
    lo, hi = FullMasks(logits).block_bounds(4)
    assert lo.shape == hi.shape == (30, 35)
    scores = torch.einsum("qc,qhw->chw", probs.double(), logits.double().sigmoid())
    blocks = scores.view(7, 5, 4, 7, 4).permute(0, 1, 3, 2, 4).reshape(7, 35, 16)
    upper = probs.double().t() @ hi.double().sigmoid()
    lower = probs.double().t() @ lo.double().sigmoid()
    assert torch.all(blocks.amax(-1) <= upper + 1e-9) and torch.all(blocks.amin(-1) >= lower - 1e-9)
    cand = _candidates(probs, lo, hi)  # (blocks, C)
    winners = blocks.argmax(0)  # (blocks, 16)
    assert torch.all(cand.gather(1, winners))


def test_pruning_leaves_few_candidates_on_region_masks() -> None:
    """The point of the bounds: on region-like masks most 8x8 blocks keep one class out of 847."""
    probs, logits = region_case(847, (96, 96), seed=5)
    lo, hi = FullMasks(logits).block_bounds(8)
    counts = _candidates(probs, lo, hi).sum(1)
    assert counts.min() >= 1
    assert (counts == 1).float().mean() > 0.6 and counts.float().mean() < 3


# ---------------------------------------------------------------------------------------------------- lazy masks
# (grid, padded, valid, output) chains as Segmenter meets them: SAN's 16x, PAT's 4x, a crop, a downsampling to a
# small original image and an upsampling to a large one.
CHAINS = [
    ((10, 12), (160, 192), (160, 192), (160, 192)),
    ((40, 40), (160, 160), (160, 160), (160, 160)),
    ((12, 17), (192, 272), (180, 250), (97, 131)),
    ((12, 17), (192, 272), (180, 250), (400, 555)),
]


def lazy_masks(grid_logits: torch.Tensor, padded, valid, out) -> ResizedMasks:
    steps = [(("linear", p), ("crop", v), ("linear", o)) for p, v, o in zip(padded, valid, out)]
    rows, cols = (resize_matrix(n, *chain) for n, chain in zip(grid_logits.shape[1:], steps))
    return ResizedMasks(grid_logits, rows, cols)


@pytest.mark.parametrize("chain", CHAINS)
def test_resize_matrices_are_the_interpolation_chain(chain) -> None:
    grid, padded, valid, out = chain
    logits = torch.randn(3, *grid, generator=torch.Generator().manual_seed(0)) * 4
    lazy = lazy_masks(logits, padded, valid, out)
    dense = torch.einsum("hi,qij,wj->qhw", lazy.rows.double(), logits.double(), lazy.cols.double())
    assert lazy.shape == (3, *out)
    torch.testing.assert_close(dense.float(), upsample_masks(logits, padded, valid, out), rtol=0, atol=2e-6)


@pytest.mark.parametrize("chain", CHAINS)
@pytest.mark.parametrize("block", [1, 3, 8])
def test_lazy_block_bounds_are_the_block_extrema(chain, block: int) -> None:
    """The bounds read at the critical rows and columns hold every block's minimum and maximum, tightly: exactly
    where the scales are powers of two, within the float-rounding margin elsewhere."""
    grid, padded, valid, out = chain
    logits = torch.randn(5, *grid, generator=torch.Generator().manual_seed(1)) * 4
    lo, hi = lazy_masks(logits, padded, valid, out).block_bounds(block)
    ref_lo, ref_hi = FullMasks(upsample_masks(logits, padded, valid, out)).block_bounds(block)
    rounding = 4e-6  # float32 products against float32 interpolation, on logits up to about 16
    assert torch.all(lo <= ref_lo + rounding) and torch.all(hi >= ref_hi - rounding)
    slack = rounding if valid == out else 1e-3
    assert torch.all(lo >= ref_lo - slack) and torch.all(hi <= ref_hi + slack)


@pytest.mark.parametrize("chain", CHAINS)
def test_lazy_block_values_are_the_upsampled_blocks(chain) -> None:
    grid, padded, valid, out = chain
    logits = torch.randn(4, *grid, generator=torch.Generator().manual_seed(2)) * 4
    full = FullMasks(upsample_masks(logits, padded, valid, out))
    n_blocks = -(-out[0] // 8) * -(-out[1] // 8)
    index = torch.tensor([0, 1, n_blocks // 2, n_blocks - 2, n_blocks - 1])  # edge blocks repeat the last row/column
    got = lazy_masks(logits, padded, valid, out).block_values(index, 8)
    torch.testing.assert_close(got, full.block_values(index, 8), rtol=0, atol=2e-6)


def test_only_critical_rows_are_read() -> None:
    """16x upsampling is linear within each 8-pixel block (2 rows of 8 needed); 4x bends inside blocks (6 of 8)."""
    assert _critical(resize_matrix(40, ("linear", 640)), 8)[0].shape == (80, 2)
    assert _critical(resize_matrix(160, ("linear", 640)), 8)[0].shape == (80, 6)
    lazy = output_masks(torch.zeros(2, 40, 40), (640, 640), (640, 640), (640, 640))
    assert isinstance(lazy, ResizedMasks) and lazy.critical_pixels(8) == 640 * 640 // 16
    assert isinstance(output_masks(torch.zeros(2, 160, 160), (640, 640), (640, 640), (640, 640)), torch.Tensor)
    # a 480x640 photo: masks upsampled to the padded 640x864 input, cropped to 640x853, resized back to 480x640
    photo = output_masks(torch.zeros(2, 40, 54), (640, 864), (640, 853), (480, 640))
    assert isinstance(photo, ResizedMasks) and photo.critical_pixels(8) < (640 * 864 + 480 * 640) / 4


@pytest.mark.parametrize("chain", CHAINS)
@pytest.mark.parametrize("case", [region_case, noise_case])
def test_lazy_labels_equal_dense_argmax(chain, case) -> None:
    grid, padded, valid, out = chain
    probs, logits = case(30, grid, seed=3)
    ref, gap = dense_labels(probs, upsample_masks(logits, padded, valid, out))
    got = semantic_argmax(probs, lazy_masks(logits, padded, valid, out))
    decided = gap > 1e-5
    assert decided.float().mean() > 0.99 and got.shape == out
    assert torch.equal(got[decided], ref[decided])


@pytest.mark.parametrize("size", [(48, 64), (45, 67)])
def test_channels_last_masks_give_the_same_bounds_values_and_labels(size) -> None:
    """The same logits in (H, W, Q) memory order: identical bounds, block values and labels (maps that whole blocks
    do not tile take the (Q, H, W) path)."""
    probs, logits = region_case(20, size, seed=6)
    last = logits.permute(1, 2, 0).contiguous().permute(2, 0, 1)
    assert last.permute(1, 2, 0).is_contiguous() and torch.equal(last, logits)
    for a, b in zip(FullMasks(last).block_bounds(8), FullMasks(logits).block_bounds(8)):
        assert torch.equal(a, b)
    index = torch.tensor([0, 3, 7, 20])
    assert torch.equal(FullMasks(last).block_values(index, 8), FullMasks(logits).block_values(index, 8))
    assert torch.equal(semantic_argmax(probs, last), semantic_argmax(probs, logits))


def test_channels_last_upsampling_is_the_upsampling() -> None:
    logits = torch.randn(6, 12, 17, generator=torch.Generator().manual_seed(7)) * 4
    for padded, valid, out in ((192, 272), (192, 272), (192, 272)), ((192, 272), (180, 250), (97, 131)):
        last = upsample_masks(logits, padded, valid, out, channels_last=True)
        assert last.permute(1, 2, 0).is_contiguous()
        torch.testing.assert_close(last, upsample_masks(logits, padded, valid, out), rtol=0, atol=2e-6)
