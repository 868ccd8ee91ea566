"""The ``patseg`` command line: a thin layer over the library.

Each sub-command lives in its own module in this package and exposes ``register(subparsers)``, which adds its
parser and sets ``func`` to a callable ``(args) -> int``. Modules are discovered, so adding a command touches no
other file. Errors that a user can fix (a missing file, a bad config) are raised as :class:`CLIError` and
printed as one line, without a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from typing import Optional, Sequence


class CLIError(Exception):
    """An error caused by the user's input; printed as ``patseg: error: <message>`` with exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="patseg",
        description="PAT (Feature Pyramid Tokenization) and SAN for open-vocabulary semantic segmentation.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        module.register(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # patseg never downloads weights
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from patseg.config import ConfigError

    try:
        return int(args.func(args) or 0)
    except (CLIError, ConfigError, FileNotFoundError) as exc:
        print(f"patseg: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("patseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
