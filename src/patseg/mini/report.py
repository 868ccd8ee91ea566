"""OVSS-mini's tables: mean ± std over seeds, the paired PAT − SAN comparison, PAT's tokenizer, the ablations.

Every table is built from ``results`` as :func:`patseg.mini.benchmark.run_benchmark` returns it: run name -> one
metrics dict per seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from patseg.mini.stats import describe, paired_difference

MIOU = ("seen", "unseen", "all", "hIoU")
MAIN_COLUMNS = {
    "seen": "mIoU seen",
    "unseen": "mIoU unseen",
    "all": "mIoU all",
    "hIoU": "hIoU",
    "bIoU_all": "bIoU all",
    "bIoU_unseen": "bIoU unseen",
}
COMPARED = {"seen": "seen mIoU", "unseen": "unseen mIoU", "all": "all mIoU", "hIoU": "hIoU", "bIoU_all": "bIoU all"}
STAGES = ("early", "mid", "late", "latent")

Summary = dict[str, dict[str, tuple[float, float]]]


def metric_values(rows: Sequence[dict], metric: str) -> list[float]:
    """One value per seed; the tokenizer's numbers are addressed as ``psnr``, ``mini_rfid``, ``perplexity_early``,
    ``dead_late``, ...; a metric a row lacks is NaN."""
    out = []
    for row in rows:
        tok = row.get("tokenizer", {})
        if metric in row:
            value = row[metric]
        elif metric in tok:
            value = tok[metric]
        elif "_" in metric and metric.split("_", 1)[1] in tok.get("codebooks", {}):
            kind, stage = metric.split("_", 1)
            value = tok["codebooks"][stage][kind]
        else:
            value = float("nan")
        out.append(float("nan") if value is None else float(value))
    return out


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std of the finite values (std NaN for fewer than two)."""
    v = np.array([x for x in values if not math.isnan(x)], dtype=float)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else float("nan")


def summarize(results: dict[str, list[dict]], metrics: Sequence[str] = tuple(MAIN_COLUMNS)) -> Summary:
    """{run: {metric: (mean, std)}} over seeds."""
    return {name: {m: mean_std(metric_values(rows, m)) for m in metrics} for name, rows in results.items()}


def cell(mean: float, std: float, digits: int = 1) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def format_table(summary: Summary) -> str:
    """Markdown: mean ± std (percent) of each run's mIoU and boundary IoU."""
    columns = [m for m in MAIN_COLUMNS if any(m in metrics for metrics in summary.values())]
    lines = ["| model | " + " | ".join(MAIN_COLUMNS[m] for m in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, metrics in summary.items():
        lines.append(f"| {name} | " + " | ".join(cell(*metrics.get(m, (math.nan, math.nan))) for m in columns) + " |")
    return "\n".join(lines)


def paired_comparison(results: dict[str, list[dict]], a: str = "PAT", b: str = "SAN") -> list[str]:
    """One sentence per metric on ``a`` − ``b`` over the seeds both ran (paired: same seed, same data)."""
    if a not in results or b not in results:
        return []
    by_seed = {row["seed"]: row for row in results[b]}
    pairs = [(row, by_seed[row["seed"]]) for row in results[a] if row["seed"] in by_seed]
    sentences = []
    for metric, label in COMPARED.items():
        first = metric_values([p[0] for p in pairs], metric)
        second = metric_values([p[1] for p in pairs], metric)
        diff = paired_difference(first, second)
        sentences.append(describe(diff, label_a=a, label_b=b, metric=label))
    return sentences


def tokenizer_table(results: dict[str, list[dict]], runs: Sequence[str]) -> str:
    """Markdown: PSNR, mini-rFID and per-stage codebook usage (perplexity / dead codes of the codebook size)."""
    head = ["model", "PSNR (dB)", "mini-rFID"] + [f"{s} perplexity · dead" for s in STAGES]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name in runs:
        rows = results.get(name, [])
        if not rows or "tokenizer" not in rows[0]:
            continue
        cells = [
            name,
            cell(*mean_std(metric_values(rows, "psnr")), 2),
            cell(*mean_std(metric_values(rows, "mini_rfid"))),
        ]
        for stage in STAGES:
            size = rows[0]["tokenizer"]["codebooks"][stage]["size"]
            perplexity = cell(*mean_std(metric_values(rows, f"perplexity_{stage}")))
            dead = cell(*mean_std(metric_values(rows, f"dead_{stage}")))
            cells.append(f"{perplexity} · {dead} of {size}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ablation_table(results: dict[str, list[dict]], rows: Sequence[tuple[str, str, str]]) -> str:
    """Markdown in the layout of the paper's Table II: (group, label, run name) rows with mIoU all / unseen,
    boundary IoU and mini-rFID, mean ± std over seeds."""
    lines = [
        "| group | ablation | mIoU all | mIoU unseen | bIoU all | mini-rFID |",
        "|---|---|---|---|---|---|",
    ]
    previous = None
    for group, label, name in rows:
        runs = results.get(name, [])
        values = [cell(*mean_std(metric_values(runs, m))) for m in ("all", "unseen", "bIoU_all")]
        values.append(cell(*mean_std(metric_values(runs, "mini_rfid"))))
        lines.append(f"| {group if group != previous else ''} | {label} | " + " | ".join(values) + " |")
        previous = group
    return "\n".join(lines)
