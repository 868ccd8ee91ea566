"""Reading user images robustly and writing label maps and overlays.

Any JPEG/PNG/TIFF mode is accepted: grayscale, RGBA, 16-bit, palette, CMYK, and EXIF-rotated photos are turned
into an upright (H, W, 3) uint8 RGB array. Errors name the file.
"""

from __future__ import annotations

import colorsys
import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Sequence, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFile, ImageFont, ImageOps, UnidentifiedImageError

from patseg.errors import ImageReadError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
LEGEND_FONT_SIZE = 13
LEGEND_MAX_CHARS = 80  # longer class names are cut with an ellipsis in overlay legends
# Unicode fonts Pillow looks up among the system's fonts by file name; DejaVu Sans covers Latin, Greek, Cyrillic,
# Arabic and Hebrew, the Noto CJK and Arial Unicode files Chinese, Japanese and Korean.
_FONT_FILES = ("DejaVuSans.ttf", "NotoSansCJK-Regular.ttc", "NotoSansCJKsc-Regular.otf", "Arial Unicode.ttf")


class UndecodableImageError(ImageReadError):
    """An image file opens but its pixel data does not decode in full (truncated or corrupt)."""


@contextmanager
def open_decoded(path: str | os.PathLike[str]) -> Iterator[Image.Image]:
    """``Image.open(path)`` with its pixel data decoded in full; a missing file stays FileNotFoundError.

    PIL's ``verify()`` does not decode JPEG data and ``ImageFile.LOAD_TRUNCATED_IMAGES`` (which another library may
    have set) pads a truncated file with grey, so the flag is held False while ``load()`` decodes every byte.
    Raises UndecodableImageError (the reason in its message) for a truncated or corrupt file.
    """
    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        im = Image.open(path)
        try:
            im.load()
        except BaseException:
            im.close()
            raise
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise UndecodableImageError(str(exc)) from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved
    with im:
        yield im


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
    """Files as given, and the image files inside any folder (sorted, non-recursive); a file reached twice (named
    and inside a named folder, or given twice) is kept once, where it first appears."""
    out: list[Path] = []
    seen: set[Path] = set()
    for item in items:
        p = Path(item)
        found = (
            sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()) if p.is_dir() else [p]
        )
        for f in found:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                out.append(f)
    return out


def output_names(files: Sequence[Path]) -> list[str]:
    """A distinct output name per input file (in order): the stem; for files whose stems collide, the stem and the
    suffix (``img.bmp``, ``img.tif`` -> ``img_bmp``, ``img_tif``), numbered when that name is taken too (the same
    file name in two folders: ``img_jpg``, ``img_jpg_2``). Names are compared case-insensitively, so that they stay
    distinct on case-insensitive file systems."""
    counts: dict[str, int] = {}
    for f in files:
        counts[f.stem.casefold()] = counts.get(f.stem.casefold(), 0) + 1
    names: list[str | None] = [f.stem if counts[f.stem.casefold()] == 1 else None for f in files]
    taken = {name.casefold() for name in names if name is not None}  # a unique stem keeps its own name
    for i, f in enumerate(files):
        if names[i] is None:
            suffix = f.suffix.lstrip(".")
            base = f"{f.stem}_{suffix}" if suffix else f.stem
            name, n = base, 2
            while name.casefold() in taken:
                name, n = f"{base}_{n}", n + 1
            names[i] = name
            taken.add(name.casefold())
    return [name for name in names if name is not None]


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


def legend_label(name: str, share: float) -> str:
    """One legend entry: the class name (cut with an ellipsis only past LEGEND_MAX_CHARS) and its pixel share."""
    if len(name) > LEGEND_MAX_CHARS:
        name = name[: LEGEND_MAX_CHARS - 1] + "\N{HORIZONTAL ELLIPSIS}"
    return f"{name} ({share:.1f}%)"


def tint(image: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) uint8 image blended with (H, W, 3) per-pixel class colours at weight ``alpha``."""
    return (image.astype(np.float32) * (1 - alpha) + colours.astype(np.float32) * alpha).astype(np.uint8)


def overlay_with_legend(image: np.ndarray, labels: np.ndarray, names: Sequence[str], alpha: float = 0.5) -> Image.Image:
    """Colour overlay of ``labels`` on ``image`` with a legend of the classes present, to the right; the legend is as
    wide as its longest entry and drawn in a TrueType font that covers its characters when one is found."""
    colours = palette(len(names))
    blend = tint(image, colours[labels], alpha)
    present = [int(c) for c in np.unique(labels)]
    counts = np.bincount(labels.ravel(), minlength=len(names))
    present.sort(key=lambda c: -counts[c])
    texts = [legend_label(names[c], 100.0 * counts[c] / labels.size) for c in present]
    font = legend_font("".join(texts))
    ascent, descent = font.getmetrics() if isinstance(font, ImageFont.FreeTypeFont) else (11, 0)
    row = max(18, ascent + descent + 4)
    text_w = max((int(np.ceil(font.getlength(t))) for t in texts), default=0)
    legend_w = max(120, 8 + 20 + text_w + 8)
    h = max(image.shape[0], row * len(present) + 10)
    canvas = Image.new("RGB", (image.shape[1] + legend_w, h), (255, 255, 255))
    canvas.paste(Image.fromarray(blend), (0, 0))
    draw = ImageDraw.Draw(canvas)
    x0 = image.shape[1] + 8
    for i, (c, text) in enumerate(zip(present, texts)):
        y = 5 + i * row
        draw.rectangle([x0, y, x0 + 14, y + 14], fill=tuple(int(v) for v in colours[c]), outline=(0, 0, 0))
        draw.text((x0 + 20, y + 1), text, fill=(0, 0, 0), font=font)
    return canvas


LegendFont = Union[ImageFont.FreeTypeFont, ImageFont.ImageFont]


def legend_font(text: str, size: int = LEGEND_FONT_SIZE) -> LegendFont:
    """The first font of :func:`_fonts` that has a glyph for every character of ``text`` (else the first one):
    class names may be in any script, and a font without their glyphs draws boxes."""
    fonts = _fonts(size)
    for font in fonts:
        if all(_has_glyph(font, ch) for ch in set(text) if ch.isprintable() and not ch.isspace()):
            return font
    return fonts[0]


@lru_cache(maxsize=4)
def _fonts(size: int) -> tuple[LegendFont, ...]:
    """Fonts to try, widest coverage first: DejaVu Sans and other Unicode fonts Pillow finds among the system's
    fonts, matplotlib's bundled DejaVu Sans when matplotlib is installed, then Pillow's own default font (TrueType
    from Pillow 10.1, Latin only)."""
    fonts: list[LegendFont] = []
    candidates: list[str] = list(_FONT_FILES)
    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.origin is not None:
        candidates.append(str(Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"))
    for name in candidates:
        try:
            fonts.append(ImageFont.truetype(name, size))
        except (OSError, ImportError):  # not installed here, or Pillow built without FreeType
            continue
    try:
        fonts.append(ImageFont.load_default(size=size))
    except (TypeError, ImportError):  # Pillow < 10.1 or without FreeType: the small bitmap font
        fonts.append(ImageFont.load_default())
    return tuple(fonts)


_glyph_cache: dict[tuple[int, str], bool] = {}


def _has_glyph(font: LegendFont, ch: str) -> bool:
    """Whether ``font`` draws ``ch`` as something other than its missing-glyph box (compared with a character no
    font has: a private-use code point of plane 16)."""
    key = (id(font), ch)
    if key not in _glyph_cache:
        _glyph_cache[key] = _mask_bytes(font, ch) != _mask_bytes(font, "\U0010fffd")
    return _glyph_cache[key]


def _mask_bytes(font: LegendFont, text: str) -> tuple[tuple[int, int], bytes]:
    try:
        mask = font.getmask(text)
    except UnicodeEncodeError:  # the bitmap font handles Latin-1 only
        return (0, 0), b""
    return mask.size, bytes(mask)
