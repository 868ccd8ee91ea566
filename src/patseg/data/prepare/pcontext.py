"""Pascal Context split list shared by PC-59 and PC-459: the 5104 validation images of ``trainval_merged.json``.

``trainval_merged.json`` (the CVPR'17 "PASCAL in Detail" annotations) lists ``images`` with ``image_id``,
``file_name``, ``height``, ``width`` and ``phase`` ("train" / "val"), and ``annos_segmentation`` with ``image_id``,
``category_id`` (1-based Pascal Context 459-label id) and a COCO RLE ``segmentation``. Its val phase has 5104 images
(the older 5105 split is obsolete: open-mmlab/mmsegmentation#394).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from patseg.errors import MissingFileError

DETAIL_JSON = "trainval_merged.json"


@dataclass
class ContextImage:
    stem: str
    height: int
    width: int
    segments: list[tuple[int, dict]] = field(default_factory=list)  # (459-label id, RLE) in file order


def load_detail_split(voc2010: Path, phase: str) -> list[ContextImage]:
    """Images of ``phase`` in ``voc2010/trainval_merged.json`` with their segments, sorted by file stem."""
    path = voc2010 / DETAIL_JSON
    if not path.is_file():
        raise MissingFileError(
            f"{path} not found: put trainval_merged.json (PASCAL in Detail annotations) in the VOC2010 folder"
        )
    data = json.loads(path.read_text())
    images = {
        img["image_id"]: ContextImage(Path(img["file_name"]).stem, int(img["height"]), int(img["width"]))
        for img in data["images"]
        if img["phase"] == phase
    }
    for ann in data["annos_segmentation"]:
        if ann["image_id"] in images:
            images[ann["image_id"]].segments.append((int(ann["category_id"]), ann["segmentation"]))
    return sorted(images.values(), key=lambda im: im.stem)
