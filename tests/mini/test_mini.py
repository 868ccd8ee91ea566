"""OVSS-mini: a seconds-long run of the whole pipeline through `patseg mini`."""

import json
import os
from dataclasses import replace

import pytest
import torch

from patseg.cli import main
from patseg.mini import benchmark
from patseg.mini.benchmark import QUICK, RandomTextEncoder
from patseg.mini.clip_pretrain import SHIPPED_DIR, WEIGHTS_FILE
from patseg.mini.report import format_table, summarize
from patseg.mini.world import WorldConfig, world_hash


def absolute_paths(obj):
    """Every string inside ``obj`` (nested dicts and lists) that is an absolute or home-relative path."""
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in absolute_paths(k) + absolute_paths(v)]
    if isinstance(obj, (list, tuple)):
        return [p for v in obj for p in absolute_paths(v)]
    return [obj] if isinstance(obj, str) and (os.path.isabs(obj) or obj.startswith("~")) else []


def test_benchmark_record_holds_no_absolute_path(tmp_path, monkeypatch):
    shipped = SHIPPED_DIR / WEIGHTS_FILE
    assert shipped.is_absolute()  # what the loader hands over; the record must not keep it so
    monkeypatch.setattr(benchmark, "load_or_pretrain_mini_clip", lambda world, steps: shipped)
    monkeypatch.setattr(benchmark, "run_one", lambda run, seed, *args: (None, {"seen": 1.0, "dir": "runs/x"}))
    monkeypatch.setattr(benchmark, "MiniClipEmbedder", lambda weights: None)
    report = benchmark.run_benchmark(QUICK, tmp_path / "out", benchmark.DEFAULT_RUNS[:1])
    assert report["clip_weights"] == "patseg/resources/mini_clip/mini_clip.safetensors"
    assert report["results"] == {"SAN": [{"seen": 1.0, "dir": "runs/x", "seed": 0}]}
    assert absolute_paths(report) == []
    assert absolute_paths({"a": [str(tmp_path)], "b": "~/x"}) == [str(tmp_path), "~/x"]  # the check can fail


def test_random_text_encoder_is_fixed_per_name():
    enc = RandomTextEncoder(16, 100.0)
    a = enc(["red circle", "grass"], ["{}"])
    b = enc(["grass", "red circle"], ["a photo of a {}."])
    assert a.shape == (2, 16)
    assert abs(float(a.norm(dim=1).mean()) - 1.0) < 1e-6
    assert (a[0] == b[1]).all() and (a[1] == b[0]).all()  # depends on the name only
    assert enc.logit_scale == 100.0


def test_summary_mean_and_std():
    rows = [
        {"seen": 10.0, "unseen": 2.0, "all": 8.0, "hIoU": 3.3},
        {"seen": 20.0, "unseen": 4.0, "all": 16.0, "hIoU": 6.7},
    ]
    s = summarize({"SAN": rows})
    assert s["SAN"]["seen"][0] == pytest.approx(15.0)
    assert s["SAN"]["seen"][1] == pytest.approx(7.0710678, rel=1e-6)
    assert "15.0 ± 7.1" in format_table(s)


def test_mini_pipeline_smoke(tmp_path, monkeypatch):
    monkeypatch.setenv("PATSEG_CACHE", str(tmp_path / "cache"))
    # conftest sets PATSEG_NO_SHIPPED_MINI_CLIP: this exercises pretraining + caching, not the shipped file
    out = tmp_path / "mini"
    code = main(
        [
            "mini",
            "--quick",
            "--iters",
            "2",
            "--train-scenes",
            "8",
            "--val-scenes",
            "3",
            "--clip-steps",
            "2",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    report = json.loads((out / "results.json").read_text())
    assert set(report["results"]) == {"SAN", "PAT", "SAN, random text (control)"}
    cached = f"$PATSEG_CACHE/mini_clip/{world_hash(WorldConfig())}/mini_clip.safetensors"
    assert report["clip_weights"] == cached and absolute_paths(report) == []
    for rows in report["results"].values():
        assert len(rows) == 1 and {"seen", "unseen", "all", "hIoU"} <= set(rows[0])
    md = (out / "results.md").read_text()
    assert "| PAT |" in md and "mIoU unseen" in md
    assert (out / "figure.png").is_file()
    assert list((tmp_path / "cache" / "mini_clip").glob("*/mini_clip.safetensors"))


def test_mini_records_the_command_that_ran_and_passes_threads(tmp_path, monkeypatch):
    seen = {}

    def fake_benchmark(settings, out, runs, world=None, on_model=None):
        seen["settings"], seen["runs"] = settings, runs
        row = {"seen": 10.0, "unseen": 5.0, "all": 8.0, "hIoU": 6.7, "seed": 3}
        return {"world": "w", "clip_weights": "x", "results": {"SAN": [row]}, "settings": {}}

    monkeypatch.setattr(benchmark, "run_benchmark", fake_benchmark)
    out = tmp_path / "out"
    argv = ["mini", "--seeds", "3", "--iters", "7", "--threads", "1", "--set", "pat.vmf=false", "--out", str(out)]
    assert main(argv) == 0
    assert seen["settings"].threads == 1 and seen["settings"].iters == 7 and seen["settings"].seeds == (3,)
    md = (out / "results.md").read_text()
    command = "patseg mini --seeds 3 --iters 7 --threads 1 --set pat.vmf=false"
    assert f"command: `{command}`;" in md
    assert main(["mini", "--quick", "--out", str(out)]) == 2  # an earlier run is not replaced unasked
    assert main(["mini", "--quick", "--out", str(tmp_path / "quick")]) == 0
    assert seen["settings"].threads is None  # torch's own default
    assert "command: `patseg mini --quick`;" in (tmp_path / "quick" / "results.md").read_text()


def test_mini_refuses_zero_threads(tmp_path, capsys):
    assert main(["mini", "--threads", "0", "--out", str(tmp_path / "o")]) == 2
    assert "--threads must be at least 1, got 0" in capsys.readouterr().err


def test_run_benchmark_keeps_torch_threads_unless_told(tmp_path, monkeypatch):
    monkeypatch.setattr(benchmark, "load_or_pretrain_mini_clip", lambda world, steps: SHIPPED_DIR / WEIGHTS_FILE)
    threads = []
    monkeypatch.setattr(benchmark, "run_one", lambda *args: (threads.append(torch.get_num_threads()), {"seen": 1.0}))
    monkeypatch.setattr(benchmark, "MiniClipEmbedder", lambda weights: None)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        benchmark.run_benchmark(QUICK, tmp_path, benchmark.DEFAULT_RUNS[:1])
        benchmark.run_benchmark(replace(QUICK, threads=3), tmp_path, benchmark.DEFAULT_RUNS[:1])
    finally:
        torch.set_num_threads(before)
    assert threads == [1, 3]


def test_world_seed_runs_another_world_with_its_own_mini_clip(tmp_path, monkeypatch):
    from patseg.mini.world import make_world

    monkeypatch.setenv("PATSEG_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "w3"
    argv = ["mini", "--quick", "--world-seed", "3", "--iters", "1", "--train-scenes", "4", "--val-scenes", "2"]
    assert main([*argv, "--clip-steps", "1", "--out", str(out)]) == 0
    report = json.loads((out / "results.json").read_text())
    world = make_world(3)
    assert report["world"] == world.name != WorldConfig().name and report["world_hash"] == world_hash(world)
    assert report["clip_weights"] == f"$PATSEG_CACHE/mini_clip/{world_hash(world)}/mini_clip.safetensors"
    assert f"(world {world.name})" in (out / "results.md").read_text()
    assert "--world-seed 3" in (out / "results.md").read_text()
