"""Conversion of the official downloads into the layouts of :mod:`patseg.data.registry`.

One module per benchmark, each with ``RAW_LAYOUT`` (what ``--src`` must hold) and ``build_jobs(src, dst, split)``;
:func:`prepare_dataset` runs them. Usage: ``patseg prepare ade20k_150 --src ADEChallengeData2016 --dst datasets``.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType
from typing import Optional, Sequence

from patseg.data.prepare import ade20k_150, ade20k_847, coco_stuff, pcontext_59, pcontext_459, voc
from patseg.data.prepare.common import PrepareSummary, run_jobs
from patseg.data.registry import get_dataset_spec
from patseg.errors import DatasetError, MissingFileError

CONVERTERS: dict[str, ModuleType] = {
    m.DATASET: m for m in (coco_stuff, ade20k_150, ade20k_847, pcontext_59, pcontext_459, voc)
}


def prepare_dataset(
    name: str,
    src: str | os.PathLike,
    dst: str | os.PathLike,
    splits: Optional[Sequence[str]] = None,
    workers: int = 1,
    progress: bool = True,
) -> list[PrepareSummary]:
    """Convert the raw download at ``src`` into the data root ``dst``; one summary per split.

    ``splits`` defaults to every split the registry lists for ``name``. Already converted samples are skipped;
    samples whose input is missing or corrupt are listed in the summary's ``failed`` and not written.
    """
    if name not in CONVERTERS:
        raise DatasetError(f"no converter for '{name}' (available: {', '.join(sorted(CONVERTERS))})")
    spec = get_dataset_spec(name)
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise MissingFileError(f"raw folder {src} does not exist; expected: {CONVERTERS[name].RAW_LAYOUT}")
    summaries = []
    for split in splits or list(spec.splits):
        spec.split(split)  # unknown split -> DatasetError naming the available ones
        jobs = CONVERTERS[name].build_jobs(src, dst, split)
        summaries.append(run_jobs(jobs, PrepareSummary(name, split), workers=workers, progress=progress))
    return summaries


__all__ = ["CONVERTERS", "PrepareSummary", "prepare_dataset"]
