"""Pascal VOC-20 (VOC2012 segmentation): background -> 255, classes 1..20 -> 0..19, 255 (boundary) stays 255.

Raw download (``--src``): the ``VOC2012`` folder of ``VOCtrainval_11-May-2012.tar`` with ``JPEGImages/``,
``SegmentationClass/*.png`` (palette PNGs whose indices are the class ids) and ``ImageSets/Segmentation/val.txt``
(1449 ids). Conversion as MendelXu/SAN ``datasets/prepare_voc_sem_seg.py``; unlike SAN, masks that end up all 255
are written too (none do in val).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from patseg.data.prepare.common import (
    IMAGE_SUFFIXES,
    CorruptInputError,
    FileIndex,
    Job,
    check_same_size,
    copy_image,
    lookup_table,
    output_paths,
    read_gray,
    require_dir,
    write_label,
)
from patseg.errors import MissingFileError

DATASET = "voc_20"
RAW_LAYOUT = "VOC2012 folder with JPEGImages/, SegmentationClass/*.png and ImageSets/Segmentation/val.txt"
_VALID = np.zeros(256, dtype=bool)
_VALID[[*range(21), 255]] = True
_LUT = lookup_table({k: k - 1 for k in range(1, 21)}, 256, 255, np.uint8)


def convert(image_src: Path, label_src: Path, image_dst: Path, label_dst: Path) -> None:
    raw = read_gray(label_src, np.uint8)
    if not _VALID[raw].all():
        raise CorruptInputError(f"{label_src.name}: values outside 0..20 and 255: {sorted(set(raw[~_VALID[raw]]))}")
    check_same_size(image_src.stem, copy_image(image_src, image_dst), raw)
    write_label(label_dst, _LUT[raw])


def build_jobs(src: Path, dst: Path, split: str) -> list[Job]:
    image_dir = require_dir(src / "JPEGImages", "VOC2012 images")
    label_dir = require_dir(src / "SegmentationClass", "VOC2012 SegmentationClass masks")
    id_file = src / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not id_file.is_file():
        raise MissingFileError(f"VOC2012 split list not found: expected {id_file}")
    images, labels = FileIndex(image_dir), FileIndex(label_dir)
    jobs = []
    for stem in (line.strip() for line in id_file.read_text().splitlines()):
        if not stem:
            continue
        image_dst, label_dst = output_paths(DATASET, dst, split, stem)
        args = (images.find(stem, IMAGE_SUFFIXES), labels.find(stem, (".png",)), image_dst, label_dst)
        jobs.append(Job(stem, (image_dst, label_dst), convert, args))
    return jobs
