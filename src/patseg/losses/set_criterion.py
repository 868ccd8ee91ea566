"""SAN's set loss (Mask2Former ``SetCriterion``): classification + point-sampled mask BCE and dice on matched pairs.

After Hungarian matching, matched queries are trained to predict their target's class and mask, unmatched queries
to predict no-object (class weight 0.1). Mask losses are evaluated at PointRend uncertain points: the predicted
1/16-resolution logits and the full-resolution binary targets are read at the same normalised coordinates. Ignore
and padded pixels are plain negatives of every target mask, as in SAN (no ignore mask reaches the loss). Facts from
Mask2Former ``mask2former/modeling/criterion.py`` (``SetCriterion``, ``sigmoid_ce_loss``, ``dice_loss``) as used by
MendelXu/SAN ``san/model/criterion.py``.

A model hands over its prediction sets (anything with ``masks`` and ``logits``, see :class:`MaskSet`), so this layer
never imports the models.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from patseg.losses.matcher import HungarianMatcher, SemSegTarget
from patseg.losses.point_sampling import point_sample, uncertain_point_coords

__all__ = ["MaskSet", "SetCriterion", "classification_loss", "count_masks", "dice_loss", "sigmoid_bce_loss"]


class MaskSet(Protocol):
    """One set of mask proposals as a model predicts it (e.g. ``SegPrediction``).

    masks: ``(B, Q, h, w)`` mask logits; logits: ``(B, Q, C + 1)`` class logits, the last column no-object.
    """

    masks: Tensor
    logits: Tensor


def classification_loss(pred_logits: Tensor, target_classes: Tensor, no_object_weight: float) -> Tensor:
    """Weighted cross-entropy over C classes plus no-object; the weight vector is rebuilt per call (open vocabulary).

    Arguments:
        pred_logits: ``(B, Q, C + 1)`` class logits, the last column being no-object.
        target_classes: ``(B, Q)`` int64 targets in ``[0, C]`` (``C`` = no-object for unmatched queries).
        no_object_weight: weight of the no-object class; real classes weigh 1.

    Returns:
        scalar ``sum(w_y * nll) / sum(w_y)`` over all queries.
    """
    weight = torch.ones(pred_logits.shape[-1], device=pred_logits.device)
    weight[-1] = no_object_weight
    return F.cross_entropy(pred_logits.float().transpose(1, 2), target_classes, weight=weight)


def sigmoid_bce_loss(logits: Tensor, labels: Tensor, num_masks: float) -> Tensor:
    """Sigmoid BCE averaged over points, summed over masks, divided by ``num_masks``.

    Arguments:
        logits: ``(M, P)`` mask logits at the sampled points.
        labels: ``(M, P)`` target values in [0, 1] at the same points.
        num_masks: normaliser (ground-truth masks in the batch, averaged over ranks).

    Returns:
        scalar loss.
    """
    loss = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    return loss.mean(1).sum() / num_masks


def dice_loss(logits: Tensor, labels: Tensor, num_masks: float) -> Tensor:
    """Soft dice ``1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1)`` per mask, summed, divided by ``num_masks``.

    Arguments:
        logits: ``(M, P)`` mask logits at the sampled points (``p = sigmoid(logits)``).
        labels: ``(M, P)`` target values in [0, 1] at the same points.
        num_masks: normaliser.

    Returns:
        scalar loss.
    """
    probs = logits.sigmoid()
    overlap = 2.0 * (probs * labels).sum(-1)
    total = probs.sum(-1) + labels.sum(-1)
    return (1.0 - (overlap + 1.0) / (total + 1.0)).sum() / num_masks


def count_masks(targets: list[SemSegTarget], device: torch.device) -> float:
    """Ground-truth masks in the batch, averaged over ranks when torch.distributed is initialised, at least 1.

    Every rank then divides by the same number, so DDP's gradient averaging yields the global per-mask mean.
    """
    count = torch.tensor(float(sum(t.labels.numel() for t in targets)), device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(count)
        count = count / dist.get_world_size()
    return max(count.item(), 1.0)


class SetCriterion(nn.Module):
    """Hungarian-matched set loss of one prediction set; returns the weighted terms.

    Arguments:
        class_weight: weight of ``loss_ce`` and of the matcher's class cost.
        mask_weight: weight of ``loss_mask`` (sigmoid BCE) and of the matcher's BCE cost.
        dice_weight: weight of ``loss_dice`` and of the matcher's dice cost.
        no_object_weight: cross-entropy weight of the no-object class.
        num_points: points per matched mask for the losses, and per image for the matcher (SAN: 112^2).
        oversample_ratio: PointRend candidates per point.
        importance_sample_ratio: share of the points chosen by uncertainty.
    """

    def __init__(
        self,
        *,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        no_object_weight: float = 0.1,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
    ) -> None:
        super().__init__()
        self.matcher = HungarianMatcher(
            class_weight=class_weight, mask_weight=mask_weight, dice_weight=dice_weight, num_points=num_points
        )
        self.class_weight = class_weight
        self.mask_weight = mask_weight
        self.dice_weight = dice_weight
        self.no_object_weight = no_object_weight
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio

    def forward(
        self, pred_logits: Tensor, pred_masks: Tensor, targets: list[SemSegTarget], num_masks: float | None = None
    ) -> dict[str, Tensor]:
        """Match, then compute the weighted losses.

        Arguments:
            pred_logits: ``(B, Q, C + 1)`` class logits; C may change from call to call, the last column is
                no-object.
            pred_masks: ``(B, Q, h, w)`` mask logits.
            targets: ``B`` ground truths, masks ``(n_b, H, W)``, labels in ``[0, C)``.
            num_masks: loss normaliser; ``None`` counts the batch's masks with :func:`count_masks`. Pass one value
                to several criteria (deep supervision) to all-reduce only once.

        Returns:
            ``{"loss_ce", "loss_mask", "loss_dice"}``, float32 scalars already multiplied by their weights.
        """
        self._check_inputs(pred_logits, pred_masks, targets)
        matches = self.matcher(pred_logits, pred_masks, targets)
        if num_masks is None:
            num_masks = count_masks(targets, pred_logits.device)
        elif num_masks <= 0:
            raise ValueError(f"num_masks must be positive, got {num_masks}")

        with torch.autocast(device_type=pred_logits.device.type, enabled=False):
            loss_ce = classification_loss(
                pred_logits, self._target_classes(pred_logits, targets, matches), self.no_object_weight
            )
            loss_mask, loss_dice = self._mask_losses(pred_masks, targets, matches, num_masks)
        return {
            "loss_ce": self.class_weight * loss_ce,
            "loss_mask": self.mask_weight * loss_mask,
            "loss_dice": self.dice_weight * loss_dice,
        }

    def sets(self, main: MaskSet, aux: Mapping[str, MaskSet], targets: list[SemSegTarget]) -> dict[str, Tensor]:
        """Set losses of the main prediction and of every auxiliary (deep-supervision) set.

        Each set is matched on its own; the mask count is shared, so it is all-reduced once under DDP.

        Returns:
            ``loss_ce``, ``loss_mask``, ``loss_dice`` of ``main``, and the same terms of each auxiliary set with its
            name appended (``loss_ce_side7``), in ``aux``'s order.
        """
        num_masks = count_masks(targets, main.masks.device)
        losses = dict(self(main.logits, main.masks, targets, num_masks))
        for name, pred in aux.items():
            terms = self(pred.logits, pred.masks, targets, num_masks)
            losses.update({f"{k}_{name}": v for k, v in terms.items()})
        return losses

    @staticmethod
    def _check_inputs(pred_logits: Tensor, pred_masks: Tensor, targets: list[SemSegTarget]) -> None:
        if pred_logits.dim() != 3 or pred_masks.dim() != 4 or pred_logits.shape[:2] != pred_masks.shape[:2]:
            raise ValueError(
                f"expected pred_logits (B,Q,C+1) and pred_masks (B,Q,h,w), got "
                f"{tuple(pred_logits.shape)} and {tuple(pred_masks.shape)}"
            )
        if len(targets) != pred_logits.shape[0]:
            raise ValueError(f"{pred_logits.shape[0]} images but {len(targets)} targets")
        num_classes = pred_logits.shape[-1] - 1
        labels = torch.cat([t.labels.reshape(-1).cpu() for t in targets] + [torch.zeros(0, dtype=torch.int64)])
        if labels.numel():
            low, high = labels.min().item(), labels.max().item()
            if low < 0 or high >= num_classes:
                raise ValueError(
                    f"target labels must lie in [0, {num_classes}) for {num_classes} classes, got [{low}, {high}]"
                )

    @staticmethod
    def _target_classes(
        pred_logits: Tensor, targets: list[SemSegTarget], matches: list[tuple[Tensor, Tensor]]
    ) -> Tensor:
        """``(B, Q)`` class per query: the matched target's label, else no-object (index C)."""
        batch, num_queries, num_outputs = pred_logits.shape
        classes = torch.full((batch, num_queries), num_outputs - 1, dtype=torch.int64, device=pred_logits.device)
        for b, ((query_idx, target_idx), target) in enumerate(zip(matches, targets)):
            classes[b, query_idx.to(classes.device)] = target.labels.to(classes.device)[target_idx.to(classes.device)]
        return classes

    def _mask_losses(
        self, pred_masks: Tensor, targets: list[SemSegTarget], matches: list[tuple[Tensor, Tensor]], num_masks: float
    ) -> tuple[Tensor, Tensor]:
        """Point-sampled BCE and dice over matched pairs, unweighted. Returns two scalars."""
        device = pred_masks.device
        batch_idx = torch.cat([torch.full_like(q, b) for b, (q, _) in enumerate(matches)]).to(device)
        query_idx = torch.cat([q for q, _ in matches]).to(device)
        matched = pred_masks[batch_idx, query_idx].float()  # (M, h, w)
        if matched.shape[0] == 0:
            # An empty selection keeps pred_masks in the graph (zero gradient), so DDP sees every parameter used.
            zero = matched.sum()
            return zero, zero.clone()

        with torch.no_grad():
            coords = uncertain_point_coords(
                matched.unsqueeze(1), self.num_points, self.oversample_ratio, self.importance_sample_ratio
            )  # (M, P, 2)
        pred_points = point_sample(matched.unsqueeze(1), coords)[:, 0]  # (M, P)

        # Targets are read image by image, so images need not share a label resolution.
        target_points, start = [], 0
        for (_, target_idx), target in zip(matches, targets):
            end = start + target_idx.numel()
            masks = target.masks[target_idx.to(target.masks.device)].to(device=device, dtype=torch.float32)
            target_points.append(point_sample(masks.unsqueeze(1), coords[start:end])[:, 0])
            start = end
        labels = torch.cat(target_points)  # (M, P)
        return sigmoid_bce_loss(pred_points, labels, num_masks), dice_loss(pred_points, labels, num_masks)
