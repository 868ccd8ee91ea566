"""SSD colour jitter (Liu et al., SSD, ECCV 2016) as SAN trains with it.

Facts from Mask2Former ``mask2former/data/dataset_mappers/mask_former_semantic_dataset_mapper.py`` and detectron2
``projects/PointRend/point_rend/color_augmentation.py`` (``ColorAugSSDTransform``): brightness +U(-32, 32), then with
probability 1/2 the order (contrast, saturation, hue), otherwise (saturation, hue, contrast); each of the four steps
happens with probability 1/2. Contrast multiplies by U(0.5, 1.5), saturation multiplies OpenCV's 8-bit S channel
by U(0.5, 1.5), hue adds randint(-18, 18) to OpenCV's 8-bit H channel (degrees / 2) modulo 180. Every step clips
to [0, 255] and truncates to uint8, as upstream's ``convert`` does.

OpenCV is not a dependency, so the 8-bit HSV conversions are written out below with OpenCV's conventions (V = max,
S = 255 (V - min) / V, H = hue / 2); results can differ from ``cv2.cvtColor`` by one grey level through rounding.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch


def rgb_to_hsv8(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB (H, W, 3) -> float (H, W, 3) holding OpenCV's 8-bit H (0..179), S (0..255), V (0..255)."""
    x = rgb.astype(np.float64)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    v = x.max(-1)
    chroma = v - x.min(-1)
    safe = np.where(chroma > 0, chroma, 1.0)
    hue = np.where(v == r, (g - b) / safe, np.where(v == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0)) * 60.0
    hue = np.where(chroma > 0, hue % 360.0, 0.0)
    sat = np.where(v > 0, chroma / np.where(v > 0, v, 1.0) * 255.0, 0.0)
    return np.stack([np.round(hue / 2.0) % 180.0, np.round(sat), v], axis=-1)


def hsv8_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_hsv8`: float (H, W, 3) 8-bit HSV -> uint8 RGB (H, W, 3)."""
    sector_pos = hsv[..., 0] * 2.0 / 60.0  # hue in units of 60 degrees, [0, 6)
    v = hsv[..., 2]
    chroma = v * hsv[..., 1] / 255.0
    second = chroma * (1.0 - np.abs(sector_pos % 2.0 - 1.0))
    zero = np.zeros_like(v)
    sector = np.floor(sector_pos).astype(np.int64) % 6
    # (R, G, B) before adding the minimum, for each 60-degree sector of the hue circle
    table = np.stack(
        [
            np.stack([chroma, second, zero], -1),
            np.stack([second, chroma, zero], -1),
            np.stack([zero, chroma, second], -1),
            np.stack([zero, second, chroma], -1),
            np.stack([second, zero, chroma], -1),
            np.stack([chroma, zero, second], -1),
        ],
        axis=0,
    )
    rgb = np.take_along_axis(table, sector[None, ..., None].repeat(3, -1), axis=0)[0]
    rgb = rgb + (v - chroma)[..., None]
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def _convert(x: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """alpha * x + beta, clipped to [0, 255] and truncated to uint8 (upstream's ``convert``)."""
    return np.clip(x.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


class ColorAugSSD:
    """Random brightness, contrast, saturation and hue on a uint8 image (3, H, W)."""

    def __init__(
        self,
        brightness_delta: float = 32.0,
        contrast_range: tuple[float, float] = (0.5, 1.5),
        saturation_range: tuple[float, float] = (0.5, 1.5),
        hue_delta: int = 18,
    ) -> None:
        self.brightness_delta = brightness_delta
        self.contrast_range = contrast_range
        self.saturation_range = saturation_range
        self.hue_delta = hue_delta

    def __call__(self, image: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        def coin() -> bool:
            return bool(torch.randint(2, (1,), generator=generator))

        def uniform(lo: float, hi: float) -> float:
            return lo + (hi - lo) * float(torch.rand((), generator=generator))

        img = image.permute(1, 2, 0).numpy()  # (H, W, 3) RGB uint8

        def contrast(x: np.ndarray) -> np.ndarray:
            return _convert(x, alpha=uniform(*self.contrast_range)) if coin() else x

        def saturation(x: np.ndarray) -> np.ndarray:
            if not coin():
                return x
            hsv = rgb_to_hsv8(x)
            hsv[..., 1] = _convert(hsv[..., 1], alpha=uniform(*self.saturation_range))
            return hsv8_to_rgb(hsv)

        def hue(x: np.ndarray) -> np.ndarray:
            if not coin():
                return x
            hsv = rgb_to_hsv8(x)
            shift = int(torch.randint(-self.hue_delta, self.hue_delta + 1, (1,), generator=generator))
            hsv[..., 0] = (hsv[..., 0] + shift) % 180.0
            return hsv8_to_rgb(hsv)

        if coin():
            img = _convert(img, beta=uniform(-self.brightness_delta, self.brightness_delta))
        steps = (contrast, saturation, hue) if coin() else (saturation, hue, contrast)
        for step in steps:
            img = step(img)
        return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).contiguous()
