"""Image sizes of SAN's protocol: the shortest-edge resize and sizes that are multiples of the model stride (32).

One definition of each, shared by the training transforms (``patseg.data.transforms``), the test-time
``Segmenter`` (which pads up to a multiple of 32) and the tokenizer and feature figures (which resize to one).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where a tensor is made: the size arithmetic serves `patseg prepare` too
    from torch import Tensor

STRIDE = 32  # every SAN/PAT input side is a multiple of this (CLIP patch 16 at ratio 0.5, side ViT stride 16)


def shortest_edge_size(height: int, width: int, short_side: int, max_long_side: int) -> tuple[int, int]:
    """Output (H, W) of detectron2's ``ResizeShortestEdge``: short side -> ``short_side``, then both sides scaled
    down so that the long side is at most ``max_long_side``; rounded half up. The arithmetic is detectron2's
    (``get_output_shape``), so exact halves round as they do there."""
    scale = short_side / min(height, width)
    new_h, new_w = (short_side, scale * width) if height < width else (scale * height, short_side)
    if max(new_h, new_w) > max_long_side:
        shrink = max_long_side / max(new_h, new_w)
        new_h, new_w = new_h * shrink, new_w * shrink
    return int(new_h + 0.5), int(new_w + 0.5)


def ceil_to_multiple(n: int, multiple: int = STRIDE) -> int:
    """The smallest multiple of ``multiple`` that is >= ``n``: the padded size, which crops nothing."""
    return math.ceil(n / multiple) * multiple


def round_to_multiple(n: int, multiple: int = STRIDE) -> int:
    """The multiple of ``multiple`` nearest to ``n`` (ties to the even multiple, as Python's ``round``), at least
    ``multiple``: the size an image is resized to when it must not be padded."""
    return max(multiple, round(n / multiple) * multiple)


def resize_to_multiple(image: np.ndarray, short_side: int, multiple: int = STRIDE, max_long_side: int = 2560) -> Tensor:
    """(H, W, 3) uint8 RGB -> (1, 3, h, w) float in [0, 1] with h, w multiples of ``multiple``.

    The size is :func:`shortest_edge_size` (short side ``short_side``, long side at most ``max_long_side``) with
    each side then rounded by :func:`round_to_multiple`, so the aspect ratio bends slightly instead of the image
    being padded or cropped. Resampling is bilinear with antialiasing (the input of the tokenizer and figures).
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got {image.dtype} {image.shape}")
    h, w = shortest_edge_size(image.shape[0], image.shape[1], short_side, max_long_side)
    size = (round_to_multiple(h, multiple), round_to_multiple(w, multiple))
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255
    if size != tuple(image.shape[:2]):
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(0, 1)
