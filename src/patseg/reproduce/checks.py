"""What ``patseg reproduce`` checks before any work: the output folder, the GPU count against each row's batch,
and for a real run the data root and every weights file the selected rows need (days of training should not
stop at the first evaluation for want of a file)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from patseg.data.registry import get_dataset_spec
from patseg.errors import DatasetError, MissingFileError, UsageError
from patseg.paths import check_writable
from patseg.reproduce.plan import TINY, Options, row_model
from patseg.reproduce.rows import BENCHMARKS, Row

logger = logging.getLogger(__name__)

# What each file option holds, for the messages.
FILE_OPTIONS: dict[str, tuple[str, str]] = {
    "clip": ("--clip-weights", "the OpenAI CLIP ViT-B/16 open_clip checkpoint (e.g. ViT-B-16.bin)"),
    "evaclip": ("--evaclip-weights", "the EVA02-CLIP-B/16 open_clip checkpoint (e.g. EVA02-B-16.bin)"),
    "lpips": ("--lpips-weights", "torchvision's vgg16-397923af.pth, for PAT's LPIPS loss"),
    "inception": ("--inception-weights", "pytorch-fid's pt_inception-2015-12-05-6726825d.pth, for rFID"),
}
TRAIN_SET = ("coco_stuff_171", "train")
RFID_SET = ("coco_stuff_171", "val")


def check_options(opts: Options, rows: Sequence[Row], *, dry_run: bool) -> None:
    """Raise a one-line PatsegError for anything that would stop the run later; creates nothing."""
    check_writable(opts.out, is_dir=True)
    for row in rows:
        batch, accum = (TINY.batch_size, 1) if opts.tiny else (row.cfg.solver.batch_size, row.cfg.solver.grad_accum)
        if batch % (opts.gpus * accum):
            raise UsageError(
                f"--gpus {opts.gpus}: {row.name} trains at a global batch of {batch}, which {opts.gpus} GPU(s) "
                f"x {accum} accumulation step(s) do not divide; choose --gpus among the divisors of {batch}"
            )
    if opts.tiny:
        given = [FILE_OPTIONS[k][0] for k in opts.files] + (["--data"] if opts.data is not None else [])
        if given:
            raise UsageError(f"--tiny generates its own data and uses random weights: leave out {given[0]}")
        return
    if not dry_run:
        _check_data(opts, rows)
    for key in needed_files(opts, rows):
        option, what = FILE_OPTIONS[key]
        if key not in opts.files:
            if not dry_run:
                users = [r.id for r in rows if key in needed_files(opts, [r])]
                raise UsageError(f"{opts.table} rows {', '.join(users)} need {option} FILE: {what}")
        elif not Path(opts.files[key]).expanduser().is_file():
            raise MissingFileError(f"{option} {opts.files[key]}: no such file ({what})")
    for key in sorted(set(opts.files) - set(needed_files(opts, rows))):
        logger.warning("%s is not used by the selected rows of %s", FILE_OPTIONS[key][0], opts.table)


def needed_files(opts: Options, rows: Sequence[Row]) -> list[str]:
    """The file options (keys of FILE_OPTIONS) a real run of ``rows`` needs, in that order."""
    keys = {r.clip_kind for r in rows}
    if any(row_model(opts, r).is_pat for r in rows):
        keys.add("lpips")
    if any(r.paper.rfid is not None for r in rows):
        keys.add("inception")
    return [k for k in FILE_OPTIONS if k in keys]


def _check_data(opts: Options, rows: Sequence[Row]) -> None:
    if opts.data is None:
        raise UsageError(f"{opts.table} needs --data DIR: the data root that `patseg prepare` filled")
    if not opts.data.is_dir():
        raise MissingFileError(f"--data {opts.data}: no such folder (the data root that `patseg prepare` fills)")
    sets = [TRAIN_SET] + [(name, "val") for name in BENCHMARKS]
    if any(r.paper.rfid is not None for r in rows):
        sets.append(RFID_SET)
    for name, split in sets:
        layout = get_dataset_spec(name).split(split)
        for folder in (layout.image_dir, layout.label_dir):
            if not (opts.data / folder).is_dir():
                raise DatasetError(
                    f"--data {opts.data}: {name}/{split} is missing ({folder} is not there); prepare it with "
                    f"`patseg prepare {name} --src DOWNLOAD --dst {opts.data}`"
                )
