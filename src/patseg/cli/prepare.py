"""``patseg prepare DATASET --src RAW_DIR --dst DATA_ROOT``: convert an official download for evaluation/training."""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger(__name__)


def _layouts() -> str:
    from patseg.data.prepare import CONVERTERS

    return "DATASET and what --src must hold:\n" + "\n".join(
        f"  {name}: {module.RAW_LAYOUT}" for name, module in sorted(CONVERTERS.items())
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help="convert an official dataset download into patseg's layout",
        description="Convert an official download into the layout patseg reads. Resumable: finished files are skipped.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        details=_layouts,
    )
    parser.add_argument("dataset", help="benchmark to prepare (the list is below)")
    parser.add_argument("--src", required=True, help="folder of the extracted official download")
    parser.add_argument("--dst", default=None, help="data root to write to (default: $PATSEG_DATA or ./datasets)")
    parser.add_argument("--split", action="append", dest="splits", help="split to convert (repeatable; default all)")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from patseg.data.prepare import CONVERTERS, prepare_dataset
    from patseg.data.registry import data_root
    from patseg.errors import UsageError

    if args.dataset not in CONVERTERS:
        raise UsageError(f"no converter for '{args.dataset}' (available: {', '.join(sorted(CONVERTERS))})")
    summaries = prepare_dataset(
        args.dataset,
        args.src,
        data_root(args.dst),
        splits=args.splits,
        workers=args.workers,
        progress=not args.no_progress,
    )
    failed = 0
    for summary in summaries:
        print(summary.line())
        for name, reason in summary.failed:
            logger.warning("skipped %s: %s", name, reason)
        failed += len(summary.failed)
    if failed:
        logger.warning("%d samples were not converted (see above); fix them and run again", failed)
        return 1
    return 0
