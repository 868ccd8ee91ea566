"""Pascal Context-59: Detail RLE annotations -> 59 trainIds, background and the other 400 classes -> 255.

Raw download (``--src``): the ``VOC2010`` folder of ``VOCtrainval_03-May-2010.tar`` (``JPEGImages/``) with
``trainval_merged.json`` put inside it. Without the Detail API (not on PyPI), as KU-CVLAB/CAT-Seg
``datasets/prepare_pascal_context_59.py`` does: each segment's RLE is decoded with pycocotools and its 459-label
id painted, in file order, over a zero (background) mask; then the 59 ids map to their position in increasing id
order (``resources/classnames/pcontext_59_from_459.tsv``) and everything else becomes 255, which equals SAN's
``prepare_pcontext_sem_seg_59cls.py`` (Detail ``getMask``, position - 1 in uint8).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from patseg.data.prepare.common import (
    IMAGE_SUFFIXES,
    CorruptInputError,
    FileIndex,
    Job,
    check_same_size,
    copy_image,
    lookup_table,
    output_paths,
    require_dir,
    write_label,
)
from patseg.data.prepare.pcontext import ContextImage, load_detail_split
from patseg.resources import CLASSNAME_DIR

DATASET = "pcontext_59"
RAW_LAYOUT = "VOC2010 folder with JPEGImages/ and trainval_merged.json"
NUM_LABELS_459 = 459


@lru_cache(maxsize=1)
def label_459_to_train_id() -> np.ndarray:
    """(460,) uint8 lookup: 1-based 459-label id (0 = background) -> PC-59 trainId, 255 elsewhere."""
    rows = (CLASSNAME_DIR / "pcontext_59_from_459.tsv").read_text(encoding="utf-8").splitlines()[1:]
    pairs = {int(r.split("\t")[1]): int(r.split("\t")[0]) for r in rows if r.strip()}
    return lookup_table(pairs, NUM_LABELS_459 + 1, 255, np.uint8)


def paint_segments(image: ContextImage) -> np.ndarray:
    """(H, W) int64 map of 459-label ids, 0 where no segment covers a pixel."""
    canvas = np.zeros((image.height, image.width), dtype=np.int64)
    for category, rle in image.segments:
        if not 1 <= category <= NUM_LABELS_459:
            raise CorruptInputError(f"{image.stem}: category_id {category} outside 1..{NUM_LABELS_459}")
        if isinstance(rle.get("counts"), list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(rle, image.height, image.width)
        mask = mask_utils.decode(rle)
        if mask.shape != canvas.shape:
            raise CorruptInputError(f"{image.stem}: segment of size {mask.shape}, image is {canvas.shape}")
        canvas[mask.astype(bool)] = category
    return canvas


def convert(image: ContextImage, image_src: Path, image_dst: Path, label_dst: Path) -> None:
    label = label_459_to_train_id()[paint_segments(image)]
    check_same_size(image.stem, copy_image(image_src, image_dst), label)
    write_label(label_dst, label)


def build_jobs(src: Path, dst: Path, split: str) -> list[Job]:
    images = FileIndex(require_dir(src / "JPEGImages", "VOC2010 images"))
    jobs = []
    for image in load_detail_split(src, split):
        image_dst, label_dst = output_paths(DATASET, dst, split, image.stem)
        args = (image, images.find(image.stem, IMAGE_SUFFIXES), image_dst, label_dst)
        jobs.append(Job(image.stem, (image_dst, label_dst), convert, args))
    return jobs
