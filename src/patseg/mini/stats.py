"""Paired-seed comparison of two models: the mean per-seed difference and its Student-t confidence interval.

OVSS-mini trains both models once per seed on the same world and scenes, so seed i of model A and seed i of model B
share their data and initial randomness; the differences ``a_i - b_i`` remove that shared part of the variance,
which an unpaired comparison of the two means would keep. With n paired seeds the interval is

    mean(diff) ± t_{(1 + confidence) / 2, n - 1} * std(diff, ddof=1) / sqrt(n),

the paired t-test's interval; "distinguishable" means it excludes 0 (the two-sided paired t-test at level
``1 - confidence`` rejects equal means). With a handful of seeds the interval is wide: read an undistinguishable
difference as "not measured apart", not as "equal".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from scipy.stats import t as student_t


@dataclass(frozen=True)
class PairedDifference:
    """``mean`` of ``per_seed`` (a_i - b_i over the ``n`` kept pairs), its interval [``low``, ``high``] at
    ``confidence``, and ``distinguishable`` = the interval excludes 0."""

    mean: float
    low: float
    high: float
    n: int
    per_seed: list[float]
    confidence: float
    distinguishable: bool


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> PairedDifference:
    """Mean of ``a[i] - b[i]`` with a two-sided Student-t interval (n - 1 degrees of freedom, sample std).

    ``a`` and ``b`` hold one value per seed, in the same seed order. A pair in which either value is NaN (a run
    that produced no number) is dropped and ``n`` counts the kept pairs. With n == 1 the spread is unknown: the
    interval is (-inf, inf) and the difference is not distinguishable; with n == 0 the mean is NaN as well.
    """
    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths, got {len(a)} and {len(b)}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    diffs = [float(x) - float(y) for x, y in zip(a, b) if not (math.isnan(float(x)) or math.isnan(float(y)))]
    n = len(diffs)
    if n < 2:
        mean = diffs[0] if n else math.nan
        return PairedDifference(mean, -math.inf, math.inf, n, diffs, confidence, False)
    mean = math.fsum(diffs) / n
    std = math.sqrt(math.fsum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = float(student_t.ppf(0.5 + confidence / 2.0, n - 1)) * std / math.sqrt(n)
    low, high = mean - half, mean + half
    return PairedDifference(mean, low, high, n, diffs, confidence, low > 0.0 or high < 0.0)


def _signed(value: float, digits: int) -> str:
    # Typographic minus, as in the report tables; "+" on non-negative values so the direction is always stated.
    if math.isinf(value):
        return "+∞" if value > 0 else "−∞"
    return f"{value:+.{digits}f}".replace("-", "−")


def describe(
    diff: PairedDifference,
    label_a: str = "PAT",
    label_b: str = "SAN",
    metric: str = "unseen mIoU",
    digits: int = 1,
) -> str:
    """One sentence, e.g. "PAT − SAN unseen mIoU: +0.8 (95% CI −0.4 to +2.0, 5 paired seeds): not
    distinguishable from zero." or "...: PAT higher, distinguishable from zero."."""
    head = f"{label_a} − {label_b} {metric}"
    if diff.n == 0:
        return f"{head}: no paired seeds with a value on both sides."
    if diff.n == 1:
        return f"{head}: {_signed(diff.mean, digits)} (1 paired seed, no interval): not distinguishable from zero."
    level = f"{round(100.0 * diff.confidence, 6):g}%"
    interval = f"{level} CI {_signed(diff.low, digits)} to {_signed(diff.high, digits)}, {diff.n} paired seeds"
    if not diff.distinguishable:
        return f"{head}: {_signed(diff.mean, digits)} ({interval}): not distinguishable from zero."
    higher = label_a if diff.mean > 0 else label_b
    return f"{head}: {_signed(diff.mean, digits)} ({interval}): {higher} higher, distinguishable from zero."
