"""SAN's released checkpoints: read them safely, rename their keys to patseg's, and start a model's SAN part from one.

MendelXu/SAN publishes detectron2-style files (``san_vit_b_16.pth``, ``san_vit_large_14.pth``) holding
``{"model": state_dict, ...}``. The key names follow SAN's module tree (``san/model/san.py``,
``san/model/clip_utils/visual.py``, ``san/model/clip_utils/classifier.py``,
``san/model/side_adapter/side_adapter.py``; the ViT-B/16 key table is ``tests/resources/san_vitb16_state_dict.tsv``)::

    SAN release                                                  patseg
    side_adapter_network.{query_embed, query_pos_embed}          side.*
    side_adapter_network.vit_model.{pos_embed, patch_embed.*, blocks.*}
                                                                 side.*
    side_adapter_network.fusion_layers.layer_S.input_proj.{0,1}.*
                                                                 side.fusion_layers.N.{norm,proj}.*
    side_adapter_network.mask_decoder.*                          mask_decoder.*
    clip_visual_extractor.{class_embedding, positional_embedding, conv1.*, ln_pre.*}
                                                                 clip.visual.*
    clip_visual_extractor.resblocks.i.*   (i < rec_start)        clip.visual.transformer.resblocks.i.*
    clip_rec_head.resblocks.j.*                                  clip.visual.transformer.resblocks.{rec_start+j}.*
    clip_rec_head.{ln_post.*, proj}                              clip.visual.*
    ov_classifier.bg_embed                                       bg_embed
    ov_classifier.*   (text tower, logit_scale)                  text.clip.*

S is the side stage a fusion layer feeds (SAN names it ``layer_{target}``); N is the position of that stage in the
preset's ``fusion_map``. SAN ran open_clip 2.16 (sequence-first blocks) and patseg runs open_clip 3.3.0
(batch-first), but both keep ``nn.MultiheadAttention``'s packed ``in_proj_weight`` and the same parameter names and
layouts, so converting is renaming: no tensor is reshaped or transposed.

Two release buffers are accepted and dropped (:data:`DROPPED`). Any other unknown, missing or mis-shaped key makes
the conversion fail with every offending name listed, and nothing is written.
"""

from __future__ import annotations

import logging
import pickle
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor

from patseg.errors import CheckpointError, MissingFileError
from patseg.weights.files import check_state, frozen_keys, name_list, read_tensors

if TYPE_CHECKING:
    from patseg.models.san.model import SAN

logger = logging.getLogger(__name__)

DROPPED: dict[str, str] = {
    "criterion.empty_weight": "Mask2Former's class weights; patseg's SetCriterion recomputes them on every call",
    "ov_classifier.attn_mask": "the causal text mask; open_clip 3.3.0 rebuilds it as a non-persistent buffer",
}
"""Release buffers patseg does not store, with the reason."""

RELEASE_PRESETS: dict[tuple[int, ...], str] = {
    (768, 3, 16, 16): "san_vitb16",  # san_vit_b_16.pth: OpenAI ViT-B/16
    (1024, 3, 14, 14): "san_vitl14",  # san_vit_large_14.pth: OpenAI ViT-L/14-336
}
"""Shape of ``clip_visual_extractor.conv1.weight`` -> the preset of that release."""

SAN_PARTS = ("clip.", "text.", "side.", "mask_decoder.", "bg_embed")
"""State-dict prefixes of SAN's modules; PAT subclasses SAN, so its SAN part has the same names."""

# (release template, patseg template); {rest} is any name tail, the other fields are integers (see SanLayout).
# Order matters in the patseg -> release direction: specific side names come before the generic ones.
_RULES: tuple[tuple[str, str], ...] = (
    ("side_adapter_network.query_embed", "side.query_embed"),
    ("side_adapter_network.query_pos_embed", "side.query_pos_embed"),
    ("side_adapter_network.vit_model.pos_embed", "side.pos_embed"),
    ("side_adapter_network.vit_model.patch_embed.{rest}", "side.patch_embed.{rest}"),
    ("side_adapter_network.vit_model.blocks.{rest}", "side.blocks.{rest}"),
    ("side_adapter_network.fusion_layers.layer_{stage}.input_proj.0.{rest}", "side.fusion_layers.{slot}.norm.{rest}"),
    ("side_adapter_network.fusion_layers.layer_{stage}.input_proj.1.{rest}", "side.fusion_layers.{slot}.proj.{rest}"),
    ("side_adapter_network.mask_decoder.{rest}", "mask_decoder.{rest}"),
    ("clip_visual_extractor.class_embedding", "clip.visual.class_embedding"),
    ("clip_visual_extractor.positional_embedding", "clip.visual.positional_embedding"),
    ("clip_visual_extractor.conv1.{rest}", "clip.visual.conv1.{rest}"),
    ("clip_visual_extractor.ln_pre.{rest}", "clip.visual.ln_pre.{rest}"),
    ("clip_visual_extractor.resblocks.{block}.{rest}", "clip.visual.transformer.resblocks.{block}.{rest}"),
    ("clip_rec_head.resblocks.{rec}.{rest}", "clip.visual.transformer.resblocks.{block}.{rest}"),
    ("clip_rec_head.ln_post.{rest}", "clip.visual.ln_post.{rest}"),
    ("clip_rec_head.proj", "clip.visual.proj"),
    ("ov_classifier.bg_embed", "bg_embed"),
    ("ov_classifier.{rest}", "text.clip.{rest}"),
)


def _pattern(template: str) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", template)  # literal, field, literal, field, ...
    regex = "".join(
        re.escape(p) if i % 2 == 0 else (f"(?P<{p}>.+)" if p == "rest" else f"(?P<{p}>\\d+)")
        for i, p in enumerate(parts)
    )
    return re.compile(regex + r"\Z")


_COMPILED = tuple((_pattern(r), r, _pattern(p), p) for r, p in _RULES)


@dataclass(frozen=True)
class SanLayout:
    """What the renaming needs from a preset.

    rec_start: first CLIP block of SAN's recognition head (SAN ``FEATURE_LAST_LAYER_IDX``: 9 for ViT-B, 18 for
        ViT-L); SAN numbers the head's blocks from 0.
    fusion_stages: the side stage of each patseg fusion layer, in ``fusion_map`` order.
    """

    rec_start: int
    fusion_stages: tuple[int, ...]

    @classmethod
    def of(cls, model: SAN) -> "SanLayout":
        """The layout of a built SAN or PAT model."""
        return cls(rec_start=model.clip.rec_start, fusion_stages=tuple(s for _, s in model.side.fusion_map))

    def _to_patseg(self, fields: dict[str, str]) -> Optional[dict[str, str]]:
        out = dict(fields)
        if "rec" in out:
            out["block"] = str(int(out.pop("rec")) + self.rec_start)
        if "stage" in out:
            stage = int(out.pop("stage"))
            if stage not in self.fusion_stages:
                return None
            out["slot"] = str(self.fusion_stages.index(stage))
        return out

    def _to_release(self, fields: dict[str, str], release_template: str) -> Optional[dict[str, str]]:
        out = dict(fields)
        if "block" in out:
            block = int(out["block"])
            if "{rec}" in release_template:  # recognition-head block: renumbered from rec_start
                if block < self.rec_start:
                    return None
                out["rec"] = str(block - self.rec_start)
            elif block >= self.rec_start:  # an extractor block must lie before the recognition head
                return None
        if "slot" in out:
            slot = int(out.pop("slot"))
            if slot >= len(self.fusion_stages):
                return None
            out["stage"] = str(self.fusion_stages[slot])
        return out

    def patseg_name(self, release_key: str) -> Optional[str]:
        """patseg's name for a release key, or None when no rule knows it (dropped buffers included)."""
        for release_re, _, _, patseg_template in _COMPILED:
            m = release_re.match(release_key)
            if m is not None:
                fields = self._to_patseg(m.groupdict())
                return None if fields is None else patseg_template.format(**fields)
        return None

    def release_name(self, patseg_key: str) -> Optional[str]:
        """The release key that holds a patseg tensor, or None for tensors outside SAN's release."""
        for _, release_template, patseg_re, _ in _COMPILED:
            m = patseg_re.match(patseg_key)
            if m is not None:
                fields = self._to_release(m.groupdict(), release_template)
                if fields is not None:
                    return release_template.format(**fields)
        return None


def _fail(source: Union[str, Path], problems: list[str]) -> None:
    if problems:
        raise CheckpointError(f"{source}: " + " | ".join(problems))


def _unpickling_detail(err: Exception) -> str:
    """The informative part of torch's weights-only refusal (which global or opcode it rejected)."""
    text = str(err)
    m = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|\Z)", text, flags=re.S)
    detail = m.group(1) if m else text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return " ".join(detail.split())[:240]


def read_san_release(path: Union[str, Path]) -> dict[str, Tensor]:
    """The ``model`` state dict of a SAN release file, read with ``torch.load(weights_only=True)``.

    Raises MissingFileError, or CheckpointError for a file that pickles arbitrary objects (it is never executed),
    is not a torch checkpoint, or holds no ``{"model": {name: tensor}}`` mapping.
    """
    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"SAN checkpoint not found: {p}")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, IndexError, ValueError) as err:  # junk bytes
        raise CheckpointError(
            f"{p}: refusing to load: torch.load(weights_only=True) accepts only tensors and plain "
            f"containers, and this file is not such a checkpoint ({_unpickling_detail(err)})"
        ) from None
    if not isinstance(obj, Mapping) or not isinstance(obj.get("model"), Mapping):
        found = sorted(map(str, obj))[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(
            f"{p}: not a detectron2-style SAN checkpoint: expected {{'model': state_dict, ...}}, found {found}"
        )
    state = obj["model"]
    bad = [str(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    _fail(p, [name_list("entries that are not tensors", bad)] if bad else [])
    return dict(state)


def detect_preset(release: Mapping[str, Tensor], source: Union[str, Path] = "checkpoint") -> str:
    """The patseg preset of a release, told by its CLIP patch embedding (see :data:`RELEASE_PRESETS`)."""
    conv = release.get("clip_visual_extractor.conv1.weight")
    preset = RELEASE_PRESETS.get(tuple(conv.shape)) if conv is not None else None
    if preset is None:
        shape = tuple(conv.shape) if conv is not None else "absent"
        raise CheckpointError(
            f"{source}: cannot tell the preset (clip_visual_extractor.conv1.weight {shape}); "
            f"pass --preset ({', '.join(sorted(RELEASE_PRESETS.values()))})"
        )
    return preset


def rename_release(
    release: Mapping[str, Tensor], layout: SanLayout, source: Union[str, Path] = "checkpoint"
) -> dict[str, Tensor]:
    """Release state dict -> patseg names. The :data:`DROPPED` buffers are left out; unknown keys, a CLIP split at
    another block than ``rec_start``, and two keys landing on one patseg name raise CheckpointError."""
    out: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    unknown, clashes = [], []
    for key, value in release.items():
        if key in DROPPED:
            continue
        name = layout.patseg_name(key)
        if name is None:
            unknown.append(key)
        elif name in out:
            clashes.append(f"{origin[name]} and {key} -> {name}")
        else:
            out[name], origin[name] = value, key
    problems = [name_list("unknown keys", unknown)] if unknown else []
    extractor = [int(m.group(1)) for k in release if (m := re.match(r"clip_visual_extractor\.resblocks\.(\d+)\.", k))]
    if extractor and max(extractor) + 1 != layout.rec_start:
        problems.append(
            f"the CLIP feature extractor holds blocks 0..{max(extractor)}, but the preset's recognition "
            f"head starts at block rec_start={layout.rec_start} (SAN FEATURE_LAST_LAYER_IDX)"
        )
    if clashes:
        problems.append(name_list("keys landing on one name", clashes))
    _fail(source, problems)
    return out


def check_release_state(
    state: Mapping[str, Tensor],
    expected: Mapping[str, Tensor],
    layout: SanLayout,
    source: Union[str, Path] = "checkpoint",
    *,
    may_lack: Sequence[str] = (),
) -> None:
    """:func:`patseg.weights.files.check_state` with each name shown as its release key, then patseg's name."""

    def shown(name: str) -> str:
        release = layout.release_name(name)
        return name if release is None else f"{release} -> {name}"

    check_state(state, expected, source, may_lack=may_lack, shown=shown, what="the preset")


# ---------------------------------------------------------------------- PAT from SAN
@dataclass(frozen=True)
class InitReport:
    """source: the file; loaded: patseg keys taken from it; fresh: keys that keep their initialisation."""

    source: str
    loaded: tuple[str, ...]
    fresh: tuple[str, ...]


def _groups(keys: Sequence[str]) -> str:
    counts = Counter(".".join(k.split(".")[:2]) if k.startswith(("clip.", "text.")) else k.split(".")[0] for k in keys)
    return ", ".join(f"{name} ({n})" for name, n in counts.items()) or "none"


def read_san_state(path: Union[str, Path], layout: SanLayout) -> dict[str, Tensor]:
    """A SAN checkpoint in patseg names: a patseg ``.safetensors`` file as it is, anything else as a release."""
    p = Path(path)
    if p.suffix == ".safetensors":
        return read_tensors(p)[0]
    return rename_release(read_san_release(p), layout, p)


def init_from_san(model: SAN, path: Union[str, Path], *, clip_from_file: bool) -> InitReport:
    """Initialise the SAN part of a SAN or PAT model (CLIP, text tower, side adapter, mask decoder, background
    embedding) from a SAN release or a converted patseg SAN checkpoint; every other module keeps its init.

    The SAN part must be covered exactly (frozen CLIP tensors may be absent when the model was built with CLIP
    weights, ``clip_from_file``, as in ``load_weights``); the loaded and fresh tensors are logged.
    """
    layout = SanLayout.of(model)
    state = read_san_state(path, layout)
    expected = model.state_dict()
    san_part = {k: v for k, v in expected.items() if k.startswith(SAN_PARTS)}
    may_lack = frozen_keys(model) if clip_from_file else set()
    check_release_state(state, san_part, layout, path, may_lack=sorted(may_lack))
    model.load_state_dict(state, strict=False)
    loaded = tuple(k for k in expected if k in state)
    fresh = tuple(k for k in expected if k not in state)
    logger.info("init_from %s: loaded %d tensors: %s", path, len(loaded), _groups(loaded))
    logger.info(
        "init_from %s: %d tensors keep their values (fresh init or CLIP file): %s", path, len(fresh), _groups(fresh)
    )
    logger.debug("init_from %s: loaded %s", path, ", ".join(loaded))
    return InitReport(source=str(path), loaded=loaded, fresh=fresh)
