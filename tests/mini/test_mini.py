"""OVSS-mini: a seconds-long run of the whole pipeline through `patseg mini`."""
import json

import pytest

from patseg.cli import main
from patseg.mini.benchmark import RandomTextEncoder, format_table, summarize


def test_random_text_encoder_is_fixed_per_name():
    enc = RandomTextEncoder(16, 100.0)
    a = enc(["red circle", "grass"], ["{}"])
    b = enc(["grass", "red circle"], ["a photo of a {}."])
    assert a.shape == (2, 16)
    assert abs(float(a.norm(dim=1).mean()) - 1.0) < 1e-6
    assert (a[0] == b[1]).all() and (a[1] == b[0]).all()  # depends on the name only
    assert enc.logit_scale == 100.0


def test_summary_mean_and_std():
    rows = [{"seen": 10.0, "unseen": 2.0, "all": 8.0, "hIoU": 3.3}, {"seen": 20.0, "unseen": 4.0, "all": 16.0,
                                                                      "hIoU": 6.7}]
    s = summarize({"SAN": rows})
    assert s["SAN"]["seen"][0] == pytest.approx(15.0)
    assert s["SAN"]["seen"][1] == pytest.approx(7.0710678, rel=1e-6)
    assert "15.0 ± 7.1" in format_table(s)


def test_mini_pipeline_smoke(tmp_path, monkeypatch):
    monkeypatch.setenv("PATSEG_CACHE", str(tmp_path / "cache"))
    # conftest sets PATSEG_NO_SHIPPED_MINI_CLIP: this exercises pretraining + caching, not the shipped file
    out = tmp_path / "mini"
    code = main(["mini", "--quick", "--iters", "2", "--train-scenes", "8", "--val-scenes", "3",
                 "--clip-steps", "2", "--out", str(out)])
    assert code == 0
    report = json.loads((out / "results.json").read_text())
    assert set(report["results"]) == {"SAN", "PAT", "SAN, random text (control)"}
    for rows in report["results"].values():
        assert len(rows) == 1 and {"seen", "unseen", "all", "hIoU"} <= set(rows[0])
    md = (out / "results.md").read_text()
    assert "| PAT |" in md and "mIoU unseen" in md
    assert (out / "figure.png").is_file()
    assert list((tmp_path / "cache" / "mini_clip").glob("*/mini_clip.safetensors"))
