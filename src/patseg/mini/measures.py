"""Measures of PAT's tokenizer on OVSS-mini: reconstruction PSNR, a Fréchet distance between embedding sets, and
codebook usage.

The paper judges the detachable tokenizer by reconstruction quality (rFID) and by how much of its codebook it uses.
OVSS-mini has no Inception network and no natural images, so it measures the same things at its own scale:

- ``psnr`` of reconstructed scenes against the originals;
- ``frechet_distance`` between two sets of embeddings; the mini benchmark feeds it the mini CLIP's image embeddings
  of originals and of reconstructions, a small analogue of rFID (same formula, different feature space, so the
  numbers are not comparable with published rFID);
- ``codebook_usage``: perplexity, used and dead codes of the code assignments.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy.linalg import LinAlgWarning, sqrtm


def psnr(reference: np.ndarray, estimate: np.ndarray, peak: float = 255.0) -> float:
    """Peak signal-to-noise ratio (dB) of ``estimate`` against ``reference``: 10 log10(peak^2 / MSE).

    Both are images (H, W, 3) or batches (N, H, W, 3) of one shape, normally uint8 with ``peak`` 255 (any real
    dtype works; the difference is taken in float64, so uint8 does not wrap around). The MSE is pooled over every
    pixel and channel of every image before the logarithm, i.e. the PSNR of the whole batch as one signal, not the
    mean of per-image PSNRs (which a single near-perfect image would dominate, its PSNR tending to infinity).
    Identical inputs give inf.
    """
    ref, est = np.asarray(reference), np.asarray(estimate)
    if ref.shape != est.shape:
        raise ValueError(f"reference {ref.shape} and estimate {est.shape} differ in shape")
    if ref.ndim not in (3, 4) or ref.shape[-1] != 3:
        raise ValueError(f"expected (H, W, 3) or (N, H, W, 3) images, got shape {ref.shape}")
    if ref.size == 0:
        raise ValueError("no pixels to compare")
    if peak <= 0:
        raise ValueError(f"peak must be positive, got {peak}")
    mse = float(np.mean((ref.astype(np.float64) - est.astype(np.float64)) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(peak * peak / mse)


def _mean_and_cov(feats: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(feats, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be (N, D) embeddings, got shape {x.shape}")
    if x.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 embeddings for a covariance, got {x.shape[0]}")
    # Unbiased covariance (ddof=1), as pytorch-fid and torchmetrics compute it.
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def _sqrtm_real(matrix: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        # A singular product warns and may come back inf; the caller checks and retries, as pytorch-fid does.
        warnings.simplefilter("ignore", LinAlgWarning)
        root = sqrtm(matrix)
    return np.real(root)


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to ``feats_a`` (N, D) and ``feats_b`` (M, D).

    d^2 = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2}) with means mu and unbiased covariances S (the FID
    formula). The square root is scipy's ``sqrtm``; its imaginary part, numerical noise for a product of two
    covariance matrices (whose eigenvalues are real and >= 0), is dropped. When the root is not finite (a singular
    product, e.g. N <= D), ``eps * I`` is added to both covariances and the root taken again, as in pytorch-fid.
    With few embeddings the covariances are noisy and the distance is biased upward; compare values computed from
    equal N. Not clamped: identical sets can give a tiny negative number.

    The mini benchmark computes it in the mini CLIP's image-embedding space, a small analogue of rFID.
    """
    mu_a, cov_a = _mean_and_cov(feats_a, "feats_a")
    mu_b, cov_b = _mean_and_cov(feats_b, "feats_b")
    if mu_a.shape != mu_b.shape:
        raise ValueError(f"embedding sizes differ: {mu_a.shape[0]} and {mu_b.shape[0]}")
    root = _sqrtm_real(cov_a @ cov_b)
    if not np.isfinite(root).all():
        offset = eps * np.eye(cov_a.shape[0])
        root = _sqrtm_real((cov_a + offset) @ (cov_b + offset))
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(root))


@dataclass(frozen=True)
class CodebookUsage:
    """Code histogram ``counts`` (K,) int64, ``used`` = codes with a count > 0, ``dead`` = K - used, and
    ``perplexity`` = exp(entropy of the histogram, natural log): K for uniform use, 1 for a single code."""

    perplexity: float
    used: int
    dead: int
    counts: np.ndarray


def codebook_usage(indices: np.ndarray, codebook_size: int) -> CodebookUsage:
    """Usage of a codebook of ``codebook_size`` codes by the assignments ``indices`` (any shape, ints 0..K-1).

    Every position counts once (pool all images and all token positions into one array to measure a dataset).
    The perplexity is the effective number of codes in use; with no positions it is NaN.
    """
    idx = np.asarray(indices)
    if codebook_size < 1:
        raise ValueError(f"codebook_size must be >= 1, got {codebook_size}")
    if idx.size and not np.issubdtype(idx.dtype, np.integer):
        raise TypeError(f"code indices must be integers, got {idx.dtype}")
    flat = idx.reshape(-1).astype(np.int64)
    if flat.size and (int(flat.min()) < 0 or int(flat.max()) >= codebook_size):
        bad = int(flat.min()) if int(flat.min()) < 0 else int(flat.max())
        raise ValueError(f"code index {bad} outside the codebook (0..{codebook_size - 1})")
    counts = np.bincount(flat, minlength=codebook_size).astype(np.int64)
    used = int(np.count_nonzero(counts))
    if flat.size == 0:
        perplexity = math.nan
    else:
        p = counts[counts > 0] / flat.size
        perplexity = float(np.exp(-np.sum(p * np.log(p))))
    return CodebookUsage(perplexity=perplexity, used=used, dead=codebook_size - used, counts=counts)
