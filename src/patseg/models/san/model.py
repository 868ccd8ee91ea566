"""SAN: the side adapter network on a frozen CLIP — PAT's semantic branch and our baseline.

Facts from MendelXu/SAN ``san/model/san.py``. The forward reads like SAN's figure:
normalise, run the shallow CLIP blocks for the taps, run the side ViT fused with those taps, decode masks and
attention biases, recognise every query with the deeper CLIP blocks, and score it against the text embeddings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from patseg.losses import SetCriterion, targets_from_semseg
from patseg.models.clip.backbone import ClipBackbone, ClipFeatures
from patseg.models.clip.text_encoder import TextEncoder
from patseg.models.outputs import StepOutput
from patseg.models.san.mask_decoder import MaskDecoder
from patseg.models.san.side_adapter import SideAdapter

if TYPE_CHECKING:
    from patseg.config import ModelConfig


@dataclass
class SegPrediction:
    """One decoded set of mask proposals.

    masks: (B, Q, h, w) mask logits; logits: (B, Q, C + 1) class logits, the last column is "no object".
    """

    masks: Tensor
    logits: Tensor


@dataclass
class SegOutput:
    """What a segmentation model's forward returns: the main set and the auxiliary (deep-supervision) sets."""

    main: SegPrediction
    aux: dict[str, SegPrediction] = field(default_factory=dict)


def max_pool_to(maps: Tensor, grid: tuple[int, int]) -> Tensor:
    """(N, h, w) -> (N, gh, gw): ``adaptive_max_pool2d``'s values. When the grid divides the map (the decoder's
    grids are multiples of the CLIP grid), each block's rows are reduced first, an elementwise max of whole rows,
    then its columns: 3-5x faster on CPU than the pooling kernel, and the same maxima."""
    n, h, w = maps.shape
    gh, gw = grid
    if h % gh or w % gw:
        return F.adaptive_max_pool2d(maps, grid)
    rows = maps.reshape(n, gh, h // gh, w).amax(2)  # (N, gh, w)
    return rows.view(n, gh, gw, w // gw).amax(-1)


def semantic_inference(pred: SegPrediction, size: tuple[int, int], *, query_chunk: int = 25) -> Tensor:
    """SAN's semantic inference: per-class score map (B, C, H, W) = sum_q softmax(logits)[q, c] * sigmoid(mask_q).

    The mask logits are upsampled (bilinear) to ``size`` before the sigmoid, as SAN does; queries are processed in
    chunks so the (B, Q, H, W) upsampled masks never exist at once at full resolution.
    """
    probs = pred.logits.float().softmax(-1)[..., :-1]  # (B, Q, C): no-object dropped after the softmax
    scores = None
    for start in range(0, probs.shape[1], query_chunk):
        masks = F.interpolate(
            pred.masks[:, start : start + query_chunk].float(), size=size, mode="bilinear", align_corners=False
        ).sigmoid()  # (B, q, H, W)
        part = torch.einsum("bqc,bqhw->bchw", probs[:, start : start + query_chunk], masks)
        scores = part if scores is None else scores + part
    assert scores is not None  # there is at least one query
    return scores


class SAN(nn.Module):
    """Side Adapter Network for open-vocabulary semantic segmentation.

    Arguments:
        clip: frozen CLIP visual tower with taps and the [SOS] recognition path.
        text: frozen CLIP text tower that turns class names into prompt-ensembled embeddings.
        side: the side ViT with fusion layers.
        mask_decoder: SAN's MLP mask decoder with the attention-bias head.
        criterion: the training loss, Mask2Former's set loss (``SetCriterion``; PAT hands its ``PatCriterion``).
        resize_ratio: CLIP sees the padded image scaled by this factor (0.5 for ViT-B/16, 0.7 for ViT-L/14-336).
        record_blocks: side blocks decoded during training; the last one is the main prediction.
        templates: prompt templates averaged for every class name.
    """

    # Attached by ``patseg.build.build_model``: the record the model was built from and its CLIP weights file.
    config: ModelConfig
    clip_weights: str | None

    def __init__(
        self,
        *,
        clip: ClipBackbone,
        text: TextEncoder,
        side: SideAdapter,
        mask_decoder: MaskDecoder,
        criterion: SetCriterion,
        resize_ratio: float,
        record_blocks: Sequence[int],
        templates: Sequence[str],
    ) -> None:
        super().__init__()
        self.clip = clip
        self.text = text
        self.side = side
        self.mask_decoder = mask_decoder
        self.criterion = criterion
        self.resize_ratio = resize_ratio
        self.record_blocks = tuple(record_blocks)
        self.templates = tuple(templates)
        # Learnable "no object" embedding, normalised with the text rows (SAN ov_classifier.bg_embed).
        self.bg_embed = nn.Parameter(torch.randn(1, clip.out_dim) * clip.out_dim**-0.5)

    # ---------------------------------------------------------------- text side
    def encode_vocabulary(self, class_names: Sequence[str]) -> Tensor:
        """(C, D) L2-normalised, template-averaged text embeddings; cached by the text encoder."""
        return self.text(list(class_names), self.templates)

    def classify(self, mask_embeddings: Tensor, class_embeddings: Tensor) -> Tensor:
        """(B, Q, D) normalised query embeddings x (C, D) classes -> (B, Q, C + 1) logits = scale * cosine."""
        classifier = F.normalize(torch.cat([class_embeddings.to(self.bg_embed), self.bg_embed], 0), dim=-1)
        return self.text.logit_scale * mask_embeddings @ classifier.t().to(mask_embeddings.dtype)

    # ---------------------------------------------------------------- image side
    def preprocess(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Images in [0, 1] (B, 3, H, W) -> (side input at full size, CLIP input at ``resize_ratio``)."""
        x = (images - self.clip.mean.view(1, 3, 1, 1)) / self.clip.std.view(1, 3, 1, 1)
        clip_in = F.interpolate(x, scale_factor=self.resize_ratio, mode="bilinear", align_corners=False)
        return x, clip_in

    def recognize(
        self,
        feats: ClipFeatures,
        queries: Tensor,
        pixels: Tensor,
        class_embeddings: Tensor,
        decoder: MaskDecoder | None = None,
    ) -> SegPrediction:
        """Decode masks and attention biases from (queries, pixels), recognise the queries with CLIP."""
        out = (decoder or self.mask_decoder)(queries, pixels)
        assert out.attn_bias is not None  # asked for by default
        return SegPrediction(masks=out.masks, logits=self.recognize_bias(feats, out.attn_bias, class_embeddings))

    def recognize_bias(self, feats: ClipFeatures, attn_bias: Tensor, class_embeddings: Tensor) -> Tensor:
        """Class logits (B, Q, C + 1) of the queries whose CLIP attention bias is ``attn_bias`` (B, heads, Q, h, w).

        The bias is max-pooled from the decoder's grid to the CLIP grid (SAN's REC_DOWNSAMPLE_METHOD "max").
        """
        bias = max_pool_to(attn_bias.flatten(0, 2), feats.grid)
        bias = bias.view(*attn_bias.shape[:3], *feats.grid)
        return self.classify(self.clip.recognize(feats, bias), class_embeddings)

    def forward(self, images: Tensor, class_embeddings: Tensor) -> SegOutput:
        """images: (B, 3, H, W) in [0, 1], H and W divisible by 32; class_embeddings: (C, D)."""
        x, clip_in = self.preprocess(images)
        feats = self.clip.extract(clip_in)
        blocks = self.record_blocks if self.training else self.record_blocks[-1:]
        side = self.side(x, feats.taps, record_blocks=blocks)
        preds = {f"side{b}": self.recognize(feats, side.queries[b], side.patches[b], class_embeddings) for b in blocks}
        main = preds.pop(f"side{blocks[-1]}")
        return SegOutput(main=main, aux=preds)

    # ---------------------------------------------------------------- training / inference
    def prepare_training(self, lpips_vgg_weights: str | None = None) -> None:
        """Check and build what only training needs; SAN needs nothing beyond its modules.

        ``lpips_vgg_weights`` is PAT's LPIPS file (see ``PAT.prepare_training``), accepted so that every model is
        prepared alike; SAN ignores it.
        """

    def training_losses(
        self, images: Tensor, labels: Tensor, class_embeddings: Tensor, *, ignore_index: int = 255
    ) -> StepOutput:
        """Set losses on the main prediction and every auxiliary set (each with its own matching).

        images: (B, 3, H, W) in [0, 1]; labels: (B, H, W) class indices, ``ignore_index`` for void pixels.
        """
        out = self(images, class_embeddings)
        losses = self.criterion.sets(out.main, out.aux, targets_from_semseg(labels, ignore_index))
        return StepOutput(losses=losses, visuals={"prediction": prediction_thunk(out.main)})


def prediction_thunk(pred: SegPrediction, max_items: int = 4) -> Callable[[], Tensor]:
    """A callable giving the (b, h, w) argmax of the semantic inference at mask resolution for the first
    ``max_items`` images; it holds detached copies only, so the autograd graph is not kept alive."""
    first = SegPrediction(masks=pred.masks[:max_items].detach(), logits=pred.logits[:max_items].detach())

    def compute() -> Tensor:
        with torch.no_grad():
            return semantic_inference(first, (first.masks.shape[-2], first.masks.shape[-1])).argmax(1)

    return compute
