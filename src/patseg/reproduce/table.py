"""The reproduced table in the paper's layout: each cell the mean ± sample std over seeds, the paper's value beside.

Both mIoU rules are tabulated (``mIoU``: classes present in the ground truth; ``mIoU_gt_or_pred``: also classes
only predicted), since the paper does not say which one it reports. Table II keeps its groups of rows and adds
rFID. The JSON holds the same numbers: per row, per metric and dataset ``{"mean", "std", "n"}`` (std null for one
run), the paper's values, and the seeds that have results.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from patseg.data.registry import SHORT_NAMES
from patseg.evaluation.report import Stat, TableRow, aggregate, load_results
from patseg.reproduce.plan import TINY, Options, results_file
from patseg.reproduce.rows import BENCHMARKS, TITLES, Row

METRICS: dict[str, str] = {
    "mIoU": "classes present in the ground truth (current detectron2, SAN's logs)",
    "mIoU_gt_or_pred": "classes in the ground truth or the prediction (detectron2 v0.6, mmsegmentation)",
}


@dataclass
class RowResult:
    """A row's measured values: one :class:`TableRow` per metric (None when no seed has results yet)."""

    row: Row
    seeds: list[int]
    metrics: dict[str, TableRow | None]

    def rfid(self) -> Stat | None:
        first = self.metrics["mIoU"]
        return first.rfid if first is not None else None


def collect(opts: Options, rows: Sequence[Row]) -> list[RowResult]:
    """Read the results file of every (row, seed) that has one."""
    results = []
    for row in rows:
        records = [load_results(results_file(opts, row, s)) for s in opts.seeds if results_file(opts, row, s).is_file()]
        for record in records:
            record["model"] = row.id  # one row, whatever label its evaluation was given
        metrics: dict[str, TableRow | None] = {m: aggregate(records, m)[0] if records else None for m in METRICS}
        results.append(RowResult(row, sorted(r["seed"] for r in records), metrics))
    return results


def notes(opts: Options) -> list[str]:
    lines = [
        "Cells: mean ± sample std over the seeds that have results (std left out for one seed); "
        "the paper's value (a 5-run average) in parentheses.",
    ]
    if opts.tiny:
        lines.append(
            f"Tiny mode: san_tiny / pat_tiny with a random CLIP, {TINY.iters} training steps on generated scenes, "
            f"{TINY.eval_images} images per benchmark; it checks the plumbing, not the paper's numbers."
        )
        if opts.table == "table2":
            lines.append("Tiny rFID uses random Inception weights: it checks the plumbing, not quality.")
    return lines


def _cell(stat: Stat | None, paper: float | None) -> str:
    value = stat.text(1) if stat is not None else "–"
    return f"{value} ({paper:.1f})" if paper is not None else value


def format_markdown(opts: Options, results: Sequence[RowResult]) -> str:
    """The table as markdown: one section per mIoU rule, Table II's groups in its first column."""
    table2 = opts.table == "table2"
    header = (["Group"] if table2 else []) + ["Row", *(SHORT_NAMES[d] for d in BENCHMARKS)]
    header += (["rFID"] if table2 else []) + ["seeds"]
    text_columns = 2 if table2 else 1
    rule = "|" + "|".join(["---"] * text_columns + ["---:"] * (len(header) - text_columns)) + "|"
    lines = [f"# {TITLES[opts.table]}", "", *notes(opts)]
    for metric, meaning in METRICS.items():
        lines += ["", f"## {metric} (%): {meaning}", "", "| " + " | ".join(header) + " |", rule]
        group = None
        for result in results:
            paper, table_row = result.row.paper, result.metrics[metric]
            cells = [_cell(table_row.cells.get(d) if table_row else None, getattr(paper.miou, d)) for d in BENCHMARKS]
            first = []
            if table2:
                first = [f"**{paper.group}**" if paper.group != group else ""]
                group = paper.group
                cells.append(_cell(result.rfid(), paper.rfid))
            lines.append("| " + " | ".join([*first, paper.label, *cells, str(len(result.seeds))]) + " |")
    return "\n".join(lines) + "\n"


def _stat(stat: Stat | None) -> dict[str, Any] | None:
    if stat is None:
        return None
    return {"mean": stat.mean, "std": None if math.isnan(stat.std) else stat.std, "n": stat.n}


def table_json(opts: Options, results: Sequence[RowResult]) -> dict[str, Any]:
    rows = []
    for result in results:
        paper = result.row.paper
        entry: dict[str, Any] = {
            "row": paper.row,
            "label": paper.label,
            "group": paper.group or None,
            "position": paper.position,
            "config": str(result.row.config),
            "seeds": result.seeds,
            "paper": {"mIoU": {d: getattr(paper.miou, d) for d in BENCHMARKS}, "rfid": paper.rfid},
        }
        for metric in METRICS:
            table_row = result.metrics[metric]
            entry[metric] = {d: _stat(table_row.cells.get(d) if table_row else None) for d in BENCHMARKS}
        if paper.rfid is not None:
            entry["rfid"] = _stat(result.rfid())
        rows.append(entry)
    return {
        "table": opts.table,
        "title": TITLES[opts.table],
        "tiny": opts.tiny,
        "seeds": list(opts.seeds),
        "datasets": list(BENCHMARKS),
        "metrics": METRICS,
        "notes": notes(opts),
        "rows": rows,
    }


def write_tables(opts: Options, results: Sequence[RowResult]) -> tuple[Path, Path]:
    """``OUT/<table>.md`` and ``OUT/<table>.json``, written atomically; returns their paths."""
    from patseg.atomic import atomic_write_json, atomic_write_text

    md, js = opts.out / f"{opts.table}.md", opts.out / f"{opts.table}.json"
    atomic_write_text(md, format_markdown(opts, results))
    atomic_write_json(js, table_json(opts, results))
    return md, js
