"""The label map of SAN's semantic inference without scoring every class at every pixel.

SAN's label at pixel x is ``argmax_c sum_q P[q, c] * sigmoid(m_q(x))`` with P >= 0 (class probabilities) and m the
mask logits upsampled to the output size. Scoring densely costs Q x C x H x W multiply-adds, which for 847 classes
at full resolution outweighs the rest of SAN's post-processing. Because the score is monotone in every mask, a
block of pixels has per-class bounds

    lower_c = sum_q P[q, c] * sigmoid(min_block m_q) <= score_c(x) <= sum_q P[q, c] * sigmoid(max_block m_q) = upper_c

so a class whose upper bound is below the best lower bound can never win anywhere in the block. Blocks left with a
single candidate take its label directly; the rest are scored exactly, but only on their few candidate classes. The
result is the dense argmax (ties go to the lower class index in both), at a cost that barely grows with C.

The masks come either at the output size (:class:`FullMasks`) or, as the model predicts them, on their coarse grid
with the bilinear resizes to the output written as one matrix per axis (:class:`ResizedMasks`): then the
upsampled logits are never formed. A block's bounds come from the grid cells its pixels interpolate (bilinear
weights are non-negative and sum to one, so every upsampled value lies between their minimum and maximum), and only
the blocks left with several candidates are upsampled, a window of the grid at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

# Bounds are compared with this relative slack, far above float32 rounding of a sum of <= a few hundred terms, so
# summation order can never prune the true winner.
_SLACK = 1e-5


class BlockMasks(Protocol):
    """(Q, H, W) mask logits seen as blocks of ``block`` x ``block`` pixels (edge blocks repeat the last row and
    column, which changes no block's extrema)."""

    shape: tuple[int, int, int]

    def block_bounds(self, block: int) -> tuple[Tensor, Tensor]:
        """Per-block lower and upper bounds of the logits, each (Q, nh * nw)."""
        ...

    def block_values(self, index: Tensor, block: int) -> Tensor:
        """The logits of the (n,) blocks ``index`` (row-major block numbers) -> (n, Q, block * block)."""
        ...


def _block_extrema(values: Tensor, ky: int, kx: int) -> tuple[Tensor, Tensor]:
    """(Q, nh * ky, nw * kx) -> the minimum and maximum of each ky x kx block, each (Q, nh * nw)."""
    q, h, w = values.shape
    # Reduce over each block's rows first (an elementwise max of whole rows, which vectorises), then over its
    # columns on a ``ky`` times smaller tensor: several times faster than one strided 5-D reduction.
    rows = values.view(q, h // ky, ky, w)
    hi = rows.amax(2).view(q, h // ky, w // kx, kx).amax(-1)
    lo = rows.amin(2).view(q, h // ky, w // kx, kx).amin(-1)
    return lo.flatten(1), hi.flatten(1)


@dataclass
class FullMasks:
    """Mask logits already at the output size: (Q, H, W), in (Q, H, W) or channels-last (H, W, Q) memory order."""

    logits: Tensor

    @property
    def shape(self) -> tuple[int, int, int]:
        q, h, w = self.logits.shape
        return q, h, w

    def _last(self, block: int) -> Tensor | None:
        """The (H, W, Q) view when the memory is channels-last and whole blocks tile the map, else None."""
        q, h, w = self.shape
        hwq = self.logits.permute(1, 2, 0)
        return hwq if hwq.is_contiguous() and h % block == 0 and w % block == 0 else None

    def _padded(self, block: int) -> Tensor:
        h, w = self.shape[1:]
        ph, pw = -h % block, -w % block
        logits = self.logits.contiguous()
        return F.pad(logits[None], (0, pw, 0, ph), mode="replicate")[0] if ph or pw else logits

    def block_bounds(self, block: int) -> tuple[Tensor, Tensor]:
        hwq = self._last(block)
        if hwq is None:
            return _block_extrema(self._padded(block), block, block)
        # Channels-last: every reduction runs over whole rows of Q contiguous values.
        (h, w), q = hwq.shape[:2], hwq.shape[2]
        rows = hwq.view(h // block, block, w, q)
        hi = rows.amax(1).view(h // block, w // block, block, q).amax(2)
        lo = rows.amin(1).view(h // block, w // block, block, q).amin(2)
        return lo.permute(2, 0, 1).reshape(q, -1), hi.permute(2, 0, 1).reshape(q, -1)

    def block_values(self, index: Tensor, block: int) -> Tensor:
        hwq = self._last(block)
        if hwq is not None:
            (h, w), q = hwq.shape[:2], hwq.shape[2]
            nw = w // block
            blocks = hwq.view(h // block, block, nw, block, q)[index // nw, :, index % nw]  # (n, b, b, Q)
            return blocks.permute(0, 3, 1, 2).reshape(-1, q, block * block)
        padded = self._padded(block)
        q, nw = padded.shape[0], padded.shape[2] // block
        blocks = padded.view(q, padded.shape[1] // block, block, nw, block)
        return blocks[:, index // nw, :, index % nw, :].flatten(2)  # (n, Q, b * b): advanced indices lead


def resize_matrix(size: int, *steps: tuple[str, int]) -> Tensor:
    """(out, size) float32 matrix of a chain of 1-D resizes: ``("linear", n)`` resamples to n as
    ``F.interpolate(mode="linear", align_corners=False)`` does, ``("crop", n)`` keeps the first n samples.

    Bilinear resizing of a map is separable, so ``rows @ m @ cols.T`` with one such matrix per axis is the map
    resized by the same chain in 2-D, equal up to float rounding: each step's weights are float32 interpolation's
    own (read off by resampling unit impulses), and every output row has at most two non-zero weights per step."""
    matrix = torch.eye(size)
    for kind, n in steps:
        if kind == "crop":
            matrix = matrix[:n]
        elif kind == "linear":
            if n != matrix.shape[0]:  # resampling the rows of the chain so far composes this step with it
                matrix = F.interpolate(matrix.t()[None], size=n, mode="linear", align_corners=False)[0].t()
        else:
            raise ValueError(f"unknown resize step {kind!r}: expected 'linear' or 'crop'")
    return matrix.contiguous()


def _blocks_of(n: int, block: int) -> Tensor:
    """(nb, block) output indices of each block along one axis, the last block repeating the last index."""
    nb = -(-n // block)
    return torch.arange(nb * block).clamp(max=n - 1).view(nb, block)


def _support(matrix: Tensor, block: int) -> tuple[Tensor, Tensor]:
    """Per block of output rows of ``matrix`` (out, in): the first input index its weights touch and the window
    length, (nb,) each."""
    touched = matrix[_blocks_of(matrix.shape[0], block)].ne(0).any(1)  # (nb, in)
    first = touched.int().argmax(1)
    last = matrix.shape[1] - 1 - touched.flip(1).int().argmax(1)
    return first, last - first + 1


def _critical(matrix: Tensor, block: int, tol: float = 1e-5) -> tuple[Tensor, float]:
    """The output rows of ``matrix`` (out, in) where a block's extrema can lie: (nb, k) indices per block (padded
    by repeating one) and the largest second difference among the rows left out.

    A bilinear resize is linear between the grid's sample positions, so along one axis the output values of a block
    form straight runs: an extremum sits at the block's ends or where the run bends (a non-zero second difference
    of the weights). Only those rows are needed, e.g. 2 of 8 when upsampling 16x."""
    rows = _blocks_of(matrix.shape[0], block)
    weights = matrix[rows].double()  # (nb, block, in)
    keep = torch.ones(rows.shape, dtype=torch.bool)
    dropped = 0.0
    if block > 2:
        bend = (weights[:, :-2] - 2 * weights[:, 1:-1] + weights[:, 2:]).abs().sum(-1)  # (nb, block - 2)
        keep[:, 1:-1] = bend > tol
        dropped = float(bend[~keep[:, 1:-1]].max()) if not bool(keep.all()) else 0.0
    k = int(keep.sum(1).max())
    order = torch.sort(keep.int(), dim=1, descending=True, stable=True).indices[:, :k]  # kept slots first
    slots = torch.where(torch.arange(k) < keep.sum(1, keepdim=True), order, order[:, :1])
    return rows.gather(1, slots), dropped


class ResizedMasks:
    """(Q, h, w) mask logits on the model's grid, seen at the output size through per-axis resize matrices:
    the logits at the output are ``rows @ m_q @ cols.T`` with ``rows`` (H, h) and ``cols`` (W, w) (see
    :func:`resize_matrix`). Only the blocks that need exact values are upsampled."""

    def __init__(self, logits: Tensor, rows: Tensor, cols: Tensor) -> None:
        if rows.shape[1] != logits.shape[1] or cols.shape[1] != logits.shape[2]:
            raise ValueError(f"resize matrices {tuple(rows.shape)}, {tuple(cols.shape)} for logits {logits.shape}")
        if rows.min() < 0 or cols.min() < 0:
            raise ValueError("the block bounds need non-negative resize weights (bilinear without antialiasing)")
        self.logits = logits
        self.rows, self.cols = rows, cols
        self.shape = (logits.shape[0], rows.shape[0], cols.shape[0])
        self._memo: dict[tuple[str, int, int], tuple] = {}  # per (what, axis, block): each is asked for repeatedly

    def _critical(self, axis: int, block: int) -> tuple[Tensor, float]:
        key = ("critical", axis, block)
        if key not in self._memo:
            self._memo[key] = _critical((self.rows, self.cols)[axis], block)
        return self._memo[key]

    def _support(self, axis: int, block: int) -> tuple[Tensor, Tensor]:
        key = ("support", axis, block)
        if key not in self._memo:
            self._memo[key] = _support((self.rows, self.cols)[axis], block)
        return self._memo[key]

    def critical_pixels(self, block: int) -> int:
        """How many output pixels per mask :meth:`block_bounds` evaluates (1/16 of them for a 16x upsampling)."""
        return self._critical(0, block)[0].numel() * self._critical(1, block)[0].numel()

    def block_bounds(self, block: int) -> tuple[Tensor, Tensor]:
        (ys, y_err), (xs, x_err) = self._critical(0, block), self._critical(1, block)
        rows, cols = self.rows[ys.flatten()].to(self.logits), self.cols[xs.flatten()].to(self.logits)
        values = torch.matmul(torch.matmul(rows, self.logits), cols.t())  # (Q, nh * ky, nw * kx)
        lo, hi = _block_extrema(values, ys.shape[1], xs.shape[1])
        # Rows dropped as linear up to float rounding could stray from their chord by this much at most.
        margin = (y_err + x_err) * block * block / 8 * float(self.logits.abs().max())
        return lo - margin, hi + margin

    def _windows(self, axis: int, blocks: Tensor, block: int) -> tuple[Tensor, Tensor]:
        """For (n,) block numbers along ``axis`` (0: rows, 1: columns): (n, block, k) weights of their output rows
        over a window of k grid indices, and the (n, k) window indices (every window k long, within the grid,
        holding the support)."""
        matrix = (self.rows, self.cols)[axis]
        first, length = self._support(axis, block)
        k = int(length.max())
        start = first.clamp(max=matrix.shape[1] - k)[blocks]
        window = start[:, None] + torch.arange(k)
        out_rows = _blocks_of(matrix.shape[0], block)[blocks]
        return matrix[out_rows[:, :, None], window[:, None, :]].to(self.logits), window.to(self.logits.device)

    def block_values(self, index: Tensor, block: int) -> Tensor:
        nw = -(-self.shape[2] // block)
        index = index.cpu()
        wy, ys = self._windows(0, index // nw, block)  # (n, b, ky), (n, ky)
        wx, xs = self._windows(1, index % nw, block)  # (n, b, kx), (n, kx)
        grid = self.logits[:, ys[:, :, None], xs[:, None, :]].permute(1, 0, 2, 3)  # (n, Q, ky, kx)
        n, q, ky, kx = grid.shape
        # The window upsampled as two batched products: rows (b x ky) then columns (kx x b).
        by_rows = torch.bmm(wy, grid.transpose(1, 2).reshape(n, ky, q * kx))  # (n, b, Q * kx)
        by_rows = by_rows.view(n, block, q, kx).transpose(1, 2).reshape(n, q * block, kx)
        return torch.bmm(by_rows, wx.transpose(1, 2)).view(n, q, block * block)


def upsample_masks(
    grid: Tensor, padded: tuple[int, int], valid: tuple[int, int], out: tuple[int, int], *, channels_last: bool = False
) -> Tensor:
    """(Q, h, w) mask logits -> (Q, H, W) at the output size as SAN resizes them: upsampled to the padded input,
    cropped to the image's valid part, resized to the original image size. ``channels_last`` resizes in (H, W, Q)
    memory order, the result then being a (Q, H, W) view of it: on CPU about 1.35x faster for 100 masks, equal to
    float rounding."""
    # Kept 4-D throughout: a batch dimension added later would carry a stride that reads as (B, C, H, W) order.
    masks = grid[None].contiguous(memory_format=torch.channels_last) if channels_last else grid[None]
    masks = F.interpolate(masks, size=padded, mode="bilinear", align_corners=False)
    masks = masks[:, :, : valid[0], : valid[1]]
    if tuple(valid) != tuple(out):
        masks = F.interpolate(masks, size=out, mode="bilinear", align_corners=False)
    return masks[0]


# Bounds from the critical grid pay when it is small against what upsampling writes (the padded map, and the output
# when the image is resized back): 1/16 for SAN's 16x at 640x640, 1/9 for a 480x640 photo. When most rows are
# critical (PAT's 4x, 9/16 at 640x640) one upsampling of the whole map is cheaper than the products that sample it.
_CRITICAL_SHARE = 0.25


def output_masks(
    grid: Tensor, padded: tuple[int, int], valid: tuple[int, int], out: tuple[int, int], *, block: int = 8
) -> Tensor | ResizedMasks:
    """The (Q, h, w) mask logits at the output size for :func:`semantic_argmax`, as :func:`upsample_masks` makes
    them: lazily (:class:`ResizedMasks`) where few rows and columns decide the block bounds, else upsampled."""
    steps = [(("linear", p), ("crop", v), ("linear", o)) for p, v, o in zip(padded, valid, out)]
    rows, cols = (resize_matrix(n, *chain) for n, chain in zip(grid.shape[1:], steps))
    lazy = ResizedMasks(grid, rows, cols)
    written = padded[0] * padded[1] + (out[0] * out[1] if tuple(valid) != tuple(out) else 0)
    if lazy.critical_pixels(block) <= _CRITICAL_SHARE * written:
        return lazy
    return upsample_masks(grid, padded, valid, out, channels_last=True)


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


def semantic_argmax(
    probs: Tensor, mask_logits: Tensor | BlockMasks, *, block: int = 8, max_elements: int = 1 << 24
) -> Tensor:
    """(Q, C) class probabilities (no-object dropped), (Q, H, W) mask logits (a tensor, or :class:`ResizedMasks`)
    -> (H, W) int64 labels.

    Equal to the argmax of the dense scores ``probs.T @ sigmoid(mask_logits)``; ``block`` is the side of the pixel
    blocks that share bounds and ``max_elements`` caps each batched score tensor, so memory stays bounded for any
    vocabulary and image size.
    """
    masks = FullMasks(mask_logits) if isinstance(mask_logits, Tensor) else mask_logits  # any memory order
    q, h, w = masks.shape
    num_classes = probs.shape[1]
    nh, nw = -(-h // block), -(-w // block)
    cand = _candidates(probs, *masks.block_bounds(block))  # (N, C)
    counts = cand.sum(1)
    labels = cand.int().argmax(1).unsqueeze(1).expand(-1, block * block).clone()  # single-candidate blocks
    todo = (counts > 1).nonzero().squeeze(1)
    # Blocks grouped by candidate count rounded up to a power of two, so padding wastes at most half the work.
    width = (2 ** torch.ceil(torch.log2(counts[todo].float()))).long()
    for group_width in width.unique().tolist():
        members = todo[width == group_width]
        group_width = min(group_width, num_classes)
        step = max(1, max_elements // (max(group_width, q) * block * block))
        for chunk in members.split(step):
            classes = _padded_indices(cand[chunk], counts[chunk], group_width)
            labels[chunk] = _score_blocks(probs, masks.block_values(chunk, block), classes)
    out = labels.view(nh, nw, block, block).permute(0, 2, 1, 3).reshape(nh * block, nw * block)
    return out[:h, :w]


def _score_blocks(probs: Tensor, logits: Tensor, classes: Tensor) -> Tensor:
    """Exact argmax over each block's (n, K) candidate classes, (n, Q, b * b) logits -> (n, b * b) labels."""
    weights = probs.t()[classes]  # (n, K, Q)
    # Scores laid out (n, b * b, K) so the argmax runs along the last axis: along a middle axis of a few classes,
    # torch's CPU argmax is over 10x slower. The first maximum wins: the lower class on ties.
    best = torch.bmm(logits.sigmoid().transpose(1, 2), weights.transpose(1, 2)).argmax(-1)  # (n, b * b)
    return classes.gather(1, best)
