"""Every command a table needs, as argv lists: for each row and seed, train then evaluate.

Layout under ``OUT`` (``--out``)::

    OUT/<table>/<row>/seed<k>/                 the training run (checkpoints, config.yaml, logs)
    OUT/<table>/<row>/seed<k>/results_seed<k>.json   its zero-shot evaluation (patseg eval --out .../results)
    OUT/<table>.md, OUT/<table>.json           the table

A run is complete when its ``last_checkpoint`` names a checkpoint whose ``state.json`` says ``solver.iters``
iterations: the trainer always writes that final checkpoint last. A run that left anything else (an earlier
checkpoint, or only logs) was interrupted and is continued with ``patseg train --resume``. An evaluation is done
when its results file exists and its run was already complete; it runs again after its run was (re)trained.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from patseg.config import ModelConfig, load_preset
from patseg.engine.checkpoint import last_checkpoint, read_state
from patseg.engine.trainer import run_files
from patseg.reproduce.rows import BENCHMARKS, CLIP_OPTIONS, Row, tiny_preset

TrainState = Literal["fresh", "partial", "complete"]


@dataclass(frozen=True)
class TinySettings:
    """``--tiny``: every row on the tiny presets, a few steps on generated data, a couple of images per set."""

    crop_size: int = 64
    iters: int = 2
    batch_size: int = 2
    checkpoint_period: int = 1  # an earlier checkpoint besides the final one, so that resuming is exercised
    train_images: int = 8
    eval_images: int = 2  # per benchmark, and for rFID (which needs at least 2)
    short_side: int = 64


TINY = TinySettings()


@dataclass(frozen=True)
class Options:
    """What the command line asked for; ``files`` maps clip / evaclip / lpips / inception to a path."""

    table: str
    out: Path
    seeds: tuple[int, ...]
    gpus: int = 1
    data: Path | None = None
    files: dict[str, str] = field(default_factory=dict)
    tiny: bool = False
    overwrite: bool = False


@dataclass
class Step:
    """One command: ``launcher + argv`` as a subprocess, or ``argv`` alone given to ``patseg.cli.main``."""

    kind: Literal["train", "eval"]
    row: Row
    seed: int
    argv: list[str]  # patseg's own arguments, e.g. ["train", CONFIG, "--set", ...]
    launcher: list[str]  # torchrun ... -m patseg, or python -m patseg
    skip: bool  # complete already: nothing to do
    note: str  # what the step will do, e.g. "resume from ckpt_0000002"

    @property
    def command(self) -> list[str]:
        return self.launcher + self.argv


def run_dir(opts: Options, row: Row, seed: int) -> Path:
    return opts.out / row.table / row.id / f"seed{seed}"


def results_file(opts: Options, row: Row, seed: int) -> Path:
    """What ``patseg eval --out RUN/results --seeds k`` writes for the run of ``seed``."""
    return run_dir(opts, row, seed) / f"results_seed{seed}.json"


def data_root(opts: Options) -> Path:
    """The data root the commands use: ``--data``, or the generated one in ``--tiny`` mode."""
    if opts.tiny:
        return opts.out / "tiny-data"
    return opts.data if opts.data is not None else Path("<--data DIR>")


def inception_file(opts: Options) -> str:
    if opts.tiny:
        return str(data_root(opts) / "pt_inception-random.pth")
    return opts.files.get("inception", "<--inception-weights FILE>")


def iterations(opts: Options, row: Row) -> int:
    return TINY.iters if opts.tiny else row.cfg.solver.iters


def row_model(opts: Options, row: Row) -> ModelConfig:
    """The model a row trains: its preset, or the tiny one in ``--tiny`` mode, with the row's overrides."""
    if opts.tiny:
        return load_preset(tiny_preset(row.cfg.model.preset), row.cfg.model.overrides)
    return row.model


def train_state(folder: Path, iters: int) -> TrainState:
    """``complete`` (the final checkpoint is the last one), ``partial`` (an interrupted run) or ``fresh``."""
    if not run_files(folder):
        return "fresh"
    ckpt = last_checkpoint(folder)
    if ckpt is not None and read_state(ckpt)[0].iteration >= iters:
        return "complete"
    return "partial"


def launchers(gpus: int) -> tuple[list[str], list[str]]:
    """(training launcher, evaluation launcher): torchrun for training, and for evaluation on several GPUs."""
    beside = Path(sys.executable).with_name("torchrun")  # the torchrun of this environment, as python -m would be
    torchrun = [str(beside) if beside.is_file() else "torchrun", "--standalone", f"--nproc_per_node={gpus}"]
    torchrun += ["-m", "patseg"]
    return torchrun, torchrun if gpus > 1 else [sys.executable, "-m", "patseg"]


def _weights(opts: Options, row: Row) -> list[str]:
    """The CLIP weights option of a real run (its CLIP file), nothing in ``--tiny`` mode (random tiny CLIP)."""
    if opts.tiny:
        return []
    option = CLIP_OPTIONS[row.clip_kind]
    return ["--clip-weights", opts.files.get(row.clip_kind, f"<{option} FILE>")]


def train_argv(opts: Options, row: Row, seed: int, resume: bool) -> list[str]:
    sets = [
        f"solver.seed={seed}",
        f"output_dir={run_dir(opts, row, seed)}",
        f"data.root={data_root(opts)}",
        "eval.datasets=[]",  # the last checkpoint is evaluated by patseg eval instead
    ]
    if opts.tiny:
        sets += [
            f"model.preset={tiny_preset(row.cfg.model.preset)}",
            f"data.crop_size={TINY.crop_size}",
            "data.workers=0",
            "data.allow_partial=true",
            f"solver.iters={TINY.iters}",
            f"solver.batch_size={TINY.batch_size}",
            f"checkpoint.period={TINY.checkpoint_period}",
            "log.period=1",
        ]
    argv = ["train", str(row.config), "--set", *sets, *_weights(opts, row)]
    if row_model(opts, row).is_pat and not opts.tiny:  # the tiny presets have no perceptual loss term
        argv += ["--lpips-weights", opts.files.get("lpips", "<--lpips-weights FILE>")]
    return argv + (["--resume"] if resume else [])


def eval_argv(opts: Options, row: Row, seed: int) -> list[str]:
    folder = run_dir(opts, row, seed)
    argv = ["eval", "--weights", str(folder / f"ckpt_{iterations(opts, row):07d}"), "--seeds", str(seed)]
    argv += ["--name", row.paper.label, "--datasets", ",".join(BENCHMARKS), "--root", str(data_root(opts))]
    argv += ["--out", str(folder / "results"), "--overwrite", *_weights(opts, row)]
    if row.paper.rfid is not None:
        argv += ["--rfid", "--inception-weights", inception_file(opts)]
    if opts.tiny:
        argv += ["--limit", str(TINY.eval_images), "--allow-partial", "--short-side", str(TINY.short_side)]
    return argv


def plan_steps(opts: Options, rows: Sequence[Row]) -> list[Step]:
    """Train and evaluate every (row, seed), in table order; complete work is marked ``skip``."""
    train_launcher, eval_launcher = launchers(opts.gpus)
    steps = []
    for row in rows:
        for seed in opts.seeds:
            folder = run_dir(opts, row, seed)
            state = "fresh" if opts.overwrite else train_state(folder, iterations(opts, row))
            if state == "partial":
                ckpt = last_checkpoint(folder)
                note = f"resume from {ckpt.name}" if ckpt is not None else "resume (no checkpoint yet: from 0)"
            else:
                note = {"fresh": "train", "complete": "complete"}[state]
            if opts.overwrite and run_files(folder):
                note = f"train again (--overwrite deletes {folder} first)"
            argv = train_argv(opts, row, seed, resume=state == "partial")
            steps.append(Step("train", row, seed, argv, train_launcher, state == "complete", note))
            evaluated = state == "complete" and results_file(opts, row, seed).is_file()
            note = "done" if evaluated else "evaluate"
            steps.append(Step("eval", row, seed, eval_argv(opts, row, seed), eval_launcher, evaluated, note))
    return steps
