"""patseg weights files: read, write and check a state dict against a model.

A weights file is a ``.safetensors`` file whose metadata records the model's architecture (the preset record,
``patseg.config.ModelConfig``, without file paths), so ``build_model(weights=FILE)`` can rebuild the model it fits.
A training checkpoint folder holds one as ``model.safetensors``. Tensors of the frozen CLIP towers may be left out:
they come from the CLIP weights file, which is a run option (``clip_weights=``), never part of the record.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor, nn

from patseg.atomic import atomic_save_safetensors
from patseg.config import LEGACY_DEFAULTS, REMOVED_KEYS, to_dict
from patseg.errors import CheckpointError, MissingFileError

CONFIG_METADATA_KEY = "patseg_config"
MODEL_FILE = "model.safetensors"
FROZEN_PREFIXES = ("clip.", "text.")

PathLike = Union[str, Path]


def weights_file(path: PathLike) -> Path:
    """A weights file, or the ``model.safetensors`` inside a training checkpoint folder."""
    p = Path(path)
    return p / MODEL_FILE if p.is_dir() else p


def _checked_file(path: PathLike) -> Path:
    p = weights_file(path)
    if not p.is_file():
        raise MissingFileError(f"weights file not found: {p}")
    if p.suffix != ".safetensors":
        raise CheckpointError(
            f"{p}: patseg weights are .safetensors files (convert SAN releases with `patseg convert-san`)"
        )
    return p


def read_tensors(path: PathLike) -> tuple[dict[str, Tensor], dict[str, str]]:
    """All tensors and the metadata of a safetensors file; a truncated or foreign file raises CheckpointError."""
    p = _checked_file(path)
    try:
        with safe_open(str(p), framework="pt") as f:
            metadata = f.metadata() or {}
        return load_file(str(p)), metadata
    except Exception as exc:  # safetensors raises its own error types for any malformed header or payload
        raise CheckpointError(f"{p} is not a valid safetensors file ({exc})") from None


def read_architecture(path: PathLike) -> Optional[dict[str, Any]]:
    """The architecture record stored in a weights file's metadata (older files' path keys dropped), or None."""
    p = _checked_file(path)
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:
        raise CheckpointError(f"{p} is not a valid safetensors file ({exc})") from None
    if CONFIG_METADATA_KEY not in meta:
        return None
    try:
        record = json.loads(meta[CONFIG_METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{p}: the stored architecture record is not valid JSON ({exc})") from None
    pat = record.get("pat")
    if isinstance(pat, dict):
        for dotted, value in LEGACY_DEFAULTS.items():
            pat.setdefault(dotted.removeprefix("pat."), value)
    for dotted in REMOVED_KEYS:
        *parents, leaf = dotted.split(".")
        node = record
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return record


def frozen_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the frozen CLIP towers: restored from the CLIP weights file, optional in weights files."""
    trainable = {n for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad}
    return {k for k in model.state_dict() if k.startswith(FROZEN_PREFIXES) and k not in trainable}


def name_list(kind: str, names: Sequence[str], limit: int = 20) -> str:
    more = f", ... and {len(names) - limit} more" if len(names) > limit else ""
    return f"{kind} ({len(names)}): {', '.join(names[:limit])}{more}"


def check_state(
    state: Mapping[str, Tensor],
    expected: Mapping[str, Tensor],
    source: PathLike,
    *,
    may_lack: Sequence[str] = (),
    shown=None,
    what: str = "the model",
) -> None:
    """Raise CheckpointError unless ``state`` has exactly the keys and shapes of ``expected``.

    Arguments:
        may_lack: keys that may be absent (frozen CLIP tensors when the CLIP file was given).
        shown: optional ``name -> text`` used in the message (e.g. a SAN release key beside patseg's name).
        what: what ``expected`` describes, for the message.
    """
    show = shown or (lambda name: name)
    optional = set(may_lack)
    missing = [show(k) for k in expected if k not in state and k not in optional]
    unexpected = [show(k) for k in state if k not in expected]
    wrong = [
        f"{show(k)}: file {tuple(v.shape)} vs {what} {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    problems = [
        name_list(kind, names)
        for kind, names in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", wrong))
        if names
    ]
    if problems:
        raise CheckpointError(f"{source} does not fit {what}: " + " | ".join(problems))


# Tensors that moved: the latent's PostQuant and its resampling (now stage 0's resampler) went from the pixel
# branch into each decoder, and a decoder stage's global-token update was renamed from ``cross`` to ``tokens``.
_MOVED = (
    (re.compile(r"^pixel_branch\.latent_post_quant\."), "{decoder}.post_quant."),
    (re.compile(r"^pixel_branch\.latent_resample\."), "{decoder}.stages.0.resample."),
)
_RENAMED = re.compile(r"^((?:pixel_)?decoder\.stages\.\d+)\.cross\.")


def upgrade_keys(state: dict[str, Tensor], expected: Mapping[str, Any]) -> dict[str, Tensor]:
    """Rename the tensors of a weights file written before PAT's decoder took in the latent's PostQuant.

    Older files shared one PostQuant between the two decoders of "Separate Decoding": it is copied into both, which
    computes what the older model computed. Files of the current layout pass through unchanged.
    """
    out: dict[str, Tensor] = {}
    decoders = [d for d in ("decoder", "pixel_decoder") if any(k.startswith(d + ".") for k in expected)]
    for key, value in state.items():
        for old, new in _MOVED:
            if old.match(key):
                out.update({old.sub(new.format(decoder=d), key): value for d in decoders})
                break
        else:
            out[_RENAMED.sub(r"\1.tokens.", key)] = value
    return out


def load_weights(model: nn.Module, path: PathLike, *, clip_from_file: bool) -> None:
    """Load a weights file (or checkpoint folder) strictly into ``model``.

    ``clip_from_file``: the model's CLIP towers were loaded from a CLIP weights file, so the frozen CLIP tensors may
    be absent from ``path`` (training checkpoints leave them out). Without it they must be present.
    """
    state, _ = read_tensors(path)
    expected = model.state_dict()
    state = upgrade_keys(state, expected)
    frozen = frozen_keys(model)
    absent = set(expected) - set(state)
    if not clip_from_file and absent and absent <= frozen:
        name = getattr(getattr(model, "config", None), "name", "this model")
        raise CheckpointError(
            f"{weights_file(path)} leaves out the frozen CLIP weights (training checkpoints do): "
            f"give the CLIP file with --clip-weights (the one '{name}' was trained with)"
        )
    check_state(
        state,
        expected,
        weights_file(path),
        may_lack=sorted(frozen) if clip_from_file else (),
        what=f"preset '{getattr(getattr(model, 'config', None), 'name', '?')}'",
    )
    model.load_state_dict(state, strict=False)


def state_to_save(model: nn.Module, *, include_frozen: bool) -> dict[str, Tensor]:
    """CPU copies of the state dict (tied weights untied: safetensors refuses shared storage), frozen CLIP optional."""
    state = model.state_dict()
    drop = set() if include_frozen else frozen_keys(model)
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items() if k not in drop}


def architecture_metadata(model: nn.Module) -> dict[str, str]:
    """Safetensors metadata that lets ``build_model(weights=...)`` rebuild ``model`` (empty without a config)."""
    config = getattr(model, "config", None)
    meta = {"format": "pt"}
    if config is not None:
        meta[CONFIG_METADATA_KEY] = json.dumps(to_dict(config))
    return meta


def save_weights(model: nn.Module, path: PathLike, *, include_frozen: bool = True) -> Path:
    """Write the model's weights and its architecture record atomically as safetensors."""
    state = state_to_save(model, include_frozen=include_frozen)
    return atomic_save_safetensors(state, Path(path), metadata=architecture_metadata(model))
