"""OVSS-mini's tables and the paired comparison, on hand-made results."""

import math

import pytest

from patseg.mini.report import (
    ablation_table,
    format_table,
    metric_values,
    paired_comparison,
    summarize,
    tokenizer_table,
)


def _tokenizer(psnr, rfid, perplexity):
    stages = {s: {"perplexity": perplexity, "used": 10, "dead": 22, "size": 32} for s in ("early", "mid", "late")}
    stages["latent"] = {"perplexity": 2.0, "used": 3, "dead": 253, "size": 256}
    return {"psnr": psnr, "mini_rfid": rfid, "codebooks": stages}


RESULTS = {
    "SAN": [
        {"seed": s, "seen": 30.0 + s, "unseen": 10.0, "all": 25.0, "hIoU": 15.0, "bIoU_all": 12.0 + s} for s in range(3)
    ],
    "PAT": [
        {
            "seed": s,
            "seen": 31.0 + s + d,
            "unseen": 10.0 + d,
            "all": 25.5,
            "hIoU": 15.0,
            "bIoU_all": 14.0 + s,
            "tokenizer": _tokenizer(12.0 + s, 0.1 * s, 4.0 + s),
        }
        for s, d in zip(range(3), (0.1, -0.1, 0.0))
    ],
}


def test_metric_values_reach_into_the_tokenizer():
    assert metric_values(RESULTS["PAT"], "psnr") == [12.0, 13.0, 14.0]
    assert metric_values(RESULTS["PAT"], "perplexity_early") == [4.0, 5.0, 6.0]
    assert metric_values(RESULTS["PAT"], "dead_latent") == [253.0] * 3
    assert all(math.isnan(v) for v in metric_values(RESULTS["SAN"], "psnr"))


def test_paired_comparison_pairs_by_seed_and_says_when_a_difference_is_real():
    sentences = paired_comparison(RESULTS)
    assert len(sentences) == 5
    seen, unseen, all_, hiou, boundary = sentences
    # seen: differences 1.1, 0.9, 1.0 -> mean 1.0, a small spread: distinguishable; bIoU: exactly +2 every seed.
    assert seen.startswith("PAT − SAN seen mIoU: +1.0 (95% CI") and "distinguishable from zero" in seen
    assert "not distinguishable" not in seen
    assert "not distinguishable" in unseen  # +0.1, -0.1, 0.0
    assert "+2.0" in boundary and "not distinguishable" not in boundary
    shuffled = {"SAN": RESULTS["SAN"][::-1], "PAT": RESULTS["PAT"]}
    assert paired_comparison(shuffled) == sentences  # pairs by seed, not by position
    assert paired_comparison({"SAN": RESULTS["SAN"]}) == []


def test_tables():
    summary = summarize(RESULTS)
    assert summary["PAT"]["seen"] == pytest.approx((32.0, 0.91**0.5))  # 31.1, 31.9, 33.0
    table = format_table(summary)
    assert "| PAT | 32.0 ± 1.0 | 10.0 ± 0.1 | 25.5 ± 0.0 | 15.0 ± 0.0 | 15.0 ± 1.0 | – |" in table
    tok = tokenizer_table(RESULTS, ["SAN", "PAT"])
    assert tok.count("\n") == 2  # header, rule and PAT only: SAN has no tokenizer
    assert "| PAT | 13.00 ± 1.00 | 0.1 ± 0.1 | 5.0 ± 1.0 · 22.0 ± 0.0 of 32 |" in tok
    layout = [("Baseline", "Baseline", "PAT"), ("Cluster", "No vMF", "missing"), ("Cluster", "Other", "SAN")]
    ablation = ablation_table(RESULTS, layout).splitlines()
    assert ablation[2] == "| Baseline | Baseline | 25.5 ± 0.0 | 10.0 ± 0.1 | 15.0 ± 1.0 | 0.1 ± 0.1 |"
    assert ablation[3] == "| Cluster | No vMF | – | – | – | – |"
    assert ablation[4].startswith("|  | Other | 25.0 ± 0.0 |")  # the group is named once
