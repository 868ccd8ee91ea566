"""``patseg prepare DATASET --src RAW_DIR --dst DATA_ROOT``: convert an official download for evaluation/training."""
from __future__ import annotations

import argparse
import sys

from patseg.cli import CLIError


def register(subparsers: argparse._SubParsersAction) -> None:
    from patseg.data.prepare import CONVERTERS

    layouts = "\n".join(f"  {name}: {module.RAW_LAYOUT}" for name, module in sorted(CONVERTERS.items()))
    parser = subparsers.add_parser(
        "prepare",
        help="convert an official dataset download into patseg's layout",
        description="Convert an official download. Resumable: finished files are skipped. --src must be:\n" + layouts,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dataset", choices=sorted(CONVERTERS), help="benchmark to prepare")
    parser.add_argument("--src", required=True, help="folder of the extracted official download")
    parser.add_argument("--dst", default=None, help="data root to write to (default: $PATSEG_DATA or ./datasets)")
    parser.add_argument("--split", action="append", dest="splits", help="split to convert (repeatable; default all)")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from patseg.data.prepare import prepare_dataset
    from patseg.data.registry import data_root

    dst = data_root(args.dst)
    try:
        summaries = prepare_dataset(
            args.dataset, args.src, dst, splits=args.splits, workers=args.workers, progress=not args.no_progress
        )
    except KeyError as exc:
        raise CLIError(exc.args[0]) from exc
    failed = 0
    for summary in summaries:
        print(summary.line())
        for name, reason in summary.failed:
            print(f"  skipped {name}: {reason}", file=sys.stderr)
        failed += len(summary.failed)
    if failed:
        print(f"{failed} samples were not converted (see above); fix them and run again", file=sys.stderr)
        return 1
    return 0
