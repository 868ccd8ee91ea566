"""Shared machinery of the dataset converters: atomic writes, resumable job runs, error reports.

A conversion is a list of :class:`Job`: one input sample, the files it writes, and a module-level function that
writes them (module-level so a process pool can pickle it). :func:`run_jobs` skips jobs whose outputs all exist, so
an interrupted run resumes where it stopped; every file is written to a temporary name in its final folder and moved
into place with ``os.replace``, so an existing output is always complete. A job that fails (a corrupt or missing
input) is recorded and skipped; nothing half-written is left behind. Every input image is decoded in full before
anything is written, so a truncated download is a failed sample, not a file that breaks training later. Raw files
are listed with case-insensitive suffixes (``.JPG``, ``.jpeg``, ``.PNG`` count).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from PIL import Image
from tqdm import tqdm

from patseg.atomic import atomic_path
from patseg.data.registry import get_dataset_spec
from patseg.errors import MissingFileError
from patseg.images import UndecodableImageError
from patseg.images import open_decoded as decode_fully

IMAGE_SUFFIXES = (".jpg", ".jpeg")  # raw images; matched case-insensitively like every raw suffix


class CorruptInputError(ValueError):
    """An input file does not decode, or decodes but does not hold what the official format promises."""


@contextmanager
def open_decoded(path: Path) -> Iterator[Image.Image]:
    """An input image decoded in full (:func:`patseg.images.open_decoded`); a truncated or corrupt file is a
    CorruptInputError naming it, a missing one stays FileNotFoundError."""
    try:
        with decode_fully(path) as im:
            yield im
    except UndecodableImageError as exc:
        raise CorruptInputError(f"{path.name}: truncated or corrupt image ({exc}); download it again") from None


def list_files(folder: Path, suffixes: Sequence[str], recursive: bool = False) -> list[Path]:
    """Files in ``folder`` (and below it with ``recursive``) whose suffix is one of ``suffixes`` in any case, sorted."""
    wanted = {s.lower() for s in suffixes}
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.suffix.lower() in wanted and not p.name.startswith(".") and p.is_file())


class FileIndex:
    """The files of one folder by (stem, lower-case suffix), for finding ``<stem>.png`` spelt ``<stem>.PNG``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        files = folder.iterdir() if folder.is_dir() else iter(())
        self._files = {(p.stem, p.suffix.lower()): p for p in sorted(files, reverse=True)}

    def find(self, stem: str, suffixes: Sequence[str]) -> Path:
        """The file ``stem`` with the first suffix present; absent: the canonical name, reported missing later."""
        for suffix in suffixes:
            if (stem, suffix.lower()) in self._files:
                return self._files[(stem, suffix.lower())]
        return self.folder / f"{stem}{suffixes[0]}"


@dataclass(frozen=True)
class Job:
    """Convert one sample: ``convert(*args)`` must create every path in ``outputs``."""

    name: str
    outputs: tuple[Path, ...]
    convert: Callable[..., None]
    args: tuple[Any, ...]

    def done(self) -> bool:
        return all(p.is_file() for p in self.outputs)


@dataclass
class PrepareSummary:
    """Outcome of converting one split."""

    dataset: str
    split: str
    written: int = 0
    skipped: int = 0  # outputs already present from an earlier run
    failed: list[tuple[str, str]] = field(default_factory=list)  # (sample name, reason)

    def line(self) -> str:
        return (
            f"{self.dataset}/{self.split}: {self.written} written, {self.skipped} already present, "
            f"{len(self.failed)} failed"
        )


def write_label(dst: Path, label: np.ndarray) -> None:
    """Write a label map atomically: uint8 -> PNG, uint16 -> TIFF (the suffix of ``dst`` must agree)."""
    expected = {".png": np.uint8, ".tif": np.uint16}[dst.suffix]
    if label.ndim != 2 or label.dtype != expected:
        raise TypeError(f"{dst.name}: label must be 2-D {np.dtype(expected)}, got {label.dtype} {label.shape}")
    with atomic_path(dst) as tmp:
        Image.fromarray(label).save(tmp, format="PNG" if dst.suffix == ".png" else "TIFF")


def write_jpeg(dst: Path, image: np.ndarray) -> None:
    """Write a uint8 RGB image (H, W, 3) as JPEG with PIL's default quality (75), atomically."""
    with atomic_path(dst) as tmp:
        Image.fromarray(image).save(tmp, format="JPEG")


def copy_image(src: Path, dst: Path) -> tuple[int, int]:
    """Check that ``src`` decodes in full, copy it to ``dst`` atomically, and return its (H, W)."""
    with open_decoded(src) as im:
        width, height = im.size
    if src.resolve() != dst.resolve():
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
    return height, width


def read_gray(path: Path, dtype: type = np.uint8) -> np.ndarray:
    """Read a single-channel (grayscale or palette) label image as a 2-D array of ``dtype``."""
    with open_decoded(path) as im:
        array = np.asarray(im)
    if array.ndim != 2 or array.dtype != dtype:
        raise CorruptInputError(f"{path.name}: expected a 2-D {np.dtype(dtype)} map, got {array.dtype} {array.shape}")
    return array


def check_same_size(name: str, image_hw: tuple[int, int], label: np.ndarray) -> None:
    if tuple(label.shape) != tuple(image_hw):
        raise CorruptInputError(f"{name}: label {tuple(label.shape)} and image {tuple(image_hw)} differ in size")


def lookup_table(pairs: dict[int, int], size: int, fill: int, dtype: type) -> np.ndarray:
    """A (size,) array mapping raw value -> new value, ``fill`` for values not in ``pairs``."""
    lut: np.ndarray = np.full(size, fill, dtype=dtype)
    for raw, new in pairs.items():
        lut[raw] = new
    return lut


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise MissingFileError(f"{what} not found: expected the folder {path}")
    return path


def _run_one(job: Job) -> Optional[str]:
    try:
        job.convert(*job.args)
    except Exception as exc:  # any failure of one input is reported for that input, the run goes on
        return f"{type(exc).__name__}: {exc}"
    return None


def run_jobs(jobs: list[Job], summary: PrepareSummary, workers: int = 1, progress: bool = True) -> PrepareSummary:
    """Run the jobs not yet done (``workers`` > 1: in a process pool); failures go into ``summary.failed``."""
    todo = [j for j in jobs if not j.done()]
    summary.skipped += len(jobs) - len(todo)
    bar = tqdm(total=len(todo), desc=f"{summary.dataset}/{summary.split}", disable=not progress, unit="img")

    def record(job: Job, error: Optional[str]) -> None:
        if error is None:
            summary.written += 1
        else:
            summary.failed.append((job.name, error))
        bar.update(1)

    if workers <= 1:
        for job in todo:
            record(job, _run_one(job))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(_run_one, job): job for job in todo}
            for future in as_completed(futures):
                record(futures[future], future.result())
    bar.close()
    summary.failed.sort()
    return summary


def output_paths(dataset: str, dst: Path, split: str, stem: str) -> tuple[Path, Path]:
    """Where the prepared image and label of sample ``stem`` go, per the registry layout under ``dst``."""
    spec = get_dataset_spec(dataset)
    layout = spec.split(split)
    return dst / layout.image_dir / f"{stem}{spec.image_ext}", dst / layout.label_dir / f"{stem}{spec.label_ext}"


def paired_png_jobs(
    dataset: str, image_dir: Path, label_dir: Path, dst: Path, split: str, convert: Callable[..., None]
) -> list[Job]:
    """One job per ``image_dir/*.jpg`` with its label ``label_dir/<stem>.png``: ``convert(image, label, image_dst,
    label_dst)`` (the layout of the COCO-Stuff and ADEChallengeData2016 downloads)."""
    labels = FileIndex(label_dir)
    jobs = []
    for image in list_files(image_dir, IMAGE_SUFFIXES):
        image_dst, label_dst = output_paths(dataset, dst, split, image.stem)
        args = (image, labels.find(image.stem, (".png",)), image_dst, label_dst)
        jobs.append(Job(image.stem, (image_dst, label_dst), convert, args))
    return jobs
