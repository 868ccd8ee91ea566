"""``patseg reproduce --tiny``'s own data: generated scenes in the prepared layouts, and random Inception weights.

The scenes are OVSS-mini's (:class:`patseg.mini.scenes.SyntheticSegmentation`); world concept i becomes class id i
of every benchmark (all have at least 32 classes). They are written where ``patseg prepare`` would put the real
sets (:mod:`patseg.data.registry`): COCO-Stuff train and val (val feeds rFID), and the validation splits of the four
zero-shot benchmarks, with uint8 PNG labels, or uint16 TIFF labels for ADE20K-847 and Pascal Context-459.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from patseg.atomic import atomic_path, atomic_write_json
from patseg.data.prepare.common import write_jpeg, write_label
from patseg.data.registry import get_dataset_spec
from patseg.reproduce.rows import BENCHMARKS

logger = logging.getLogger(__name__)

MARKER = "tiny-data.json"  # written last: its presence means the folder is complete
INCEPTION_FILE = "pt_inception-random.pth"
SPLITS: tuple[tuple[str, str], ...] = (("coco_stuff_171", "train"), ("coco_stuff_171", "val")) + tuple(
    (name, "val") for name in BENCHMARKS
)


def write_split(root: Path, dataset: str, split: str, count: int, size: int, seed: int) -> None:
    """``count`` generated scenes of ``size`` px as ``dataset``/``split`` under ``root``, in its prepared layout."""
    from patseg.mini.scenes import SyntheticSegmentation
    from patseg.mini.world import WorldConfig

    spec = get_dataset_spec(dataset)
    layout = spec.split(split)
    images, labels = root / layout.image_dir, root / layout.label_dir
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    scenes = SyntheticSegmentation(WorldConfig(), split, count, size, seed)
    for i in range(count):
        item = scenes[i]
        write_jpeg(images / f"{i:06d}{spec.image_ext}", np.ascontiguousarray(item["image"].permute(1, 2, 0).numpy()))
        write_label(labels / f"{i:06d}{spec.label_ext}", item["label"].numpy().astype(spec.label_dtype))


def write_random_inception(path: Path, seed: int = 0) -> None:
    """FID Inception-v3 weights drawn at random, scaled so that activations stay O(1) through its 94 convolutions
    (He-normal convolutions, near-identity batch norms): rFID then runs its real arithmetic without the file."""
    import torch
    from torchvision.models.inception import Inception3

    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in Inception3(num_classes=1008, aux_logits=False, init_weights=False).state_dict().items():
        if key.endswith("num_batches_tracked"):
            state[key] = value
        elif key.endswith("conv.weight") or key == "fc.weight":
            state[key] = torch.randn(value.shape, generator=gen) * (2.0 / value[0].numel()) ** 0.5
        elif key.endswith(("bn.weight", "running_var")):
            state[key] = 1 + 0.1 * torch.rand(value.shape, generator=gen)
        else:  # batch-norm bias and running mean, fc bias
            state[key] = 0.1 * torch.randn(value.shape, generator=gen)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def ensure_tiny_data(root: Path, *, train_images: int, val_images: int, size: int, inception: bool) -> None:
    """Generate the tiny data under ``root`` unless an earlier call completed it (the marker file says so)."""
    settings = {"train_images": train_images, "val_images": val_images, "size": size}
    marker = root / MARKER
    done = json.loads(marker.read_text(encoding="utf-8")) if marker.is_file() else None
    if done != settings:
        logger.info("generating the tiny data sets in %s", root)
        for seed, (dataset, split) in enumerate(SPLITS):
            count = train_images if split == "train" else val_images
            write_split(root, dataset, split, count, size, seed)
        atomic_write_json(marker, settings)
    if inception and not (root / INCEPTION_FILE).is_file():
        logger.info("writing random FID Inception weights to %s", root / INCEPTION_FILE)
        write_random_inception(root / INCEPTION_FILE)
