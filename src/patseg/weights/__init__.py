"""Weights files: read, write and check state dicts (``files``) and SAN's released checkpoints (``san_release``)."""

from patseg.weights.files import (
    CONFIG_METADATA_KEY,
    check_state,
    frozen_keys,
    load_weights,
    read_architecture,
    read_tensors,
    save_weights,
    weights_file,
)
from patseg.weights.san_release import init_from_san, read_san_release, rename_release

__all__ = [
    "CONFIG_METADATA_KEY",
    "check_state",
    "frozen_keys",
    "init_from_san",
    "load_weights",
    "read_architecture",
    "read_san_release",
    "read_tensors",
    "rename_release",
    "save_weights",
    "weights_file",
]
