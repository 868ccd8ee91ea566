"""Post-processing alone, on predictions shaped like a trained model's: the bounded argmax against dense scoring.

With random weights every class probability is near 1/C and every mask near 0.5, so the per-block bounds of
:func:`patseg.models.semantic_argmax.semantic_argmax` settle almost every block at once and the ``vocab`` section
flatters it. A trained model's queries own regions (mask logits far from 0) and most name one class with
confidence, which leaves several candidate classes along region boundaries. This section builds such predictions
(Voronoi regions on the model's own mask grid, upsampled as SAN does) and times ``Segmenter.postprocess`` against
scoring every class, side by side, for each vocabulary size; the labels are checked to be equal.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from patseg.bench.measure import measure_all
from patseg.models.san.model import SegPrediction
from patseg.predictor import Segmenter


def region_prediction(
    queries: int, classes: int, grid: tuple[int, int], *, regions: int = 12, seed: int = 0
) -> SegPrediction:
    """A (1, Q, h, w) / (1, Q, C + 1) prediction: every query covers one of ``regions`` Voronoi cells (logit +6
    inside, -6 outside, unit noise), half the queries say "no object", the others name their region's class."""
    g = torch.Generator().manual_seed(seed)
    h, w = grid
    centres = torch.rand(regions, 2, generator=g) * torch.tensor([h, w])
    yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    region = ((yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2).argmin(0)  # (h, w)
    owner = torch.randint(0, regions, (queries,), generator=g)
    masks = torch.where(region == owner[:, None, None], 6.0, -6.0) + torch.randn(queries, h, w, generator=g)
    region_class = torch.randint(0, classes, (regions,), generator=g)
    logits = torch.randn(queries, classes + 1, generator=g) * 2
    target = torch.where(torch.arange(queries) % 2 == 0, region_class[owner], classes)  # odd queries: no object
    logits[torch.arange(queries), target] += 8
    return SegPrediction(masks=masks[None], logits=logits[None])


@torch.inference_mode()
def dense_postprocess(
    seg: Segmenter, pred: SegPrediction, padded: tuple[int, int], valid: tuple[int, int], out_size: tuple[int, int]
) -> Tensor:
    """The label map from every class's score map, ``class_chunk`` classes at a time, with a running maximum."""
    best = labels = None
    for start, part in seg._class_scores(pred, padded, valid, out_size):
        value, index = part.max(0)
        if best is None or labels is None:  # the first chunk (both are set together)
            best, labels = value, index
        else:
            better = value > best
            best, labels = torch.where(better, value, best), torch.where(better, index + start, labels)
    assert labels is not None  # the vocabulary is never empty
    return labels


def postprocess_cases(
    segmenters: dict[str, Segmenter],
    mask_shapes: dict[str, tuple[int, int, int]],
    size: tuple[int, int],
    vocabularies: Sequence[int],
    device: torch.device,
    *,
    warmup: int,
    repeats: int,
) -> list[dict[str, Any]]:
    """For each preset and vocabulary: bounded and dense post-processing of a region-like prediction at ``size``.

    ``mask_shapes`` gives each preset's (Q, h, w) at ``size``; ``segmenters`` the Segmenter whose post-processing
    runs (its vocabulary is irrelevant here: the prediction carries its own class logits)."""
    out = []
    for name, seg in segmenters.items():
        queries, h, w = mask_shapes[name]
        for classes in vocabularies:
            pred = region_prediction(queries, classes, (h, w))
            pred = SegPrediction(masks=pred.masks.to(device), logits=pred.logits.to(device))
            fns = {
                "bounded": lambda: seg.postprocess(pred, size, size, size),
                "dense": lambda: dense_postprocess(seg, pred, size, size, size),
            }
            same = torch.equal(fns["bounded"](), fns["dense"]())
            timed = measure_all(fns, device, warmup=warmup, repeats=repeats, memory=False, flops=False)
            out.append(
                {
                    "preset": name,
                    "size": list(size),
                    "classes": classes,
                    "labels_equal": same,
                    "bounded_ms": timed["bounded"].median_ms,
                    "dense_ms": timed["dense"].median_ms,
                }
            )
    return out
