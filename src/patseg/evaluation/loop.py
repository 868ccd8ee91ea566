"""Zero-shot evaluation (SAN's test protocol), sharded over ranks, and PAT's reconstruction FID.

Each image is segmented whole by :class:`patseg.Segmenter` (short side 640, long side <= 2560, pad to 32, scores
upsampled to the ground-truth size, argmax) with the dataset's class names used verbatim, embedded with the 14 vild
prompt templates; predictions accumulate in one confusion matrix per dataset, all-reduced across processes by
:class:`SemSegEvaluator`. The reconstruction FID compares PAT's pixel reconstructions of the COCO-Stuff
validation images with the images themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from patseg import distributed as D
from patseg.data.datasets import SemSegDataset
from patseg.data.factory import build_dataset
from patseg.evaluation import SemSegEvaluator
from patseg.models.san.model import SAN
from patseg.predictor import Segmenter

RFID_DATASET = "coco_stuff_171"  # PAT reports rFID on the COCO-Stuff validation images


def evaluate_dataset(
    model: SAN,
    dataset: SemSegDataset,
    *,
    short_side: int = 640,
    max_long_side: int = 2560,
    limit: int | None = None,
    progress: bool = True,
    class_names: Sequence[str] | None = None,
    precision: str = "fp32",
) -> dict:
    """Metrics of ``model`` on ``dataset`` (every rank evaluates its shard; the result is the same on all ranks).

    Arguments:
        dataset: a :class:`SemSegDataset` without transform (images are resized by the Segmenter).
        limit: evaluate only the first ``limit`` images (smoke tests); the count is reported as ``num_images``.
        class_names: vocabulary override; default the dataset's own names.
        precision: the Segmenter's precision (:mod:`patseg.precision`); refused when the device cannot run it.
    """
    names = list(class_names or dataset.spec.class_names)
    was_training = model.training
    segmenter = Segmenter(model, names, short_side=short_side, max_long_side=max_long_side, precision=precision)
    evaluator = SemSegEvaluator(len(names), dataset.ignore_label, class_names=names)
    info = D.detect()
    count = len(dataset) if limit is None else min(limit, len(dataset))
    indices = range(info.rank, count, info.world_size)
    bar = tqdm(indices, desc=f"eval {dataset.spec.name}", unit="img", disable=not (progress and info.is_main))
    for i in bar:
        item = dataset[i]
        image = item["image"].permute(1, 2, 0).numpy()
        pred = segmenter.predict(np.ascontiguousarray(image))
        evaluator.update(pred, item["label"].numpy())
    metrics = evaluator.compute()
    metrics["num_images"] = count
    model.train(was_training)
    return metrics


def evaluate_datasets(
    model: SAN,
    names: Sequence[str],
    *,
    root: str | None = None,
    limit: int | None = None,
    allow_partial: bool = False,
    progress: bool = True,
    short_side: int = 640,
    precision: str = "fp32",
) -> dict:
    """{dataset name: metrics} for several benchmarks (validation splits), the forward in ``precision``."""
    results = {}
    for name in names:
        dataset = build_dataset(name, "val", root=root, allow_partial=allow_partial or limit is not None)
        with torch.inference_mode():
            results[name] = evaluate_dataset(
                model, dataset, limit=limit, progress=progress, short_side=short_side, precision=precision
            )
    return results


def evaluate_rfid(
    model: SAN,
    *,
    inception_weights: str,
    root: str | None = None,
    limit: int | None = None,
    allow_partial: bool = False,
    size: int = 640,
    progress: bool = True,
) -> dict[str, Any]:
    """PAT's reconstruction FID on the COCO-Stuff validation images, as the results file's ``rfid`` entry.

    Arguments:
        inception_weights: the FID Inception-v3 weights file (``pt_inception-2015-12-05-6726825d.pth``).
        size: images are resized to this short side and centre-cropped to ``size`` x ``size``.
        limit: use only the first ``limit`` images (quick checks); the count is reported as ``num_images``.
    Returns:
        ``{"value": FID, "num_images": N}``.
    """
    from patseg.evaluation.rfid import reconstruction_fid  # brings in the Inception network, needed only here

    dataset = build_dataset(RFID_DATASET, "val", root=root, allow_partial=allow_partial or limit is not None)
    result = reconstruction_fid(
        model, dataset, inception_weights=inception_weights, short_side=size, crop=size, limit=limit, progress=progress
    )
    return {"value": float(result.fid), "num_images": int(result.num_images)}
