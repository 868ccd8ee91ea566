"""``patseg report RESULTS.json...``: a Table-I-style table (markdown, JSON) with seeds as mean +/- std."""

from __future__ import annotations

import argparse
from pathlib import Path

from patseg.cli._common import add_overwrite_option


def _metric_list() -> str:
    from patseg.evaluation.report import METRICS

    return f"metrics: {', '.join(METRICS)}"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="tabulate results files (one per run) as in the paper's Table I",
        description="Aggregate results files, one per evaluation run (the OUT_seed<N>.json files of "
        "`patseg eval --out OUT`; schema: patseg.evaluation.report), by model; seeds give mean ± std.",
        details=_metric_list,
    )
    parser.add_argument(
        "results", nargs="+", help="results JSON files, one per evaluation run (OUT_seed<N>.json of `patseg eval`)"
    )
    parser.add_argument("--metric", default="mIoU", help="metric to tabulate (default mIoU; the list is below)")
    parser.add_argument("--digits", type=int, default=1, help="decimals shown (default 1)")
    parser.add_argument("--out", default=None, help="also write OUT.md and OUT.json")
    add_overwrite_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from patseg.atomic import atomic_write_json, atomic_write_text
    from patseg.errors import UsageError
    from patseg.evaluation.report import METRICS, aggregate, format_markdown, load_results, table_json
    from patseg.paths import check_writable, refuse_replacing

    if args.out:  # OUT.md and OUT.json
        check_writable(f"{args.out}.json", is_dir=False)
        refuse_replacing([f"{args.out}.md", f"{args.out}.json"], overwrite=args.overwrite)
    if args.metric not in METRICS:
        raise UsageError(f"unknown --metric '{args.metric}' (choose from {', '.join(METRICS)})")
    rows = aggregate([load_results(p) for p in args.results], metric=args.metric)
    markdown = format_markdown(rows, metric=args.metric, digits=args.digits)
    print(markdown, end="")
    if args.out:
        out = Path(args.out)
        atomic_write_text(out.with_name(out.name + ".md"), markdown)
        atomic_write_json(out.with_name(out.name + ".json"), table_json(rows, args.metric))
    return 0
