"""Bipartite matching between predicted masks (queries) and ground-truth masks, SAN's / Mask2Former's matcher.

Each image's ground truth is one binary mask per class present (semantic segmentation as mask classification).
Each target is assigned to one query by minimising, with the Hungarian algorithm (scipy ``linear_sum_assignment``),

    cost(q, t) = mask_weight * BCE(q, t) + class_weight * (-p_q[c_t]) + dice_weight * Dice(q, t),

where ``p_q`` is the softmax over the C classes plus no-object, and BCE / Dice are evaluated on ``num_points``
uniformly random points shared by every query and target of the image. Facts from Mask2Former
``mask2former/modeling/matcher.py`` (``HungarianMatcher.memory_efficient_forward``, ``batch_dice_loss``,
``batch_sigmoid_ce_loss``) and ``mask2former/data/dataset_mappers/mask_former_semantic_dataset_mapper.py`` (targets),
as copied by MendelXu/SAN.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from patseg.losses.point_sampling import point_sample

__all__ = ["SemSegTarget", "targets_from_semseg", "pairwise_sigmoid_bce", "pairwise_dice", "HungarianMatcher"]


@dataclass
class SemSegTarget:
    """Ground truth of one image as a set of class masks.

    labels: ``(n,)`` int64 class indices present in the image (the ignore label excluded).
    masks: ``(n, H, W)`` bool or float binary masks at label resolution; ignore pixels are 0 in every mask.
    """

    labels: Tensor
    masks: Tensor


def targets_from_semseg(labels: Tensor, ignore_index: int) -> list[SemSegTarget]:
    """Split semantic label maps into per-class binary masks, one target per image.

    Arguments:
        labels: ``(B, H, W)`` int64 class indices; ``ignore_index`` marks void and padded pixels.
        ignore_index: label that gets no mask (its pixels are negatives of every mask, as in SAN).

    Returns:
        ``B`` targets; ``labels`` sorted ascending, ``masks`` ``(n, H, W)`` bool.
    """
    if labels.dim() != 3:
        raise ValueError(f"targets_from_semseg expects (B, H, W) labels, got {tuple(labels.shape)}")
    targets = []
    for label_map in labels:
        classes = torch.unique(label_map)
        classes = classes[classes != ignore_index]
        masks = label_map.unsqueeze(0) == classes.view(-1, 1, 1)  # (n, H, W)
        targets.append(SemSegTarget(labels=classes.long(), masks=masks))
    return targets


def pairwise_sigmoid_bce(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean sigmoid binary cross-entropy of every prediction against every target, over shared points.

    Arguments:
        logits: ``(Q, P)`` mask logits at P points.
        targets: ``(n, P)`` target values in [0, 1] at the same points.

    Returns:
        ``(Q, n)`` costs.
    """
    # BCE(x, t) = t * softplus(-x) + (1 - t) * softplus(x): two matrix products instead of a (Q, n, P) tensor.
    loss_if_positive = F.softplus(-logits)  # (Q, P)
    loss_if_negative = F.softplus(logits)
    cost = loss_if_positive @ targets.T + loss_if_negative @ (1.0 - targets).T
    return cost / logits.shape[1]


def pairwise_dice(logits: Tensor, targets: Tensor) -> Tensor:
    """Soft dice loss ``1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1)`` of every prediction against every target.

    Arguments:
        logits: ``(Q, P)`` mask logits at P points (``p = sigmoid(logits)``).
        targets: ``(n, P)`` target values in [0, 1] at the same points.

    Returns:
        ``(Q, n)`` costs.
    """
    probs = logits.sigmoid()
    overlap = 2.0 * probs @ targets.T  # (Q, n)
    total = probs.sum(-1, keepdim=True) + targets.sum(-1).unsqueeze(0)
    return 1.0 - (overlap + 1.0) / (total + 1.0)


def assign(cost: Tensor) -> tuple[Tensor, Tensor]:
    """Minimum-cost one-to-one assignment of rows (queries) to columns (targets).

    Arguments:
        cost: ``(Q, n)`` finite costs.

    Returns:
        ``(query_idx, target_idx)`` int64 CPU tensors of length ``min(Q, n)``, sorted by query.
    """
    if not torch.isfinite(cost).all():
        raise ValueError("matching cost contains NaN or inf (non-finite logits or masks?)")
    rows, cols = linear_sum_assignment(cost.detach().cpu().double().numpy())
    return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)


class HungarianMatcher:
    """Assign each ground-truth mask of an image to one query (SAN / Mask2Former weights 2 / 5 / 5).

    Arguments:
        class_weight: weight of ``-p[target class]``.
        mask_weight: weight of the point-sampled sigmoid BCE.
        dice_weight: weight of the point-sampled dice loss.
        num_points: uniform random points per image, shared by all its queries and targets (SAN: 112^2).
    """

    def __init__(
        self, *, class_weight: float = 2.0, mask_weight: float = 5.0, dice_weight: float = 5.0, num_points: int = 12544
    ) -> None:
        if num_points < 1:
            raise ValueError(f"num_points must be >= 1, got {num_points}")
        self.class_weight = class_weight
        self.mask_weight = mask_weight
        self.dice_weight = dice_weight
        self.num_points = num_points

    def cost_matrix(self, pred_logits: Tensor, pred_masks: Tensor, target: SemSegTarget) -> Tensor:
        """Matching cost of one image, in float32 whatever the autocast state.

        Arguments:
            pred_logits: ``(Q, C + 1)`` class logits, the last column being no-object.
            pred_masks: ``(Q, h, w)`` mask logits.
            target: ``n`` ground-truth masks ``(n, H, W)``.

        Returns:
            ``(Q, n)`` costs.
        """
        num_queries = pred_logits.shape[0]
        num_targets = target.labels.shape[0]
        with torch.no_grad(), torch.autocast(device_type=pred_logits.device.type, enabled=False):
            probs = pred_logits.float().softmax(-1)  # (Q, C + 1)
            class_cost = -probs[:, target.labels.to(probs.device)]  # (Q, n)

            coords = torch.rand(1, self.num_points, 2, device=pred_masks.device)  # one point set per image
            pred_points = point_sample(pred_masks.float().unsqueeze(1), coords.expand(num_queries, -1, -1))
            target_masks = target.masks.to(device=pred_masks.device, dtype=torch.float32).unsqueeze(1)
            target_points = point_sample(target_masks, coords.expand(num_targets, -1, -1))
            pred_points, target_points = pred_points[:, 0], target_points[:, 0]  # (Q, P), (n, P)

            return (
                self.mask_weight * pairwise_sigmoid_bce(pred_points, target_points)
                + self.class_weight * class_cost
                + self.dice_weight * pairwise_dice(pred_points, target_points)
            )

    def __call__(
        self, pred_logits: Tensor, pred_masks: Tensor, targets: list[SemSegTarget]
    ) -> list[tuple[Tensor, Tensor]]:
        """Match every image of the batch.

        Arguments:
            pred_logits: ``(B, Q, C + 1)`` class logits (last = no-object).
            pred_masks: ``(B, Q, h, w)`` mask logits.
            targets: ``B`` ground truths.

        Returns:
            per image ``(query_idx, target_idx)``, int64 CPU tensors of equal length ``min(Q, n_b)``.
        """
        if len(targets) != pred_logits.shape[0]:
            raise ValueError(f"{pred_logits.shape[0]} images but {len(targets)} targets")
        matches = []
        for logits, masks, target in zip(pred_logits, pred_masks, targets):
            if target.labels.numel() == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                matches.append((empty, empty.clone()))
                continue
            matches.append(assign(self.cost_matrix(logits, masks, target)))
        return matches
