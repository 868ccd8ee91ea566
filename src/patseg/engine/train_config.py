"""Typed training configuration: YAML file + ``key=value`` command-line overrides.

Defaults follow DESIGN.md §4 (the PAT paper's recipe on top of SAN's): AdamW lr 1e-4 and weight decay 1e-4, poly
schedule (power 0.9), full-model gradient-norm clip 0.01, 120k iterations at a global batch of 12. Validation reuses
:func:`patseg.config.from_dict`, so an unknown key or a wrong type raises :class:`ConfigError` naming the key.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from patseg.config import ConfigError, ModelConfig, YamlLoader, apply_overrides, from_dict, load_preset, to_dict

AMP_MODES = ("bf16", "fp16", "off")




def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=YamlLoader)  # a SafeLoader subclass: no arbitrary objects


@dataclass
class ModelChoice:
    preset: str = "san_vitb16"  # preset name in patseg/presets, or a JSON file path
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted keys into the preset, e.g. {"pat.vmf": false}
    weights: Optional[str] = None  # initial weights (checkpoint folder or model.safetensors); ignored on resume
    clip_weights: Optional[str] = None  # local open_clip checkpoint of the preset's CLIP (required for real CLIPs)


@dataclass
class DataConfig:
    dataset: str = "coco_stuff_171"  # training dataset name (patseg.data registry)
    root: str = "datasets"  # dataset root folder, in the layouts of reference/data_eval.md
    crop_size: int = 640  # square training crop (SAN: 640)
    workers: int = 4  # DataLoader worker processes per rank
    ignore_index: int = 255  # label value excluded from the loss
    allow_partial: bool = False  # accept a dataset whose image count differs from the official one (subsets)


@dataclass
class SolverConfig:
    lr: float = 1e-4  # AdamW base learning rate
    weight_decay: float = 1e-4  # 0 for norms and embeddings, see schedule.build_param_groups
    iters: int = 120000
    batch_size: int = 12  # global: summed over ranks and accumulation steps
    poly_power: float = 0.9
    grad_clip: float = 0.01  # full-model L2 norm; 0 disables clipping (the norm is still logged)
    amp: str = "bf16"  # "bf16" | "fp16" | "off"; always off on CPU
    grad_accum: int = 1  # micro-batches per optimizer step on each rank
    seed: int = 0  # each rank seeds with seed + rank


@dataclass
class CheckpointConfig:
    period: int = 5000  # iterations between checkpoints (a final one is always written)
    keep_last: int = 3  # older ckpt_* folders are deleted
    include_frozen: bool = False  # False: frozen (CLIP) weights are left out and must come from the CLIP file


@dataclass
class LogConfig:
    period: int = 20  # iterations between scalar logs
    image_period: int = 1000  # iterations between TensorBoard image panels


@dataclass
class EvalConfig:
    period: int = 5000  # iterations between calls of the evaluate callback (and at the end)
    # SAN's test list (configs/Base-coco-stuff-164K-171.yaml), named as patseg's class-name files
    datasets: tuple[str, ...] = ("coco_stuff_171", "voc_20", "pcontext_59", "ade20k_150", "pcontext_459",
                                 "ade20k_847")
    limit: Optional[int] = None  # evaluate only the first N images of each set (quick checks); None = all


@dataclass
class TrainConfig:
    model: ModelChoice = field(default_factory=ModelChoice)
    data: DataConfig = field(default_factory=DataConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output_dir: str = "output"


def _flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested model overrides become dotted keys, so ``{pat: {vmf: false}}`` edits one field, not all of ``pat``."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if not isinstance(key, str):
            raise ConfigError(f"config key 'model.overrides.{prefix}{key}' must be a string")
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _check_ranges(cfg: TrainConfig) -> None:
    """Constraints that types alone do not express; each message names its key."""
    positive = {
        "solver.iters": cfg.solver.iters,
        "solver.batch_size": cfg.solver.batch_size,
        "solver.grad_accum": cfg.solver.grad_accum,
        "checkpoint.period": cfg.checkpoint.period,
        "checkpoint.keep_last": cfg.checkpoint.keep_last,
        "log.period": cfg.log.period,
        "log.image_period": cfg.log.image_period,
        "eval.period": cfg.eval.period,
        "data.crop_size": cfg.data.crop_size,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"config key '{key}' must be positive, got {value}")
    for key, value in {"solver.lr": cfg.solver.lr, "solver.weight_decay": cfg.solver.weight_decay,
                       "solver.grad_clip": cfg.solver.grad_clip, "data.workers": cfg.data.workers}.items():
        if value < 0:
            raise ConfigError(f"config key '{key}' must not be negative, got {value}")
    if cfg.solver.amp not in AMP_MODES:
        raise ConfigError(f"config key 'solver.amp' must be one of {', '.join(AMP_MODES)}, got {cfg.solver.amp!r}")


def train_config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Validate a nested dict (as read from YAML) into a :class:`TrainConfig`."""
    if not isinstance(data, dict):
        raise ConfigError(f"a training config must be a mapping, got {type(data).__name__}")
    model = data.get("model")
    if isinstance(model, dict) and "overrides" in model:
        if not isinstance(model["overrides"], dict):
            raise ConfigError("config key 'model.overrides' must be a mapping")
        data = {**data, "model": {**model, "overrides": _flatten(model["overrides"])}}
    cfg = from_dict(TrainConfig, data)
    _check_ranges(cfg)
    return cfg


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["solver.lr=2e-4", "model.overrides.pat.vmf=false"]`` -> dotted keys with YAML-parsed (safe) values."""
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like key=value")
        try:
            parsed[key.strip()] = _load_yaml(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config key '{key.strip()}': cannot parse value {text!r} ({exc})") from None
    return parsed


def load_train_config(path: Optional[str | Path] = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML training config (or start from the defaults) and apply ``key=value`` overrides.

    Keys under ``model.overrides.`` stay dotted (``model.overrides.pat.vmf=false`` sets the preset's ``pat.vmf``);
    every other key addresses a :class:`TrainConfig` field.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"training config file not found: {path}")
        try:
            data = _load_yaml(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not a valid YAML training config ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a training config must be a mapping")
    plain: dict[str, Any] = {}
    for key, value in parse_overrides(overrides).items():
        if key.startswith("model.overrides."):
            model = data.setdefault("model", {})
            if not isinstance(model, dict):
                raise ConfigError("config key 'model' must be a mapping")
            model.setdefault("overrides", {})[key[len("model.overrides."):]] = value
        else:
            plain[key] = value
    return train_config_from_dict(apply_overrides(data, plain))


def model_config(cfg: TrainConfig) -> ModelConfig:
    """The :class:`ModelConfig` the training config names (preset + overrides), validated."""
    return load_preset(cfg.model.preset, cfg.model.overrides)


def dump_train_config(cfg: TrainConfig) -> str:
    """YAML text of ``cfg``; :func:`load_train_config` reads it back to an equal config."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
