import math

import numpy as np
import pytest
from scipy import stats

from patseg.mini.stats import PairedDifference, describe, paired_difference

# Two-sided Student-t quantiles t_{q, df} from printed tables.
T_TABLE = {(0.975, 4): 2.776445105, (0.95, 2): 2.919985580, (0.995, 9): 3.249835542}


def hand_interval(a, b, confidence):
    """Float64 reference: the paired-t interval written out with explicit sums and a tabulated t quantile."""
    diffs = [float(x) - float(y) for x, y in zip(a, b)]
    n = len(diffs)
    mean = sum(diffs) / n
    var = sum((d - mean) * (d - mean) for d in diffs) / (n - 1)
    half = T_TABLE[(round(0.5 + confidence / 2, 6), n - 1)] * math.sqrt(var) / math.sqrt(n)
    return mean, mean - half, mean + half


@pytest.mark.parametrize(
    "a, b, confidence",
    [
        ([31.0, 32.5, 30.0, 33.0, 31.5], [30.0, 31.0, 30.5, 31.5, 30.0], 0.95),
        ([1.0, 2.0, 3.0], [0.2, 0.1, 0.9], 0.90),
        (list(np.linspace(10, 19, 10) ** 1.1), list(np.linspace(10, 19, 10) + np.sin(np.arange(10))), 0.99),
    ],
)
def test_matches_the_hand_computation_with_a_tabulated_t(a, b, confidence):
    out = paired_difference(a, b, confidence)
    mean, low, high = hand_interval(a, b, confidence)
    assert out.n == len(a)
    assert out.mean == pytest.approx(mean, rel=1e-12)
    assert out.low == pytest.approx(low, rel=1e-8, abs=1e-9)  # the table has 10 significant digits
    assert out.high == pytest.approx(high, rel=1e-8, abs=1e-9)
    assert out.per_seed == pytest.approx([x - y for x, y in zip(a, b)], rel=1e-12)
    assert out.distinguishable == (low > 0 or high < 0)


def test_the_first_case_by_hand():
    # diffs 1, 1.5, -0.5, 1.5, 1.5: mean 1, squared deviations sum to 3, std sqrt(0.75), half-width
    # 2.776445105 * sqrt(0.75 / 5) = 1.0753126; the interval reaches just below zero.
    out = paired_difference([31.0, 32.5, 30.0, 33.0, 31.5], [30.0, 31.0, 30.5, 31.5, 30.0])
    assert out.mean == pytest.approx(1.0)
    assert (out.low, out.high) == pytest.approx((1 - 1.0753126, 1 + 1.0753126), abs=1e-6)
    assert not out.distinguishable
    assert (
        describe(out)
        == "PAT − SAN unseen mIoU: +1.0 (95% CI −0.1 to +2.1, 5 paired seeds): not distinguishable from zero."
    )


def test_agrees_with_scipys_paired_t_test():
    rng = np.random.default_rng(0)
    for n, confidence in [(3, 0.9), (5, 0.95), (8, 0.99)]:
        a, b = rng.normal(30, 2, n), rng.normal(29, 2, n)
        out = paired_difference(a.tolist(), b.tolist(), confidence)
        ci = stats.ttest_rel(a, b).confidence_interval(confidence)
        assert (out.low, out.high) == pytest.approx((ci.low, ci.high), rel=1e-10)


def test_a_consistent_gain_is_distinguishable_in_either_direction():
    a, b = [31.0, 31.2, 30.8, 31.1, 30.9], [30.0] * 5
    up = paired_difference(a, b)
    assert up.distinguishable and up.low > 0
    assert describe(up).endswith("(95% CI +0.8 to +1.2, 5 paired seeds): PAT higher, distinguishable from zero.")
    down = paired_difference(b, a)
    assert down.distinguishable and down.high < 0
    assert describe(down) == (
        "PAT − SAN unseen mIoU: −1.0 (95% CI −1.2 to −0.8, 5 paired seeds): SAN higher, distinguishable from zero."
    )
    assert describe(down, "A", "B", "seen mIoU", digits=2).startswith("A − B seen mIoU: −1.00 (95% CI −1.20")


def test_identical_differences_give_a_zero_width_interval():
    out = paired_difference([1.5, 2.5, 3.5], [1.0, 2.0, 3.0])
    assert (out.mean, out.low, out.high) == pytest.approx((0.5, 0.5, 0.5))
    assert out.distinguishable
    same = paired_difference([1.0, 2.0], [1.0, 2.0])
    assert (same.mean, same.low, same.high, same.distinguishable) == (0.0, 0.0, 0.0, False)


def test_nan_pairs_are_dropped():
    a = [31.0, math.nan, 32.5, 30.0, 33.0, 31.5]
    b = [30.0, 29.0, 31.0, 30.5, math.nan, 30.0]
    out = paired_difference(a, b)
    kept = paired_difference([31.0, 32.5, 30.0, 31.5], [30.0, 31.0, 30.5, 30.0])
    assert out == kept
    assert out.n == 4 and out.per_seed == [1.0, 1.5, -0.5, 1.5]


def test_one_or_no_pair_gives_no_interval():
    one = paired_difference([31.0, math.nan], [30.0, 30.0])
    assert one == PairedDifference(1.0, -math.inf, math.inf, 1, [1.0], 0.95, False)
    assert describe(one) == "PAT − SAN unseen mIoU: +1.0 (1 paired seed, no interval): not distinguishable from zero."
    none = paired_difference([], [])
    assert none.n == 0 and math.isnan(none.mean) and not none.distinguishable
    assert describe(none) == "PAT − SAN unseen mIoU: no paired seeds with a value on both sides."


def test_rejects_unpaired_inputs_and_bad_levels():
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="confidence"):
        paired_difference([1.0, 2.0], [1.0, 2.0], confidence=95)


def test_confidence_level_is_printed_as_a_percentage():
    out = paired_difference([1.0, 2.0, 3.0], [0.2, 0.1, 0.9], confidence=0.9)
    assert "(90% CI " in describe(out)
    out = paired_difference([1.0, 2.0, 3.0], [0.2, 0.1, 0.9], confidence=0.975)
    assert "(97.5% CI " in describe(out)
