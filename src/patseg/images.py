"""Reading user images robustly and writing label maps and overlays.

Any JPEG/PNG/TIFF mode is accepted: grayscale, RGBA, 16-bit, palette, CMYK, and EXIF-rotated photos are turned
into an upright (H, W, 3) uint8 RGB array. Errors name the file.
"""

from __future__ import annotations

import colorsys
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError

from patseg.errors import ImageReadError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as an upright (H, W, 3) uint8 RGB array."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            upright = ImageOps.exif_transpose(im)
            return to_rgb_array(upright)
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"{path}: not a readable image ({exc})") from None


def to_rgb_array(im: Image.Image) -> np.ndarray:
    """Convert a PIL image of any mode to (H, W, 3) uint8 RGB (16-bit data is scaled, not clipped)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if a.max() > 255 else 255.0
        a = np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = ((a - lo) / (hi - lo if hi > lo else 1.0) * 255.0 + 0.5).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)  # transparent pixels become white, not black
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def expand_inputs(items: Sequence[str | Path]) -> list[Path]:
    """Files as given, and the image files inside any folder (sorted, non-recursive)."""
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out.extend(sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()))
        else:
            out.append(p)
    return out


def palette(n: int) -> np.ndarray:
    """(n, 3) uint8 distinct colours: golden-ratio hues with alternating lightness."""
    colours = []
    for i in range(n):
        h = (i * 0.618033988749895) % 1.0
        light, sat = (0.5, 0.75) if i % 2 == 0 else (0.38, 0.65)
        colours.append([int(255 * c) for c in colorsys.hls_to_rgb(h, light, sat)])
    return np.array(colours, dtype=np.uint8).reshape(n, 3)


def label_image(labels: np.ndarray) -> Image.Image:
    """A label map as an 8-bit PNG when it fits, else 16-bit."""
    if labels.max(initial=0) <= 255:
        return Image.fromarray(labels.astype(np.uint8), mode="L")
    return Image.fromarray(labels.astype(np.uint16))


def overlay_with_legend(image: np.ndarray, labels: np.ndarray, names: Sequence[str], alpha: float = 0.5) -> Image.Image:
    """Colour overlay of ``labels`` on ``image`` with a legend of the classes present, to the right."""
    colours = palette(len(names))
    blend = (image.astype(np.float32) * (1 - alpha) + colours[labels].astype(np.float32) * alpha).astype(np.uint8)
    present = [int(c) for c in np.unique(labels)]
    counts = np.bincount(labels.ravel(), minlength=len(names))
    present.sort(key=lambda c: -counts[c])
    row = 18
    legend_w = 220
    h = max(image.shape[0], row * len(present) + 10)
    canvas = Image.new("RGB", (image.shape[1] + legend_w, h), (255, 255, 255))
    canvas.paste(Image.fromarray(blend), (0, 0))
    draw = ImageDraw.Draw(canvas)
    x0 = image.shape[1] + 8
    for i, c in enumerate(present):
        y = 5 + i * row
        draw.rectangle([x0, y, x0 + 14, y + 14], fill=tuple(int(v) for v in colours[c]), outline=(0, 0, 0))
        share = 100.0 * counts[c] / labels.size
        draw.text((x0 + 20, y + 1), f"{names[c][:26]} ({share:.1f}%)", fill=(0, 0, 0))
    return canvas
