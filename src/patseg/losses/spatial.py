"""Spatial-alignment losses: a sampled dense-CRF energy and total variation (PAT §III, "Spatial Alignment Loss").

PAT aligns each stage's quantized codes z_q_s with the input image "by CRF and TV losses [38]", [38] being FeatUp.
Facts from mhamilton723/FeatUp ``featup/losses.py`` (``SampledCRFLoss``, ``total_variation``) and
``featup/train_jbu_upsampler.py`` (the defaults):

- CRF: draw N pixels uniformly with replacement (one set for the whole batch); with positions p_i = (row/H, col/W)
  and guidance colours I_i (the ImageNet-normalised image at the feature grid), the kernel is
  ``k_ij = w1 exp(-|p_i - p_j|^2 / 2α - |I_i - I_j|^2 / 2β) + w2 exp(-|p_i - p_j|^2 / 2γ)`` (α, β, γ are variances;
  FeatUp's ``shift`` is 0 and omitted), and the loss is the mean over (b, i, j) of ``k_ij |F_i - F_j|^2``.
  Defaults N = 1000, α = 0.1, β = 0.15, γ = 0.005, w1 = 10, w2 = 3.
- TV: squared forward differences along H and W, summed, divided by the full element count B*C*H*W.

Our choices: |F_i - F_j|^2 uses the Gram form |F_i|^2 + |F_j|^2 - 2 F_i.F_j, because the literal (B, C, N, N)
difference tensor is gigabytes; the kernel is built without gradient (it is a fixed affinity, as in FeatUp); no
random 30-d projection of the features (FeatUp needs it for 384-d+ backbones, PAT's codes are already 32-d); both
losses run in float32 under autocast, as the Gram form cancels catastrophically in bf16.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class InnerWeights(NamedTuple):
    """Weights of CRF and TV inside one stage's spatial term."""

    crf: float
    tv: float


# The paper gives only the group weight of CRF + TV (0.1): the inner weights are a named choice, loss.spatial_inner.
SPATIAL_INNER_WEIGHTS: dict[str, InnerWeights] = {
    "equal": InnerWeights(crf=1.0, tv=1.0),  # the two terms count alike
    # FeatUp's own JBU training (mhamilton723/FeatUp featup/configs/jbu_upsampler.yaml: crf_weight 0.001, tv_weight 0.0)
    "featup": InnerWeights(crf=0.001, tv=0.0),
}


class SpatialLoss(NamedTuple):
    """Weighted spatial-alignment terms for one feature map: ``total = crf + tv`` (each already weighted)."""

    crf: Tensor
    tv: Tensor
    total: Tensor


def imagenet_normalize(images01: Tensor) -> Tensor:
    """``(B, 3, H, W)`` images in [0, 1] -> ImageNet-normalised images, the guidance scale FeatUp's β assumes."""
    mean = images01.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images01.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images01 - mean) / std


def sample_pixels(
    height: int,
    width: int,
    num_points: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
) -> Tensor:
    """The pixels :func:`crf_loss` samples: ``(num_points,)`` flat indices ``row * width + col``, uniform, with
    replacement. Drawn on the generator's device when one is given (then moved to ``device``)."""
    draw_device = generator.device if generator is not None else device
    flat = torch.randint(height * width, (num_points,), generator=generator, device=draw_device)
    return flat if device is None else flat.to(device)


def _squared_distances(points: Tensor) -> Tensor:
    """Pairwise squared Euclidean distances ``(..., N, C)`` -> ``(..., N, N)`` by the Gram identity."""
    sq_norms = points.pow(2).sum(-1)
    gram = points @ points.transpose(-1, -2)
    return sq_norms.unsqueeze(-1) + sq_norms.unsqueeze(-2) - 2.0 * gram


def crf_loss(
    guidance: Tensor,
    feats: Tensor,
    *,
    num_points: int = 1000,
    alpha: float = 0.1,
    beta: float = 0.15,
    gamma: float = 0.005,
    w1: float = 10.0,
    w2: float = 3.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sampled dense-CRF energy pulling features together where the image is alike and pixels are close.

    Arguments:
        guidance: ``(B, 3, H, W)`` ImageNet-normalised image already resized to the feature grid (no gradient used).
        feats: ``(B, C, H, W)`` features, e.g. a stage's quantized codes z_q_s.
        num_points: N, pixels sampled with replacement (the same set for every image of the batch).
        alpha, beta, gamma: variances of the appearance-position, appearance-colour and smoothness kernels.
        w1, w2: weights of the appearance and smoothness kernels.
        generator: random source for the pixel draw; :func:`sample_pixels` with an equally seeded generator
            reproduces the draw.
    Returns:
        scalar, ``mean_{b,i,j} k_ij |F_i - F_j|^2``.
    """
    if guidance.shape[0] != feats.shape[0] or guidance.shape[-2:] != feats.shape[-2:]:
        raise ValueError(f"guidance {tuple(guidance.shape)} and feats {tuple(feats.shape)} must share B, H, W")
    height, width = feats.shape[-2:]
    flat = sample_pixels(height, width, num_points, generator=generator, device=feats.device)

    with torch.autocast(device_type=feats.device.type, enabled=False):
        dtype = torch.promote_types(feats.dtype, torch.float32)
        with torch.no_grad():
            rows = torch.div(flat, width, rounding_mode="floor")
            cols = flat - rows * width
            positions = torch.stack([rows.to(dtype) / height, cols.to(dtype) / width], dim=-1)  # (N, 2)
            colours = guidance.flatten(2)[:, :, flat].transpose(1, 2).to(dtype)  # (B, N, 3)
            position_sq = _squared_distances(positions).clamp_min(0)  # (N, N)
            colour_sq = _squared_distances(colours).clamp_min(0)  # (B, N, N)
            kernel = w1 * torch.exp(-position_sq / (2 * alpha) - colour_sq / (2 * beta)) + w2 * torch.exp(
                -position_sq / (2 * gamma)
            )  # (B, N, N)
        sampled = feats.flatten(2)[:, :, flat].transpose(1, 2).to(dtype)  # (B, N, C)
        return (kernel * _squared_distances(sampled)).mean()


def tv_loss(x: Tensor) -> Tensor:
    """Total variation ``(B, C, H, W)`` -> scalar: squared forward differences along H and W over B*C*H*W."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.to(torch.promote_types(x.dtype, torch.float32))
        down = (x[:, :, 1:, :] - x[:, :, :-1, :]).pow(2).sum()
        right = (x[:, :, :, 1:] - x[:, :, :, :-1]).pow(2).sum()
        return (down + right) / x.numel()


def spatial_alignment_loss(
    images01: Tensor,
    feats: Tensor,
    *,
    crf_weight: float = 1.0,
    tv_weight: float = 1.0,
    num_points: int = 1000,
    generator: torch.Generator | None = None,
) -> SpatialLoss:
    """CRF + TV of one feature map against the image: the per-stage term of PAT's L_spatial.

    Arguments:
        images01: ``(B, 3, H_img, W_img)`` input images in [0, 1].
        feats: ``(B, C, H, W)`` a stage's quantized codes z_q_s.
    Returns:
        :class:`SpatialLoss` with ``crf_weight * crf``, ``tv_weight * tv`` and their sum. A term whose weight is 0
        is not computed (a constant 0; a CRF left out draws no pixels).

    The guidance is the image resized to the feature grid with antialiasing (a plain bilinear shrink by 8 would
    alias high-frequency texture into the colour kernel) and then ImageNet-normalised, as FeatUp's β expects.
    """
    zero = torch.zeros((), dtype=torch.promote_types(feats.dtype, torch.float32), device=feats.device)
    crf, tv = zero, zero
    if crf_weight != 0:
        resized = F.interpolate(images01, size=feats.shape[-2:], mode="bilinear", align_corners=False, antialias=True)
        crf = crf_weight * crf_loss(imagenet_normalize(resized), feats, num_points=num_points, generator=generator)
    if tv_weight != 0:
        tv = tv_weight * tv_loss(feats)
    return SpatialLoss(crf=crf, tv=tv, total=crf + tv)
