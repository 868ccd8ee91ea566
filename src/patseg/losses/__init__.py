"""Training losses: SAN's set loss (Hungarian matching, point sampling, set criterion) and, in
``patseg.losses.pat_criterion``, PAT's whole objective (kept out of this namespace: it imports lpips)."""

from patseg.losses.matcher import HungarianMatcher, SemSegTarget, targets_from_semseg
from patseg.losses.point_sampling import point_sample, uncertain_point_coords
from patseg.losses.set_criterion import MaskSet, SetCriterion, count_masks

__all__ = [
    "HungarianMatcher",
    "MaskSet",
    "SemSegTarget",
    "SetCriterion",
    "count_masks",
    "point_sample",
    "targets_from_semseg",
    "uncertain_point_coords",
]
