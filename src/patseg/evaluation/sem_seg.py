"""Semantic-segmentation metrics from one confusion matrix per dataset (detectron2's ``SemSegEvaluator`` rules).

Pixels whose ground truth is the ignore label are dropped; every other pixel adds one count to
``M[gt, pred]``. From M (facts: facebookresearch/detectron2 ``detectron2/evaluation/sem_seg_evaluation.py``):

- ``tp[c] = M[c, c]``, ``gt[c] = sum_p M[c, p]``, ``pred[c] = sum_g M[g, c]``, ``union = gt + pred - tp``;
- ``IoU[c] = tp / union`` and ``ACC[c] = tp / gt`` for classes present in the ground truth (``gt > 0``), NaN else;
- ``mIoU``: mean IoU over classes present in the ground truth (detectron2 since 2022-07-06, commit f3c1bc19; the
  rule of SAN's and CAT-Seg's released logs);
- ``mIoU_gt_or_pred``: the same IoU sum divided by the number of classes present in the ground truth *or* the
  prediction, i.e. predicted-but-absent classes count as IoU 0 (detectron2 <= v0.6, mmseg, the SAN paper). The two
  differ by up to ~4 points on PC-459;
- ``fwIoU = sum_c gt[c] / sum(gt) * IoU[c]``, ``mACC`` = mean ACC, ``pACC = sum(tp) / sum(gt)``.

All values are percentages. Under ``torch.distributed`` the matrix is summed over processes in :meth:`compute`.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist


def _as_int64(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x.astype(np.int64, copy=False))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a numpy array or a tensor, got {type(x).__name__}")
    if x.is_floating_point() or x.is_complex():
        raise TypeError(f"predictions and labels must be integer maps, got {x.dtype}")
    return x.to(torch.int64)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over all processes when torch.distributed is initialised, else ``tensor`` itself."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else tensor.device
    total = tensor.to(device, copy=True)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.to(tensor.device)


def metrics_from_confusion(matrix: np.ndarray, class_names: Sequence[str]) -> dict:
    """Metrics (percent) from a confusion matrix ``(N, N)`` indexed ``[gt, pred]``; see the module docstring."""
    m = np.asarray(matrix, dtype=np.float64)
    tp = np.diag(m)
    pos_gt, pos_pred = m.sum(axis=1), m.sum(axis=0)
    union = pos_gt + pos_pred - tp
    in_gt = pos_gt > 0
    in_gt_or_pred = union > 0
    iou = np.full(len(tp), np.nan)
    acc = np.full(len(tp), np.nan)
    iou[in_gt] = tp[in_gt] / union[in_gt]
    acc[in_gt] = tp[in_gt] / pos_gt[in_gt]
    total = pos_gt.sum()

    def ratio(num: float, den: float) -> float:
        return float(100.0 * num / den) if den > 0 else float("nan")

    return {
        "mIoU": ratio(iou[in_gt].sum(), in_gt.sum()),
        "mIoU_gt_or_pred": ratio(iou[in_gt].sum(), in_gt_or_pred.sum()),
        "fwIoU": ratio((pos_gt[in_gt] * iou[in_gt]).sum(), total),
        "mACC": ratio(acc[in_gt].sum(), in_gt.sum()),
        "pACC": ratio(tp.sum(), total),
        "per_class": {name: float(100.0 * v) for name, v in zip(class_names, iou)},
        "per_class_acc": {name: float(100.0 * v) for name, v in zip(class_names, acc)},
    }


class SemSegEvaluator:
    """Accumulates an int64 confusion matrix over a dataset and reports mIoU (both rules), fwIoU, mACC, pACC.

    Args:
        num_classes: N; valid labels and predictions are 0..N-1.
        ignore_label: ground-truth value to skip (255 for PNG sets, 65535 for TIFF sets).
        class_names: N names for ``per_class``; default "0", "1", ...
    """

    def __init__(self, num_classes: int, ignore_label: int, class_names: Optional[Sequence[str]] = None) -> None:
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        if 0 <= ignore_label < num_classes:
            raise ValueError(f"ignore_label {ignore_label} collides with a class id (0..{num_classes - 1})")
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.class_names = tuple(class_names) if class_names is not None else tuple(map(str, range(num_classes)))
        self.reset()

    def reset(self) -> None:
        self._matrix = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    @property
    def confusion_matrix(self) -> torch.Tensor:
        """(N, N) int64 counts indexed ``[gt, pred]``, this process only."""
        return self._matrix

    def update(self, pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor) -> None:
        """Add one prediction/ground-truth pair (any same shape, e.g. (H, W) or (B, H, W)) of integer class ids."""
        pred, gt = _as_int64(pred), _as_int64(gt)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and ground truth {tuple(gt.shape)} differ in shape")
        gt = gt.to(pred.device)
        valid = gt != self.ignore_label
        gt, pred = gt[valid], pred[valid]
        if gt.numel() == 0:
            return
        n = self.num_classes
        for what, values in (("ground truth", gt), ("prediction", pred)):
            lo, hi = int(values.min()), int(values.max())
            if lo < 0 or hi >= n:
                bad = lo if lo < 0 else hi
                raise ValueError(f"{what} value {bad} is neither a class id (0..{n - 1}) nor the ignore label")
        counts = torch.bincount(gt * n + pred, minlength=n * n).reshape(n, n)
        self._matrix += counts.cpu()

    def compute(self) -> dict:
        """``{"mIoU", "mIoU_gt_or_pred", "fwIoU", "mACC", "pACC": float, "per_class", "per_class_acc":
        {name: float}}`` in percent, NaN where undefined, over all processes' pixels."""
        matrix = all_reduce_sum(self._matrix)
        return metrics_from_confusion(matrix.numpy(), self.class_names)
