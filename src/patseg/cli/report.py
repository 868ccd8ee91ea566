"""``patseg report RESULTS.json...``: a Table-I-style table (markdown, JSON) with seeds as mean +/- std."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from patseg.cli import CLIError


def register(subparsers: argparse._SubParsersAction) -> None:
    from patseg.evaluation.report import METRICS

    parser = subparsers.add_parser(
        "report",
        help="tabulate results files (one per run) as in the paper's Table I",
        description="Aggregate results files (schema: patseg.evaluation.report) by model; seeds give mean ± std.",
    )
    parser.add_argument("results", nargs="+", help="results JSON files, one per evaluation run")
    parser.add_argument("--metric", default="mIoU", choices=METRICS, help="metric to tabulate (default mIoU)")
    parser.add_argument("--digits", type=int, default=1, help="decimals shown (default 1)")
    parser.add_argument("--out", default=None, help="also write OUT.md and OUT.json")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from patseg.evaluation.report import aggregate, format_markdown, load_results, table_json

    try:
        rows = aggregate([load_results(p) for p in args.results], metric=args.metric)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    markdown = format_markdown(rows, metric=args.metric, digits=args.digits)
    print(markdown, end="")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        for suffix, text in ((".md", markdown), (".json", json.dumps(table_json(rows, args.metric), indent=2))):
            target = out.with_name(out.name + suffix)
            tmp = target.with_name(f".{target.name}.tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(target)
    return 0
