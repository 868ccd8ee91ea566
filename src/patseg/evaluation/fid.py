"""Reconstruction FID (rFID): Frechet distance between Inception features of originals and reconstructions.

FID = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) on 2048-d pool3 features, S the unbiased covariance, all in
float64 with scipy's ``sqrtm``; if the product's square root is not finite, 1e-6 * I is added to both covariances,
and an imaginary diagonal above 1e-3 is an error, otherwise the real part is kept (mseitzer/pytorch-fid
``src/pytorch_fid/fid_score.py``, 0.3.0).

The feature extractor is the FID Inception-v3 ("pt_inception-2015-12-05", the TF graph ported by pytorch-fid):
torchvision's Inception3 structure (1008 classes, no aux head) whose Mixed_5*, Mixed_6b-e and Mixed_7b pool without
counting padding and whose Mixed_7c max-pools its pool branch (pytorch-fid ``src/pytorch_fid/inception.py``).
Inputs in [0, 1] are resized to 299 bilinearly (align_corners=False) and mapped to [-1, 1]. The weights
``pt_inception-2015-12-05-6726825d.pth`` are read from a local file; nothing is downloaded. Any module mapping
(B, 3, H, W) in [0, 1] to (B, D) can replace it (tests use a small random one). N is reported with every number:
with N < 2048 the covariance is rank-deficient and FID is biased upward.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.inception import Inception3, InceptionA, InceptionC, InceptionE

from patseg.evaluation.sem_seg import all_reduce_sum

FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{FID_WEIGHTS_NAME}"


class GaussianStats(NamedTuple):
    mu: np.ndarray  # (D,) float64
    sigma: np.ndarray  # (D, D) float64, unbiased
    n: int


class RFIDResult(NamedTuple):
    fid: float
    num_images: int


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"mismatched statistics: {mu1.shape} vs {mu2.shape}, {sigma1.shape} vs {sigma2.shape}")
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():  # singular product: regularise both covariances
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        max_imag = np.abs(np.diagonal(covmean).imag).max()
        if max_imag > 1e-3:
            raise ValueError(f"matrix square root has an imaginary component {max_imag:.3g}")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


class FeatureMoments:
    """Running float64 sums of features and their outer products, reduced to mean and covariance at the end."""

    def __init__(self) -> None:
        self.n = 0
        self.total: torch.Tensor | None = None  # (D,)
        self.outer: torch.Tensor | None = None  # (D, D)

    def update(self, features: torch.Tensor) -> None:
        """Add features (B, D)."""
        f = features.detach().to("cpu", torch.float64).flatten(1)
        if self.total is None:
            self.total = torch.zeros(f.shape[1], dtype=torch.float64)
            self.outer = torch.zeros(f.shape[1], f.shape[1], dtype=torch.float64)
        self.n += f.shape[0]
        self.total += f.sum(0)
        self.outer += f.T @ f

    def stats(self) -> GaussianStats:
        """Mean and unbiased covariance over every process's features."""
        if self.total is None:
            raise ValueError("no features were added")
        n = int(all_reduce_sum(torch.tensor([self.n], dtype=torch.float64)).item())
        if n < 2:
            raise ValueError(f"a covariance needs at least 2 samples, got {n}")
        total, outer = all_reduce_sum(self.total).numpy(), all_reduce_sum(self.outer).numpy()
        mu = total / n
        sigma = (outer - n * np.outer(mu, mu)) / (n - 1)
        return GaussianStats(mu, sigma, n)


class ReconstructionFID:
    """rFID between originals and their reconstructions; ``extractor``: (B, 3, H, W) in [0, 1] -> (B, D)."""

    def __init__(self, extractor: nn.Module) -> None:
        self.extractor = extractor
        self.real, self.fake = FeatureMoments(), FeatureMoments()

    @torch.no_grad()
    def update(self, originals: torch.Tensor, reconstructions: torch.Tensor) -> None:
        """Add a batch of originals and reconstructions, both (B, 3, H, W) in [0, 1]."""
        if originals.shape != reconstructions.shape:
            raise ValueError(f"originals {tuple(originals.shape)} and reconstructions {tuple(reconstructions.shape)}")
        self.real.update(self.extractor(originals))
        self.fake.update(self.extractor(reconstructions))

    def compute(self) -> RFIDResult:
        real, fake = self.real.stats(), self.fake.stats()
        return RFIDResult(frechet_distance(real.mu, real.sigma, fake.mu, fake.sigma), real.n)


# --- FID Inception-v3 -------------------------------------------------------------------------------------------


def _avg_pool_no_pad(x: torch.Tensor) -> torch.Tensor:
    # the TF graph averages only over real pixels at the borders
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(InceptionA):
    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return [self.branch1x1(x), branch5x5, branch3x3dbl, self.branch_pool(_avg_pool_no_pad(x))]


class FIDInceptionC(InceptionC):
    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        dbl = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            dbl = layer(dbl)
        return [self.branch1x1(x), branch7x7, dbl, self.branch_pool(_avg_pool_no_pad(x))]


class FIDInceptionE(InceptionE):
    """Mixed_7b (``max_pool=False``) and Mixed_7c (``max_pool=True``) of the FID graph."""

    def __init__(self, in_channels: int, max_pool: bool = False) -> None:
        super().__init__(in_channels)
        self.max_pool = max_pool

    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        b3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat([self.branch3x3dbl_3a(dbl), self.branch3x3dbl_3b(dbl)], 1)
        if self.max_pool:
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            pooled = _avg_pool_no_pad(x)
        return [self.branch1x1(x), branch3x3, branch3x3dbl, self.branch_pool(pooled)]


# Inception3's layers up to the pool3 features (no dropout, no fc)
_POOL3_PATH = (
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2",
    "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
    "Mixed_7a", "Mixed_7b", "Mixed_7c", "avgpool",
)


class FIDInceptionV3(nn.Module):
    """Images (B, 3, H, W) in [0, 1] -> pool3 features (B, 2048) of the FID Inception graph."""

    def __init__(self) -> None:
        super().__init__()
        net = Inception3(num_classes=1008, aux_logits=False, init_weights=False)
        net.Mixed_5b, net.Mixed_5c, net.Mixed_5d = (
            FIDInceptionA(192, pool_features=32),
            FIDInceptionA(256, pool_features=64),
            FIDInceptionA(288, pool_features=64),
        )
        net.Mixed_6b, net.Mixed_6c = FIDInceptionC(768, channels_7x7=128), FIDInceptionC(768, channels_7x7=160)
        net.Mixed_6d, net.Mixed_6e = FIDInceptionC(768, channels_7x7=160), FIDInceptionC(768, channels_7x7=192)
        net.Mixed_7b, net.Mixed_7c = FIDInceptionE(1280), FIDInceptionE(2048, max_pool=True)
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2.0 * x - 1.0
        for name in _POOL3_PATH:
            x = getattr(self.net, name)(x)
        return x.flatten(1)


def load_fid_inception(path: str | os.PathLike) -> FIDInceptionV3:
    """The FID Inception in eval mode with the pytorch-fid weights from the local file ``path``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"FID Inception weights not found at {path}; download {FID_WEIGHTS_NAME} once from {FID_WEIGHTS_URL} "
            "(pytorch-fid's release) and pass its path"
        )
    model = FIDInceptionV3()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.net.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)
