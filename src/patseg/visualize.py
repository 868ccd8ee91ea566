"""The paper's feature figures for one image (Fig. 1 and Fig. 6).

Per pyramid stage: the PCA (3 components as RGB) of the raw CLIP tap beside the PCA of the tokenized features
z_q_s and the code-index map (Fig. 1), and k-means clusters of the CLIP features beside the token clusters, i.e.
the code assignment (Fig. 6). PCA uses one SVD per map; k-means is scipy's ``kmeans2`` (k-means++ seeding).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from scipy.cluster.vq import kmeans2
from torch import Tensor

from patseg.images import palette
from patseg.models.pat.geometry import STAGES
from patseg.models.pat.model import PAT


@dataclass
class StageMaps:
    """(h, w, 3) uint8 panels for one stage, plus the code-index map (h, w)."""

    clip_pca: np.ndarray
    token_pca: np.ndarray
    codes: np.ndarray
    clip_kmeans: np.ndarray
    token_clusters: np.ndarray


def pca_rgb(features: Tensor) -> np.ndarray:
    """(C, h, w) features -> (h, w, 3) uint8: the first three principal components, each min-max scaled."""
    c, h, w = features.shape
    x = features.reshape(c, -1).t().double()
    x = x - x.mean(0, keepdim=True)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    proj = x @ v[: min(3, v.shape[0])].t()
    if proj.shape[1] < 3:
        proj = torch.cat([proj, proj.new_zeros(proj.shape[0], 3 - proj.shape[1])], 1)
    lo, hi = proj.min(0).values, proj.max(0).values
    proj = (proj - lo) / (hi - lo).clamp_min(1e-12)
    return (proj.reshape(h, w, 3).numpy() * 255 + 0.5).astype(np.uint8)


def kmeans_labels(features: Tensor, k: int, seed: int = 0) -> np.ndarray:
    """(C, h, w) -> (h, w) cluster index by k-means on L2-normalised feature vectors."""
    c, h, w = features.shape
    x = F.normalize(features.reshape(c, -1).t().double(), dim=1).numpy()
    _, labels = kmeans2(x, k, minit="++", seed=seed)
    return labels.reshape(h, w)


def colour_labels(labels: np.ndarray, n: int) -> np.ndarray:
    return palette(max(n, 1))[labels % max(n, 1)]


@torch.inference_mode()
def stage_maps(model: PAT, image01: Tensor, k: int = 8) -> dict[str, StageMaps]:
    """image01: (1, 3, H, W) in [0, 1], H and W multiples of 32 -> stage name -> StageMaps."""
    model.eval()
    enc = model.encode_pyramid(image01)
    out = {}
    for name, depth in zip(STAGES, model.pixel_branch.tap_indices):
        tap = enc.feats.taps[depth][0].float()
        zq = enc.pixel[name].quant.z_q[0].float()
        codes = enc.pixel[name].quant.indices[0].cpu().numpy()
        used = np.unique(codes)
        remap = np.searchsorted(used, codes)  # colour by rank among the codes in use
        out[name] = StageMaps(
            clip_pca=pca_rgb(tap.cpu()),
            token_pca=pca_rgb(zq.cpu()),
            codes=codes,
            clip_kmeans=colour_labels(kmeans_labels(tap.cpu(), k), k),
            token_clusters=colour_labels(remap, len(used)),
        )
    return out


def figure(image: np.ndarray, maps: StageMaps, title: str, cell: int = 192) -> Image.Image:
    """One row: image | CLIP PCA | token PCA | code indices | CLIP k-means, each ``cell`` pixels tall."""
    panels = [
        ("image", image),
        ("CLIP PCA", maps.clip_pca),
        ("tokens PCA", maps.token_pca),
        ("CLIP k-means", maps.clip_kmeans),
        ("token clusters", maps.token_clusters),
    ]
    w = round(cell * image.shape[1] / image.shape[0])
    canvas = Image.new("RGB", (len(panels) * (w + 4), cell + 36), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 2), title, fill=(0, 0, 0))
    for i, (label, arr) in enumerate(panels):
        resample = Image.Resampling.BILINEAR if label == "image" else Image.Resampling.NEAREST
        canvas.paste(Image.fromarray(arr).resize((w, cell), resample), (i * (w + 4), 16))
        draw.text((i * (w + 4) + 2, cell + 20), label, fill=(0, 0, 0))
    return canvas
