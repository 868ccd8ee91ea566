"""Prepared semantic-segmentation benchmarks as PyTorch datasets.

Images and labels are paired by file stem, as detectron2's ``load_sem_seg`` does, but unlike detectron2 a split
whose pairs do not match, or whose count differs from the expected one, is an error that names the missing files:
a silently shrunken validation set gives numbers that cannot be compared with the literature.

Items are dicts ``{"image": uint8 (3, H, W), "label": int64 (H, W), "name": str}``; ignore pixels keep the
dataset's ignore value (255 for PNG sets, 65535 for TIFF sets).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from patseg.data.registry import DatasetSpec, data_root, get_dataset_spec
from patseg.errors import DatasetError
from patseg.images import UndecodableImageError, open_decoded

# (image (3, H, W) uint8, label (H, W) int64) -> the same, transformed
PairTransform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

_SHOWN = 10  # file names listed in an error before "... and N more"


@dataclass(frozen=True)
class SamplePaths:
    name: str  # file stem shared by image and label
    image: Path
    label: Path


@dataclass
class PairingReport:
    """Result of matching a split's image and label folders by stem."""

    samples: list[SamplePaths]
    expected_count: int
    labels_without_image: list[str] = field(default_factory=list)
    images_without_label: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        """Human-readable problems, empty when the split is complete."""
        out = []
        if self.labels_without_image:
            out.append(f"{len(self.labels_without_image)} labels have no image: {_listing(self.labels_without_image)}")
        if self.images_without_label:
            out.append(f"{len(self.images_without_label)} images have no label: {_listing(self.images_without_label)}")
        if len(self.samples) != self.expected_count:
            out.append(f"found {len(self.samples)} image/label pairs, expected {self.expected_count}")
        return out


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" ... and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


_SAME_SUFFIX = {".jpg": (".jpg", ".jpeg")}  # other spellings of a registry suffix


def _stems(folder: Path, ext: str) -> dict[str, Path]:
    """Files by stem whose suffix is ``ext`` in any case (``.JPG``, ``.jpeg`` for ``.jpg``); the first sorted wins."""
    suffixes = _SAME_SUFFIX.get(ext, (ext,))
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in suffixes), reverse=True)
    return {p.stem: p for p in files if not p.name.startswith(".")}


def find_samples(spec: DatasetSpec, split: str, root: str | os.PathLike | None = None) -> PairingReport:
    """Pair the images and labels of ``spec``'s ``split`` under the data root by file stem."""
    layout = spec.split(split)
    base = data_root(root)
    image_dir, label_dir = base / layout.image_dir, base / layout.label_dir
    for folder, what in ((image_dir, "image"), (label_dir, "label")):
        if not folder.is_dir():
            raise DatasetError(
                f"{spec.name}/{split}: {what} folder {folder} does not exist; "
                f"run `patseg prepare {spec.name} --src RAW_DIR --dst {base}` or set $PATSEG_DATA"
            )
    images = _stems(image_dir, spec.image_ext)
    labels = _stems(label_dir, spec.label_ext)
    paired = sorted(set(images) & set(labels))
    return PairingReport(
        samples=[SamplePaths(s, images[s], labels[s]) for s in paired],
        expected_count=layout.expected_count,
        labels_without_image=sorted(set(labels) - set(images)),
        images_without_label=[] if layout.shared_image_dir else sorted(set(images) - set(labels)),
    )


@contextmanager
def _decoded(path: str | os.PathLike) -> Iterator[Image.Image]:
    """An opened image with its pixels decoded in full; a missing, truncated or corrupt file is a DatasetError."""
    try:
        with open_decoded(path) as im:
            yield im
    except FileNotFoundError:
        raise DatasetError(f"{path} does not exist (removed after the split was listed?)") from None
    except UndecodableImageError as exc:
        raise DatasetError(
            f"{path} is truncated or corrupt ({exc}); delete it and run `patseg prepare` again"
        ) from None


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """An RGB image file as a uint8 tensor (3, H, W)."""
    with _decoded(path) as im:
        array = np.asarray(im.convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def read_label(path: str | os.PathLike, dtype: str) -> torch.Tensor:
    """A label map (uint8 PNG or uint16 TIFF, as ``dtype`` says) as an int64 tensor (H, W)."""
    with _decoded(path) as im:
        array = np.asarray(im)
    if array.ndim != 2 or array.dtype != np.dtype(dtype):
        raise DatasetError(f"label {path} is {array.dtype} with shape {array.shape}, expected a 2-D {dtype} map")
    return torch.from_numpy(array.astype(np.int64))


class SemSegDataset(Dataset):
    """One split of a registered benchmark.

    Args:
        name: registry name (``ade20k_150``, ``coco_stuff_171``, ...).
        split: ``val`` or ``train`` (COCO-Stuff only).
        root: data root; default ``$PATSEG_DATA`` or ``./datasets``.
        transform: callable ``(image, label) -> (image, label)``, e.g. :class:`patseg.data.TrainTransform`.
        allow_partial: accept missing files or a different count (tests, subsets); the problems become a
            warning instead of a :class:`DatasetError`.
    """

    def __init__(
        self,
        name: str,
        split: str = "val",
        root: str | os.PathLike | None = None,
        transform: PairTransform | None = None,
        allow_partial: bool = False,
    ) -> None:
        self.spec = get_dataset_spec(name)
        self.split = split
        self.transform = transform
        report = find_samples(self.spec, split, root)
        problems = report.problems()
        if problems:
            message = f"{name}/{split} under {data_root(root)}: " + "; ".join(problems)
            if not allow_partial:
                raise DatasetError(
                    message + " (to use what is there: data.allow_partial=true for `patseg train`, "
                    "--allow-partial for `patseg eval`)"
                )
            warnings.warn(message, stacklevel=2)
        if not report.samples:
            raise DatasetError(f"{name}/{split} under {data_root(root)}: no image/label pairs")
        self.samples = report.samples

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def ignore_label(self) -> int:
        return self.spec.ignore_label

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.spec.class_names

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        image = read_image(sample.image)
        label = read_label(sample.label, self.spec.label_dtype)
        if image.shape[1:] != label.shape:
            raise DatasetError(f"{sample.name}: image {tuple(image.shape[1:])} and label {tuple(label.shape)} differ")
        if self.transform is not None:
            image, label = self.transform(image, label)
        return {"image": image, "label": label, "name": sample.name}
