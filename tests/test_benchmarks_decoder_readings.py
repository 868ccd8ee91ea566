"""``benchmarks/decoder_readings.py`` end to end on ``pat_tiny`` at a tiny size: one subprocess per combination."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

from patseg.config import PatConfig

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "decoder_readings.py"
HAS_DECODER_FIELD = "decoder" in {f.name for f in dataclasses.fields(PatConfig)}


def run_script(*argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, str(SCRIPT), *argv], env=env, capture_output=True, text=True, timeout=300, check=False
    )


def positive_flops(flops: dict) -> None:
    assert flops["total"] > 0
    assert 0 < flops["decoder"] < flops["total"]
    assert 0 < flops["decoder_share"] < 1


def test_tiny_run_reports_every_combination(tmp_path):
    """One combination of each decoder: ``tokens`` runs when the config knows ``pat.decoder``, else it is skipped
    with a message; every number of a run combination is positive and the decoder is a part of the total."""
    out = tmp_path / "readings"
    argv = ["--preset", "pat_tiny", "--size", "64", "--sizes", "64x256", "--repeats", "1", "--out", str(out)]
    argv += ["--combos", "pixels-clip", "tokens-side", "--budget-s", "5"]
    done = run_script(*argv)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.with_suffix(".json").read_text())
    table = out.with_suffix(".md").read_text()
    assert report["config_has_decoder_field"] == HAS_DECODER_FIELD
    assert report["machine"]["threads"] == 1 and report["machine"]["cpu"]
    combos = {c["name"]: c for c in report["combinations"]}
    assert set(combos) == {"pixels-clip", "tokens-side"}
    ran = ["pixels-clip", "tokens-side"] if HAS_DECODER_FIELD else ["pixels-clip"]
    if not HAS_DECODER_FIELD:
        assert combos["tokens-side"]["status"] == "skipped"
        assert "tokens combinations are skipped" in done.stdout
    for name in ran:
        combo = combos[name]
        assert combo["status"] == "ok", combo
        assert combo["overrides"]["pat.pyramid_base"] == name.split("-")[1]
        assert ("pat.decoder" in combo["overrides"]) == HAS_DECODER_FIELD
        params = combo["params"]
        assert 0 < params["decoder_trainable"] < params["trainable"] <= params["total"]
        assert list(combo["tasks"]) == ["forward", "eval@64x256", "train"]
        for task in combo["tasks"].values():
            assert task["status"] == "ok"
            assert task["median_ms"] > 0 and task["peak_mb"] > 0
        positive_flops(combo["tasks"]["forward"]["gflops"])
        positive_flops(combo["tasks"]["eval@64x256"]["gflops"])
        train = combo["tasks"]["train"]
        positive_flops(train["gflops_forward"])
        positive_flops(train["gflops_step"])
        assert train["gflops_step"]["total"] > train["gflops_forward"]["total"]  # the backward is counted
        assert train["gflops_step"]["decoder"] > train["gflops_forward"]["decoder"]
        assert f"| {name.split('-')[0]} | {name.split('-')[1]} |" in table

    again = run_script("--preset", "pat_tiny", "--out", str(out))  # refused before any work
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert json.loads(out.with_suffix(".json").read_text()) == report
