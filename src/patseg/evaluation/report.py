"""Results files and Table-I-style reports, with seeds aggregated into mean +/- std (the paper averages 5 runs).

Results file schema (one evaluation run of one model; JSON object)::

    {
      "model": "pat_evab16",            # row label; runs with the same model are aggregated
      "seed": 0,                        # training seed; (model, seed) must be unique within one report
      "datasets": {                     # registry name -> SemSegEvaluator.compute() output, plus "num_images"
        "ade20k_150": {"mIoU": 31.6, "mIoU_gt_or_pred": 31.2, "fwIoU": 55.0, "mACC": 44.1, "pACC": 70.3,
                       "num_images": 2000, "per_class": {"wall": 70.1, ...}},
        ...
      },
      "rfid": {"value": 13.8, "num_images": 5000},   # optional
      "meta": {...}                                   # optional, free-form (checkpoint, config, date, ...)
    }

Only ``model``, ``seed`` and ``datasets`` (each with a numeric ``mIoU``) are required; NaN values (per-class IoU of
classes absent from the ground truth) are written as ``null``. Per-dataset means and
standard deviations use the runs of a model that have that dataset; the std is the sample std (ddof = 1) and is
omitted for a single run. :func:`write_results` writes this format; ``patseg report`` reads it.
"""

from __future__ import annotations

import glob
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from patseg.atomic import atomic_write_text
from patseg.data.registry import BENCHMARK_ORDER, SHORT_NAMES
from patseg.errors import MissingFileError, ResultsFileError

METRICS = ("mIoU", "mIoU_gt_or_pred", "fwIoU", "mACC", "pACC")


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation of one value over ``n`` runs (std NaN when n == 1)."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> "Stat":
        n = len(values)
        mean = sum(values) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")
        return cls(mean, std, n)

    def text(self, digits: int = 1) -> str:
        if self.n > 1:
            return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"
        return f"{self.mean:.{digits}f}"


@dataclass
class TableRow:
    """One model: a :class:`Stat` per dataset for the chosen metric, and rFID when reported."""

    model: str
    seeds: list[int]
    cells: dict[str, Stat] = field(default_factory=dict)
    rfid: Optional[Stat] = None

    def average(self, datasets: Sequence[str]) -> Optional[float]:
        """Mean over ``datasets`` of the per-dataset means, None unless the row has all of them."""
        if not datasets or any(d not in self.cells for d in datasets):
            return None
        return sum(self.cells[d].mean for d in datasets) / len(datasets)


def _nan_to_null(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_null(v) for v in value]
    return value


def write_results(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Validate ``record`` against the schema above and write it as standard JSON (NaN -> null) atomically."""
    record = validate_results(_nan_to_null(record), str(path))
    atomic_write_text(Path(path), json.dumps(record, indent=2, allow_nan=False))


def validate_results(record: Any, source: str) -> dict[str, Any]:
    """Check the required keys and types; raise ResultsFileError naming ``source`` and the offending key."""
    if not isinstance(record, dict):
        raise ResultsFileError(f"{source}: a results file must hold a JSON object")
    other = _other_kind(record)
    if other is not None:
        raise ResultsFileError(f"{source} is {other}, not a results file of one run: {_WHICH_FILES}")
    for key, kind in (("model", str), ("seed", int), ("datasets", dict)):
        if not isinstance(record.get(key), kind) or isinstance(record.get(key), bool):
            raise ResultsFileError(f"{source}: '{key}' must be a {kind.__name__}")
    for name, metrics in record["datasets"].items():
        if not isinstance(metrics, dict) or not isinstance(metrics.get("mIoU"), (int, float)):
            raise ResultsFileError(f"{source}: datasets.{name} must be an object with a numeric 'mIoU'")
    rfid = record.get("rfid")
    if rfid is not None and not (isinstance(rfid, dict) and isinstance(rfid.get("value"), (int, float))):
        raise ResultsFileError(f"{source}: 'rfid' must be an object with a numeric 'value'")
    return record


_WHICH_FILES = "patseg report takes the OUT_seed<N>.json files that `patseg eval --out OUT` writes, one per run"


def _other_kind(record: dict[str, Any]) -> Optional[str]:
    """What a JSON object that patseg writes but that is not a results file is, or None."""
    if "model" in record:
        return None
    if isinstance(record.get("rows"), list) and "metric" in record:
        return "a table written by `patseg report --out` (or one of `patseg eval --out`)"
    if record and all(isinstance(v, dict) and isinstance(v.get("rows"), list) for v in record.values()):
        return "the table file OUT.json of `patseg eval --out OUT`"
    if "results" in record and "world" in record:
        return "an OVSS-mini report of `patseg mini` (its results.md holds the table)"
    return None


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate one results file; a table file of ``patseg eval --out`` given instead names the per-run
    files next to it."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"results file {path} does not exist; {_WHICH_FILES}")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ResultsFileError(f"{path}: not a JSON text file ({exc.reason}); {_WHICH_FILES}") from None
    except json.JSONDecodeError as exc:
        raise ResultsFileError(f"{path}: not valid JSON ({exc})") from exc
    if isinstance(record, dict) and _other_kind(record) is not None:
        runs = sorted(path.parent.glob(f"{glob.escape(path.stem)}_seed*.json"))
        if runs:
            listed = " ".join(str(r) for r in runs)
            raise ResultsFileError(
                f"{path} is {_other_kind(record)}, not a results file of one run: give its per-run files ({listed})"
            )
    return validate_results(record, str(path))


def aggregate(records: Sequence[dict[str, Any]], metric: str = "mIoU") -> list[TableRow]:
    """Group runs by model (first-seen order) and reduce each dataset's ``metric`` to mean +/- std."""
    if metric not in METRICS:
        raise ResultsFileError(f"unknown metric '{metric}' (choose from {', '.join(METRICS)})")
    grouped: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        runs = grouped.setdefault(record["model"], [])
        if any(r["seed"] == record["seed"] for r in runs):
            raise ResultsFileError(f"model '{record['model']}' has two results for seed {record['seed']}")
        runs.append(record)
    rows = []
    for model, runs in grouped.items():
        row = TableRow(model, sorted(r["seed"] for r in runs))
        names = {name for r in runs for name in r["datasets"]}
        for name in names:
            values = [float(r["datasets"][name][metric]) for r in runs if metric in r["datasets"].get(name, {})]
            if values:
                row.cells[name] = Stat.of(values)
        rfids = [float(r["rfid"]["value"]) for r in runs if r.get("rfid") is not None]
        row.rfid = Stat.of(rfids) if rfids else None
        rows.append(row)
    return rows


def table_columns(rows: Sequence[TableRow]) -> list[str]:
    """Datasets present in any row: the paper's Table I order first, unknown names after, sorted."""
    present = {name for row in rows for name in row.cells}
    return [d for d in BENCHMARK_ORDER if d in present] + sorted(present - set(BENCHMARK_ORDER))


def format_markdown(rows: Sequence[TableRow], metric: str = "mIoU", digits: int = 1) -> str:
    """A markdown table: one row per model, one column per dataset, the average, rFID and the number of runs."""
    columns = table_columns(rows)
    with_rfid = any(row.rfid is not None for row in rows)
    header = ["Method", *(SHORT_NAMES.get(c, c) for c in columns), "Avg"] + (["rFID"] if with_rfid else []) + ["runs"]
    lines = [f"{metric} (%), mean ± sample std over runs", "", "| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    for row in rows:
        cells = [row.cells[c].text(digits) if c in row.cells else "–" for c in columns]
        avg = row.average(columns)
        cells.append(f"{avg:.{digits}f}" if avg is not None else "–")
        if with_rfid:
            cells.append(row.rfid.text(digits) if row.rfid is not None else "–")
        cells.append(str(len(row.seeds)))
        lines.append("| " + " | ".join([row.model, *cells]) + " |")
    return "\n".join(lines) + "\n"


def table_json(rows: Sequence[TableRow], metric: str = "mIoU") -> dict[str, Any]:
    """The table as JSON: ``{"metric", "datasets", "rows": [{"model", "seeds", "cells": {name: {mean, std, n}},
    "average", "rfid"}]}``; a std of a single run is null."""

    def stat(s: Optional[Stat]) -> Optional[dict[str, Any]]:
        if s is None:
            return None
        return {"mean": s.mean, "std": None if math.isnan(s.std) else s.std, "n": s.n}

    columns = table_columns(rows)
    return {
        "metric": metric,
        "datasets": columns,
        "rows": [
            {
                "model": row.model,
                "seeds": row.seeds,
                "cells": {name: stat(row.cells[name]) for name in columns if name in row.cells},
                "average": row.average(columns),
                "rfid": stat(row.rfid),
            }
            for row in rows
        ],
    }
