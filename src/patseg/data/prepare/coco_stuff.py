"""COCO-Stuff-164k: stuffthingmaps (182-id space) -> 171 contiguous trainIds.

Raw download (``--src``): the COCO folder holding ``train2017/`` and ``val2017/`` (images from
images.cocodataset.org) and ``stuffthingmaps/{train2017,val2017}/*.png`` (``stuffthingmaps_trainval2017.zip``).
A stuffthingmap pixel is COCO category id - 1 (0 = person ... 181 = wood) or 255 (unlabelled). The 171 values in
use map, in increasing order, to trainIds 0..170; the 11 unused values and 255 become 255. The table is
``resources/classnames/coco_stuff_171_ids.tsv`` (same mapping as MendelXu/zsseg.baseline
``datasets/prepare_coco_stuff_164k_sem_seg.py`` and KU-CVLAB/CAT-Seg ``datasets/prepare_coco_stuff.py``).
Unlike zsseg, all-255 masks are written too, so every image keeps its label.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from patseg.data.prepare.common import (
    Job,
    check_same_size,
    copy_image,
    lookup_table,
    paired_png_jobs,
    read_gray,
    require_dir,
    write_label,
)
from patseg.resources import CLASSNAME_DIR

DATASET = "coco_stuff_171"
RAW_LAYOUT = "COCO folder with {train2017,val2017}/*.jpg and stuffthingmaps/{train2017,val2017}/*.png"
_RAW_SPLIT = {"train": "train2017", "val": "val2017"}


@lru_cache(maxsize=1)
def png_value_to_train_id() -> np.ndarray:
    """(256,) uint8 lookup: stuffthingmaps PNG value -> trainId, 255 elsewhere."""
    rows = (CLASSNAME_DIR / "coco_stuff_171_ids.tsv").read_text(encoding="utf-8").splitlines()[1:]
    pairs = {int(r.split("\t")[2]): int(r.split("\t")[0]) for r in rows if r.strip()}
    return lookup_table(pairs, 256, 255, np.uint8)


def convert(image_src: Path, label_src: Path, image_dst: Path, label_dst: Path) -> None:
    raw = read_gray(label_src, np.uint8)
    check_same_size(image_src.stem, copy_image(image_src, image_dst), raw)
    write_label(label_dst, png_value_to_train_id()[raw])


def build_jobs(src: Path, dst: Path, split: str) -> list[Job]:
    raw_split = _RAW_SPLIT[split]
    image_dir = require_dir(src / raw_split, "COCO images")
    label_dir = require_dir(src / "stuffthingmaps" / raw_split, "COCO-Stuff stuffthingmaps")
    return paired_png_jobs(DATASET, image_dir, label_dir, dst, split, convert)
