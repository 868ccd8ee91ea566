"""``Segmenter``: segment any image with any list of class names.

The vocabulary's text embeddings are computed once (and cached on disk by the text encoder), as SAM's predictor
caches the image embedding; ``predict`` and ``scores`` can then be called on many images. The protocol is SAN's
test protocol (detectron2's test mapper and SAN's semantic inference): short side to 640 (long side at most 2560),
pad to a multiple of 32, one forward pass on the whole image, mask logits upsampled before the sigmoid, per-class
scores resized to the original size, argmax.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from patseg.errors import UsageError
from patseg.models.san.model import SAN, SegPrediction
from patseg.models.san.semantic_argmax import semantic_argmax
from patseg.resize import ceil_to_multiple, shortest_edge_size


class Segmenter:
    """Open-vocabulary segmentation with a SAN or PAT model.

    Arguments:
        model: a model built by ``patseg.build_model``.
        vocabulary: class names, used verbatim in the prompt templates.
        short_side, max_long_side: test resize (SAN: 640 / 2560).
        class_chunk: classes scored at once by :meth:`scores`; bounds memory for large vocabularies.
    """

    def __init__(
        self,
        model: SAN,
        vocabulary: Sequence[str],
        *,
        short_side: int = 640,
        max_long_side: int = 2560,
        class_chunk: int = 64,
        device: str | torch.device | None = None,
    ) -> None:
        if not vocabulary:
            raise UsageError("the vocabulary is empty: give at least one class name")
        self.model = model.eval()
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.vocabulary = [str(v).strip() for v in vocabulary]
        self.short_side, self.max_long_side, self.class_chunk = short_side, max_long_side, class_chunk
        with torch.inference_mode():
            self.class_embeddings = model.encode_vocabulary(self.vocabulary).to(self.device)

    # ------------------------------------------------------------------ steps
    def _prepare(self, image: np.ndarray) -> tuple[Tensor, tuple[int, int]]:
        """(H, W, 3) uint8 RGB -> padded (1, 3, H', W') float in [0, 1] and the resized (valid) size."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got {image.dtype} {image.shape}")
        h, w = image.shape[:2]
        x = torch.from_numpy(np.ascontiguousarray(image)).to(self.device).permute(2, 0, 1)[None].float() / 255.0
        size = shortest_edge_size(h, w, self.short_side, self.max_long_side)
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
        ph, pw = ceil_to_multiple(size[0]), ceil_to_multiple(size[1])
        # Pad with CLIP's mean colour so the padding is 0 after normalisation, as SAN pads normalised images.
        mean = self.model.clip.mean.to(x).view(1, 3, 1, 1)
        padded = mean.expand(1, 3, ph, pw).clone()
        padded[..., : size[0], : size[1]] = x
        return padded, size

    def _forward(self, image: np.ndarray) -> tuple[SegPrediction, tuple[int, int], tuple[int, int]]:
        x, valid = self._prepare(image)
        with torch.inference_mode():
            out = self.model(x, self.class_embeddings)
        return out.main, (x.shape[-2], x.shape[-1]), valid

    def _mask_logits(
        self, pred: SegPrediction, padded: tuple[int, int], valid: tuple[int, int], out_size: tuple[int, int]
    ) -> tuple[Tensor, Tensor]:
        """(Q, C) class probabilities and (Q, H, W) mask logits at ``out_size`` (upsampled, cropped, resized)."""
        probs = pred.logits[0].float().softmax(-1)[:, :-1]
        masks = F.interpolate(pred.masks.float(), size=padded, mode="bilinear", align_corners=False)
        masks = masks[0, :, : valid[0], : valid[1]]
        if tuple(valid) != tuple(out_size):
            masks = F.interpolate(masks[None], size=out_size, mode="bilinear", align_corners=False)[0]
        return probs, masks

    def _class_scores(
        self, pred: SegPrediction, padded: tuple[int, int], valid: tuple[int, int], out_size: tuple[int, int]
    ) -> Iterator[tuple[int, Tensor]]:
        """Yield (first class index, (c, H, W) float32 scores at ``out_size``) chunk by chunk."""
        probs, masks = self._mask_logits(pred, padded, valid, out_size)
        masks = masks.sigmoid_().flatten(1)  # (Q, H*W)
        for start in range(0, probs.shape[1], self.class_chunk):
            part = probs[:, start : start + self.class_chunk].t() @ masks  # (c, H*W)
            yield start, part.view(-1, *out_size)

    # ------------------------------------------------------------------ public API
    def scores(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> (C, H, W) float32 per-class scores of SAN's semantic inference."""
        pred, padded, valid = self._forward(image)
        chunks = [part for _, part in self._class_scores(pred, padded, valid, image.shape[:2])]
        return torch.cat(chunks).cpu().numpy().astype(np.float32)

    def predict(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> (H, W) int64 label map (index into the vocabulary)."""
        pred, padded, valid = self._forward(image)
        return self.postprocess(pred, padded, valid, image.shape[:2]).cpu().numpy().astype(np.int64)

    @torch.inference_mode()
    def postprocess(
        self, pred: SegPrediction, padded: tuple[int, int], valid: tuple[int, int], out_size: tuple[int, int]
    ) -> Tensor:
        """Label map (H, W) at ``out_size`` from one prediction: the argmax of :meth:`scores`, found with per-block
        bounds so that only the classes that can win a block are scored there (memory bounded for any C)."""
        probs, masks = self._mask_logits(pred, padded, valid, out_size)
        return semantic_argmax(probs, masks)
