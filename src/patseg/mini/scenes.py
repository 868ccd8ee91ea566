"""Rendering of OVSS-mini scenes (numpy, vectorised) and the segmentation dataset built on them.

A scene is a Voronoi partition of the canvas into stuff regions, each filled with its texture, with things painted
over it in order (later things occlude earlier ones). The label map is written by the same boolean masks that
paint the pixels, so every pixel's label is the concept drawn there; the caption is derived from the label map, so
it names exactly the concepts present. Everything is a function of (world, seed, split, index).
"""

from __future__ import annotations

import zlib
from typing import Callable, NamedTuple, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from patseg.mini.world import WorldConfig, caption_order, make_caption

IGNORE_INDEX = 255

Grid = tuple[np.ndarray, np.ndarray]  # pixel-centre coordinates (y, x), each (H, W) float64


class Scene(NamedTuple):
    image: np.ndarray  # (H, W, 3) uint8
    label: np.ndarray  # (H, W) int64 concept indices
    caption: str
    present: tuple[int, ...]  # concept indices in the label map, ascending


def _smooth_noise(rng: np.random.Generator, size: int, cells_y: int, cells_x: int) -> np.ndarray:
    """Bilinearly upsampled uniform noise in [0, 1]: (size, size), about ``cells`` features per side."""
    coarse = rng.random((cells_y + 2, cells_x + 2))
    ys = np.linspace(0, cells_y, size) + rng.random()
    xs = np.linspace(0, cells_x, size) + rng.random()
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    a, b = coarse[y0][:, x0], coarse[y0][:, x0 + 1]
    c, d = coarse[y0 + 1][:, x0], coarse[y0 + 1][:, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def _rotated(grid: Grid, angle: float) -> Grid:
    y, x = grid
    cos, sin = np.cos(angle), np.sin(angle)
    return x * sin + y * cos, x * cos - y * sin


# Each texture returns the mixing weight t in [0, 1] of the secondary colour, shape (H, W); p = period in pixels.
def _grass(rng: np.random.Generator, grid: Grid, p: float) -> np.ndarray:
    size = grid[0].shape[0]
    blades = _smooth_noise(rng, size, max(1, int(size / (6 * p))), max(1, int(size / p)))  # tall thin streaks
    return np.clip(1.6 * blades - 0.3 + 0.3 * rng.random((size, size)), 0.0, 1.0)


def _clouds(rng: np.random.Generator, grid: Grid, p: float) -> np.ndarray:
    size = grid[0].shape[0]
    cells = max(1, int(size / p))
    return np.clip(2.5 * (_smooth_noise(rng, size, cells, cells) - 0.55), 0.0, 1.0)


def _waves(rng: np.random.Generator, grid: Grid, p: float) -> np.ndarray:
    y, x = grid
    phase = rng.uniform(0, 2 * np.pi, size=2)
    wobble = 0.25 * p * np.sin(2 * np.pi * x / (3 * p) + phase[0])
    return 0.5 + 0.5 * np.sin(2 * np.pi * (y + wobble) / p + phase[1])


def _grain(rng: np.random.Generator, grid: Grid, p: float) -> np.ndarray:
    return rng.random(grid[0].shape)


def _bricks(rng: np.random.Generator, grid: Grid, p: float) -> np.ndarray:
    y, x = grid[0] + rng.uniform(0, p), grid[1] + rng.uniform(0, 2 * p)
    row = np.floor(y / p)
    x_in_row = x + (row % 2) * p  # running bond: odd rows shift by half a brick
    mortar = ((y % p) < 0.18 * p) | ((x_in_row % (2 * p)) < 0.12 * p)
    return mortar.astype(np.float64)


def _wood(rng: np.random.Generator, grid: Grid, p: float) -> np.ndarray:
    u, v = _rotated(grid, rng.uniform(-0.3, 0.3))
    wobble = 0.4 * p * np.sin(2 * np.pi * v / (5 * p) + rng.uniform(0, 2 * np.pi))
    return (0.5 + 0.5 * np.sin(2 * np.pi * (u + wobble) / p)) ** 3


def _stripes(rng: np.random.Generator, grid: Grid, p: float) -> np.ndarray:
    u, _ = _rotated(grid, rng.uniform(0, np.pi))
    return (((u / p + rng.random()) % 1.0) >= 0.5).astype(np.float64)


def _dots(rng: np.random.Generator, grid: Grid, p: float) -> np.ndarray:
    u, v = _rotated(grid, rng.uniform(0, np.pi / 2))
    du = (u / p + rng.random()) % 1.0 - 0.5
    dv = (v / p + rng.random()) % 1.0 - 0.5
    return (du**2 + dv**2 >= 0.3**2).astype(np.float64)  # dots in the primary colour on a secondary ground


TEXTURES: dict[str, Callable[[np.random.Generator, Grid, float], np.ndarray]] = {
    "grass": _grass,
    "clouds": _clouds,
    "waves": _waves,
    "grain": _grain,
    "bricks": _bricks,
    "wood": _wood,
    "stripes": _stripes,
    "dots": _dots,
}


# Shapes: boolean masks (H, W) of pixel centres inside a shape of circumradius r, in rotated local coords (u, v).
def _circle(u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    return u**2 + v**2 <= r**2


def _square(u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    half = r / np.sqrt(2.0)
    return (np.abs(u) <= half) & (np.abs(v) <= half)


def _triangle(u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    # Equilateral: inside all three half-planes whose normals point at the edge midpoints (inradius r/2).
    inside = np.ones(u.shape, dtype=bool)
    for k in range(3):
        a = np.pi / 2 + 2 * np.pi * k / 3
        inside &= u * np.cos(a) + v * np.sin(a) <= r / 2
    return inside


def _star(u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    # Five-pointed star, inner radius 0.45 r: fold the angle into one half-spike [0, 36 deg] with its tip on the
    # +x axis, then test which side of the tip-to-valley edge the point lies.
    rho, theta = np.hypot(u, v), np.arctan2(v, u)
    half = np.pi / 5
    folded = np.abs((theta + half) % (2 * half) - half)
    px, py = rho * np.cos(folded), rho * np.sin(folded)
    tip = np.array([r, 0.0])
    valley = 0.45 * r * np.array([np.cos(half), np.sin(half)])
    edge = valley - tip
    return edge[0] * (py - tip[1]) - edge[1] * (px - tip[0]) >= 0


SHAPES: dict[str, Callable[[np.ndarray, np.ndarray, float], np.ndarray]] = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "star": _star,
}


def shape_mask(shape: str, size: int, cy: float, cx: float, r: float, angle: float) -> np.ndarray:
    """Pixels of ``shape`` (circumradius ``r`` px, centre (cy, cx), rotated by ``angle``): bool (size, size)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    u, v = _rotated((y - cy, x - cx), angle)
    return SHAPES[shape](u, v, r)


def _jittered(rgb: tuple[int, int, int], rng: np.random.Generator, jitter: float) -> np.ndarray:
    return np.asarray(rgb, dtype=np.float64) * rng.uniform(1 - jitter, 1 + jitter)


def _paint_stuff(world: WorldConfig, rng: np.random.Generator, size: int, canvas: np.ndarray, label: np.ndarray):
    """Fill the canvas with a Voronoi partition of distinct stuff concepts (writes ``canvas`` and ``label``)."""
    lo, hi = world.stuff_per_scene
    count = int(rng.integers(lo, hi + 1))
    chosen = rng.choice(world.num_stuff, size=count, replace=False)
    grid = tuple(np.mgrid[0:size, 0:size].astype(np.float64) + 0.5)
    seeds = rng.uniform(0, size, size=(count, 2))
    dist = (grid[0][None] - seeds[:, 0, None, None]) ** 2 + (grid[1][None] - seeds[:, 1, None, None]) ** 2
    cell = np.argmin(dist, axis=0)
    for k, concept in enumerate(chosen):
        spec = world.stuff[concept]
        t = TEXTURES[spec.pattern](rng, grid, spec.period * size)[..., None]
        primary = _jittered(spec.primary, rng, world.brightness_jitter)
        secondary = _jittered(spec.secondary, rng, world.brightness_jitter)
        region = cell == k
        canvas[region] = (primary * (1 - t) + secondary * t)[region]
        label[region] = concept


def _paint_things(world: WorldConfig, rng: np.random.Generator, size: int, canvas: np.ndarray, label: np.ndarray):
    """Paint distinct things in order; a placement that hides too much of an earlier thing is re-drawn."""
    lo, hi = world.things_per_scene
    count = int(rng.integers(lo, hi + 1))
    num_things = len(world.colours) * len(world.shapes)
    chosen = rng.choice(num_things, size=count, replace=False)
    visible: list[tuple[int, np.ndarray, int]] = []  # (concept, full mask, full area) of the things painted so far
    for thing in chosen:
        colour, shape = divmod(int(thing), len(world.shapes))
        concept = world.thing_index(colour, shape)
        for _ in range(world.placement_tries):
            r = rng.uniform(*world.thing_scale) * size
            cy, cx = rng.uniform(r * 0.5, size - r * 0.5, size=2)
            mask = shape_mask(world.shapes[shape], size, cy, cx, r, rng.uniform(0, 2 * np.pi))
            if mask.any() and all(
                ((label == c) & m & ~mask).sum() >= world.min_visible * area for c, m, area in visible
            ):
                break
        else:
            continue  # no acceptable placement: leave this thing out of the scene
        canvas[mask] = _jittered(world.colours[colour].rgb, rng, world.brightness_jitter)
        label[mask] = concept
        visible.append((concept, mask, int(mask.sum())))


def render_scene(world: WorldConfig, rng: np.random.Generator, size: int) -> Scene:
    """Render one scene of ``size`` x ``size`` pixels; all randomness comes from ``rng``."""
    canvas = np.zeros((size, size, 3), dtype=np.float64)
    label = np.zeros((size, size), dtype=np.int64)
    _paint_stuff(world, rng, size, canvas, label)
    _paint_things(world, rng, size, canvas, label)
    if world.noise_std > 0:
        canvas += rng.normal(0.0, world.noise_std, size=canvas.shape)
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    present = tuple(int(i) for i in np.unique(label))
    caption = make_caption(caption_order(world, present), world.caption_prefix)
    return Scene(image=image, label=label, caption=caption, present=present)


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Independent generator for scene ``index`` of ``split``: a split name never shares a stream with another."""
    return np.random.default_rng([seed, zlib.crc32(split.encode("utf-8")), index])


class SyntheticSegmentation(Dataset):
    """``num_scenes`` OVSS-mini scenes of ``size`` px, rendered on access from (seed, split, index).

    Items are dicts: ``image`` uint8 (3, H, W), ``label`` int64 (H, W), ``name`` str, ``caption`` str.
    With ``concepts`` given (e.g. ``world.seen_names``), labels index that list (as a benchmark's train ids index
    its class list) and pixels of any other concept are IGNORE_INDEX (255); otherwise labels are world indices.
    The caption always names every concept present, whatever the vocabulary.
    """

    def __init__(
        self,
        world: WorldConfig,
        split: str,
        num_scenes: int,
        size: int,
        seed: int,
        concepts: Optional[tuple[str, ...] | list[str]] = None,
    ) -> None:
        self.world, self.split, self.num_scenes, self.size, self.seed = world, split, num_scenes, size, seed
        names = world.concept_names
        if concepts is None:
            self.class_names = names
            self._lut = np.arange(len(names), dtype=np.int64)
        else:
            unknown = [c for c in concepts if c not in names]
            if unknown:
                raise ValueError(f"concept '{unknown[0]}' is not in world '{world.name}'")
            self.class_names = tuple(concepts)
            self._lut = np.full(len(names), IGNORE_INDEX, dtype=np.int64)
            self._lut[[names.index(c) for c in concepts]] = np.arange(len(concepts))

    def __len__(self) -> int:
        return self.num_scenes

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_scenes:
            raise IndexError(f"scene {index} out of range [0, {self.num_scenes})")
        scene = render_scene(self.world, scene_rng(self.seed, self.split, index), self.size)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(scene.image.transpose(2, 0, 1))),
            "label": torch.from_numpy(self._lut[scene.label]),
            "name": f"{self.split}_{index:06d}",
            "caption": scene.caption,
        }
