"""Point sampling for the set loss: bilinear reads at normalised points and PointRend's uncertain points.

SAN (and Mask2Former before it) never upsamples the 1/16 mask logits to the label resolution for the loss. Both
the predicted logits and the full-resolution binary targets are read at the same normalised coordinates, so a mask
costs ``P`` values whatever its size. Facts from detectron2 ``projects/PointRend/point_rend/point_features.py``
(``point_sample``, ``get_uncertain_point_coords_with_randomness``) and Mask2Former
``mask2former/modeling/criterion.py`` (``calculate_uncertainty``), as used by MendelXu/SAN.

Coordinates are ``(x, y)`` in ``[0, 1]`` with (0, 0) the top-left corner of the top-left pixel
(``align_corners=False``); points within half a pixel of the border blend with zero padding, as upstream.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["point_sample", "point_uncertainty", "uncertain_point_coords"]


def point_sample(inputs: Tensor, coords: Tensor) -> Tensor:
    """Bilinearly read ``inputs`` at normalised points.

    Arguments:
        inputs: ``(N, C, H, W)`` feature maps (logits or float binary masks).
        coords: ``(N, P, 2)`` points ``(x, y)`` in ``[0, 1]``, one set per map.

    Returns:
        ``(N, C, P)`` values; outside-pixel neighbours count as zero (``grid_sample`` zero padding).
    """
    if inputs.dim() != 4 or coords.dim() != 3 or coords.shape[-1] != 2:
        raise ValueError(
            f"point_sample expects (N,C,H,W) and (N,P,2), got {tuple(inputs.shape)} and {tuple(coords.shape)}"
        )
    if inputs.shape[0] != coords.shape[0]:
        raise ValueError(f"point_sample: {inputs.shape[0]} maps but {coords.shape[0]} point sets")
    # grid_sample wants [-1, 1] and a (N, H_out, W_out, 2) grid: use a 1-pixel-wide grid of P points.
    grid = (2.0 * coords - 1.0).unsqueeze(2).to(inputs.dtype)
    return F.grid_sample(inputs, grid, mode="bilinear", padding_mode="zeros", align_corners=False).squeeze(3)


def point_uncertainty(logits: Tensor) -> Tensor:
    """PointRend uncertainty of a binary mask logit: ``-|logit|`` (highest on the decision boundary).

    Arguments:
        logits: any shape.

    Returns:
        the same shape.
    """
    return -logits.abs()


def uncertain_point_coords(
    logits: Tensor, num_points: int, oversample_ratio: float, importance_sample_ratio: float
) -> Tensor:
    """PointRend training points: the most uncertain of an oversampled random set, plus uniform random points.

    ``int(num_points * oversample_ratio)`` candidates are drawn uniformly; the ``int(importance_sample_ratio *
    num_points)`` with the highest :func:`point_uncertainty` are kept (in decreasing uncertainty), and the rest of the
    ``num_points`` are fresh uniform points appended after them. The candidates are drawn first, then the
    random points, both from the global torch RNG on ``logits.device``.

    Arguments:
        logits: ``(N, 1, h, w)`` mask logits; only read (call under ``no_grad``).
        num_points: P, points per mask.
        oversample_ratio: k >= 1, candidates per point.
        importance_sample_ratio: beta in [0, 1], share of points chosen by uncertainty.

    Returns:
        ``(N, P, 2)`` coordinates ``(x, y)`` in ``[0, 1]``.
    """
    if logits.dim() != 4 or logits.shape[1] != 1:
        raise ValueError(f"uncertain_point_coords expects (N,1,h,w) logits, got {tuple(logits.shape)}")
    if oversample_ratio < 1:
        raise ValueError(f"oversample_ratio must be >= 1, got {oversample_ratio}")
    if not 0.0 <= importance_sample_ratio <= 1.0:
        raise ValueError(f"importance_sample_ratio must be in [0, 1], got {importance_sample_ratio}")
    n = logits.shape[0]
    num_candidates = int(num_points * oversample_ratio)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain

    candidates = torch.rand(n, num_candidates, 2, device=logits.device)  # (N, kP, 2)
    uncertainty = point_uncertainty(point_sample(logits.float(), candidates))[:, 0]  # (N, kP)
    top = uncertainty.topk(num_uncertain, dim=1).indices  # (N, beta P)
    chosen = torch.gather(candidates, 1, top.unsqueeze(-1).expand(-1, -1, 2))  # (N, beta P, 2)
    if num_random == 0:
        return chosen
    return torch.cat([chosen, torch.rand(n, num_random, 2, device=logits.device)], dim=1)
