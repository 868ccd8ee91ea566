"""Zero-shot evaluation with the protocol of DESIGN.md §5, sharded over ranks.

Each image is segmented whole by :class:`patseg.Segmenter` (short side 640, long side <= 2560, pad to 32, scores
upsampled to the ground-truth size, argmax) with the dataset's class names used verbatim; predictions accumulate in
one confusion matrix per dataset, all-reduced across processes by :class:`SemSegEvaluator`.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from patseg.data.datasets import SemSegDataset
from patseg import distributed as D
from patseg.evaluation import SemSegEvaluator
from patseg.predictor import Segmenter


def evaluate_dataset(model: nn.Module, dataset: SemSegDataset, *, short_side: int = 640, max_long_side: int = 2560,
                     limit: Optional[int] = None, progress: bool = True,
                     class_names: Optional[Sequence[str]] = None) -> dict:
    """Metrics of ``model`` on ``dataset`` (every rank evaluates its shard; the result is the same on all ranks).

    Arguments:
        dataset: a :class:`SemSegDataset` without transform (images are resized by the Segmenter).
        limit: evaluate only the first ``limit`` images (smoke tests); the count is reported as ``num_images``.
        class_names: vocabulary override; default the dataset's own names.
    """
    names = list(class_names or dataset.spec.class_names)
    was_training = model.training
    segmenter = Segmenter(model, names, short_side=short_side, max_long_side=max_long_side)
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


def evaluate_datasets(model: nn.Module, names: Sequence[str], *, root: Optional[str] = None,
                      limit: Optional[int] = None, allow_partial: bool = False, progress: bool = True,
                      short_side: int = 640) -> dict:
    """{dataset name: metrics} for several benchmarks (validation splits)."""
    results = {}
    for name in names:
        dataset = SemSegDataset(name, split="val", root=root, allow_partial=allow_partial or limit is not None)
        with torch.inference_mode():
            results[name] = evaluate_dataset(model, dataset, limit=limit, progress=progress, short_side=short_side)
    return results
