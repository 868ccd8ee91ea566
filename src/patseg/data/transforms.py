"""Paired image/label transforms of SAN's training pipeline, and the batch collate.

Training (Mask2Former's ``MaskFormerSemanticDatasetMapper`` as configured by MendelXu/SAN
``configs/Base-coco-stuff-164K-171.yaml``): resize the shorter side to a size drawn from {320, 384, ..., 960}
(long side <= 2560), random 640x640 crop, SSD colour jitter, horizontal flip, pad to 640x640 with 128 (image) and the
ignore label. The test resize (detectron2's default mapper) is not a dataset transform: ``patseg.Segmenter`` resizes
each whole image itself. Every size is a parameter so that tiny tests and the OVSS-mini benchmark can use 64-128 px
crops.

Images are uint8 tensors (3, H, W), labels int64 tensors (H, W). Resizing goes through PIL (bilinear for images,
nearest for labels), which is what detectron2's ``ResizeTransform`` uses.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from patseg.data.color import ColorAugSSD
from patseg.resize import shortest_edge_size

IMAGE_PAD_VALUE = 128  # uint8 value of padded image pixels (Mask2Former semantic mapper)


def san_short_sides(crop_size: int) -> tuple[int, ...]:
    """SAN's short-side choices: int(x * 0.1 * crop) for x = 5..15, i.e. 320..960 for a 640 crop."""
    return tuple(int(x * 0.1 * crop_size) for x in range(5, 16))


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear PIL resize of a uint8 image (3, H, W) to ``size`` = (H', W')."""
    if tuple(image.shape[1:]) == tuple(size):
        return image
    pil = Image.fromarray(image.permute(1, 2, 0).numpy())
    out = np.asarray(pil.resize((size[1], size[0]), Image.Resampling.BILINEAR))
    return torch.from_numpy(out.copy()).permute(2, 0, 1).contiguous()


def resize_label(label: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour PIL resize of an int64 label map (H, W) to ``size`` = (H', W')."""
    if tuple(label.shape) == tuple(size):
        return label
    pil = Image.fromarray(label.numpy().astype(np.int32), mode="I")
    out = np.asarray(pil.resize((size[1], size[0]), Image.Resampling.NEAREST))
    return torch.from_numpy(out.astype(np.int64))


def pad_pair(
    image: torch.Tensor, label: torch.Tensor, size: tuple[int, int], ignore_label: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad image (3, H, W) and label (H, W) on the bottom/right to at least ``size`` = (H', W')."""
    pad_h, pad_w = max(size[0] - image.shape[1], 0), max(size[1] - image.shape[2], 0)
    if pad_h == 0 and pad_w == 0:
        return image, label
    image = torch.nn.functional.pad(image, (0, pad_w, 0, pad_h), value=IMAGE_PAD_VALUE)
    label = torch.nn.functional.pad(label, (0, pad_w, 0, pad_h), value=ignore_label)
    return image, label


class TrainTransform:
    """SAN's training augmentation: short-side jitter, random crop, SSD colour jitter, flip, pad with ignore.

    Args:
        crop_size: square crop side (640 in SAN).
        short_sides: candidate short sides, drawn uniformly; default :func:`san_short_sides` of ``crop_size``.
        max_size: cap on the long side after the resize (2560 in SAN).
        ignore_label: label value of padded pixels.
        color_jitter: apply :class:`ColorAugSSD`.
        flip_prob: probability of a horizontal flip.
    """

    def __init__(
        self,
        crop_size: int = 640,
        short_sides: Sequence[int] | None = None,
        max_size: int = 2560,
        ignore_label: int = 255,
        color_jitter: bool = True,
        flip_prob: float = 0.5,
    ) -> None:
        self.crop_size = crop_size
        self.short_sides = tuple(short_sides) if short_sides is not None else san_short_sides(crop_size)
        self.max_size = max_size
        self.ignore_label = ignore_label
        self.color_aug = ColorAugSSD() if color_jitter else None
        self.flip_prob = flip_prob

    def __call__(
        self, image: torch.Tensor, label: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        short = self.short_sides[int(torch.randint(len(self.short_sides), (1,), generator=generator))]
        size = shortest_edge_size(image.shape[1], image.shape[2], short, self.max_size)
        image, label = resize_image(image, size), resize_label(label, size)

        # detectron2 RandomCrop("absolute"): a crop no larger than the image, uniform top-left corner
        crop_h, crop_w = min(self.crop_size, size[0]), min(self.crop_size, size[1])
        y0 = int(torch.randint(size[0] - crop_h + 1, (1,), generator=generator))
        x0 = int(torch.randint(size[1] - crop_w + 1, (1,), generator=generator))
        image = image[:, y0 : y0 + crop_h, x0 : x0 + crop_w]
        label = label[y0 : y0 + crop_h, x0 : x0 + crop_w]

        if self.color_aug is not None:
            image = self.color_aug(image, generator=generator)
        if float(torch.rand((), generator=generator)) < self.flip_prob:
            image, label = image.flip(-1), label.flip(-1)
        image, label = pad_pair(image.contiguous(), label.contiguous(), (self.crop_size,) * 2, self.ignore_label)
        return image, label


def collate_semseg(samples: Sequence[dict], ignore_label: int = 255) -> dict:
    """Stack dataset items into a batch, padding bottom/right to the largest image (and label) of the batch.

    Images and labels are padded independently, so items whose label kept its original size while the image was
    resized collate too.

    Args:
        samples: items ``{"image": uint8 (3, H_i, W_i), "label": int64 (h_i, w_i), "name": str}``.
        ignore_label: label value of padded pixels.

    Returns:
        dict with ``images`` float (B, 3, H, W) in [0, 1] (padding 128/255), ``labels`` int64 (B, h, w),
        ``names`` list[str], and ``image_sizes`` / ``label_sizes``: the unpadded (H_i, W_i) / (h_i, w_i).
    """
    if not samples:
        raise ValueError("collate_semseg needs at least one sample")
    image_sizes = [(int(s["image"].shape[1]), int(s["image"].shape[2])) for s in samples]
    label_sizes = [(int(s["label"].shape[0]), int(s["label"].shape[1])) for s in samples]
    height, width = max(h for h, _ in image_sizes), max(w for _, w in image_sizes)
    label_h, label_w = max(h for h, _ in label_sizes), max(w for _, w in label_sizes)
    images = torch.full((len(samples), 3, height, width), IMAGE_PAD_VALUE, dtype=torch.uint8)
    labels = torch.full((len(samples), label_h, label_w), ignore_label, dtype=torch.int64)
    for i, s in enumerate(samples):
        (h, w), (lh, lw) = image_sizes[i], label_sizes[i]
        images[i, :, :h, :w] = s["image"]
        labels[i, :lh, :lw] = s["label"]
    return {
        "images": images.float() / 255.0,
        "labels": labels,
        "names": [s["name"] for s in samples],
        "image_sizes": image_sizes,
        "label_sizes": label_sizes,
    }
