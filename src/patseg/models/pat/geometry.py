"""Resolutions of PAT's feature pyramid, derived from two config fields (``docs/design.md``).

Every grid is computed here from the input size, ``pyramid_base`` and ``stage_scales``; no module hard-codes a
resolution. With the default reading (``pyramid_base="side"``, scales (4, 2, 1)) and a 640x640 input: base grid
r = side grid = latent grid = 40, stages early/mid/late = 160/80/40, final decoded grid = 160 (H/4). Under
``pyramid_base="clip"`` the base grid is CLIP's H/32: stages 80/40/20 and a final grid of H/8.
"""

from __future__ import annotations

from dataclasses import dataclass

STAGES = ("early", "mid", "late")
SIDE_STRIDE = 16  # SAN's side ViT patch size


def base_stride(pyramid_base: str) -> int:
    """Stride of the base grid r: H/32 under the CLIP-grid reading, H/16 (the side grid) under the literal one."""
    strides = {"clip": 32, "side": SIDE_STRIDE}
    if pyramid_base not in strides:
        raise ValueError(f"pyramid_base must be 'clip' or 'side', got {pyramid_base!r}")
    return strides[pyramid_base]


def stage_strides(pyramid_base: str, stage_scales: tuple[int, ...]) -> dict[str, int]:
    """Input-pixel stride of each stage grid, e.g. {'early': 8, 'mid': 16, 'late': 32} for the defaults."""
    base = base_stride(pyramid_base)
    out = {}
    for name, scale in zip(STAGES, stage_scales):
        if scale <= 0 or base % scale:
            raise ValueError(f"stage scale {scale} does not divide the base stride {base}")
        out[name] = base // scale
    return out


def final_stride(pyramid_base: str, stage_scales: tuple[int, ...], decoder_stages: tuple[str, ...]) -> int:
    """Stride of the decoder's final grid: the finest stage the decoder keeps, or the latent's side grid when it
    keeps none (Table II's last "FPN" row decodes from the latent alone)."""
    strides = stage_strides(pyramid_base, stage_scales)
    return min((strides[s] for s in decoder_stages), default=SIDE_STRIDE)


@dataclass(frozen=True)
class PyramidGrids:
    """Concrete grids (h, w) for one input size. ``tap`` is the grid CLIP taps are resized to first."""

    stages: dict[str, tuple[int, int]]
    side: tuple[int, int]
    tap: tuple[int, int]
    base: tuple[int, int]


def pyramid_grids(
    image_hw: tuple[int, int], clip_grid: tuple[int, int], *, pyramid_base: str, stage_scales: tuple[int, ...]
) -> PyramidGrids:
    """Grids for an input of size ``image_hw`` (divisible by 32) whose CLIP patch grid is ``clip_grid``.

    The taps stay at their native grid when it equals the base grid (ViT-B/16 at ratio 0.5); otherwise they are
    resized to the side grid, as SAN's fusion does (ViT-L/14-336 at ratio 0.7 gives 32x32, resized to 40x40).
    """
    h, w = image_hw
    bs = base_stride(pyramid_base)
    base = (h // bs, w // bs)
    side = (h // SIDE_STRIDE, w // SIDE_STRIDE)
    strides = stage_strides(pyramid_base, stage_scales)
    stages = {name: (h // s, w // s) for name, s in strides.items()}
    tap = (clip_grid[0], clip_grid[1]) if tuple(clip_grid) == base else side
    return PyramidGrids(stages=stages, side=side, tap=tap, base=base)


def tap_stride(pyramid_base: str, clip_patch: int, resize_ratio: float) -> int:
    """Input-pixel stride of the grid CLIP taps are brought to before the pyramid (see ``pyramid_grids``)."""
    native = clip_patch / resize_ratio
    base = base_stride(pyramid_base)
    return base if abs(native - base) < 1e-6 else SIDE_STRIDE
