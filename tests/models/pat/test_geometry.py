"""PAT's pyramid resolutions against the design table (ViT-B/16 and ViT-L/14-336 at 640x640) and the ablations."""

from __future__ import annotations

import pytest

from patseg.models.layers.resample import Resample, log2_exact
from patseg.models.pat.geometry import (
    SIDE_STRIDE,
    base_stride,
    final_stride,
    pyramid_grids,
    stage_strides,
    tap_stride,
)


def clip_grid(image: int, resize_ratio: float, patch: int) -> tuple[int, int]:
    """CLIP sees the image scaled by ``resize_ratio`` and drops remainder pixels at the patch convolution."""
    side = int(image * resize_ratio) // patch
    return side, side


# The design table (docs/design.md, readings 1-2), per backbone, at a 640x640 crop.
TABLE = {
    "ViT-B/16": {"patch": 16, "ratio": 0.5, "clip": 20, "tap": 20, "tap_stride": 32, "factors": (4, 2, 1)},
    "ViT-L/14-336": {"patch": 14, "ratio": 0.7, "clip": 32, "tap": 40, "tap_stride": 16, "factors": (2, 1, 0.5)},
}


@pytest.mark.parametrize("backbone", sorted(TABLE))
def test_design_table_at_640(backbone: str) -> None:
    row = TABLE[backbone]
    cg = clip_grid(640, row["ratio"], row["patch"])
    assert cg == (row["clip"], row["clip"])  # 320 -> 20; 448 -> 32
    grids = pyramid_grids((640, 640), cg, pyramid_base="clip", stage_scales=(4, 2, 1))
    assert grids.base == (20, 20)
    assert grids.side == (40, 40)  # side grid = latent grid = 2r
    assert grids.tap == (row["tap"], row["tap"])
    assert grids.stages == {"early": (80, 80), "mid": (40, 40), "late": (20, 20)}
    assert tap_stride("clip", row["patch"], row["ratio"]) == row["tap_stride"]
    # The stage resamplers' factors (tap grid -> stage grid) as build.py derives them.
    strides = stage_strides("clip", (4, 2, 1))
    factors = tuple(row["tap_stride"] / strides[s] for s in ("early", "mid", "late"))
    assert factors == row["factors"]
    for f in factors:  # each is a factor Resample accepts (DySample up, identity, strided conv down)
        Resample(8, factor=f, groups=4)


def test_default_strides_and_final_grid() -> None:
    assert base_stride("clip") == 32 and base_stride("side") == SIDE_STRIDE == 16
    assert stage_strides("clip", (4, 2, 1)) == {"early": 8, "mid": 16, "late": 32}
    assert final_stride("clip", (4, 2, 1), ("late", "mid", "early")) == 8  # mask grid H/8 = 80 at 640
    assert log2_exact(640 // (640 // 8), "final stride") == 3  # reconstruction head 256 -> 128 -> 64 -> 32


@pytest.mark.parametrize(
    "scales, stage_grid, final, head_depth",
    [
        ((4, 4, 4), 80, 8, 3),  # every stage at 4r: mask grid 80 (H/8)
        ((1, 1, 1), 20, 32, 5),  # every stage at r: mask grid 20 (H/32)
    ],
)
def test_equal_stage_scales(scales, stage_grid, final, head_depth) -> None:
    grids = pyramid_grids((640, 640), (20, 20), pyramid_base="clip", stage_scales=scales)
    assert set(grids.stages.values()) == {(stage_grid, stage_grid)}
    assert final_stride("clip", scales, ("late", "mid", "early")) == final
    assert log2_exact(final, "final stride") == head_depth
    # Down between equal scales is a stride-1 conv: factor 1 between consecutive stages
    strides = stage_strides("clip", scales)
    assert strides["early"] == strides["mid"] == strides["late"] == final


def test_pyramid_base_side_is_the_literal_reading() -> None:
    """Eq. 2/3 on the side grid (40): 160/80/40 and a final grid of H/4 at 640."""
    grids = pyramid_grids((640, 640), (20, 20), pyramid_base="side", stage_scales=(4, 2, 1))
    assert grids.base == (40, 40) and grids.side == (40, 40)
    assert grids.stages == {"early": (160, 160), "mid": (80, 80), "late": (40, 40)}
    assert grids.tap == (40, 40)  # the 20x20 ViT-B grid is not the base grid: taps go to the side grid
    assert tap_stride("side", 16, 0.5) == 16
    assert final_stride("side", (4, 2, 1), ("late", "mid", "early")) == 4


@pytest.mark.parametrize(
    "kept, stride", [(("late", "mid", "early"), 8), (("late", "mid"), 16), (("late",), 32), (("mid",), 16), ((), 16)]
)
def test_final_grid_is_the_finest_kept_stage(kept, stride) -> None:
    """No kept stage (Table II's last FPN row): the decoder ends at the latent's side grid, under both bases."""
    assert final_stride("clip", (4, 2, 1), kept) == stride
    assert final_stride("side", (4, 2, 1), kept) == (stride // 2 if kept else SIDE_STRIDE)


def test_non_square_and_evaluation_sizes() -> None:
    """Evaluation pads to /32 but not to a square: every grid follows each side separately."""
    grids = pyramid_grids((640, 896), (20, 28), pyramid_base="clip", stage_scales=(4, 2, 1))
    assert grids.base == (20, 28) and grids.side == (40, 56) and grids.tap == (20, 28)
    assert grids.stages == {"early": (80, 112), "mid": (40, 56), "late": (20, 28)}
    # ViT-L/14 at ratio 0.7 on 640x896: CLIP grid 32x44, not the base grid, so taps go to the side grid
    grids = pyramid_grids(
        (640, 896), clip_grid(640, 0.7, 14)[:1] + (int(896 * 0.7) // 14,), pyramid_base="clip", stage_scales=(4, 2, 1)
    )
    assert grids.tap == (40, 56)


def test_bad_values_raise() -> None:
    with pytest.raises(ValueError, match="pyramid_base"):
        base_stride("pixels")
    with pytest.raises(ValueError, match="does not divide"):
        stage_strides("clip", (3, 2, 1))
    with pytest.raises(ValueError, match="final stride must be a power of 2, got 12"):
        log2_exact(12, "final stride")
