"""Benchmarks, their preparation from the official downloads, and SAN's training transforms.

``registry`` says where each prepared dataset lives and what it must contain, ``datasets`` loads it (refusing
incomplete splits), ``factory.build_dataset`` opens any registered name, ``transforms`` holds SAN's training
transforms and the batch collate, and ``prepare`` converts the raw downloads (``patseg prepare``).
"""

from importlib import import_module
from typing import Any

# Lazy, as in ``patseg/__init__.py``: ``patseg prepare --help`` reads the registry without importing torch.
_EXPORTS = {
    "ColorAugSSD": "patseg.data.color",
    "DatasetError": "patseg.errors",
    "SemSegDataset": "patseg.data.datasets",
    "find_samples": "patseg.data.datasets",
    "read_image": "patseg.data.datasets",
    "read_label": "patseg.data.datasets",
    "build_dataset": "patseg.data.factory",
    "BENCHMARK_ORDER": "patseg.data.registry",
    "DATASETS": "patseg.data.registry",
    "DatasetSpec": "patseg.data.registry",
    "SplitLayout": "patseg.data.registry",
    "data_root": "patseg.data.registry",
    "get_dataset_spec": "patseg.data.registry",
    "list_datasets": "patseg.data.registry",
    "TrainTransform": "patseg.data.transforms",
    "collate_semseg": "patseg.data.transforms",
    "san_short_sides": "patseg.data.transforms",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'patseg.data' has no attribute {name!r}")
