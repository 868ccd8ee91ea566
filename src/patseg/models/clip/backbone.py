"""The frozen CLIP image tower: shallow-block taps for the side adapter and SAN's [SOS] recognition path.

Facts from MendelXu/SAN ``san/model/clip_utils/visual.py`` (``FeatureExtractor``, ``RecWithAttnbiasHead``) and
``san/model/attn_helper.py``. The blocks are open_clip 3.3.0's own modules, run one
by one here:

- ``extract`` runs blocks ``[0, rec_start)`` and keeps patch-token maps at the tap depths (0 = the embedding
  output before any block: ``ln_pre`` for OpenAI ViTs, patch embedding + pos-embed for EVA02).
- ``recognize`` prepends Q copies of the class token ([SOS] tokens) and runs blocks ``[rec_start, depth)`` with
  SAN's additive mask (:func:`recognition_attn_mask`), then the final norm and projection of each [SOS] token.

Two trunks are supported (:mod:`patseg.models.clip.open_clip_loader` holds their specifics): open_clip's OpenAI-style
``VisionTransformer`` and open_clip's ``TimmModel`` around a timm ``Eva`` (EVA02: RoPE, SwiGLU, inner attention
norm). Everything is frozen except the absolute positional embedding, which SAN trains
(``CLIP_FROZEN_EXCLUDE=["positional_embedding"]``); it keeps its pretrained size and is resized each forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from patseg.errors import ConfigError
from patseg.models.clip.open_clip_loader import ClipTrunk, create_open_clip, make_trunk
from patseg.models.clip.text_encoder import EmbeddingCache, TextEncoder

BLOCKED = -100.0  # SAN's "do not attend" value in the recognition mask (not -inf)


@dataclass
class ClipFeatures:
    """What the shallow CLIP blocks hand to the side adapter and to the recognition path.

    taps: tap depth -> (B, C, h, w) patch-token map (0 = embedding output, k = output of block k, 1-based).
    tokens: (B, 1 + h*w, C) token state after block ``rec_start - 1``: the class token, then the patches.
    grid: (h, w) CLIP patch grid.
    """

    taps: dict[int, Tensor]
    tokens: Tensor
    grid: tuple[int, int]


def recognition_attn_mask(attn_bias: Tensor) -> Tensor:
    """SAN's additive attention mask for the sequence ``[SOS_1..SOS_Q ; CLS ; patches]``.

    attn_bias: (B, heads, Q, h, w), already pooled to the CLIP grid. Returns (B, heads, N, N), N = Q + 1 + h*w:
    every row sees no [SOS] column (BLOCKED) except SOS_i -> SOS_i; [SOS] rows also block the CLS column and add
    the per-head bias on the patch columns; CLS and patch rows see CLS and patches with 0, as in vanilla CLIP.
    """
    b, heads, q, h, w = attn_bias.shape
    n = q + 1 + h * w
    mask = attn_bias.new_zeros(b, heads, n, n)
    mask[..., :q] = BLOCKED
    idx = torch.arange(q, device=attn_bias.device)
    mask[..., idx, idx] = 0.0
    mask[..., :q, q] = BLOCKED
    mask[..., :q, q + 1 :] = attn_bias.flatten(-2)
    return mask


class ClipBackbone(nn.Module):
    """Frozen CLIP image tower with taps and SAN's biased [SOS] recognition path.

    Args:
        visual: an open_clip image tower (``VisionTransformer`` or ``TimmModel`` with a timm ``Eva`` trunk), as
            built by ``open_clip.create_model`` (its ``preprocess_cfg`` gives ``mean``/``std``).
        taps: block depths whose patch tokens ``extract`` keeps; each in ``[0, rec_start]``.
        rec_start: first block of the recognition path (SAN ``FEATURE_LAST_LAYER_IDX``), in ``[1, depth)``.

    Attributes: ``width``, ``num_heads``, ``patch_size``, ``out_dim``, ``depth``, ``taps``, ``rec_start``, and the
    buffers ``mean``/``std`` (3,) that normalise images in [0, 1].
    """

    mean: Tensor
    std: Tensor

    def __init__(self, visual: nn.Module, *, taps: Sequence[int], rec_start: int) -> None:
        super().__init__()
        self.visual = visual
        self.trunk: ClipTrunk = make_trunk(visual)  # plain helper object: holds no parameters of its own
        self.width = self.trunk.width
        self.num_heads = self.trunk.num_heads
        self.patch_size = self.trunk.patch_size
        self.out_dim = self.trunk.out_dim
        self.depth = self.trunk.depth
        if not 1 <= rec_start < self.depth:
            raise ConfigError(
                f"config key 'clip.rec_start' must be in [1, {self.depth}) for a {self.depth}-block CLIP, "
                f"got {rec_start}"
            )
        bad = [t for t in taps if not 0 <= t <= rec_start]
        if bad or len(set(taps)) != len(taps):
            raise ConfigError(
                f"config key 'clip.taps' must be distinct depths in [0, rec_start={rec_start}], got {tuple(taps)}"
            )
        self.taps = tuple(sorted(taps))
        self.rec_start = rec_start

        preprocess = getattr(visual, "preprocess_cfg", None)
        if preprocess is None:
            raise ValueError("visual has no preprocess_cfg: build it with open_clip.create_model")
        self.register_buffer("mean", torch.tensor(preprocess["mean"], dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(preprocess["std"], dtype=torch.float32), persistent=False)

        visual.requires_grad_(False)
        self.trunk.pos_embed.requires_grad_(True)
        self.train(False)

    def train(self, mode: bool = True) -> ClipBackbone:
        """The frozen tower always stays in eval mode (no patch dropout or drop-path, as in SAN)."""
        return super().train(False)

    def extract(self, images: Tensor) -> ClipFeatures:
        """images: (B, 3, H, W), already normalised -> taps and the token state after block ``rec_start - 1``.

        The grid is (H // patch, W // patch): the patch convolution drops remainder pixels, as in SAN.
        """
        x, grid = self.trunk.embed(images)
        rope = self.trunk.rope(grid, num_prefix=1)
        taps: dict[int, Tensor] = {}
        if 0 in self.taps:
            taps[0] = _patch_map(x, grid)
        for i in range(self.rec_start):
            x = self.trunk.block(i, x, attn_mask=None, rope=rope)
            if i + 1 in self.taps:
                taps[i + 1] = _patch_map(x, grid)
        return ClipFeatures(taps=taps, tokens=x, grid=grid)

    def recognition_tokens(self, feats: ClipFeatures, attn_bias: Tensor) -> Tensor:
        """Run blocks ``[rec_start, depth)`` on ``[SOS x Q ; CLS ; patches]`` with SAN's mask.

        attn_bias: (B, heads, Q, h, w) at the CLIP grid. Returns the final (B, Q + 1 + h*w, C) token state; the
        CLS and patch rows equal vanilla CLIP's (the mask hides the [SOS] tokens from them).
        """
        b, heads, q, h, w = attn_bias.shape
        if heads != self.num_heads or (h, w) != tuple(feats.grid) or b != feats.tokens.shape[0]:
            raise ValueError(
                f"attn_bias must be (B={feats.tokens.shape[0]}, heads={self.num_heads}, Q, "
                f"{feats.grid[0]}, {feats.grid[1]}), got {tuple(attn_bias.shape)}"
            )
        tokens = feats.tokens
        sos = tokens[:, :1].expand(-1, q, -1)  # SAN SOS_TOKEN_FORMAT="cls_token": copies of block-9 CLS
        x = torch.cat([sos, tokens], dim=1)
        mask = recognition_attn_mask(attn_bias.to(tokens.dtype))  # one mask for all blocks (NUM_LAYERS=1)
        rope = self.trunk.rope(feats.grid, num_prefix=q + 1)
        for i in range(self.rec_start, self.depth):
            x = self.trunk.block(i, x, attn_mask=mask, rope=rope)
        return x

    def recognize(self, feats: ClipFeatures, attn_bias: Tensor) -> Tensor:
        """(B, heads, Q, h, w) bias -> (B, Q, out_dim) L2-normalised mask embeddings from the [SOS] tokens."""
        q = attn_bias.shape[2]
        sos = self.recognition_tokens(feats, attn_bias)[:, :q]
        return F.normalize(self.trunk.head(sos), dim=-1)

    def encode_image(self, images: Tensor) -> Tensor:
        """Vanilla CLIP image embedding (B, out_dim), not normalised, as open_clip's ``encode_image``."""
        feats = self.extract(images)
        x = feats.tokens
        rope = self.trunk.rope(feats.grid, num_prefix=1)
        for i in range(self.rec_start, self.depth):
            x = self.trunk.block(i, x, attn_mask=None, rope=rope)
        return self.trunk.head(x[:, 0])


def _patch_map(tokens: Tensor, grid: tuple[int, int]) -> Tensor:
    """(B, 1 + h*w, C) tokens -> (B, C, h, w) map of the patch tokens."""
    b, _, c = tokens.shape
    return tokens[:, 1:].transpose(1, 2).reshape(b, c, *grid)


def clip_trainable_parameters(*modules: nn.Module) -> int:
    """Number of trainable parameters in the given CLIP modules (shared ones counted once).

    For ``load_clip``'s pair this is the visual absolute positional embedding alone (SAN: 197 x 768 for ViT-B/16).
    """
    seen: dict[int, int] = {}
    for module in modules:
        for p in module.parameters():
            if p.requires_grad:
                seen[id(p)] = p.numel()
    return sum(seen.values())


def load_clip(
    model_name: str,
    *,
    quick_gelu: bool,
    weights: str | None,
    taps: Sequence[int],
    rec_start: int,
    cache: EmbeddingCache | None = None,
) -> tuple[ClipBackbone, TextEncoder]:
    """Frozen CLIP image tower and text encoder of one open_clip model.

    Args:
        model_name: open_clip architecture (``ViT-B-16``, ``ViT-L-14-336``, ``EVA02-B-16``) or a config shipped in
            ``patseg/resources/clip`` (``patseg-tiny-ViT``, ``patseg-tiny-EVA``).
        quick_gelu: force QuickGELU (OpenAI weights were trained with it; timm trunks ignore it).
        weights: local open_clip checkpoint, or None for random init. Nothing is downloaded.
        taps, rec_start: see :class:`ClipBackbone`.
        cache: persistent cache of encoded vocabularies (None: memory only).
    """
    model, tokenizer = create_open_clip(model_name, quick_gelu=quick_gelu, weights=weights)
    visual = cast(nn.Module, model.visual)
    # The image tower belongs to ClipBackbone: its weights live in one module tree only.
    model.visual = None  # type: ignore[assignment]  # torch accepts None for a submodule; its stub does not
    backbone = ClipBackbone(visual, taps=taps, rec_start=rec_start)
    text = TextEncoder(model, tokenizer, cache=cache, cache_key=f"{model_name}-quickgelu{int(quick_gelu)}")
    return backbone, text
