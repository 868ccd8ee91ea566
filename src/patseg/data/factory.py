"""One way to open a dataset by its registered name: :func:`build_dataset`.

Training (``patseg train``) and evaluation (``patseg eval``) both name datasets by their registry key; this is the
place that turns a key into a dataset object, so a new kind of dataset is added here and nowhere else. Every
benchmark registered today (``patseg.data.registry.DATASETS``) is a prepared image/label folder pair, read by
:class:`SemSegDataset`.
"""

from __future__ import annotations

import os

from patseg.data.datasets import PairTransform, SemSegDataset
from patseg.data.registry import DATASETS, list_datasets
from patseg.errors import DatasetError


def build_dataset(
    name: str,
    split: str,
    *,
    root: str | os.PathLike | None = None,
    transform: PairTransform | None = None,
    allow_partial: bool = False,
) -> SemSegDataset:
    """The dataset registered as ``name``, split ``split``.

    Arguments:
        name: a registry key (``patseg.data.list_datasets()``).
        split: ``val``, or ``train`` where the dataset has one (COCO-Stuff).
        root: data root; default ``$PATSEG_DATA`` or ``./datasets``.
        transform: ``(image (3, H, W) uint8, label (H, W) int64) -> (image, label)``, e.g. ``TrainTransform``.
        allow_partial: accept a split with missing files or another count than the official one (with a warning).

    Raises :class:`patseg.errors.DatasetError` for an unknown name or split (the message lists the registered
    ones) and for a missing or incomplete split.
    """
    spec = DATASETS.get(name)
    if spec is None:
        raise DatasetError(f"unknown dataset '{name}'; registered datasets: {', '.join(list_datasets())}")
    if split not in spec.splits:
        raise DatasetError(f"dataset '{name}' has no split '{split}'; its splits: {', '.join(spec.splits)}")
    return SemSegDataset(name, split=split, root=root, transform=transform, allow_partial=allow_partial)
