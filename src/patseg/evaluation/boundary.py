"""Boundary IoU for semantic segmentation, accumulated over a dataset like mIoU.

Boundary IoU (Cheng, Girshick, Dollár, Berg, Kirillov, CVPR 2021) scores only the pixels near a mask's contour, so
it moves with the quality of the edges where mask IoU, dominated by the interiors of large regions, barely does.

Per image and class ``c`` the binary masks are ``G = (gt == c)`` and ``P = (pred == c)``. The boundary region of a
mask M is ``M AND NOT erode(M, d)``: the mask pixels within Chebyshev distance ``d`` of a non-mask pixel, where the
erosion applies a 3x3 square ``d`` times and every position outside the image counts as background (the reference
``mask_to_boundary`` pads the mask with one row/column of zeros before eroding, which amounts to the same). The
width is ``d = max(1, round(dilation_ratio * sqrt(H^2 + W^2)))`` per image, with Python's ``round`` as in the
reference code; ``dilation_ratio`` is 0.02 by default.

With ``G_d`` and ``P_d`` the boundary regions, the paper's ``|(G_d ∩ G) ∩ (P_d ∩ P)| / |(G_d ∩ G) ∪ (P_d ∩ P)|``
reduces to ``|G_d ∩ P_d| / |G_d ∪ P_d|`` because these boundary regions already lie inside their masks.
Intersections and unions are summed over all images per class before dividing (as the confusion matrix of
``sem_seg`` sums pixel counts), so large images weigh more than small ones.

Ignored pixels (ground truth == ``ignore_index``): the boundaries are computed on the full maps, where an ignored
pixel belongs to no class (so it is background for every class of ``G``), and the ignored pixels are then removed
from both ``G_d`` and ``P_d``. Values are percentages, as in ``sem_seg``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import binary_erosion

# The 3x3 square (8-connected) structuring element of the reference implementation's ``cv2.erode``.
_SQUARE = np.ones((3, 3), dtype=bool)


def boundary_width(height: int, width: int, dilation_ratio: float = 0.02) -> int:
    """The boundary width d (pixels) for an image of ``height`` x ``width``: max(1, round(ratio * diagonal))."""
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height} x {width}")
    if dilation_ratio < 0:
        raise ValueError(f"dilation_ratio must be >= 0, got {dilation_ratio}")
    return max(1, int(round(dilation_ratio * math.hypot(height, width))))


def mask_boundary(mask: np.ndarray, d: int) -> np.ndarray:
    """Boundary region of a binary mask (H, W): mask pixels within Chebyshev distance ``d`` of background.

    Outside the image counts as background (``border_value=0``), so mask pixels within ``d`` of the image edge are
    boundary too. Returns a bool array (H, W).
    """
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {mask.shape}")
    if d < 1:
        raise ValueError(f"boundary width must be >= 1, got {d}")
    mask = mask.astype(bool, copy=False)
    if not mask.any():
        return np.zeros_like(mask)
    # d iterations of the 3x3 square = erosion by the (2d+1)^2 square, i.e. Chebyshev distance d.
    interior = binary_erosion(mask, structure=_SQUARE, iterations=d, border_value=0)
    return mask & ~interior


class BoundaryIoU:
    """Accumulates per-class boundary intersections and unions over images; see the module docstring.

    Args:
        num_classes: N; valid labels and predictions are 0..N-1.
        ignore_index: ground-truth value whose pixels are removed from both boundary regions.
        dilation_ratio: boundary width as a fraction of the image diagonal (the paper's 2%).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, dilation_ratio: float = 0.02) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index {ignore_index} collides with a class id (0..{num_classes - 1})")
        if dilation_ratio < 0:
            raise ValueError(f"dilation_ratio must be >= 0, got {dilation_ratio}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.dilation_ratio = dilation_ratio
        self.reset()

    def reset(self) -> None:
        self.intersection = np.zeros(self.num_classes, dtype=np.int64)
        self.union = np.zeros(self.num_classes, dtype=np.int64)

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Add one image: ``pred`` and ``gt`` are (H, W) integer class-id maps (``gt`` may hold ``ignore_index``)."""
        pred, gt = np.asarray(pred), np.asarray(gt)
        if pred.shape != gt.shape or pred.ndim != 2:
            raise ValueError(f"expected two (H, W) maps of one shape, got {pred.shape} and {gt.shape}")
        for what, values in (("prediction", pred), ("ground truth", gt)):
            if not np.issubdtype(values.dtype, np.integer):
                raise TypeError(f"{what} must be an integer map, got {values.dtype}")
        valid = gt != self.ignore_index
        n = self.num_classes
        # As in ``sem_seg``, a prediction under an ignored pixel is not checked: it can reach no boundary region.
        for what, values in (("ground truth", gt[valid]), ("prediction", pred[valid])):
            if values.size and (int(values.min()) < 0 or int(values.max()) >= n):
                bad = int(values.min()) if int(values.min()) < 0 else int(values.max())
                raise ValueError(f"{what} value {bad} is neither a class id (0..{n - 1}) nor the ignore label")
        d = boundary_width(gt.shape[0], gt.shape[1], self.dilation_ratio)
        # Only classes on a non-ignored pixel of either map can keep a boundary pixel; the rest add nothing.
        present = np.union1d(np.unique(gt[valid]), np.unique(pred[valid]))
        for c in present.tolist():
            g_d = mask_boundary(gt == c, d)  # inside gt == c, so already free of ignored pixels
            p_d = mask_boundary(pred == c, d) & valid
            self.intersection[c] += int(np.count_nonzero(g_d & p_d))
            self.union[c] += int(np.count_nonzero(g_d | p_d))

    def compute(self) -> dict:
        """``{"per_class": [float] * N, "mean": float, "intersection": [int], "union": [int]}``.

        ``per_class`` is 100 * intersection / union, NaN for a class whose union is empty (on no boundary of either
        map in any image). ``mean`` averages the non-NaN entries (NaN when all are NaN); a class predicted but
        absent from the ground truth therefore counts as 0, like ``mIoU_gt_or_pred`` in ``sem_seg``.
        """
        inter = self.intersection.astype(np.float64)
        union = self.union.astype(np.float64)
        per_class = np.full(self.num_classes, np.nan)
        nonempty = union > 0
        per_class[nonempty] = 100.0 * inter[nonempty] / union[nonempty]
        mean = float(per_class[nonempty].mean()) if nonempty.any() else float("nan")
        return {
            "per_class": [float(v) for v in per_class],
            "mean": mean,
            "intersection": self.intersection.tolist(),
            "union": self.union.tolist(),
        }
