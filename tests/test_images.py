"""`patseg.images`: distinct output names, inputs read once, overlay legends for any script and length."""

from pathlib import Path

import numpy as np
import pytest

from patseg import images
from patseg.images import LEGEND_MAX_CHARS, expand_inputs, legend_label, output_names, overlay_with_legend


def test_output_names_keep_the_suffix_only_when_stems_collide():
    files = [Path("a/img.bmp"), Path("a/img.tif"), Path("b/img.bmp"), Path("a/photo.jpg"), Path("a/IMG_BMP.png")]
    assert output_names(files[:4]) == ["img_bmp", "img_tif", "img_bmp_2", "photo"]
    # A unique stem keeps its name; a suffixed name that equals it (case aside) is numbered instead.
    names = output_names(files)
    assert names == ["img_bmp_2", "img_tif", "img_bmp_3", "photo", "IMG_BMP"]
    assert len({n.casefold() for n in names}) == len(files)
    assert output_names([Path("a/x"), Path("b/x")]) == ["x", "x_2"]  # no suffix to keep
    assert output_names([Path("x.jpg"), Path("y.jpg")]) == ["x", "y"]  # no collision: names unchanged


def test_expand_inputs_keeps_each_file_once(tmp_path):
    for name in ("b.png", "a.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    got = expand_inputs([tmp_path / "b.png", tmp_path, str(tmp_path / "a.jpg")])
    assert got == [tmp_path / "b.png", tmp_path / "a.jpg"]


def _legend(image_w, names, labels=None):
    labels = np.zeros((40, image_w), dtype=np.int64) if labels is None else labels
    canvas = overlay_with_legend(np.full((40, image_w, 3), 90, np.uint8), labels, names)
    return np.asarray(canvas)[:, image_w:]


def test_legend_draws_non_latin_names_with_a_font_that_has_them():
    font = images.legend_font("небо")
    if not images._has_glyph(font, "н"):
        pytest.skip("no font with Cyrillic glyphs on this machine (DejaVu Sans, matplotlib)")
    cyrillic = _legend(30, ["небо"])
    boxes = _legend(30, ["\U0010fffd" * 4])  # no font has this character: drawn as missing-glyph boxes
    width = min(cyrillic.shape[1], boxes.shape[1])
    assert (cyrillic[:, :width] != boxes[:, :width]).any()


def test_legend_widens_for_long_names_and_cuts_only_past_the_limit():
    short = _legend(30, ["sky"])
    long_name = "a rather long class name, " * 2 + "e.g. a traffic light"  # 72 characters
    wide = _legend(30, [long_name])
    assert wide.shape[1] > short.shape[1] + 200
    ink_columns = np.nonzero((wide < 128).all(axis=2).any(axis=0))[0]
    assert ink_columns.max() < wide.shape[1] - 2  # the text ends inside the canvas
    assert legend_label(long_name, 12.5) == f"{long_name} (12.5%)"
    huge = "x" * 300
    cut = legend_label(huge, 1.0)
    assert cut == "x" * (LEGEND_MAX_CHARS - 1) + "\N{HORIZONTAL ELLIPSIS} (1.0%)"
    assert _legend(30, [huge]).shape[1] < 1200  # bounded by the limit
