"""open_clip 3.3.0 models from local files, and the per-trunk operations patseg's CLIP backbone runs.

This is the one module that knows open_clip's and timm's internals:

- :func:`create_open_clip` builds an open_clip model (``patseg/resources/clip`` configs registered) and loads a
  local checkpoint with errors that name the file, the model and where people get the weights.
- :class:`OpenAIViTTrunk` (open_clip ``transformer.py`` ``VisionTransformer``) and :class:`EvaTrunk` (open_clip
  ``timm_model.py`` ``TimmModel`` around timm 1.0.31 ``timm/models/eva.py`` ``Eva``) expose the same small
  interface: embed with a resized positional embedding, run block i with an optional additive mask and RoPE, and
  apply the final norm + projection to any tokens.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import open_clip
import torch
import torch.nn.functional as F
from open_clip.timm_model import TimmModel
from open_clip.transformer import VisionTransformer
from timm.layers import RotaryEmbeddingCat, build_rotary_pos_embed
from torch import Tensor, nn

from patseg.errors import CheckpointError, ConfigError, MissingFileError
from patseg.resources import CLIP_CONFIG_DIR

RANDOM_INIT_NOTICE = "No pretrained weights loaded for model"
"""Start of the warning ``open_clip.create_model`` logs (root logger) whenever ``pretrained`` is None."""


class _DropRandomInitNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(RANDOM_INIT_NOTICE)


class _ToLastResort(logging.Handler):
    """Stands in for a missing root handler: what it gets goes where Python prints unhandled log records."""

    def emit(self, record: logging.LogRecord) -> None:
        last = logging.lastResort
        if last is not None and record.levelno >= last.level:
            last.handle(record)


@contextmanager
def _without_random_init_notice() -> Iterator[None]:
    """Drop open_clip's "initialized randomly" warning: patseg loads the CLIP file itself, after ``create_model``.

    open_clip logs through ``logging.warning``, which would install a root handler (``basicConfig``) when there is
    none; a stand-in handler avoids that side effect while keeping open_clip's other warnings visible.
    """
    root = logging.getLogger()
    drop = _DropRandomInitNotice()
    stand_in = None if root.handlers else _ToLastResort()
    root.addFilter(drop)
    if stand_in is not None:
        root.addHandler(stand_in)
    try:
        yield
    finally:
        root.removeFilter(drop)
        if stand_in is not None:
            root.removeHandler(stand_in)


@lru_cache(maxsize=None)
def register_patseg_configs() -> None:
    """Make the open_clip configs shipped in ``patseg/resources/clip`` known to ``open_clip.create_model``."""
    open_clip.add_model_config(CLIP_CONFIG_DIR)


def weights_hint(model_name: str) -> str:
    """Where people usually get a local checkpoint for ``model_name`` (its first open_clip pretrained tag)."""
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if not tags:
        return "no public weights exist for this config; save one with torch.save(model.state_dict(), path)"
    hub = open_clip.get_pretrained_cfg(model_name, tags[0]).get("hf_hub", "").rstrip("/")
    where = f" (hf-hub {hub}, open_clip_model.safetensors)" if hub else ""
    return f"people usually get it as open_clip pretrained tag '{tags[0]}'{where}"


def _tag_preprocess(model_name: str) -> dict[str, Any]:
    """mean/std of the model's pretrained tags when they agree (a file path carries no preprocessing)."""
    stats = {
        (tuple(c["mean"]), tuple(c["std"]))
        for tag in open_clip.list_pretrained_tags_by_model(model_name)
        if "mean" in (c := open_clip.get_pretrained_cfg(model_name, tag))
    }
    if len(stats) != 1:
        return {}  # no tag (patseg configs) or tags disagree: open_clip's default (OpenAI statistics)
    mean, std = stats.pop()
    return {"mean": mean, "std": std}


def create_open_clip(
    model_name: str, *, quick_gelu: bool, weights: Optional[str]
) -> tuple[nn.Module, Callable[[list[str]], Tensor]]:
    """An open_clip CLIP model (fp32, CPU) and its tokenizer; random init when ``weights`` is None.

    Raises FileNotFoundError for a missing weights file and ValueError for an unknown model or a file whose
    keys/shapes do not match ``model_name``. Never downloads: only local paths are accepted.
    """
    register_patseg_configs()
    if model_name not in open_clip.list_models():
        raise ConfigError(
            f"config key 'clip.model_name': unknown open_clip model '{model_name}' (patseg ships "
            f"{sorted(p.stem for p in CLIP_CONFIG_DIR.glob('*.json'))}; see open_clip.list_models())"
        )
    if weights is not None and not Path(weights).is_file():
        raise MissingFileError(
            f"CLIP weights file not found: {weights}. Expected a local open_clip checkpoint "
            f"for '{model_name}'; {weights_hint(model_name)}."
        )
    with _without_random_init_notice():  # true of create_model, misleading for patseg: the file comes next
        model = open_clip.create_model(
            model_name,
            pretrained=None,
            force_quick_gelu=quick_gelu,
            pretrained_image=False,
            pretrained_text=False,
            force_preprocess_cfg=_tag_preprocess(model_name),
        )
    if weights is not None:
        try:
            open_clip.load_checkpoint(model, str(weights), strict=True, weights_only=True)
        except Exception as err:  # torch.load / safetensors / load_state_dict errors all mean "wrong file"
            detail = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
            raise CheckpointError(
                f"{weights} does not hold open_clip weights for '{model_name}' ({detail}); {weights_hint(model_name)}."
            ) from err
    model.eval()
    return model, open_clip.get_tokenizer(model_name)


def resize_pos_embed(pos: Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> Tensor:
    """(1 + H0*W0, C) positional embedding with a class slot -> (1 + h*w, C) for the grid ``new_grid``.

    The class slot is kept; the grid part is resized bicubically (align_corners=False, no antialias), as SAN's
    ``resize_pos_embed2d`` (``san/model/attn_helper.py``). Same grid: returned unchanged.
    """
    if tuple(old_grid) == tuple(new_grid):
        return pos
    cls, grid = pos[:1], pos[1:]
    grid = grid.t().reshape(1, -1, *old_grid)
    grid = F.interpolate(grid, size=tuple(new_grid), mode="bicubic", align_corners=False)
    return torch.cat([cls, grid.flatten(2)[0].t()], dim=0)


class ClipTrunk:
    """The operations ClipBackbone needs from one image-tower family. Holds references, no parameters.

    Attributes: width, num_heads, patch_size, depth, out_dim; ``pos_embed``: the (trainable) absolute positional
    embedding parameter with its class slot, looked up on every access so that it follows ``load_state_dict``
    and device moves of the tower.
    """

    width: int
    num_heads: int
    patch_size: int
    depth: int
    out_dim: int

    @property
    def pos_embed(self) -> nn.Parameter:
        raise NotImplementedError

    def embed(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """(B, 3, H, W) -> tokens (B, 1 + h*w, C) after class token, resized pos-embed and pre-norm; (h, w)."""
        raise NotImplementedError

    def rope(self, grid: tuple[int, int], num_prefix: int) -> Optional[Tensor]:
        """Rotary embedding for ``num_prefix`` unrotated tokens followed by the grid's patches, or None."""
        raise NotImplementedError

    def block(self, i: int, x: Tensor, attn_mask: Optional[Tensor], rope: Optional[Tensor]) -> Tensor:
        """Block i on (B, N, C) tokens; attn_mask: (B, heads, N, N) additive, or None."""
        raise NotImplementedError

    def head(self, tokens: Tensor) -> Tensor:
        """Final norm and projection of (..., C) tokens -> (..., out_dim), as CLIP does for its class token."""
        raise NotImplementedError


class OpenAIViTTrunk(ClipTrunk):
    """open_clip ``VisionTransformer``: conv1, class_embedding, positional_embedding, ln_pre, resblocks, ln_post,
    proj. Blocks are batch-first ``nn.MultiheadAttention`` taking a (B * heads, N, N) float mask."""

    def __init__(self, visual: VisionTransformer) -> None:
        if visual.attn_pool is not None or visual.pool_type != "tok" or not visual.transformer.batch_first:
            raise ValueError("only class-token pooling without attentional pooler is supported (SAN's CLIP)")
        self.visual = visual
        self.width = visual.conv1.out_channels
        self.num_heads = visual.transformer.resblocks[0].attn.num_heads
        self.patch_size = visual.patch_size[0]
        self.depth = len(visual.transformer.resblocks)
        self.out_dim = visual.output_dim
        self.pretrain_grid = tuple(visual.grid_size)

    @property
    def pos_embed(self) -> nn.Parameter:
        return self.visual.positional_embedding  # (1 + H0*W0, C)

    def embed(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        v = self.visual
        x = v.conv1(images)
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        pos = resize_pos_embed(self.pos_embed, self.pretrain_grid, grid).to(x.dtype)
        x = torch.cat([cls, x], dim=1) + pos
        return v.ln_pre(v.patch_dropout(x)), grid

    def rope(self, grid: tuple[int, int], num_prefix: int) -> Optional[Tensor]:
        return None

    def block(self, i: int, x: Tensor, attn_mask: Optional[Tensor], rope: Optional[Tensor]) -> Tensor:
        mask = attn_mask.flatten(0, 1) if attn_mask is not None else None  # batch-major (b * heads + h)
        return self.visual.transformer.resblocks[i](x, attn_mask=mask)

    def head(self, tokens: Tensor) -> Tensor:
        return self.visual.ln_post(tokens) @ self.visual.proj


class EvaTrunk(ClipTrunk):
    """open_clip ``TimmModel`` with a timm ``Eva`` trunk (EVA02-CLIP).

    timm's ``EvaAttention`` skips RoPE for its first ``num_prefix_tokens`` (= 1, the class token) tokens. The
    recognition sequence has Q + 1 prefix tokens, so the extra Q get identity rotations (sin 0, cos 1): RoPE skips
    the [SOS] tokens like the class token. The RoPE grid is rebuilt for the actual input grid with the trunk's own
    settings (``ref_feat_shape`` scaling included), as timm does for dynamic image sizes.
    """

    def __init__(self, visual: TimmModel) -> None:
        trunk = visual.trunk
        if trunk.__class__.__name__ != "Eva":
            raise ValueError(f"TimmModel trunk {type(trunk).__name__} is not supported (timm Eva only)")
        if (
            trunk.cls_token is None
            or trunk.reg_token is not None
            or trunk.no_embed_class
            or trunk.pos_embed is None
            or trunk.global_pool != "token"
            or trunk.attn_pool is not None
            or trunk.patch_drop is not None
            or trunk.patch_embed.dynamic_img_pad
            or getattr(trunk, "rope_mixed", False)
        ):
            raise ValueError("Eva trunk must have one class token with a pos-embed slot and token pooling")
        if trunk.rope is not None and not isinstance(trunk.rope, RotaryEmbeddingCat):
            raise ValueError(f"Eva RoPE type {type(trunk.rope).__name__} is not supported (EVA02's 'cat' only)")
        self.visual = visual
        self.trunk = trunk
        self.width = trunk.embed_dim
        self.num_heads = trunk.blocks[0].attn.num_heads
        self.patch_size = trunk.patch_embed.patch_size[0]
        self.depth = len(trunk.blocks)
        self.out_dim = _linear_out(visual.head, _linear_out(trunk.head, trunk.embed_dim))
        self.pretrain_grid = tuple(trunk.patch_embed.grid_size)
        self.rope_skip = trunk.blocks[0].attn.num_prefix_tokens

    @property
    def pos_embed(self) -> nn.Parameter:
        return self.trunk.pos_embed  # (1, 1 + H0*W0, C)

    def embed(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        t = self.trunk
        x = t.patch_embed.proj(images)  # the conv alone: PatchEmbed itself insists on the pretraining size
        grid = (x.shape[-2], x.shape[-1])
        x = t.patch_embed.norm(x.flatten(2).transpose(1, 2))
        cls = t.cls_token.to(x.dtype).expand(x.shape[0], -1, -1)
        pos = resize_pos_embed(self.pos_embed[0], self.pretrain_grid, grid).to(x.dtype)
        x = torch.cat([cls, x], dim=1) + pos
        return t.norm_pre(t.pos_drop(x)), grid

    def rope(self, grid: tuple[int, int], num_prefix: int) -> Optional[Tensor]:
        r = self.trunk.rope
        if r is None:
            return None
        sin, cos = build_rotary_pos_embed(
            list(grid),
            bands=r.bands,
            in_pixels=r.in_pixels,
            ref_feat_shape=r.ref_feat_shape,
            grid_offset=r.grid_offset,
            grid_indexing=r.grid_indexing,
            rotate_half=r.rotate_half,
            device=r.bands.device,
            grid_type=r.grid_type,
            normalize_coords=r.normalize_coords,
        )
        extra = num_prefix - self.rope_skip
        if extra < 0:
            raise ValueError(f"the sequence needs at least {self.rope_skip} prefix tokens, got {num_prefix}")
        sin = torch.cat([sin.new_zeros(extra, sin.shape[1]), sin], dim=0)
        cos = torch.cat([cos.new_ones(extra, cos.shape[1]), cos], dim=0)
        return torch.cat([sin, cos], dim=-1)  # timm's 'cat' layout: (N - rope_skip, 2 * head_dim)

    def block(self, i: int, x: Tensor, attn_mask: Optional[Tensor], rope: Optional[Tensor]) -> Tensor:
        return self.trunk.blocks[i](x, rope=rope, attn_mask=attn_mask)

    def head(self, tokens: Tensor) -> Tensor:
        t = self.trunk
        x = t.head(t.head_drop(t.fc_norm(t.norm(tokens))))
        return self.visual.head(x)


def _linear_out(module: nn.Module, default: int) -> int:
    """Output width of a Linear (or a Sequential ending in one); ``default`` when it is an identity."""
    layers = [m for m in module.modules() if isinstance(m, nn.Linear)]
    return layers[-1].out_features if layers else default


def make_trunk(visual: nn.Module) -> ClipTrunk:
    """The ClipTrunk for an open_clip image tower."""
    if isinstance(visual, VisionTransformer):
        return OpenAIViTTrunk(visual)
    if isinstance(visual, TimmModel):
        return EvaTrunk(visual)
    raise ValueError(
        f"unsupported CLIP image tower {type(visual).__name__} "
        "(open_clip VisionTransformer or TimmModel with a timm Eva trunk)"
    )
