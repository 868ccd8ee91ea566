"""Safe, atomic, resumable checkpoints (detectron2 semantics, without pickle).

A checkpoint is a folder ``ckpt_{iteration:07d}`` (iteration = optimizer steps completed) holding

- ``model.safetensors``: the plain module's state dict. Buffers and trainable parameters always; frozen parameters
  (the CLIP towers) only with ``include_frozen=True``. Without them the model must already hold its frozen
  weights when a checkpoint is loaded, i.e. be built from the CLIP file as ``patseg.build`` does.
- ``optim.safetensors``: the optimizer's tensors, with a JSON index of everything else in its metadata.
- ``state.json``: a :class:`TrainState` (iteration, config, sampler position, schedule, scaler, per-rank RNG).

It is written to a hidden temp folder and renamed; the ``last_checkpoint`` pointer file is replaced only after
that, so a crash leaves the old or the new checkpoint, never half of one (detectron2/fvcore's Checkpointer also
writes the pointer last). Loading parses only JSON and safetensors and checks keys and shapes before it touches
the model, so a tampered or foreign folder is refused and nothing in it is executed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, cast

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from patseg.atomic import atomic_write_text, file_mode
from patseg.errors import CheckpointError
from patseg.weights.files import (
    MODEL_FILE,
    architecture_metadata,
    check_state,
    frozen_keys,
    read_tensors,
    state_to_save,
)

FORMAT, VERSION = "patseg-checkpoint", 1
OPTIM_FILE, STATE_FILE = "optim.safetensors", "state.json"
POINTER_FILE = "last_checkpoint"
INDEX_KEY = "patseg_optimizer_index"  # safetensors metadata key of the optimizer's JSON index
_CKPT_NAME = re.compile(r"ckpt_(\d{7})")


@dataclass
class TrainState:
    """Everything besides tensors that a bitwise resume needs (stored as ``state.json``)."""

    iteration: int  # optimizer steps completed = the next iteration to run
    sampler_position: int  # samples consumed by all ranks together (InfiniteSampler ``start``)
    schedule: dict[str, Any]  # PolySchedule.state_dict()
    scaler: Optional[dict[str, Any]]  # GradScaler.state_dict() for fp16, else None
    rng: list[dict[str, Any]]  # capture_rng_state() of every rank, in rank order
    config: dict[str, Any]  # the TrainConfig as a dict, for the record


_STATE_TYPES: dict[str, type | tuple[type, ...]] = {
    "iteration": int,
    "sampler_position": int,
    "schedule": dict,
    "scaler": (dict, type(None)),
    "rng": list,
    "config": dict,
    "format": str,
    "version": int,
    "frozen_excluded": bool,
}


# ---------------------------------------------------------------------------------------------------- RNG states
def capture_rng_state() -> dict[str, Any]:
    """This process's Python, NumPy, torch CPU (and current CUDA device) generator states as JSON-able lists."""
    version, mt, gauss = random.getstate()
    # The legacy tuple form (the default); numpy's stub also admits the dict form.
    name, keys, pos, has_gauss, cached = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    state = {
        "python": [version, list(mt), gauss],
        "numpy": [name, keys.tolist(), pos, has_gauss, cached],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state().tolist()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`; a malformed state raises CheckpointError before any generator changes."""
    try:
        version, mt, gauss = state["python"]
        name, keys, pos, has_gauss, cached = state["numpy"]
        py_state = (int(version), tuple(int(x) for x in mt), gauss)
        np_state = (str(name), np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached))
        torch_state = torch.tensor(state["torch"], dtype=torch.uint8)
        cuda_state = torch.tensor(state["cuda"], dtype=torch.uint8) if "cuda" in state else None
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise CheckpointError(f"malformed RNG state in {STATE_FILE}: {exc!r}") from None
    if torch_state.numel() != torch.get_rng_state().numel():
        raise CheckpointError(f"malformed RNG state in {STATE_FILE}: torch state has {torch_state.numel()} bytes")
    random.setstate(py_state)
    np.random.set_state(np_state)
    torch.set_rng_state(torch_state)
    if cuda_state is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda_state)


# ------------------------------------------------------------------------------------------------- file helpers
def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_text(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _replace_text(path: Path, text: str) -> None:
    atomic_write_text(path, text)  # a unique temp name, and the mode a plain open() would give


def _cpu_copies(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}


# --------------------------------------------------------------------------------------------------------- save
def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into named tensors and a JSON index that points at them."""
    sd = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    state_index: dict[str, dict[str, Any]] = {}
    for pid, entries in sd["state"].items():
        state_index[str(pid)] = {}
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"state.{pid}.{key}"] = value
                state_index[str(pid)][key] = {"tensor": f"state.{pid}.{key}"}
            elif value is None or isinstance(value, (bool, int, float)):
                state_index[str(pid)][key] = {"value": value}
            else:
                raise CheckpointError(f"optimizer state '{key}' of type {type(value).__name__} cannot be saved")
    return _cpu_copies(tensors), {"param_groups": sd["param_groups"], "state": state_index}


def _write_folder(
    folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState, include_frozen: bool
) -> None:
    # The architecture record lets build_model(weights=folder) rebuild the model.
    save_file(
        state_to_save(model, include_frozen=include_frozen), folder / MODEL_FILE, metadata=architecture_metadata(model)
    )
    optim_tensors, index = _flatten_optimizer(optimizer)
    try:
        index_text = json.dumps(index)
    except TypeError as exc:
        raise CheckpointError(f"optimizer param_groups are not JSON-serialisable: {exc}") from None
    save_file(optim_tensors, folder / OPTIM_FILE, metadata={"format": "pt", INDEX_KEY: index_text})
    record = {"format": FORMAT, "version": VERSION, "frozen_excluded": not include_frozen, **dataclasses.asdict(state)}
    _write_text(folder / STATE_FILE, json.dumps(record))
    for name in (MODEL_FILE, OPTIM_FILE):
        os.chmod(folder / name, file_mode())  # safetensors creates its files 0600 whatever the umask
        _fsync(folder / name)


def save_checkpoint(
    directory: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainState,
    *,
    include_frozen: bool = False,
    keep_last: int = 3,
) -> Path:
    """Write ``directory/ckpt_{state.iteration:07d}`` atomically, point ``last_checkpoint`` at it, prune old ones.

    ``model`` must be the plain module, not its DistributedDataParallel wrapper. Returns the folder.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob(".tmp_ckpt_*"):  # left by a killed writer
        shutil.rmtree(stale, ignore_errors=True)
    final = directory / f"ckpt_{state.iteration:07d}"
    tmp = directory / f".tmp_{final.name}"
    tmp.mkdir()
    try:
        _write_folder(tmp, model, optimizer, state, include_frozen)
        if final.exists():  # re-saving the same iteration: move the old one aside first
            aside = directory / f".tmp_ckpt_old_{final.name}"
            os.replace(final, aside)
            shutil.rmtree(aside)
        os.replace(tmp, final)
        _fsync(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _replace_text(directory / POINTER_FILE, final.name + "\n")
    _prune(directory, keep_last, keep=final.name)
    return final


def _prune(directory: Path, keep_last: int, keep: str) -> None:
    folders = sorted(p for p in directory.iterdir() if p.is_dir() and _CKPT_NAME.fullmatch(p.name))
    for old in folders[:-keep_last] if keep_last > 0 else folders:
        if old.name != keep:
            shutil.rmtree(old)


# --------------------------------------------------------------------------------------------------------- load
def last_checkpoint(directory: str | Path) -> Optional[Path]:
    """The folder ``last_checkpoint`` names, or None when there is no pointer (a fresh output directory)."""
    pointer = Path(directory) / POINTER_FILE
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    if not _CKPT_NAME.fullmatch(name):
        raise CheckpointError(f"{pointer} does not name a checkpoint folder (got {name[:80]!r})")
    folder = pointer.parent / name
    if not folder.is_dir():
        raise CheckpointError(f"{pointer} names {name}, which does not exist")
    return folder


def read_state(folder: str | Path) -> tuple[TrainState, bool]:
    """Parse and validate ``state.json``; returns the state and whether frozen weights were left out."""
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder} is not a patseg checkpoint: {STATE_FILE} is missing")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a patseg checkpoint state (format must be {FORMAT!r})")
    if record.get("version") != VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint version {record.get('version')!r}")
    if set(record) != set(_STATE_TYPES):
        extra, missing = sorted(set(record) - set(_STATE_TYPES)), sorted(set(_STATE_TYPES) - set(record))
        raise CheckpointError(f"{path}: unexpected keys {extra}, missing keys {missing}")
    for key, tp in _STATE_TYPES.items():
        value = record[key]
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise CheckpointError(f"{path}: '{key}' has the wrong type ({type(value).__name__})")
    if record["iteration"] < 0 or record["sampler_position"] < 0:
        raise CheckpointError(f"{path}: iteration and sampler_position must be non-negative")
    frozen_excluded = record.pop("frozen_excluded")
    del record["format"], record["version"]
    return TrainState(**record), frozen_excluded


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    if not path.is_file():
        raise CheckpointError(f"{path.parent} is not a patseg checkpoint: {path.name} is missing")
    return read_tensors(path)


def _check_model_tensors(
    tensors: dict[str, Tensor], model: nn.Module, allow_missing_frozen: bool, source: Path
) -> None:
    check_state(
        tensors, model.state_dict(), source, may_lack=sorted(frozen_keys(model)) if allow_missing_frozen else ()
    )


def load_model_weights(path: str | Path, model: nn.Module) -> None:
    """Load weights from a checkpoint folder or a bare ``model.safetensors`` file into the plain ``model``.

    Keys and shapes must match exactly; only frozen parameters may be absent (they come from the CLIP file).
    """
    path = Path(path)
    if path.is_dir():
        _, allow_missing = read_state(path)
        path = path / MODEL_FILE
    else:
        allow_missing = True
    tensors, _ = _read_safetensors(path)
    _check_model_tensors(tensors, model, allow_missing, path)
    model.load_state_dict(tensors, strict=False)


def _check_groups(saved_groups: Any, optimizer: torch.optim.Optimizer, source: Path) -> dict[int, Tensor]:
    """Match the saved param groups to the optimizer's; returns saved param id -> live parameter."""
    if not isinstance(saved_groups, list) or len(saved_groups) != len(optimizer.param_groups):
        raise CheckpointError(
            f"{source}: the optimizer has {len(optimizer.param_groups)} param groups, the checkpoint does not"
        )
    params_by_id: dict[int, Tensor] = {}
    for i, (saved, current) in enumerate(zip(saved_groups, optimizer.param_groups)):
        ids = saved.get("params") if isinstance(saved, dict) else None
        if not (isinstance(ids, list) and all(isinstance(x, int) for x in ids)) or len(ids) != len(current["params"]):
            raise CheckpointError(f"{source}: param group {i} does not match the optimizer's")
        if saved.get("param_names") != current.get("param_names"):
            raise CheckpointError(f"{source}: param group {i} holds different parameters (names differ)")
        for key, value in saved.items():  # JSON turned tuples such as AdamW's betas into lists
            if isinstance(current.get(key), tuple) and isinstance(value, list):
                saved[key] = tuple(value)
        params_by_id.update(zip(ids, current["params"]))
    return params_by_id


def _read_optimizer(path: Path, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Rebuild an ``optimizer.state_dict()`` from ``optim.safetensors``, checked against ``optimizer``."""
    tensors, metadata = _read_safetensors(path)
    try:
        index = json.loads(metadata[INDEX_KEY])
    except (KeyError, json.JSONDecodeError):
        raise CheckpointError(f"{path} has no valid optimizer index (metadata '{INDEX_KEY}')") from None
    if not isinstance(index, dict) or set(index) != {"param_groups", "state"} or not isinstance(index["state"], dict):
        raise CheckpointError(f"{path}: the optimizer index must hold exactly 'param_groups' and 'state'")
    params_by_id = _check_groups(index["param_groups"], optimizer, path)
    state: dict[int, dict[str, Any]] = {}
    used: set[str] = set()
    for pid_text, entries in index["state"].items():
        pid = int(pid_text) if pid_text.isdigit() else -1
        if pid not in params_by_id or not isinstance(entries, dict):
            raise CheckpointError(f"{path}: optimizer state for unknown parameter {pid_text!r}")
        state[pid] = {}
        for key, ref in entries.items():
            if isinstance(ref, dict) and set(ref) == {"value"}:
                state[pid][key] = ref["value"]
                continue
            name = ref.get("tensor") if isinstance(ref, dict) else None
            if name not in tensors:
                raise CheckpointError(f"{path}: optimizer state '{pid_text}.{key}' points at no tensor")
            tensor, param = tensors[name], params_by_id[pid]
            if tensor.dim() > 0 and tensor.shape != param.shape:
                raise CheckpointError(
                    f"{path}: optimizer state '{name}' has shape {tuple(tensor.shape)}, "
                    f"its parameter {tuple(param.shape)}"
                )
            state[pid][key] = tensor
            used.add(name)
    if used != set(tensors):
        raise CheckpointError(f"{path}: tensors not in the optimizer index: {sorted(set(tensors) - used)[:8]}")
    return {"state": state, "param_groups": index["param_groups"]}


def load_checkpoint(folder: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> TrainState:
    """Restore ``model`` (plain module) and ``optimizer`` from a checkpoint folder; returns its :class:`TrainState`.

    Every file is parsed and checked before anything is loaded, so a refused checkpoint leaves both untouched.
    RNG states, schedule and scaler are in the returned state for the trainer to apply.
    """
    folder = Path(folder)
    state, frozen_excluded = read_state(folder)
    weights, _ = _read_safetensors(folder / MODEL_FILE)
    _check_model_tensors(weights, model, frozen_excluded, folder / MODEL_FILE)
    optim_state = _read_optimizer(folder / OPTIM_FILE, optimizer)
    model.load_state_dict(weights, strict=False)
    optimizer.load_state_dict(optim_state)
    return state
