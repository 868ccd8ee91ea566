"""ADE20K-847 ("ADE20K-Full", ADE20K_2021_17_01): R/10*256 + G class masks -> 847 trainIds, short side <= 512.

Raw download (``--src``): the ``ADE20K_2021_17_01`` folder, whose ``images/ADE/validation/<scene>/`` folders hold
``ADE_val_*.jpg`` and the matching ``ADE_val_*_seg.png`` (RGB; class id = floor(R / 10) * 256 + G per pixel).
The recipe is facebookresearch/MaskFormer ``datasets/prepare_ade20k_full_sem_seg.py`` (kept unchanged by
Mask2Former, ov-seg and CAT-Seg): when the shorter side exceeds 512, image and label are resized so it is 512 (long
side rounded; image bilinear as cv2 INTER_LINEAR, label nearest); the label starts as 65535 and each of the 847
ADE ids gets its trainId (``resources/classnames/ade20k_847_ids.tsv``); it is saved as uint16 TIFF and the image is
re-saved as JPEG with PIL's default quality. Images are found by walking the validation folders rather than through
``index_ade20k.pkl``, which lists the same files.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from patseg.data.prepare.common import (
    IMAGE_SUFFIXES,
    FileIndex,
    Job,
    check_same_size,
    list_files,
    open_decoded,
    output_paths,
    require_dir,
    write_jpeg,
    write_label,
)
from patseg.data.registry import TIFF_IGNORE
from patseg.resize import shortest_edge_size
from patseg.resources import CLASSNAME_DIR

DATASET = "ade20k_847"
RAW_LAYOUT = "ADE20K_2021_17_01 folder with images/ADE/validation/<scene>/ADE_val_*.jpg and *_seg.png"
MAX_SHORT_SIDE = 512
_RAW_SPLIT = {"val": "validation"}
_MAX_ID = 256 * 26  # R/10 <= 25 for 8-bit R, so ids stay below 26 * 256


@lru_cache(maxsize=1)
def ade_id_to_train_id() -> np.ndarray:
    """(26*256,) uint16 lookup: ADE20K-2021 class id -> trainId 0..846, 65535 elsewhere."""
    rows = (CLASSNAME_DIR / "ade20k_847_ids.tsv").read_text(encoding="utf-8").splitlines()[1:]
    lut = np.full(_MAX_ID, TIFF_IGNORE, dtype=np.uint16)
    for row in rows:
        if row.strip():
            train_id, ade_id = row.split("\t")[:2]
            lut[int(ade_id)] = int(train_id)
    return lut


def decode_class_mask(seg_rgb: np.ndarray) -> np.ndarray:
    """ADE *_seg.png (H, W, 3) uint8 -> class ids (H, W) int64 = floor(R / 10) * 256 + G."""
    rgb = seg_rgb.astype(np.int64)
    return rgb[..., 0] // 10 * 256 + rgb[..., 1]


def target_size(height: int, width: int, max_short: int = MAX_SHORT_SIDE) -> tuple[int, int]:
    """(H, W) after limiting the shorter side to ``max_short`` (unchanged when already small enough)."""
    if min(height, width) <= max_short:
        return height, width
    # A shrink never lengthens the long side, so the cap max(height, width) never binds.
    return shortest_edge_size(height, width, max_short, max(height, width))


def resize_pair(image: np.ndarray, label: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear (half-pixel centres, no antialiasing, like cv2 INTER_LINEAR) image and nearest label resize."""
    if tuple(image.shape[:2]) == tuple(size):
        return image, label
    import torch  # here, not at the top: `patseg prepare --help` lists this converter without importing torch
    import torch.nn.functional as F

    x = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].double()
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    image = x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
    y = F.interpolate(torch.from_numpy(label.astype(np.int32))[None, None].double(), size=size, mode="nearest")
    return image, y[0, 0].to(torch.int64).numpy().astype(label.dtype)


def convert(image_src: Path, seg_src: Path, image_dst: Path, label_dst: Path) -> None:
    with open_decoded(image_src) as im:
        image = np.asarray(im.convert("RGB"))
    with open_decoded(seg_src) as im:
        seg = np.asarray(im.convert("RGB"))
    ids = decode_class_mask(seg)
    check_same_size(image_src.stem, image.shape[:2], ids)
    label = ade_id_to_train_id()[ids]
    image, label = resize_pair(image, label, target_size(*image.shape[:2]))
    write_jpeg(image_dst, np.ascontiguousarray(image))
    write_label(label_dst, np.ascontiguousarray(label))


def build_jobs(src: Path, dst: Path, split: str) -> list[Job]:
    image_root = require_dir(src / "images" / "ADE" / _RAW_SPLIT[split], "ADE20K_2021_17_01 images")
    jobs = []
    indexes: dict[Path, FileIndex] = {}  # one listing per scene folder, for *_seg.png in any case
    for image in list_files(image_root, IMAGE_SUFFIXES, recursive=True):
        folder = indexes.setdefault(image.parent, FileIndex(image.parent))
        image_dst, label_dst = output_paths(DATASET, dst, split, image.stem)
        args = (image, folder.find(f"{image.stem}_seg", (".png",)), image_dst, label_dst)
        jobs.append(Job(image.stem, (image_dst, label_dst), convert, args))
    return jobs
