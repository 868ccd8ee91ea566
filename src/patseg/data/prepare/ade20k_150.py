"""ADE20K-150 (ADEChallengeData2016): ids - 1, with 0 ("other") -> 255.

Raw download (``--src``): the ``ADEChallengeData2016`` folder with ``images/validation/*.jpg`` and
``annotations/validation/*.png`` (uint8, 0 = other, 1..150 = objectInfo150 classes). Conversion as MendelXu/SAN
``datasets/prepare_ade20k_sem_seg.py`` (detectron2's): subtract 1 with uint8 wrap-around, so 0 -> 255.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from patseg.data.prepare.common import (
    CorruptInputError,
    Job,
    check_same_size,
    copy_image,
    paired_png_jobs,
    read_gray,
    require_dir,
    write_label,
)

DATASET = "ade20k_150"
RAW_LAYOUT = "ADEChallengeData2016 folder with images/validation/*.jpg and annotations/validation/*.png"
_RAW_SPLIT = {"val": "validation"}


def convert(image_src: Path, label_src: Path, image_dst: Path, label_dst: Path) -> None:
    raw = read_gray(label_src, np.uint8)
    if raw.max() > 150:
        raise CorruptInputError(f"{label_src.name}: value {int(raw.max())} outside 0..150")
    check_same_size(image_src.stem, copy_image(image_src, image_dst), raw)
    write_label(label_dst, raw - np.uint8(1))  # uint8 wrap-around: 0 -> 255


def build_jobs(src: Path, dst: Path, split: str) -> list[Job]:
    raw_split = _RAW_SPLIT[split]
    image_dir = require_dir(src / "images" / raw_split, "ADE20K-150 images")
    label_dir = require_dir(src / "annotations" / raw_split, "ADE20K-150 annotations")
    return paired_png_jobs(DATASET, image_dir, label_dir, dst, split, convert)
