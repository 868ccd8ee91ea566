"""`patseg bench` and `patseg mini` hand --set to every model they build (the measuring and training replaced)."""

import json

import pytest

import patseg.bench
import patseg.mini.benchmark
import patseg.mini.figure
from patseg.cli import main
from patseg.cli.bench import format_markdown


def test_bench_passes_overrides_and_records_the_command(tmp_path, monkeypatch, capsys):
    seen = {}

    def run_suite(plan, device, sections, overrides, log):
        seen.update(plan=plan, sections=list(sections), overrides=overrides)
        log("measured")
        m = {"median_ms": 10.0, "runs_ms": [10.0], "peak_mb": 1.0, "gflops": 2.0}
        return {
            "environment": {
                "device_name": "cpu",
                "device": "cpu",
                "threads": 1,
                "precision": "float32",
                "torch": "x",
                "cpu_peak_memory": "RSS",
            },
            "train_step": [{"preset": "pat_tiny", "size": 128, **m}],
        }

    monkeypatch.setattr(patseg.bench, "run_suite", run_suite)
    out = tmp_path / "r" / "bench.json"
    assert (
        main(
            [
                "bench",
                "--quick",
                "--device",
                "cpu",
                "--sections",
                "train",
                "--precision",
                "int8",
                "--set",
                "pat.vmf=false",
                "loss.vq_weight=1e-4",
                "--json",
                str(out),
                "--markdown",
                str(tmp_path / "bench.md"),
            ]
        )
        == 0
    )
    assert seen["overrides"] == {"pat.vmf": False, "loss.vq_weight": 1e-4}
    assert seen["plan"].pat == "pat_tiny" and seen["sections"] == ["train"] and seen["plan"].precision == "int8"
    captured = capsys.readouterr()
    assert "patseg: measured" in captured.err  # the suite's progress goes to the log
    report = json.loads(out.read_text())
    command = "patseg bench --quick --device cpu --precision int8 --sections train"
    command += " --set pat.vmf=false loss.vq_weight=1e-4"
    assert report["command"] == command
    assert (tmp_path / "bench.md").read_text() == format_markdown(report)
    assert f"Command: `{command}`" in captured.out


@pytest.fixture
def fake_benchmark(monkeypatch):
    seen = {}

    def run_benchmark(settings, out, runs, world=None, on_model=None):
        seen["runs"] = {r.name: dict(r.overrides) for r in runs}
        seen["world"] = world
        results = {}
        for r in runs:
            if on_model is not None:
                on_model(r, settings.seeds[0], FakeModel())
            results[r.name] = [
                {
                    "seen": 10.0,
                    "unseen": 5.0,
                    "all": 8.0,
                    "hIoU": 6.7,
                    "seed": settings.seeds[0],
                    "per_class": {"a": float("nan")},
                }
            ]
        return {"world": "w", "results": results, "settings": {}}

    class FakeModel:
        def eval(self):
            return self

    def make_figure(world, image_size, models):
        seen["figure_models"] = sorted(models)
        from PIL import Image

        return Image.new("RGB", (4, 4))

    monkeypatch.setattr(patseg.mini.benchmark, "run_benchmark", run_benchmark)
    monkeypatch.setattr(patseg.mini.figure, "make_figure", make_figure)
    return seen


def test_mini_gives_every_run_the_keys_that_fit_it(tmp_path, fake_benchmark, capsys):
    assert (
        main(["mini", "--quick", "--ablations", "--out", str(tmp_path), "--set", "pat.vmf=true", "loss.vq_weight=0.5"])
        == 0
    )
    runs = fake_benchmark["runs"]
    assert runs["SAN"] == {"loss.vq_weight": 0.5}  # pat.* keys would turn the SAN baseline into PAT
    assert runs["SAN, random text (control)"] == {"loss.vq_weight": 0.5}
    assert runs["PAT"] == {"pat.vmf": True, "loss.vq_weight": 0.5}
    assert runs["Table II: No vMF meanshift"] == {"pat.vmf": False, "loss.vq_weight": 0.5}  # the row's key wins
    assert runs["Table II: FPN, all removed"] == {"pat.decoder_stages": [], "pat.vmf": True, "loss.vq_weight": 0.5}
    assert len(runs) == 3 + 11  # Table II's baseline is the PAT run itself
    assert fake_benchmark["world"].name == "ovss-mini-v1"
    assert fake_benchmark["figure_models"] == ["PAT", "SAN"]
    text = (tmp_path / "results.md").read_text()
    assert "command: `patseg mini --quick --ablations --set pat.vmf=true loss.vq_weight=0.5`" in text
    assert json.loads((tmp_path / "results.json").read_text())["results"]["PAT"][0]["per_class"] == {"a": None}
