"""Benchmark registry: where each prepared dataset lives under the data root, and what it must contain.

The layouts are SAN's (MendelXu/SAN ``datasets/prepare_*.py`` and ``san/data/datasets/register_*.py``), so a data
root prepared for SAN works unchanged. Label formats and the expected validation counts (5000 / 2000 / 2000 / 5104 /
5104 / 1449) are those of SAN's released evaluation logs (``resources/san_vit_b_16.log``).

The data root is ``$PATSEG_DATA``, or ``./datasets`` when the variable is unset.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from patseg.errors import DatasetError
from patseg.resources import load_class_names

DATA_ROOT_ENV = "PATSEG_DATA"
DEFAULT_DATA_ROOT = "datasets"

PNG_IGNORE = 255  # uint8 label PNGs
TIFF_IGNORE = 65535  # uint16 label TIFFs (A-847, PC-459), as SAN / Mask2Former register them


@dataclass(frozen=True)
class SplitLayout:
    """Folders of one split, relative to the data root.

    ``shared_image_dir``: the image folder also holds images of other splits (VOC's ``JPEGImages``), so the label
    files alone decide which images belong to the split and extra images are not an error.
    """

    image_dir: str
    label_dir: str
    expected_count: int
    shared_image_dir: bool = False


@dataclass(frozen=True)
class DatasetSpec:
    """One benchmark: classes, label encoding and the on-disk layout of each split."""

    name: str
    num_classes: int
    ignore_label: int
    label_ext: str  # ".png" (uint8) or ".tif" (uint16)
    class_list: str  # name of the list in patseg/resources/classnames
    splits: dict[str, SplitLayout]
    image_ext: str = ".jpg"

    @property
    def label_dtype(self) -> str:
        return "uint8" if self.label_ext == ".png" else "uint16"

    @property
    def class_names(self) -> tuple[str, ...]:
        names = load_class_names(self.class_list)
        if len(names) != self.num_classes:
            raise ValueError(f"class list '{self.class_list}' has {len(names)} names, expected {self.num_classes}")
        return names

    def split(self, split: str) -> SplitLayout:
        if split not in self.splits:
            raise DatasetError(f"dataset '{self.name}' has no split '{split}' (available: {', '.join(self.splits)})")
        return self.splits[split]


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="coco_stuff_171",
            num_classes=171,
            ignore_label=PNG_IGNORE,
            label_ext=".png",
            class_list="coco_stuff_171",
            splits={
                "train": SplitLayout("coco/train2017", "coco/stuffthingmaps_detectron2/train2017", 118287),
                "val": SplitLayout("coco/val2017", "coco/stuffthingmaps_detectron2/val2017", 5000),
            },
        ),
        DatasetSpec(
            name="ade20k_150",
            num_classes=150,
            ignore_label=PNG_IGNORE,
            label_ext=".png",
            class_list="ade20k_150",
            splits={
                "val": SplitLayout(
                    "ADEChallengeData2016/images/validation",
                    "ADEChallengeData2016/annotations_detectron2/validation",
                    2000,
                )
            },
        ),
        DatasetSpec(
            name="ade20k_847",
            num_classes=847,
            ignore_label=TIFF_IGNORE,
            label_ext=".tif",
            class_list="ade20k_847",
            splits={
                "val": SplitLayout(
                    "ADE20K_2021_17_01/images_detectron2/validation",
                    "ADE20K_2021_17_01/annotations_detectron2/validation",
                    2000,
                )
            },
        ),
        DatasetSpec(
            name="pcontext_59",
            num_classes=59,
            ignore_label=PNG_IGNORE,
            label_ext=".png",
            class_list="pcontext_59",
            splits={"val": SplitLayout("pcontext/val/image", "pcontext/val/label", 5104)},
        ),
        DatasetSpec(
            name="pcontext_459",
            num_classes=459,
            ignore_label=TIFF_IGNORE,
            label_ext=".tif",
            class_list="pcontext_459",
            splits={"val": SplitLayout("pcontext_full/val/image", "pcontext_full/val/label", 5104)},
        ),
        DatasetSpec(
            name="voc_20",
            num_classes=20,
            ignore_label=PNG_IGNORE,
            label_ext=".png",
            class_list="voc_20",
            splits={
                "val": SplitLayout(
                    "VOC2012/JPEGImages", "VOC2012/annotations_detectron2/val", 1449, shared_image_dir=True
                )
            },
        ),
    )
}

# Column order of the paper's Table I, then the two extra sets SAN also reports.
BENCHMARK_ORDER: tuple[str, ...] = (
    "pcontext_59",
    "ade20k_150",
    "pcontext_459",
    "ade20k_847",
    "voc_20",
    "coco_stuff_171",
)

# Short names used in tables (the paper's column headers).
SHORT_NAMES: dict[str, str] = {
    "pcontext_59": "PC-59",
    "ade20k_150": "A-150",
    "pcontext_459": "PC-459",
    "ade20k_847": "A-847",
    "voc_20": "VOC-20",
    "coco_stuff_171": "COCO-171",
}


def list_datasets() -> list[str]:
    """Names of the registered benchmarks."""
    return sorted(DATASETS)


def get_dataset_spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of ``name``; unknown names raise DatasetError listing the known ones."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset '{name}' (known: {', '.join(list_datasets())})")
    return DATASETS[name]


def data_root(root: Optional[str | os.PathLike] = None) -> Path:
    """The data root: ``root`` if given, else ``$PATSEG_DATA``, else ``./datasets``."""
    if root is not None:
        return Path(root)
    return Path(os.environ.get(DATA_ROOT_ENV, DEFAULT_DATA_ROOT))
