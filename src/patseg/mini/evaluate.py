"""OVSS-mini's evaluation of one trained model on scenes with every concept.

Besides zero-shot mIoU (seen, unseen, all, hIoU) it measures what PAT claims to change:

- boundary IoU (Cheng et al., 2021) beside mIoU, since PAT predicts masks on a finer grid than SAN;
- for PAT, the tokenizer: PSNR of its reconstructions, a Fréchet distance between the mini CLIP's image embeddings
  of the scenes and of their reconstructions (the mini analogue of rFID, which uses Inception features), and the
  usage of each codebook over the evaluation scenes (perplexity and dead codes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from patseg.evaluation import SemSegEvaluator
from patseg.evaluation.boundary import BoundaryIoU
from patseg.mini.clip_pretrain import create_mini_clip
from patseg.mini.measures import codebook_usage, frechet_distance, psnr
from patseg.mini.scenes import SyntheticSegmentation
from patseg.mini.world import WorldConfig
from patseg.models.pat.model import PAT, PatOutput
from patseg.models.san.model import SAN
from patseg.predictor import Inference, Segmenter

VAL_SEED = 10_000  # the evaluation scenes are the same for every training seed
IGNORE = 255


class MiniClipEmbedder:
    """The mini CLIP's image tower: (N, H, W, 3) uint8 scenes -> (N, D) float64 embeddings (for mini-rFID).

    Scenes are resized to the tower's input size, as its pretraining views were."""

    def __init__(self, weights: Path) -> None:
        self.model = create_mini_clip(weights).eval()
        cfg = self.model.visual.preprocess_cfg
        self.mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
        size = self.model.visual.image_size
        self.size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)

    @torch.inference_mode()
    def __call__(self, images: np.ndarray, batch: int = 64) -> np.ndarray:
        out = []
        for start in range(0, len(images), batch):
            x = torch.from_numpy(images[start : start + batch]).permute(0, 3, 1, 2).float() / 255.0
            if tuple(x.shape[-2:]) != self.size:
                x = F.interpolate(x, size=self.size, mode="bilinear", antialias=True, align_corners=False)
            out.append(self.model.encode_image((x - self.mean) / self.std).double())
        return torch.cat(out).numpy()


def _mean_over(per_class: dict[str, float], subset: Sequence[str]) -> float:
    values = [per_class[n] for n in subset if not math.isnan(per_class[n])]
    return float(np.mean(values)) if values else float("nan")


def _harmonic(seen: float, unseen: float) -> float:
    return 2 * seen * unseen / (seen + unseen) if seen + unseen > 0 else 0.0


class _TokenizerProbe:
    """Collects PAT's reconstructions and code indices over the evaluation scenes."""

    def __init__(self, model: PAT) -> None:
        options = model.config.pat
        assert options is not None  # a PAT model's config has its PAT section
        self.sizes = dict(zip(("early", "mid", "late"), options.codebook_sizes))
        self.sizes["latent"] = options.latent_codebook_size
        self.codes: dict[str, list[np.ndarray]] = {name: [] for name in self.sizes}
        self.real: list[np.ndarray] = []
        self.recon: list[np.ndarray] = []

    def add(self, image: np.ndarray, inference: Inference) -> None:
        out = inference.output
        assert isinstance(out, PatOutput) and out.reconstruction is not None
        h, w = inference.valid
        recon = out.reconstruction[0, :, :h, :w].float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
        self.real.append(image)
        self.recon.append((recon * 255 + 0.5).astype(np.uint8))
        for name in self.codes:
            self.codes[name].append(out.quant[name].indices.cpu().numpy().ravel())

    def results(self, embedder: MiniClipEmbedder | None) -> dict:
        real, recon = np.stack(self.real), np.stack(self.recon)
        usage = {}
        for name, size in self.sizes.items():
            u = codebook_usage(np.concatenate(self.codes[name]), size)
            usage[name] = {"perplexity": float(u.perplexity), "used": int(u.used), "dead": int(u.dead), "size": size}
        result: dict = {"psnr": float(psnr(real, recon)), "codebooks": usage}
        if embedder is not None:
            result["mini_rfid"] = float(frechet_distance(embedder(real), embedder(recon)))
        return result


@torch.inference_mode()
def evaluate_mini(
    model: SAN, world: WorldConfig, num_scenes: int, image_size: int, embedder: MiniClipEmbedder | None = None
) -> dict:
    """Zero-shot mIoU and boundary IoU (percent) on ``num_scenes`` scenes with every concept; for PAT also the
    tokenizer's ``psnr``, ``mini_rfid`` (with an ``embedder``) and ``codebooks`` usage."""
    names = list(world.concept_names)
    val = SyntheticSegmentation(world, "val", num_scenes, image_size, VAL_SEED)
    segmenter = Segmenter(model, names, short_side=image_size, max_long_side=4 * image_size)
    miou = SemSegEvaluator(len(names), IGNORE, class_names=names)
    biou = BoundaryIoU(len(names), IGNORE)
    probe = _TokenizerProbe(model) if isinstance(model, PAT) else None
    for i in range(len(val)):
        item = val[i]
        image, label = item["image"].permute(1, 2, 0).numpy(), item["label"].numpy()
        inference = segmenter.infer(image, reconstruct=probe is not None)
        pred = segmenter.labels(inference)
        miou.update(pred, label)
        biou.update(pred, label)
        if probe is not None:
            probe.add(image, inference)
    per_class = miou.compute()["per_class"]
    boundary = dict(zip(names, biou.compute()["per_class"]))
    seen, unseen = _mean_over(per_class, world.seen_names), _mean_over(per_class, world.unseen_names)
    metrics: dict = {
        "seen": seen,
        "unseen": unseen,
        "all": _mean_over(per_class, names),
        "hIoU": _harmonic(seen, unseen),
    }
    metrics.update(
        {
            "bIoU_seen": _mean_over(boundary, world.seen_names),
            "bIoU_unseen": _mean_over(boundary, world.unseen_names),
            "bIoU_all": _mean_over(boundary, names),
            "per_class": per_class,
        }
    )
    if probe is not None:
        metrics["tokenizer"] = probe.results(embedder)
    return metrics
