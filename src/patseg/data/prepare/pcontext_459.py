"""Pascal Context-459 ("pcontext_full"): ``.mat`` LabelMap - 1 in uint16 arithmetic, saved as TIFF.

Raw download (``--src``): the ``VOC2010`` folder (``JPEGImages/``) holding ``trainval_merged.json`` (for the 5104
validation ids, as MendelXu/SAN ``datasets/prepare_pcontext_sem_seg_459cls.py`` takes them from the Detail API)
and ``trainval/*.mat``, the extracted Pascal Context ``trainval.tar.gz`` (field ``LabelMap``, uint16, values
1..459). LabelMap - 1 maps k -> k - 1 and a 0 (if any) wraps to 65535 = ignore.
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
    output_paths,
    require_dir,
    write_label,
)
from patseg.data.prepare.pcontext import load_detail_split

DATASET = "pcontext_459"
RAW_LAYOUT = "VOC2010 folder with JPEGImages/, trainval_merged.json and trainval/*.mat (Pascal Context trainval.tar.gz)"


def read_label_map(path: Path) -> np.ndarray:
    """The ``LabelMap`` of a Pascal Context ``.mat`` file, (H, W) uint16 with values 0..459."""
    import scipy.io  # here: `patseg prepare --help` lists this converter without importing scipy

    contents = scipy.io.loadmat(str(path))
    if "LabelMap" not in contents:
        raise CorruptInputError(f"{path.name}: no LabelMap field")
    label_map = np.asarray(contents["LabelMap"])
    if label_map.ndim != 2 or label_map.dtype.kind not in "ui" or label_map.min() < 0 or label_map.max() > 459:
        raise CorruptInputError(f"{path.name}: LabelMap must be a 2-D integer map in 0..459")
    return label_map.astype(np.uint16)


def convert(mat_src: Path, image_src: Path, image_dst: Path, label_dst: Path) -> None:
    label = read_label_map(mat_src) - np.uint16(1)  # uint16 wrap-around: 0 -> 65535
    check_same_size(image_src.stem, copy_image(image_src, image_dst), label)
    write_label(label_dst, label)


def build_jobs(src: Path, dst: Path, split: str) -> list[Job]:
    images = FileIndex(require_dir(src / "JPEGImages", "VOC2010 images"))
    mats = FileIndex(require_dir(src / "trainval", "Pascal Context .mat folder (extracted trainval.tar.gz)"))
    jobs = []
    for image in load_detail_split(src, split):
        image_dst, label_dst = output_paths(DATASET, dst, split, image.stem)
        args = (mats.find(image.stem, (".mat",)), images.find(image.stem, IMAGE_SUFFIXES), image_dst, label_dst)
        jobs.append(Job(image.stem, (image_dst, label_dst), convert, args))
    return jobs
