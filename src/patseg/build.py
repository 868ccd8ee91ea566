"""Build SAN and PAT models from architecture records, with their weights.

``build_model`` is the only place that reads config records; every module takes plain keyword arguments.
Steps, each a small function: resolve the record -> CLIP and text towers -> SAN parts -> PAT parts -> weights.
File paths (the CLIP weights, a weights file, a SAN checkpoint to start from) are arguments of the call, never
fields of the record, so a weights file stores the architecture alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional, TypedDict, Union

from patseg.config import LossConfig, ModelConfig, PatConfig, apply_overrides, from_dict, load_preset, to_dict
from patseg.errors import ConfigError
from patseg.losses import SetCriterion
from patseg.losses.pat_criterion import PatCriterion
from patseg.losses.reconstruction import ReconstructionLoss
from patseg.losses.spatial import SPATIAL_INNER_WEIGHTS
from patseg.models.clip.backbone import ClipBackbone, load_clip
from patseg.models.clip.text_encoder import TextEncoder
from patseg.models.layers.resample import PixelStem, log2_exact
from patseg.models.pat.geometry import SIDE_STRIDE, STAGES, final_stride, stage_strides, tap_stride
from patseg.models.pat.model import PAT, PatOptions, decoder_plan
from patseg.models.pat.pixel_branch import PixelBranch
from patseg.models.pat.pyramid_stage import PyramidStage
from patseg.models.pat.reconstruction_head import ReconstructionHead
from patseg.models.pat.shared_decoder import SharedDecoder
from patseg.models.pat.token_mixer import TokenMixer
from patseg.models.san.mask_decoder import MaskDecoder
from patseg.models.san.model import SAN
from patseg.models.san.side_adapter import SideAdapter
from patseg.resources import load_templates
from patseg.weights.files import load_weights, read_architecture
from patseg.weights.san_release import init_from_san
from patseg.weights.text_cache import text_embedding_cache


class _SanParts(TypedDict):
    """The keyword arguments SAN and PAT share (see :class:`patseg.models.san.model.SAN`), criterion aside."""

    clip: ClipBackbone
    text: TextEncoder
    side: SideAdapter
    mask_decoder: MaskDecoder
    resize_ratio: float
    record_blocks: Sequence[int]
    templates: Sequence[str]


def resolve_config(
    preset: Union[str, ModelConfig, None], weights: Optional[str] = None, overrides: Optional[dict[str, Any]] = None
) -> ModelConfig:
    """A ModelConfig from a preset name/path, an existing record, or the record stored in a weights file."""
    if isinstance(preset, ModelConfig):
        return from_dict(ModelConfig, apply_overrides(to_dict(preset), overrides or {}))
    if preset is None:
        if weights is None:
            raise ConfigError("give a preset name or a weights file that records its preset")
        stored = read_architecture(weights)
        if stored is None:
            raise ConfigError(f"{weights}: this weights file does not record its preset; pass --preset")
        return from_dict(ModelConfig, apply_overrides(stored, overrides or {}))
    return load_preset(preset, overrides)


def build_model(
    preset: Union[str, ModelConfig, None] = None,
    *,
    weights: Optional[str] = None,
    clip_weights: Optional[str] = None,
    overrides: Optional[dict[str, Any]] = None,
    init_from: Optional[str] = None,
) -> Union[SAN, PAT]:
    """Build a SAN or PAT model.

    Arguments:
        preset: preset name (``patseg.list_presets()``), a JSON path, a ModelConfig, or None to take the record
            stored in ``weights``.
        weights: a patseg ``.safetensors`` weights file, loaded strictly.
        clip_weights: local open_clip checkpoint for the CLIP towers; without it they are randomly initialised
            (tiny presets, tests) unless ``weights`` carries them.
        overrides: dotted config overrides, e.g. ``{"pat.vmf": False}`` (``patseg.config.parse_assignments``
            turns ``--set`` strings into this).
        init_from: a SAN checkpoint (SAN release ``.pth`` or converted patseg ``.safetensors``) that initialises
            the SAN part (CLIP, text tower, side adapter, mask decoder, background embedding); PAT's own modules
            start fresh. Exclusive with ``weights``.
    """
    if weights is not None and init_from is not None:
        raise ConfigError("give weights (a full patseg checkpoint) or init_from (a SAN checkpoint), not both")
    cfg = resolve_config(preset, weights, overrides)
    # The text tower comes from a file when any of the three is given (each must hold or leave out only CLIP).
    from_file = clip_weights is not None or weights is not None or init_from is not None
    model = _build_san_or_pat(cfg, None if clip_weights is None else str(clip_weights), text_from_file=from_file)
    model.config = cfg
    model.clip_weights = None if clip_weights is None else str(clip_weights)
    if weights is not None:
        load_weights(model, weights, clip_from_file=clip_weights is not None)
    if init_from is not None:
        init_from_san(model, init_from, clip_from_file=clip_weights is not None)
    return model


def _build_san_or_pat(cfg: ModelConfig, clip_weights: Optional[str], *, text_from_file: bool) -> SAN | PAT:
    c = cfg.clip
    cache = text_embedding_cache(text_from_file)
    clip, text = load_clip(
        c.model_name, quick_gelu=c.quick_gelu, weights=clip_weights, taps=c.taps, rec_start=c.rec_start, cache=cache
    )
    s = cfg.side
    side = SideAdapter(
        clip_width=clip.width,
        width=s.width,
        depth=s.depth,
        heads=s.heads,
        patch_size=s.patch_size,
        mlp_ratio=s.mlp_ratio,
        num_queries=s.num_queries,
        pretrain_grid=s.pretrain_grid,
        fusion_map=s.fusion_map,
    )
    d = cfg.mask_decoder
    mask_decoder = MaskDecoder(
        query_dim=s.width,
        pixel_dim=s.width,
        dim=d.dim,
        num_layers=d.num_layers,
        clip_heads=clip.num_heads,
        rescale_attn_bias=d.rescale_attn_bias,
    )
    loss = cfg.loss
    set_loss = SetCriterion(
        class_weight=loss.class_weight,
        mask_weight=loss.mask_weight,
        dice_weight=loss.dice_weight,
        no_object_weight=loss.no_object_weight,
        num_points=loss.num_points,
        oversample_ratio=loss.oversample_ratio,
        importance_sample_ratio=loss.importance_sample_ratio,
    )
    parts: _SanParts = {
        "clip": clip,
        "text": text,
        "side": side,
        "mask_decoder": mask_decoder,
        "resize_ratio": c.resize_ratio,
        "record_blocks": s.deep_supervision,
        "templates": load_templates(c.templates),
    }
    if cfg.pat is None:
        return SAN(**parts, criterion=set_loss)
    return PAT(
        **parts,
        **_pat_parts(
            cfg, cfg.pat, set_loss, clip_width=clip.width, clip_patch=clip.patch_size, clip_heads=clip.num_heads
        ),
    )


def _pat_parts(
    cfg: ModelConfig, p: PatConfig, set_loss: SetCriterion, *, clip_width: int, clip_patch: int, clip_heads: int
) -> dict:
    """PAT's own modules and its criterion (around SAN's ``set_loss``); every resolution is derived from
    ``pyramid_base`` and ``stage_scales``. Modules are made in a fixed order: it fixes their random initialisation."""
    # Value constraints (stage order, supervised side blocks) were checked when the record was read (patseg.config).
    strides = stage_strides(p.pyramid_base, p.stage_scales)
    pixel_branch = _pixel_branch(cfg, p, strides, clip_width=clip_width, clip_patch=clip_patch)
    plan = decoder_plan(strides, p.decoder_stages, SIDE_STRIDE)

    def decoder(query_dim: int | None) -> SharedDecoder:
        return SharedDecoder(
            stages=plan,
            dim=p.decoder_dim,
            code_dim=p.code_dim,
            heads=p.decoder_heads,
            ffn=p.decoder_ffn,
            spade_hidden=p.spade_hidden,
            groups=p.dysample_groups,
            query_dim=query_dim,
            extra_layers=p.decoder_extra_layers,
            reading=p.decoder,
            spade_block=p.spade_block,
        )

    out_stride = final_stride(p.pyramid_base, p.stage_scales, p.decoder_stages)
    return {
        "pixel_branch": pixel_branch,
        "decoder": decoder(cfg.side.width),
        "pixel_decoder": None if p.shared_decoder else decoder(None),
        "mask_head": MaskDecoder(
            query_dim=cfg.side.width,
            pixel_dim=p.decoder_dim,
            dim=cfg.mask_decoder.dim,
            num_layers=cfg.mask_decoder.num_layers,
            clip_heads=clip_heads,
            rescale_attn_bias=cfg.mask_decoder.rescale_attn_bias,
        ),
        "recon_head": ReconstructionHead(p.decoder_dim, num_upsamples=log2_exact(out_stride, "final decoder stride")),
        "options": PatOptions(
            pyramid_base=p.pyramid_base,
            stage_scales=p.stage_scales,
            decoder_stages=p.decoder_stages,
            bias_source=p.bias_source,
            aux_sets=tuple(f"side{b}" for b in cfg.side.deep_supervision),  # every set SAN supervises
        ),
        "criterion": _pat_criterion(cfg.loss, p, set_loss),
        "query_maker": (
            TokenMixer(
                in_tokens=sum(p.codebook_sizes),
                out_tokens=cfg.side.num_queries,
                hidden=p.token_mixer_hidden,
                in_dim=p.code_dim,
                out_dim=cfg.side.width,
            )
            if p.unified_tokens
            else None
        ),
    }


def _pixel_branch(
    cfg: ModelConfig, p: PatConfig, strides: dict[str, int], *, clip_width: int, clip_patch: int
) -> PixelBranch:
    """The stem, the three pyramid stages (with their semantic halves) and the latent quantizer."""
    t_stride = tap_stride(p.pyramid_base, clip_patch, cfg.clip.resize_ratio)
    side_stage_to_tap = {side_stage: tap for tap, side_stage in cfg.side.fusion_map}
    taps = [side_stage_to_tap[i + 1] for i in range(len(STAGES))]
    sizes = dict(zip(STAGES, p.codebook_sizes))
    stages = []
    for i, name in enumerate(STAGES):
        prev = STAGES[i - 1] if i else None
        stages.append(
            PyramidStage(
                clip_width=clip_width,
                side_width=cfg.side.width,
                pixel_dim=p.pixel_dim,
                code_dim=p.code_dim,
                num_codes=sizes[name],
                prev_codes=sizes[prev] if prev else None,
                num_queries=cfg.side.num_queries,
                tap_factor=t_stride / strides[name],
                down_factor=strides[prev] / strides[name] if prev else None,
                kappa=p.kappa,
                vmf=p.vmf,
                commitment=cfg.loss.commitment,
                token_mixer=p.token_mixer,
                pixel_residual=p.pixel_residual,
                mixer_hidden=p.token_mixer_hidden,
                groups=p.dysample_groups,
                heads=cfg.side.heads,
            )
        )
    stem = PixelStem(out_channels=p.pixel_dim, stride=strides["early"]) if p.pixel_residual else None
    return PixelBranch(
        stem=stem,
        stages=stages,
        tap_indices=taps,
        side_width=cfg.side.width,
        code_dim=p.code_dim,
        latent_codes=p.latent_codebook_size,
        vmf=p.vmf,
        commitment=cfg.loss.commitment,
    )


def _pat_criterion(loss: LossConfig, p: PatConfig, set_loss: SetCriterion) -> PatCriterion:
    """Every PAT loss weight and switch, from ``loss.*``, ``pat.spatial_alignment`` and ``pat.vmf``; the inner
    spatial weights from the table ``SPATIAL_INNER_WEIGHTS`` by the name ``loss.spatial_inner``."""
    return PatCriterion(
        set_loss=set_loss,
        reconstruction=ReconstructionLoss(
            l1_weight=loss.l1_weight,
            l2_weight=loss.l2_weight,
            perceptual_weight=loss.perceptual_weight,
            lpips_size=loss.lpips_size,
        ),
        vq_weight=loss.vq_weight,
        spatial_weight=loss.spatial_weight,
        crf_weight=SPATIAL_INNER_WEIGHTS[loss.spatial_inner].crf,
        tv_weight=SPATIAL_INNER_WEIGHTS[loss.spatial_inner].tv,
        crf_points=loss.crf_points,
        rec_weight=loss.rec_weight,
        spatial_alignment=p.spatial_alignment,
        unit_codes=p.vmf,  # without vMF the codes are raw: the criterion rescales them for CRF and TV
    )
