# ruff: noqa: UP045  (Optional in the dataclasses on purpose: patseg.config.from_dict checks types via typing.Union)
"""Typed training configuration: a YAML file plus ``--set KEY=VALUE`` assignments from the command line.

Defaults are the PAT paper's recipe on top of SAN's: AdamW lr 1e-4 and weight decay 1e-4, poly schedule (power
0.9), full-model gradient-norm clip 0.01, 120k iterations at a global batch of 12. Validation reuses
:func:`patseg.config.from_dict`, so an unknown key or a wrong type raises :class:`ConfigError` naming the key.

One rule for assignments: a key whose first part names a section of :class:`TrainConfig` (``solver.iters``,
``data.root``, ``model.preset``, ``output_dir``) sets the training config; a key whose first part names a section
of the model record :class:`patseg.config.ModelConfig` (``pat.vmf``, ``loss.vq_weight``) is a model key, as with
every other command's ``--set``, and lands in ``model.overrides`` (``model.overrides.pat.vmf`` means the same).

The optional ``paper`` section (:class:`PaperRow`, used by the configs in ``configs/paper/``) names the row of the
paper's Table I or II that a config reproduces and the paper's numbers; ``patseg reproduce`` reads it, training
does not.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple, Optional

import yaml

from patseg.config import ConfigError, ModelConfig, YamlLoader, apply_overrides, from_dict, load_preset, to_dict

AMP_MODES = ("bf16", "fp16", "off")
CROP_MULTIPLE = 32  # training crops go through the model unpadded: every feature-pyramid level must divide them
OVERRIDES_PREFIX = "model.overrides."


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=YamlLoader)  # a SafeLoader subclass: no arbitrary objects


@dataclass
class ModelChoice:
    preset: str = "san_vitb16"  # preset name in patseg/presets, or a JSON file path
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted keys into the preset, e.g. {"pat.vmf": false}
    weights: Optional[str] = None  # initial weights (checkpoint folder or model.safetensors); ignored on resume
    init_from: Optional[str] = None  # a SAN checkpoint for the SAN part only (PAT's modules start fresh)
    clip_weights: Optional[str] = None  # local open_clip checkpoint of the preset's CLIP (required for real CLIPs)
    lpips_weights: Optional[str] = None  # torchvision vgg16-397923af.pth for PAT's LPIPS loss term


@dataclass
class DataConfig:
    dataset: str = "coco_stuff_171"  # training dataset name (patseg.data registry)
    root: str = "datasets"  # dataset root folder, as written by `patseg prepare`
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
    datasets: tuple[str, ...] = ("coco_stuff_171", "voc_20", "pcontext_59", "ade20k_150", "pcontext_459", "ade20k_847")
    limit: Optional[int] = None  # evaluate only the first N images of each set (quick checks); None = all


PAPER_TABLES = ("table1", "table2")


@dataclass
class PaperScores:
    """The paper's mIoU (%) on the four zero-shot benchmarks, the columns of its Tables I and II."""

    pcontext_59: Optional[float] = None
    ade20k_150: Optional[float] = None
    pcontext_459: Optional[float] = None
    ade20k_847: Optional[float] = None

    def check(self, prefix: str = "paper.miou.") -> None:
        for name, value in vars(self).items():
            if value is None:
                raise ConfigError(f"config key '{prefix}{name}' is missing: give the paper's mIoU on {name}")


@dataclass
class PaperRow:
    """The row of the PAT paper's Table I or II that a training config reproduces, with the paper's numbers.

    Read by ``patseg reproduce`` (configs/paper/); training ignores it and only copies it into config.yaml.
    """

    table: str = ""  # "table1" or "table2"
    row: str = ""  # row id, the config file's name without .yaml, e.g. "no_vmf"
    position: int = 0  # 1-based position of the row in the paper's table
    label: str = ""  # the paper's row label, e.g. "No vMF meanshift"
    group: str = ""  # Table II's group of rows (e.g. "Cluster"); empty in Table I
    miou: PaperScores = field(default_factory=PaperScores)
    rfid: Optional[float] = None  # Table II's reconstruction FID; Table I reports none

    def check(self, prefix: str = "paper.") -> None:
        if self.table not in PAPER_TABLES:
            tables = ", ".join(PAPER_TABLES)
            raise ConfigError(f"config key '{prefix}table' must be one of {tables}, got {self.table!r}")
        for key in ("row", "label"):
            if not getattr(self, key):
                raise ConfigError(f"config key '{prefix}{key}' must be a non-empty string")
        if self.position < 1:
            raise ConfigError(f"config key '{prefix}position' must be at least 1, got {self.position}")
        self.miou.check(f"{prefix}miou.")
        if self.table == "table2" and (self.rfid is None or not self.group):
            raise ConfigError(f"config keys '{prefix}group' and '{prefix}rfid' are required for a Table II row")


@dataclass
class TrainConfig:
    model: ModelChoice = field(default_factory=ModelChoice)
    data: DataConfig = field(default_factory=DataConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output_dir: str = "output"
    paper: Optional[PaperRow] = None  # the paper's table row (configs/paper/); read by `patseg reproduce` only


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


def _check_values(cfg: TrainConfig) -> None:
    """Constraints that types alone do not express; each message names its key."""
    if cfg.model.weights and cfg.model.init_from:
        raise ConfigError(
            "config keys 'model.weights' (a full patseg checkpoint) and 'model.init_from' (a SAN "
            "checkpoint) exclude each other"
        )
    positive: dict[str, float] = {
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
    for key, value in {
        "solver.lr": cfg.solver.lr,
        "solver.weight_decay": cfg.solver.weight_decay,
        "solver.grad_clip": cfg.solver.grad_clip,
        "data.workers": cfg.data.workers,
    }.items():
        if value < 0:
            raise ConfigError(f"config key '{key}' must not be negative, got {value}")
    if cfg.data.crop_size % CROP_MULTIPLE:
        fits = max(CROP_MULTIPLE, round(cfg.data.crop_size / CROP_MULTIPLE) * CROP_MULTIPLE)
        raise ConfigError(
            f"config key 'data.crop_size' must be a multiple of {CROP_MULTIPLE} (the model's coarsest stride), "
            f"got {cfg.data.crop_size}; e.g. data.crop_size={fits}"
        )
    if cfg.eval.limit is not None and cfg.eval.limit <= 0:
        raise ConfigError(f"config key 'eval.limit' must be positive or null (all images), got {cfg.eval.limit}")
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
    _check_values(cfg)
    return cfg


class Assignments(NamedTuple):
    """``--set`` assignments told apart: ``train`` keys address TrainConfig fields, ``model`` keys the preset."""

    train: dict[str, Any]
    model: dict[str, Any]


def split_assignments(assignments: Mapping[str, Any]) -> Assignments:
    """Route each dotted key by its first part (see the module docstring); an unknown first part is an error."""
    train_sections = [f.name for f in fields(TrainConfig)]
    model_sections = [f.name for f in fields(ModelConfig)]
    out = Assignments({}, {})
    for key, value in assignments.items():
        head = key.split(".")[0]
        if key.startswith(OVERRIDES_PREFIX):
            out.model[key[len(OVERRIDES_PREFIX) :]] = value
        elif head in train_sections:
            out.train[key] = value
        elif head in model_sections:
            out.model[key] = value
        else:
            raise ConfigError(
                f"unknown config key '{key}': training keys start with {', '.join(train_sections)}; "
                f"model keys with {', '.join(model_sections)}"
            )
    return out


def load_train_config(path: str | Path | None = None, assignments: Mapping[str, Any] | None = None) -> TrainConfig:
    """Read a YAML training config (or start from the defaults), apply ``assignments`` and validate everything.

    ``assignments`` are dotted keys with parsed values (:func:`patseg.config.parse_assignments`), routed by
    :func:`split_assignments`; model keys are applied after the YAML's ``model.overrides`` and are checked against
    the preset here, so a misspelt key fails before anything is built.
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
    keys = split_assignments(assignments or {})
    data = apply_overrides(data, keys.train)
    if keys.model:
        model = data.setdefault("model", {})
        if not isinstance(model, dict):
            raise ConfigError("config key 'model' must be a mapping")
        overrides = model.get("overrides") or {}
        if not isinstance(overrides, dict):
            raise ConfigError("config key 'model.overrides' must be a mapping")
        model["overrides"] = {**_flatten(overrides), **keys.model}
    cfg = train_config_from_dict(data)
    model_config(cfg)
    return cfg


def model_config(cfg: TrainConfig) -> ModelConfig:
    """The :class:`ModelConfig` the training config names (preset + overrides), validated."""
    return load_preset(cfg.model.preset, cfg.model.overrides)


def dump_train_config(cfg: TrainConfig) -> str:
    """YAML text of ``cfg``; :func:`load_train_config` reads it back to an equal config."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
