"""The ``patseg`` command line: a thin layer over the library.

Each sub-command lives in its own module in this package and exposes ``register(subparsers)``, which adds its
parser and sets ``func`` to a callable ``(args) -> int``. Modules are discovered (names starting with ``_`` are
helpers), so adding a command touches no other file. Building the parsers imports no torch: heavy imports live in
the run functions, so ``patseg --help`` is instant.

:func:`main` is the one place that turns errors into exit codes: a :class:`patseg.errors.PatsegError` (anything the
user can fix: a missing file, a bad config key, options that do not fit) is printed as ``patseg: error: <message>``
with exit code 2 and no traceback; any other exception is a bug and keeps its traceback. It also configures
logging: messages of the ``patseg`` loggers go to stderr as ``patseg: <message>``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from patseg.allocator import keep_large_blocks
from patseg.cli._common import CommandParser
from patseg.errors import PatsegError

EPILOG = """examples:
  patseg info san_tiny
  patseg info pat_tiny --json --set pat.vmf=false
  patseg -v train configs/pat_vitb16_clip.yaml --clip-weights ViT-B-16.bin --lpips-weights vgg16-397923af.pth

Each command has its own help: patseg COMMAND --help."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="patseg",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="PAT (Feature Pyramid Tokenization) and SAN for open-vocabulary semantic segmentation.",
    )
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="also print debug messages")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="print only warnings and errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=CommandParser)
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        module.register(subparsers)
    return parser


class _Formatter(logging.Formatter):
    """``patseg: message``; warnings and errors say so; ranks other than 0 (torchrun) name themselves."""

    def __init__(self, rank: int) -> None:
        super().__init__()
        self.prefix = "patseg" if rank == 0 else f"patseg (rank {rank})"

    def format(self, record: logging.LogRecord) -> str:
        kind = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        return f"{self.prefix}: {kind}{super().format(record)}"


def log_level(verbose: bool, quiet: bool, rank: int) -> int:
    """INFO by default (resume and init_from summaries); DEBUG with -v; WARNING with -q and on ranks other than 0."""
    if quiet:
        return logging.WARNING
    if verbose:
        return logging.DEBUG
    return logging.INFO if rank == 0 else logging.WARNING


class _CommandHandler(logging.StreamHandler):
    """The handler :func:`main` installs; a nested ``main`` (``patseg reproduce --tiny``) finds it and adds none."""


@contextmanager
def _logging_to_stderr(level: int, rank: int) -> Iterator[None]:
    """Send the ``patseg`` loggers to the current stderr for the duration of one command, then restore them."""
    logger = logging.getLogger("patseg")
    nested = any(isinstance(h, _CommandHandler) for h in logger.handlers)  # else each message would print twice
    handler = _CommandHandler(sys.stderr)
    handler.setFormatter(_Formatter(rank))
    saved = logger.level, logger.propagate
    if not nested:
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False  # a root handler (set up by a caller) would print every message twice
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def _silence_stdout() -> None:
    """After EPIPE, Python's flush of stdout at exit would fail again: point the descriptor at /dev/null."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not an OS-level file (captured output): nothing to flush
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # patseg never downloads weights
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    rank = int(os.environ.get("RANK", "0"))  # set by torchrun
    keep_large_blocks()  # large tensors reuse freed memory instead of fresh pages (PAT 1.08x on CPU)
    try:
        with _logging_to_stderr(log_level(args.verbose, args.quiet, rank), rank):
            code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, inside the try, not at interpreter exit
        return code
    except PatsegError as exc:
        print(f"patseg: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("patseg: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `patseg info pat_tiny --json | head -3`
        _silence_stdout()
        return 1


if __name__ == "__main__":
    sys.exit(main())
