"""Segmenting folders of many images: background decoding, batches of equal input size, torchrun shards.

``patseg segment`` hands its file list here. Images are decoded by a ``torch.utils.data.DataLoader`` in worker
processes while the model runs; an unreadable file comes back as an error record, so the loader never stops on it.
Decoded images arrive in order and are grouped, within a small window, by their padded model input size: a group
is one forward pass (:meth:`patseg.predictor.Segmenter.predict_batch`). Under torchrun each rank segments its own
share of the files and writes only the outputs of that share, so every output is written exactly once; the
check against replacing earlier outputs and the final counts are agreed on by all ranks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from patseg.atomic import atomic_path, atomic_write_json
from patseg.distributed import all_gather_json
from patseg.errors import ImageReadError, UsageError
from patseg.images import label_image, overlay_with_legend, read_rgb
from patseg.paths import refuse_replacing
from patseg.predictor import Segmenter

logger = logging.getLogger(__name__)

T = TypeVar("T")
OUTPUT_ENDINGS = ("_labels.png", "_overlay.png", ".json")


@dataclass(frozen=True)
class Decoded:
    """One file after decoding: ``pixels`` (H, W, 3) uint8 RGB, or ``error`` (the reason, naming the file).

    ``pixels`` is a tensor so that worker processes hand it over in shared memory rather than through a pipe."""

    index: int
    pixels: Tensor | None = None
    error: str | None = None

    @property
    def image(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB; only for records without an error."""
        assert self.pixels is not None, self.error
        return self.pixels.numpy()


class ImageFiles(Dataset[Decoded]):
    """``files[i]`` decoded with :func:`patseg.images.read_rgb`; an unreadable file gives a :class:`Decoded`
    carrying the error instead of raising, so that one bad file does not stop a DataLoader."""

    def __init__(self, files: Sequence[Path]) -> None:
        self.files = list(files)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Decoded:
        try:
            return Decoded(index, pixels=torch.from_numpy(read_rgb(self.files[index])))
        except ImageReadError as exc:
            return Decoded(index, error=str(exc))


def _as_is(item: Any) -> Any:
    """The DataLoader's collate function: with ``batch_size=None`` it gets one record, passed on unchanged (the
    default would convert it). Typed ``Any`` because DataLoader's stubs expect a list."""
    return item


def decode_in_background(files: Sequence[Path], workers: int) -> Iterator[Decoded]:
    """Decoded ``files`` in their order, read by ``workers`` processes ahead of the caller (0: in this process)."""
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if not files:  # a DataLoader over nothing would still start its workers
        return iter(())
    loader = DataLoader(ImageFiles(files), batch_size=None, shuffle=False, num_workers=workers, collate_fn=_as_is)
    return iter(loader)


def group_by_size(
    items: Iterable[T], key: Callable[[T], Hashable], batch_size: int, window: int | None = None
) -> Iterator[list[T]]:
    """Groups of up to ``batch_size`` items with one ``key``, holding at most ``window`` items back.

    A group is given out as soon as it is full. When more than ``window`` items (default ``4 * batch_size``) wait,
    the group holding the oldest one goes out unfilled, so memory stays bounded and a folder of all-different sizes
    still streams; what is left goes out at the end. Every item is in exactly one group, items keep their order
    within a group, and groups come out roughly in the order of their first item.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    limit = window if window is not None else 4 * batch_size
    waiting: dict[Hashable, list[T]] = {}  # insertion order: the first key holds the oldest waiting item
    held = 0
    for item in items:
        k = key(item)
        group = waiting.setdefault(k, [])
        group.append(item)
        held += 1
        if len(group) == batch_size:
            held -= len(waiting.pop(k))
            yield group
        elif held > limit:
            oldest = waiting.pop(next(iter(waiting)))
            held -= len(oldest)
            yield oldest
    yield from waiting.values()


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Rank ``rank``'s share of ``items``: positions rank, rank + W, ... (the shares partition ``items``)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a world of {world_size}")
    return list(items[rank::world_size])


def output_paths(out: Path, stem: str) -> list[Path]:
    """The three files one image gives: labels, overlay, class names."""
    return [out / f"{stem}{end}" for end in OUTPUT_ENDINGS]


def refuse_replacing_on_all_ranks(paths: Sequence[Path], *, overwrite: bool, device: torch.device) -> None:
    """:func:`patseg.paths.refuse_replacing` agreed on by every rank before any rank writes.

    Each rank checks all ``paths`` and the verdicts are gathered (a collective, so it is also a barrier): when any
    rank found an earlier output, every rank raises the same UsageError, and no rank can have written yet."""
    try:
        refuse_replacing(paths, overwrite=overwrite)
        verdict = None
    except UsageError as exc:
        verdict = str(exc)
    refusals = [v for v in all_gather_json(verdict, device) if v is not None]
    if refusals:
        raise UsageError(refusals[0])


def write_outputs(out: Path, stem: str, source: Path, image: np.ndarray, labels: np.ndarray, names: list[str]) -> None:
    """NAME_labels.png, NAME_overlay.png and NAME.json of one image (H, W, 3) with labels (H, W), each atomic."""
    labels_png, overlay_png, meta_json = output_paths(out, stem)
    with atomic_path(labels_png) as tmp:
        label_image(labels).save(tmp, format="PNG")
    with atomic_path(overlay_png) as tmp:
        overlay_with_legend(image, labels, names).save(tmp, format="PNG")
    atomic_write_json(
        meta_json,
        {"image": str(source), "classes": names, "height": int(labels.shape[0]), "width": int(labels.shape[1])},
    )
    logger.debug("wrote %s", stem)  # one line per image: shows which process wrote what under torchrun


def segment_files(
    segmenter: Segmenter,
    files: Sequence[Path],
    stems: Sequence[str],
    out: Path,
    *,
    workers: int,
    batch_size: int,
    progress: bool,
) -> list[str]:
    """Segment ``files`` into ``out`` (the outputs of ``stems``, one per file); returns the files that failed.

    An unreadable file is logged as a warning naming it and skipped; the others are still written."""
    from tqdm import tqdm

    failed: list[str] = []
    bar = tqdm(total=len(files), desc="segment", unit="img", disable=not progress)

    def readable() -> Iterator[Decoded]:
        for item in decode_in_background(files, workers):
            if item.error is None:
                yield item
                continue
            logger.warning("skipped %s", item.error)  # one bad file does not stop the others; the exit code says so
            failed.append(str(files[item.index]))
            bar.update(1)

    def input_size(item: Decoded) -> tuple[int, int]:
        assert item.pixels is not None
        return segmenter.input_size(item.pixels.shape[0], item.pixels.shape[1])

    with bar:
        for group in group_by_size(readable(), input_size, batch_size):
            images = [item.image for item in group]
            for item, image, labels in zip(group, images, segmenter.predict_batch(images)):
                write_outputs(out, stems[item.index], files[item.index], image, labels, segmenter.vocabulary)
            bar.update(len(group))
    return failed
