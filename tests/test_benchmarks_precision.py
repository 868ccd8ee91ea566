"""``benchmarks/precision.py`` end to end on the shipped tiny models (one scene, one round; no full-size preset)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "precision.py"


def test_the_report_has_every_mode_of_both_tiny_models(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    out = tmp_path / "p"
    argv = [sys.executable, str(SCRIPT), "--threads", "1", "--scenes", "1", "--rounds", "1", "--presets"]
    done = subprocess.run(
        [*argv, "--measure-refused", "--out", str(out)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(out.with_suffix(".json").read_text())
    assert set(report["runs"]) == {"tiny"} and set(report["runs"]["tiny"]) == {"SAN-tiny", "PAT-tiny"}
    for run in report["runs"]["tiny"].values():
        assert list(run["modes"]) == ["fp32", "bf16", "fp16", "int8"]
        assert run["modes"]["fp32"]["speedup"] == 1 and run["modes"]["fp32"]["label_agreement_pct"] == 100
        for rec in run["modes"].values():  # --measure-refused: every mode is timed, refused ones marked forced
            assert rec["status"] in ("supported", "forced") and rec["ms_per_image"] > 0
            assert rec["label_agreement_pct"] > 90
    md = out.with_suffix(".md").read_text()
    assert "| SAN-tiny | int8 |" in md and "--measure-refused" in md
    again = subprocess.run([*argv, "--out", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "--overwrite" in again.stderr
