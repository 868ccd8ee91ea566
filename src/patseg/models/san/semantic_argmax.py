"""The label map of SAN's semantic inference without scoring every class at every pixel.

SAN's label at pixel x is ``argmax_c sum_q P[q, c] * sigmoid(m_q(x))`` with P >= 0 (class probabilities) and m the
mask logits upsampled to the output size. Scoring densely costs Q x C x H x W multiply-adds, which for 847 classes
at full resolution outweighs the rest of SAN's post-processing. Because the score is monotone in every mask, a
block of pixels has per-class bounds

    lower_c = sum_q P[q, c] * sigmoid(min_block m_q) <= score_c(x) <= sum_q P[q, c] * sigmoid(max_block m_q) = upper_c

so a class whose upper bound is below the best lower bound can never win anywhere in the block. Blocks left with a
single candidate take its label directly; the rest are scored exactly, but only on their few candidate classes. The
result is the dense argmax (ties go to the lower class index in both), at a cost that barely grows with C.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Bounds are compared with this relative slack, far above float32 rounding of a sum of <= a few hundred terms, so
# summation order can never prune the true winner.
_SLACK = 1e-5


def _block_extrema(mask_logits: Tensor, block: int) -> tuple[Tensor, Tensor, Tensor]:
    """(Q, H, W) -> the logits padded to whole blocks (Q, H', W') and per-block min and max, each (Q, nh * nw).

    Edge padding repeats border pixels, so it changes no block's extrema."""
    q, h, w = mask_logits.shape
    ph, pw = -h % block, -w % block
    padded = F.pad(mask_logits[None], (0, pw, 0, ph), mode="replicate")[0] if ph or pw else mask_logits
    nh, nw = padded.shape[1] // block, padded.shape[2] // block
    # Reduce over each block's rows first (an elementwise max of whole image rows, which vectorises), then over the
    # block's columns on a ``block`` times smaller tensor: twice as fast as one strided 5-D reduction.
    rows = padded.view(q, nh, block, padded.shape[2])
    hi = rows.amax(2).view(q, nh, nw, block).amax(-1)
    lo = rows.amin(2).view(q, nh, nw, block).amin(-1)
    return padded, lo.flatten(1), hi.flatten(1)


def _candidates(probs: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """(Q, C) probabilities, (Q, N) per-block logit extrema -> (N, C) bool: classes that may win in each block."""
    pt = probs.t()
    upper, lower = pt @ hi.sigmoid(), pt @ lo.sigmoid()  # (C, N)
    threshold = lower.amax(0)
    return (upper >= threshold - _SLACK * threshold.abs() - _SLACK).t()


def _padded_indices(cand: Tensor, counts: Tensor, width: int) -> Tensor:
    """(n, C) bool with ``counts`` (1..width) True per row -> (n, width) class indices, ascending, padded with the
    first."""
    rows, cols = cand.nonzero(as_tuple=True)  # row-major, so each row's classes come out ascending
    start = torch.cumsum(counts, 0) - counts
    slot = torch.arange(rows.numel(), device=cand.device) - start[rows]
    out = cols.new_empty(cand.shape[0], width)
    out[:] = cols[start].unsqueeze(1)  # padding repeats the lowest candidate: an exact tie that never wins
    out[rows, slot] = cols
    return out


def semantic_argmax(probs: Tensor, mask_logits: Tensor, *, block: int = 8, max_elements: int = 1 << 24) -> Tensor:
    """(Q, C) class probabilities (no-object dropped), (Q, H, W) mask logits -> (H, W) int64 labels.

    Equal to the argmax of the dense scores ``probs.T @ sigmoid(mask_logits)``; ``block`` is the side of the pixel
    blocks that share bounds and ``max_elements`` caps each batched score tensor, so memory stays bounded for any
    vocabulary and image size.
    """
    q, h, w = mask_logits.shape
    num_classes = probs.shape[1]
    padded, lo, hi = _block_extrema(mask_logits, block)
    nh, nw = padded.shape[1] // block, padded.shape[2] // block
    cand = _candidates(probs, lo, hi)  # (N, C)
    counts = cand.sum(1)
    labels = cand.int().argmax(1).unsqueeze(1).expand(-1, block * block).clone()  # single-candidate blocks
    blocks = padded.view(q, nh, block, nw, block)
    todo = (counts > 1).nonzero().squeeze(1)
    # Blocks grouped by candidate count rounded up to a power of two, so padding wastes at most half the work.
    width = (2 ** torch.ceil(torch.log2(counts[todo].float()))).long()
    for group_width in width.unique().tolist():
        members = todo[width == group_width]
        group_width = min(group_width, num_classes)
        step = max(1, max_elements // (group_width * block * block))
        for chunk in members.split(step):
            classes = _padded_indices(cand[chunk], counts[chunk], group_width)
            labels[chunk] = _score_blocks(probs, blocks, chunk, classes, nw)
    out = labels.view(nh, nw, block, block).permute(0, 2, 1, 3).reshape(nh * block, nw * block)
    return out[:h, :w]


def _score_blocks(probs: Tensor, blocks: Tensor, index: Tensor, classes: Tensor, nw: int) -> Tensor:
    """Exact argmax over each block's (n, K) candidate classes -> (n, block * block) labels."""
    masks = blocks[:, index // nw, :, index % nw, :]  # (n, Q, b, b): advanced indices lead
    masks = masks.flatten(2).sigmoid()  # (n, Q, b * b)
    weights = probs.t()[classes]  # (n, K, Q)
    best = torch.bmm(weights, masks).argmax(1)  # (n, b * b): first maximum, the lower class on ties
    return classes.gather(1, best)
