"""Slow, obviously correct float64 references shared by the model tests (explicit loops, no fused kernels), and the
toy batch the model-level tests train on.

Each reference restates one equation in the plainest form; the tests compare the fast modules against them on small
inputs. Nothing here is imported by the package.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def bilinear_resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """(C, h, w) -> (C, H, W) float64, bilinear with half-pixel centres (``align_corners=False``).

    Output pixel o samples source coordinate (o + 0.5) * n_in / n_out - 0.5, clamped at 0; the right/bottom
    neighbour is clamped at the last row/column.
    """
    x = x.double()

    def taps(n_out: int, n_in: int, o: int) -> tuple[int, int, float]:
        src = max((o + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(math.floor(src)), n_in - 1)
        return i0, min(i0 + 1, n_in - 1), src - i0

    out = torch.zeros(x.shape[0], *size, dtype=torch.float64)
    for oy in range(size[0]):
        y0, y1, ly = taps(size[0], x.shape[1], oy)
        for ox in range(size[1]):
            x0, x1, lx = taps(size[1], x.shape[2], ox)
            top = (1 - lx) * x[:, y0, x0] + lx * x[:, y0, x1]
            bottom = (1 - lx) * x[:, y1, x0] + lx * x[:, y1, x1]
            out[:, oy, ox] = (1 - ly) * top + ly * bottom
    return out


def semantic_inference(masks: Tensor, logits: Tensor, size: tuple[int, int]) -> Tensor:
    """SAN's per-class score map, one image and one class at a time.

    masks (B, Q, h, w) logits, logits (B, Q, C + 1) -> (B, C, H, W) with
    score[b, c] = sum_q softmax(logits[b, q])[c] * sigmoid(bilinear(masks[b, q])); the last class is "no object".
    """
    b, q, _, _ = masks.shape
    classes = logits.shape[-1] - 1
    out = torch.zeros(b, classes, *size, dtype=torch.float64)
    for n in range(b):
        for j in range(q):
            row = logits[n, j].double()
            probs = row.exp() / row.exp().sum()
            mask = 1.0 / (1.0 + (-bilinear_resize(masks[n, j : j + 1], size)[0]).exp())
            for c in range(classes):
                out[n, c] += probs[c] * mask
    return out


def _unit(v: Tensor) -> Tensor:
    return v / max(float(v.norm()), 1e-12)


def attention(q: Tensor, k: Tensor, v: Tensor, *, kappa: float, vmf: bool) -> Tensor:
    """One image: (Nq, D), (Nk, D), (Nk, Dv) -> (Nq, Dv), row by row.

    vmf (HSAttn, Eq. 1): out_i = g(sum_j w_ij v_j), w_ij ∝ exp(kappa cos(q_i, k_j)), g = L2 normalisation.
    plain: out_i = sum_j w_ij v_j, w_ij ∝ exp(q_i . k_j / sqrt(D)).
    """
    q, k, v = q.double(), k.double(), v.double()
    out = torch.zeros(q.shape[0], v.shape[1], dtype=torch.float64)
    for i in range(q.shape[0]):
        if vmf:
            scores = [kappa * float(_unit(q[i]) @ _unit(k[j])) for j in range(k.shape[0])]
        else:
            scores = [float(q[i] @ k[j]) / math.sqrt(q.shape[1]) for j in range(k.shape[0])]
        logits = torch.tensor(scores, dtype=torch.float64)
        weights = (logits - logits.max()).exp()
        weights = weights / weights.sum()
        mean = sum(weights[j] * v[j] for j in range(k.shape[0]))
        out[i] = _unit(mean) if vmf else mean
    return out


def nearest_code(z: Tensor, codebook: Tensor, *, vmf: bool) -> Tensor:
    """(N, D) features, (K, D) codes -> (N,) index of the largest cosine (vmf) or the smallest Euclidean distance."""
    z, codebook = z.double(), codebook.double()
    out = torch.zeros(z.shape[0], dtype=torch.long)
    for i in range(z.shape[0]):
        if vmf:
            scores = [float(_unit(z[i]) @ _unit(codebook[j])) for j in range(codebook.shape[0])]
            out[i] = max(range(len(scores)), key=scores.__getitem__)
        else:
            dists = [float(((z[i] - codebook[j]) ** 2).sum()) for j in range(codebook.shape[0])]
            out[i] = min(range(len(dists)), key=dists.__getitem__)
    return out


# ---------------------------------------------------------------------------------------------- toy inputs
TOY_COLORS = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.8, 0.2], [0.1, 0.2, 0.9], [0.9, 0.9, 0.2]])


def toy_batch(size: int = 64, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Two images (2, 3, size, size) in [0, 1] of flat coloured regions, one colour per class, with light noise,
    and their labels (2, size, size) in 0..3: a batch a tiny model can overfit."""
    gen = torch.Generator().manual_seed(seed)
    h = size // 2
    labels = torch.zeros(2, size, size, dtype=torch.long)
    labels[0, :, h:] = 1
    labels[0, size * 5 // 8 :, : size * 5 // 16] = 2
    labels[1, :h] = 3
    labels[1, h:, h:] = 2
    images = TOY_COLORS[labels].permute(0, 3, 1, 2)
    images = images + 0.05 * torch.randn(images.shape, generator=gen)
    return images.clamp(0, 1).contiguous(), labels


def unit_rows(num: int, dim: int, seed: int = 0) -> Tensor:
    """(num, dim) random L2-normalised rows, standing in for template-averaged class text embeddings."""
    rows = torch.randn(num, dim, generator=torch.Generator().manual_seed(seed))
    return rows / rows.norm(dim=-1, keepdim=True)
