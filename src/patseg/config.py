"""Model configuration records.

A preset is one JSON record in ``patseg/presets/`` that fills these dataclasses; every Table II ablation of the
PAT paper is a field of :class:`PatConfig`. Only ``patseg.build`` turns records into modules: the modules
themselves take plain keyword arguments.
"""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, cast

import yaml

from patseg.errors import ConfigError

PyramidBase = Literal["clip", "side"]
StageName = Literal["late", "mid", "early"]
BiasSource = Literal["decoded", "side"]
DecoderReading = Literal["tokens", "pixels"]
SpadeBlock = Literal["norm", "resblock"]
SpatialInner = Literal["equal", "featup"]  # names of patseg.losses.spatial.SPATIAL_INNER_WEIGHTS
STAGE_ORDER: tuple[str, ...] = ("late", "mid", "early")  # the decoder runs coarse to fine

REMOVED_KEYS = (
    "clip.weights",
    "loss.lpips_vgg_weights",
    "loss.lpips_random_trunk",
    "image_size",
    "pat.aux_sets",
    "loss.crf_weight",
    "loss.tv_weight",
)
"""Keys that older weights files recorded and records no longer have: file paths and a test switch (now run options,
not architecture), ``pat.aux_sets`` (PAT's auxiliary sets now follow ``side.deep_supervision``) and the two inner
spatial weights (now one named choice, ``loss.spatial_inner``)."""

LEGACY_DEFAULTS = {"pat.decoder": "pixels", "pat.spade_block": "norm"}
"""What a record written before these keys existed meant: the values that older weights files were trained with."""


@dataclass
class ClipConfig:
    model_name: str = "ViT-B-16"  # open_clip architecture name, or a config shipped in patseg/resources/clip
    quick_gelu: bool = True  # OpenAI weights were trained with QuickGELU
    taps: tuple[int, ...] = (0, 3, 6, 9)  # CLIP depths fused into the side ViT (0 = ln_pre output)
    rec_start: int = 9  # first CLIP block of the recognition path (SAN: FEATURE_LAST_LAYER_IDX)
    resize_ratio: float = 0.5  # CLIP sees the padded image scaled by this (SAN CLIP_RESOLUTION)
    templates: str = "san_vild"  # prompt-template set in patseg/resources/templates


@dataclass
class SideAdapterConfig:
    width: int = 240
    depth: int = 8
    heads: int = 6
    patch_size: int = 16
    mlp_ratio: float = 4.0
    num_queries: int = 100  # SAN's query tokens = PAT's global tokens
    pretrain_grid: int = 40  # side positional embedding grid (640 / 16)
    fusion_map: tuple[tuple[int, int], ...] = ((0, 0), (3, 1), (6, 2), (9, 3))  # (CLIP tap, side stage)
    # Side blocks whose outputs are decoded for the loss. SAN: the last is its prediction, the others auxiliary sets;
    # PAT: every one is an auxiliary set "side<block>" beside the decoded prediction (may be empty).
    deep_supervision: tuple[int, ...] = (7, 8)

    def check(self, prefix: str = "side.") -> None:
        """Every supervised block exists; raises ConfigError naming the key."""
        bad = [b for b in self.deep_supervision if not 1 <= b <= self.depth]
        if bad:
            raise ConfigError(
                f"config key '{prefix}deep_supervision' entries must lie in 1..{self.depth} (the side depth), "
                f"got {list(self.deep_supervision)}"
            )


@dataclass
class MaskDecoderConfig:
    dim: int = 256  # SAN MLPMaskDecoder width
    num_layers: int = 3
    rescale_attn_bias: bool = True


@dataclass
class PatConfig:
    """Everything PAT adds to SAN (docs/design.md). Each Table II ablation is one field."""

    codebook_sizes: tuple[int, int, int] = (128, 64, 32)  # early, mid, late
    latent_codebook_size: int = 256
    code_dim: int = 32
    pixel_dim: int = 256  # C_pix: stem, Down, Proj, DySample
    decoder_dim: int = 256
    decoder_heads: int = 8
    decoder_ffn: int = 1024
    decoder: DecoderReading = "tokens"  # "tokens": Eq. 3 as written; "pixels": a self-attention layer on the pixel grid
    spade_block: SpadeBlock = "norm"  # the pixel path of each decoder stage: plain SPADE, or SPADE's residual block
    decoder_extra_layers: int = 2  # Transformer layers after the last stage
    spade_hidden: int = 128
    token_mixer_hidden: int = 256
    kappa: float = 30.0  # HSAttn concentration, fixed
    dysample_groups: int = 4
    pyramid_base: PyramidBase = "side"  # "side": stage grids relative to the side grid H/16; "clip": to H/32
    stage_scales: tuple[int, int, int] = (4, 2, 1)  # Table II: (4,2,1), (4,4,4), (1,1,1)
    decoder_stages: tuple[StageName, ...] = ("late", "mid", "early")  # Table II: drop early -> mid -> late -> []
    vmf: bool = True  # Table II: False = Euclidean VQ + plain softmax attention
    token_mixer: bool = True  # Table II
    pixel_residual: bool = True  # Table II
    spatial_alignment: bool = True  # Table II: CRF + TV loss on the stage codes
    unified_tokens: bool = False  # Table II: global tokens made from the stage codebooks
    shared_decoder: bool = True  # Table II: False = separate pixel and semantic decoders
    bias_source: BiasSource = (
        "decoded"  # CLIP attention bias from the decoded head ("decoded") or SAN's block 8 ("side")
    )

    def check(self, prefix: str = "pat.") -> None:
        """Constraints between values that types alone cannot state; raises ConfigError naming the key."""
        order = [s for s in STAGE_ORDER if s in self.decoder_stages]
        if list(self.decoder_stages) != order:
            raise ConfigError(
                f"config key '{prefix}decoder_stages' must be a subset of [late, mid, early] in that order "
                f"([] decodes the latent alone), got {list(self.decoder_stages)}"
            )


@dataclass
class LossConfig:
    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    no_object_weight: float = 0.1
    num_points: int = 12544  # 112 x 112
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    vq_weight: float = 0.1
    commitment: float = 0.25  # β of the commitment term in every quantizer (the four VMFQuantizers)
    spatial_weight: float = 0.1
    spatial_inner: SpatialInner = "equal"  # inner CRF / TV weights of L_spatial: "equal" 1 / 1, "featup" 0.001 / 0
    crf_points: int = 1000
    rec_weight: float = 1.0
    l1_weight: float = 0.1
    l2_weight: float = 1.0
    perceptual_weight: float = 0.1
    lpips_size: int = 256  # LPIPS runs on a resize of both images to this side


@dataclass
class ModelConfig:
    name: str = "san_vitb16"
    clip: ClipConfig = field(default_factory=ClipConfig)
    side: SideAdapterConfig = field(default_factory=SideAdapterConfig)
    mask_decoder: MaskDecoderConfig = field(default_factory=MaskDecoderConfig)
    pat: Optional[PatConfig] = None  # None = the SAN baseline
    loss: LossConfig = field(default_factory=LossConfig)

    @property
    def is_pat(self) -> bool:
        return self.pat is not None

    def check(self, prefix: str = "") -> None:
        if self.pat is None and not self.side.deep_supervision:
            raise ConfigError(
                f"config key '{prefix}side.deep_supervision' must name at least one block for SAN: "
                "its last block is SAN's prediction"
            )


class YamlLoader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` as a float (YAML 1.1 wants ``1.0e-4``; a string here would surprise)."""


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a JSON/YAML value to the annotated type ``tp``, or raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"config key '{key}' must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {type(value).__name__}")
        return from_dict(cast(type, tp), value, prefix=key + ".")  # a dataclass type, not an instance
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' must be a list, got {type(value).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"config key '{key}' must have {len(args)} entries, got {len(value)}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
        return value
    return value


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict; unknown keys and wrong types raise ConfigError."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}' (valid: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    record = cls(**kwargs)
    check = getattr(record, "check", None)
    if check is not None:
        check(prefix)
    return record


def to_dict(cfg: Any) -> dict:
    """Nested plain-dict form of a config dataclass (tuples become lists), for JSON and checkpoints."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def apply_overrides(data: dict, overrides: dict[str, Any]) -> dict:
    """Return a copy of ``data`` with dotted keys (``pat.vmf``) set; intermediate mappings are created."""
    out = json.loads(json.dumps(data))
    for dotted, value in overrides.items():
        node = out
        parts = dotted.split(".")
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = {}
                node[p] = nxt
            if not isinstance(nxt, dict):
                raise ConfigError(f"config key '{dotted}': '{p}' is not a mapping")
            node = nxt
        node[parts[-1]] = value
    return out


PRESET_DIR = Path(__file__).parent / "presets"


def list_presets() -> list[str]:
    """Names of the presets shipped with patseg."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def load_preset(name_or_path: str, overrides: Optional[dict[str, Any]] = None) -> ModelConfig:
    """Load a preset by name (``san_vitb16``) or from a JSON file path, with optional dotted overrides."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESET_DIR / f"{name_or_path}.json"
    if not path.is_file():
        raise ConfigError(f"unknown preset '{name_or_path}' (available: {', '.join(list_presets())})")
    data = json.loads(path.read_text())
    data.setdefault("name", path.stem)
    if overrides:
        data = apply_overrides(data, overrides)
    return from_dict(ModelConfig, data)


def parse_assignments(items: Sequence[str]) -> dict[str, Any]:
    """``["pat.vmf=false", "loss.vq_weight=1e-4"]`` -> ``{"pat.vmf": False, "loss.vq_weight": 1e-4}``.

    The one parser behind every ``--set KEY=VALUE``: values are YAML scalars or flow collections, so ``1e-4``,
    ``true``, ``null``, ``[4, 4, 4]`` and ``[early, mid]`` mean what they look like. Types are checked later,
    against the record the keys belong to.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"'{item}' is not KEY=VALUE (e.g. pat.vmf=false)")
        try:
            value = yaml.load(text, Loader=YamlLoader)
        except yaml.YAMLError as exc:
            raise ConfigError(f"'{item}': the value is not valid YAML ({str(exc).splitlines()[0]})") from None
        out[key.strip()] = value
    return out


def keys_for_preset(preset: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` without the ``pat.*`` keys when ``preset`` is SAN, for commands that build several models.

    A ``pat.*`` key would otherwise give a SAN preset a PAT section, turning the SAN baseline into PAT.
    """
    if load_preset(preset).is_pat:
        return dict(overrides)
    return {k: v for k, v in overrides.items() if k.split(".")[0] != "pat"}
