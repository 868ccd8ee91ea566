"""``Segmenter``: segment any image with any list of class names.

The vocabulary's text embeddings are computed once (and cached on disk by the text encoder), as SAM's predictor
caches the image embedding; ``predict`` and ``scores`` can then be called on many images. The protocol is SAN's
test protocol (detectron2's test mapper and SAN's semantic inference): short side to 640 (long side at most 2560),
pad to a multiple of 32, one forward pass on the whole image, mask logits upsampled before the sigmoid, per-class
scores resized to the original size, argmax.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from patseg.errors import UsageError
from patseg.models.san.model import SAN, SegOutput, SegPrediction
from patseg.models.san.semantic_argmax import output_masks, semantic_argmax, upsample_masks
from patseg.precision import DEFAULT_PRECISION, autocast, check_precision, prepare_model
from patseg.resize import ceil_to_multiple, shortest_edge_size


def check_vocabulary(names: Sequence[object], source: str = "the vocabulary") -> list[str]:
    """The class names stripped of surrounding spaces; a blank or repeated name raises UsageError.

    A blank name would be scored as the bare prompt template, and two identical names split every pixel's vote
    between two identical classes: both are mistakes in the list, so they are refused rather than dropped.
    ``source`` names where the list came from (an option, a file) in the message; positions count from 1.
    """
    if isinstance(names, str):
        raise UsageError(f"{source} is one string ({names!r}): give a list of class names")
    cleaned = [str(v).strip() for v in names]
    if not any(cleaned):
        raise UsageError(f"{source} is empty: give at least one class name")
    blank = [i + 1 for i, name in enumerate(cleaned) if not name]
    if blank:
        raise UsageError(
            f"{source} has a blank class name at {_positions(blank)}: remove the empty entry or name the class"
        )
    first: dict[str, int] = {}
    repeated: dict[str, list[int]] = {}
    for i, name in enumerate(cleaned, 1):
        if name in first:
            repeated.setdefault(name, [first[name]]).append(i)
        else:
            first[name] = i
    if repeated:
        listed = "; ".join(f"{name!r} at {_positions(where)}" for name, where in repeated.items())
        raise UsageError(f"{source} repeats class names ({listed}): give each class once")
    return cleaned


def _class_probs(pred: SegPrediction) -> Tensor:
    """(Q, C) class probabilities of the first image: softmax over C + 1, the no-object column dropped after it."""
    return pred.logits[0].float().softmax(-1)[:, :-1]


def _positions(where: Sequence[int]) -> str:
    return ("position " if len(where) == 1 else "positions ") + ", ".join(map(str, where))


@dataclass(frozen=True)
class Inference:
    """One image's forward pass: the model's output and the sizes that map it back onto the image.

    output: the model's SegOutput (a PatOutput for PAT, with its codes and, when asked for, the reconstruction);
    padded: the (H', W') input after the resize and padding; valid: the resized image's size inside it;
    size: the original image's (H, W).
    """

    output: SegOutput
    padded: tuple[int, int]
    valid: tuple[int, int]
    size: tuple[int, int]


class Segmenter:
    """Open-vocabulary segmentation with a SAN or PAT model.

    Arguments:
        model: a model built by ``patseg.build_model``.
        vocabulary: class names, used verbatim (surrounding spaces aside) in the prompt templates; a blank or
            repeated name raises UsageError.
        short_side, max_long_side: test resize (SAN: 640 / 2560).
        class_chunk: classes scored at once by :meth:`scores`; bounds memory for large vocabularies.
        precision: fp32 (default), bf16, fp16 or int8 for the image forward (:mod:`patseg.precision`); a mode the
            device cannot run natively raises UsageError. The text embeddings and the post-processing stay float32.
            ``self.model`` is the model whose forward runs: for int8 a quantized copy of ``model``.
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
        precision: str = DEFAULT_PRECISION,
    ) -> None:
        self.vocabulary = check_vocabulary(vocabulary)
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        check_precision(precision, self.device)
        self.precision = precision
        self.short_side, self.max_long_side, self.class_chunk = short_side, max_long_side, class_chunk
        model.eval()
        with torch.inference_mode():  # float32 whatever the precision: the embeddings are computed once
            self.class_embeddings = model.encode_vocabulary(self.vocabulary).to(self.device)
        self.model = prepare_model(model, precision)

    # ------------------------------------------------------------------ steps
    def _prepare(self, image: np.ndarray) -> tuple[Tensor, tuple[int, int]]:
        """(H, W, 3) uint8 RGB -> padded (1, 3, H', W') float in [0, 1] and the resized (valid) size."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got {image.dtype} {image.shape}")
        h, w = image.shape[:2]
        if h == 0 or w == 0:
            raise UsageError(f"the image is empty ({h} x {w} pixels): give an image with at least one pixel")
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
        inference = self.infer(image)
        return inference.output.main, inference.padded, inference.valid

    def _mask_logits(
        self, pred: SegPrediction, padded: tuple[int, int], valid: tuple[int, int], out_size: tuple[int, int]
    ) -> tuple[Tensor, Tensor]:
        """(Q, C) class probabilities and (Q, H, W) mask logits at ``out_size`` (upsampled, cropped, resized)."""
        return _class_probs(pred), upsample_masks(pred.masks[0].float(), padded, valid, out_size)

    def _class_scores(
        self,
        pred: SegPrediction,
        padded: tuple[int, int],
        valid: tuple[int, int],
        out_size: tuple[int, int],
        out: Tensor | None = None,
    ) -> Iterator[tuple[int, Tensor]]:
        """Yield (first class index, (c, H, W) float32 scores at ``out_size``) chunk by chunk; with ``out``, a
        (C, H, W) float32 tensor, each chunk is written into its rows and the chunks yielded are views of it."""
        probs, masks = self._mask_logits(pred, padded, valid, out_size)
        masks = masks.sigmoid_().flatten(1)  # (Q, H*W)
        rows = None if out is None else out.view(out.shape[0], -1)
        for start in range(0, probs.shape[1], self.class_chunk):
            weights = probs[:, start : start + self.class_chunk].t()  # (c, Q)
            if rows is None:
                part = weights @ masks  # (c, H*W)
            else:  # written in place: no per-chunk copy into the result
                part = torch.mm(weights, masks, out=rows[start : start + weights.shape[0]])
            yield start, part.view(-1, *out_size)

    # ------------------------------------------------------------------ public API
    def infer(self, image: np.ndarray, *, reconstruct: bool = False) -> Inference:
        """(H, W, 3) uint8 RGB -> the forward pass, kept whole (for :meth:`labels`, :meth:`class_score`, PAT's codes).

        ``reconstruct`` asks PAT for its image reconstruction too (SAN has none: ValueError)."""
        x, valid = self._prepare(image)
        kwargs = {}
        if reconstruct:
            from patseg.models.pat.model import PAT

            if not isinstance(self.model, PAT):
                raise ValueError(f"'{self.model.config.name}' is SAN: it has no reconstruction")
            kwargs["reconstruct"] = True
        with torch.inference_mode(), autocast(self.precision, self.device):
            out = self.model(x, self.class_embeddings, **kwargs)
        return Inference(out, (x.shape[-2], x.shape[-1]), valid, (image.shape[0], image.shape[1]))

    def labels(self, inference: Inference) -> np.ndarray:
        """(H, W) int64 label map of one :meth:`infer` result (what :meth:`predict` returns)."""
        label_map = self.postprocess(inference.output.main, inference.padded, inference.valid, inference.size)
        return label_map.cpu().numpy().astype(np.int64)

    @torch.inference_mode()
    def class_score(self, inference: Inference, index: int) -> np.ndarray:
        """(H, W) float32 score of class ``index`` (one channel of :meth:`scores`) from one :meth:`infer` result."""
        if not 0 <= index < len(self.vocabulary):
            raise IndexError(f"class {index} is outside the vocabulary of {len(self.vocabulary)} names")
        probs, masks = self._mask_logits(inference.output.main, inference.padded, inference.valid, inference.size)
        score = torch.einsum("q,qhw->hw", probs[:, index], masks.sigmoid())
        return score.cpu().numpy().astype(np.float32)

    def scores(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> (C, H, W) float32 per-class scores of SAN's semantic inference."""
        pred, padded, valid = self._forward(image)
        scores = torch.empty(len(self.vocabulary), *image.shape[:2], device=self.device)
        for _ in self._class_scores(pred, padded, valid, image.shape[:2], out=scores):
            pass  # each chunk is written into ``scores`` as it is computed
        return scores.cpu().numpy()

    def predict(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> (H, W) int64 label map (index into the vocabulary)."""
        return self.labels(self.infer(image))

    @torch.inference_mode()
    def postprocess(
        self, pred: SegPrediction, padded: tuple[int, int], valid: tuple[int, int], out_size: tuple[int, int]
    ) -> Tensor:
        """Label map (H, W) at ``out_size`` from one prediction: the argmax of :meth:`scores`, found with per-block
        bounds so that only the classes that can win a block are scored there, and only there are the mask logits
        upsampled (memory bounded for any C and image size; see :mod:`patseg.models.san.semantic_argmax`)."""
        return semantic_argmax(_class_probs(pred), output_masks(pred.masks[0].float(), padded, valid, out_size))

    # ------------------------------------------------------------------ many images
    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """The padded (H', W') model input of an image of ``height`` x ``width`` pixels: images with equal input
        sizes can share one forward pass (:meth:`predict_batch`)."""
        size = shortest_edge_size(height, width, self.short_side, self.max_long_side)
        return ceil_to_multiple(size[0]), ceil_to_multiple(size[1])

    def _prepare_batch(self, images: Sequence[np.ndarray]) -> tuple[Tensor, list[tuple[int, int]]]:
        """B (H_i, W_i, 3) uint8 RGB images of one input size -> (B, 3, H', W') padded input and each valid size.

        Each image is resized and padded alone (as :meth:`predict` does), so only the forward pass is shared."""
        if not images:
            raise ValueError("predict_batch needs at least one image")
        prepared = [self._prepare(image) for image in images]
        sizes = {tuple(x.shape[-2:]) for x, _ in prepared}
        if len(sizes) > 1:
            raise ValueError(f"the images of one batch must have one padded input size, got {sorted(sizes)}")
        return torch.cat([x for x, _ in prepared]), [valid for _, valid in prepared]

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """B (H_i, W_i, 3) uint8 RGB images with one :meth:`input_size` -> B (H_i, W_i) int64 label maps.

        One forward pass on the stacked (B, 3, H', W') input; each image's slice of the prediction (logits
        (1, Q, C + 1), masks (1, Q, h, w)) is post-processed alone, so the labels are :meth:`predict`'s up to
        floating-point rounding. Images of different input sizes raise ValueError."""
        x, valids = self._prepare_batch(images)
        with torch.inference_mode(), autocast(self.precision, self.device):
            pred = self.model(x, self.class_embeddings).main
        padded = (x.shape[-2], x.shape[-1])
        labels = []
        for i, (image, valid) in enumerate(zip(images, valids)):
            one = SegPrediction(masks=pred.masks[i : i + 1], logits=pred.logits[i : i + 1])
            label_map = self.postprocess(one, padded, valid, (image.shape[0], image.shape[1]))
            labels.append(label_map.cpu().numpy().astype(np.int64))
        return labels
