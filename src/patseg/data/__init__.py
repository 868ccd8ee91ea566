"""Benchmarks, their preparation from the official downloads, and SAN's training transforms.

``registry`` says where each prepared dataset lives and what it must contain, ``datasets`` loads it (refusing
incomplete splits), ``factory.build_dataset`` opens any registered name, ``transforms`` holds SAN's training
transforms and the batch collate, and ``prepare`` converts the raw downloads (``patseg prepare``).
"""
from patseg.data.color import ColorAugSSD
from patseg.data.datasets import DatasetError, SemSegDataset, find_samples, read_image, read_label
from patseg.data.factory import build_dataset
from patseg.data.registry import (
    BENCHMARK_ORDER,
    DATASETS,
    DatasetSpec,
    SplitLayout,
    data_root,
    get_dataset_spec,
    list_datasets,
)
from patseg.data.transforms import TrainTransform, collate_semseg, san_short_sides

__all__ = [
    "BENCHMARK_ORDER",
    "DATASETS",
    "ColorAugSSD",
    "DatasetError",
    "DatasetSpec",
    "SemSegDataset",
    "SplitLayout",
    "TrainTransform",
    "build_dataset",
    "collate_semseg",
    "data_root",
    "find_samples",
    "get_dataset_spec",
    "list_datasets",
    "read_image",
    "read_label",
    "san_short_sides",
]
