"""`patseg reproduce`: the tiny mode end to end for both tables, skipping finished work, resuming an interrupted
run, the dry run, and one-line errors. Every step runs in this process (`--tiny`), on generated data."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pytest

import patseg.cli.eval
import patseg.cli.train
import patseg.evaluation.fid
from patseg.cli import main
from patseg.engine.train_config import load_train_config
from patseg.reproduce.rows import default_configs_dir, row_ids

BENCHMARKS = ["pcontext_59", "ade20k_150", "pcontext_459", "ade20k_847"]
TABLE1 = ["san_clip", "san_evaclip", "pat_clip", "pat_evaclip"]
TABLE2 = [
    "baseline",
    "no_vmf",
    "scale_4x4x4x",
    "scale_1x1x1x",
    "no_spatial_alignment",
    "no_token_mixer",
    "no_pixel_residual",
    "unified_tokens",
    "separate_decoding",
    "fpn_no_early",
    "fpn_no_early_mid",
    "fpn_none",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Table I and Table II (every row) in tiny mode, 1 seed, into one output folder."""
    out = tmp_path_factory.mktemp("reproduce")
    seconds = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(patseg.evaluation.fid, "FID_FEATURES", 64)  # pool3's 2048-d covariances cost seconds per row
        for table, rows in (("table1", TABLE1), ("table2", TABLE2)):
            start = time.perf_counter()
            argv = ["reproduce", table, "--tiny", "--seeds", "1", "--rows", ",".join(rows), "--out", str(out)]
            assert main(argv) == 0
            seconds[table] = time.perf_counter() - start
    return out, seconds


def _table(out: Path, table: str) -> tuple[dict, str]:
    return json.loads((out / f"{table}.json").read_text()), (out / f"{table}.md").read_text()


def _paper(table: str, row: str):
    return load_train_config(default_configs_dir() / table / f"{row}.yaml").paper


def _check_filled(table_json: dict, markdown: str, table: str, rows: list[str]) -> None:
    assert [r["row"] for r in table_json["rows"]] == rows
    for entry in table_json["rows"]:
        paper = _paper(table, entry["row"])
        assert entry["seeds"] == [0] and entry["label"] == paper.label
        assert entry["paper"]["mIoU"] == {d: getattr(paper.miou, d) for d in BENCHMARKS}
        for metric in ("mIoU", "mIoU_gt_or_pred"):
            for dataset in BENCHMARKS:
                cell = entry[metric][dataset]
                assert cell["n"] == 1 and math.isfinite(cell["mean"]) and 0 <= cell["mean"] <= 100, (entry, metric)
        line = next(x for x in markdown.splitlines() if f"| {paper.label} |" in x)
        assert "–" not in line and f"({paper.miou.pcontext_59:.1f})" in line and line.endswith("| 1 |")
    table_lines = [x for x in markdown.splitlines() if x.startswith("| ") and "Row" not in x]
    assert len(table_lines) == 2 * len(rows)  # one table per mIoU rule


def test_table1_tiny_fills_every_row_and_column(tiny):
    out, seconds = tiny
    table, markdown = _table(out, "table1")
    _check_filled(table, markdown, "table1", TABLE1)
    assert table["tiny"] and "checks the plumbing" in markdown
    assert "rFID" not in markdown and all("rfid" not in r for r in table["rows"])
    print(f"table1 tiny: {seconds['table1']:.0f} s")  # noqa: T201 -- the wall time, for the record (-s)


def test_table2_tiny_fills_every_row_and_column_with_groups_and_rfid(tiny):
    out, seconds = tiny
    table, markdown = _table(out, "table2")
    _check_filled(table, markdown, "table2", TABLE2)
    for entry in table["rows"]:
        assert entry["rfid"]["n"] == 1 and math.isfinite(entry["rfid"]["mean"])
        assert entry["paper"]["rfid"] == _paper("table2", entry["row"]).rfid
    assert [r["group"] for r in table["rows"]][:2] == ["Baseline", "Cluster"]
    assert markdown.count("| **Cluster** |") == 2 and "| **Decoder** |" in markdown  # a group named once per table
    assert "(13.8) | 1 |" in markdown  # the baseline's rFID beside the paper's
    assert "random Inception weights" in markdown
    print(f"table2 tiny: {seconds['table2']:.0f} s")  # noqa: T201


@pytest.mark.parametrize(
    "table, row, preset, overrides",
    [
        ("table1", "san_evaclip", "san_tiny", {}),
        ("table1", "pat_clip", "pat_tiny", {}),
        ("table2", "no_vmf", "pat_tiny", {"pat.vmf": False}),
        ("table2", "scale_1x1x1x", "pat_tiny", {"pat.stage_scales": [1, 1, 1]}),
    ],
)
def test_tiny_mode_trains_the_tiny_preset_with_the_rows_overrides(tiny, table, row, preset, overrides):
    out, _ = tiny
    cfg = load_train_config(out / table / row / "seed0" / "config.yaml")  # what the run trained
    assert (cfg.model.preset, cfg.model.overrides, cfg.paper.row) == (preset, overrides, row)
    assert (cfg.solver.seed, cfg.solver.iters, cfg.eval.datasets) == (0, 2, ())


def _refuse(*args, **kwargs):
    raise AssertionError("a complete step ran again")


def test_a_second_invocation_skips_every_step(tiny, monkeypatch, capsys):
    out, _ = tiny
    runs = out / "table1"
    before = {p: p.stat().st_mtime_ns for p in runs.rglob("*") if p.is_file()}
    monkeypatch.setattr(patseg.cli.train, "run", _refuse)
    monkeypatch.setattr(patseg.cli.eval, "run", _refuse)
    start = time.perf_counter()
    assert main(["reproduce", "table1", "--tiny", "--seeds", "1", "--out", str(out)]) == 0
    assert time.perf_counter() - start < 30
    assert "0 of 8 steps to run (8 complete)" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in runs.rglob("*") if p.is_file()} == before
    assert main(["reproduce", "table1", "--tiny", "--seeds", "1", "--dry-run", "--out", str(out)]) == 0
    commands = [x for x in capsys.readouterr().out.splitlines() if "-m patseg " in x]
    assert sum(x.startswith("# complete, skipped: ") for x in commands) == 4
    assert sum(x.startswith("# done, skipped: ") for x in commands) == 4


def _losses(run: Path) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (run / "logs" / "metrics.jsonl").read_text().splitlines()]
    return [(r["iteration"], r["loss/total"]) for r in records]


def test_an_interrupted_run_is_resumed_from_its_last_checkpoint(tiny, capsys):
    out, _ = tiny
    run = out / "table1" / "pat_clip" / "seed0"
    earlier = run / "ckpt_0000001"
    earlier_mtime = (earlier / "model.safetensors").stat().st_mtime_ns
    losses = _losses(run)
    # A run stopped after its first checkpoint: the final checkpoint is missing and the pointer names the earlier one.
    for f in (run / "ckpt_0000002").iterdir():
        f.unlink()
    (run / "ckpt_0000002").rmdir()
    (run / "last_checkpoint").write_text("ckpt_0000001\n")
    results = run / "results_seed0.json"
    stale = results.stat().st_mtime_ns
    capsys.readouterr()
    assert main(["reproduce", "table1", "--tiny", "--seeds", "1", "--rows", "pat_clip", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "2 of 2 steps to run" in err and "(resume from ckpt_0000001)" in err and "--resume" in err
    assert (earlier / "model.safetensors").stat().st_mtime_ns == earlier_mtime  # continued, not started over
    assert (run / "last_checkpoint").read_text() == "ckpt_0000002\n"
    assert _losses(run) == losses  # a bitwise resume logs the same losses
    assert results.stat().st_mtime_ns != stale  # the retrained run is evaluated again


def test_dry_run_prints_torchrun_commands_and_estimates_without_running(tmp_path, monkeypatch, capsys):
    out = tmp_path / "plan"
    monkeypatch.setattr(patseg.cli.train, "run", _refuse)
    monkeypatch.setattr(patseg.cli.eval, "run", _refuse)
    argv = ["reproduce", "table1", "--tiny", "--seeds", "2", "--gpus", "2", "--dry-run", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    commands = [x for x in printed.splitlines() if "-m patseg " in x]
    train = [x for x in commands if " -m patseg train " in x]
    assert len(train) == 8 and len(commands) == 16  # 4 rows x 2 seeds, train and eval
    assert all("torchrun" in x and "--nproc_per_node=2" in x for x in commands)  # 2 GPUs: evaluation too
    assert "solver.seed=1" in train[1] and f"output_dir={out}/table1/san_clip/seed1" in train[1]
    assert sum("memory per GPU" in x for x in printed.splitlines()) == 4
    assert "GPU-seconds per run" in printed and "Assumptions: 71 TFLOP/s" in printed and "0.35 utilisation" in printed
    assert sorted(p.name for p in out.iterdir()) == ["estimates.json"]  # no run, no data: only the measurements
    start = time.perf_counter()
    assert main(argv) == 0
    assert time.perf_counter() - start < 10 and capsys.readouterr().out.count("(cached)") == 4


def test_dry_run_of_the_real_table_without_files_shows_placeholders(tmp_path, monkeypatch, capsys):
    """Full-size rows, with the measurement replaced by fixed numbers: the commands and the arithmetic."""
    from patseg.reproduce import estimate

    fake = estimate.StepCost(1e12, activation_bytes=2 * 10**9, trainable_params=10**7, frozen_params=10**8, seconds=0)
    monkeypatch.setattr(estimate, "measure_step", lambda model, crop: fake)
    argv = ["reproduce", "table2", "--rows", "no_vmf", "--seeds", "3", "--gpus", "3", "--dry-run"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    train, evaluate = (x for x in printed.splitlines() if "-m patseg " in x and "seed0" in x)
    assert "configs/paper/table2/no_vmf.yaml" in train and "'data.root=<--data DIR>'" in train
    assert "--clip-weights '<--evaclip-weights FILE>'" in train and "--lpips-weights" in train
    assert "--rfid --inception-weights '<--inception-weights FILE>'" in evaluate and "ckpt_0120000" in evaluate
    # 1e12 x 12 x 120000 FLOPs at 71e12 x 0.35 FLOP/s = 16.1 GPU-hours; memory 0.56 GB + 2 GB x 4 images
    assert "16.1 GPU-hours per run (5.37 h on 3 GPU(s)), 48.3 GPU-hours for 3 seed(s)" in printed
    assert "memory per GPU: 8.56 GB" in printed


def test_every_paper_config_names_its_row():
    folder = default_configs_dir()
    assert row_ids(folder, "table1") == sorted(TABLE1) and row_ids(folder, "table2") == sorted(TABLE2)


@pytest.mark.parametrize(
    "table, row",
    [("table1", r) for r in TABLE1] + [("table2", r) for r in TABLE2],
)
def test_paper_config_loads_with_the_recipe(table, row):
    cfg = load_train_config(default_configs_dir() / table / f"{row}.yaml")
    assert (cfg.paper.table, cfg.paper.row) == (table, row)
    assert cfg.paper.position == (TABLE1 if table == "table1" else TABLE2).index(row) + 1
    assert (cfg.solver.iters, cfg.solver.batch_size, cfg.solver.lr, cfg.solver.weight_decay) == (120000, 12, 1e-4, 1e-4)
    assert (cfg.paper.rfid is not None) == (table == "table2")
    if table == "table2":
        assert cfg.model.preset == "pat_vitb16_evaclip" and len(cfg.model.overrides) == (row != "baseline")


def _one_line_error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("patseg: error: ") and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["table2", "--rows", "baseline,no_vmff", "--dry-run"], "'no_vmff' is not a row of table2 (rows: baseline"),
        (["table1", "--clip-weights", "x"], "table1 needs --data DIR"),
        (["table1", "--data", "{tmp}/none"], "--data {tmp}/none: no such folder"),
        (["table1", "--data", "{tmp}"], "coco_stuff_171/train is missing"),
        (["table1", "--tiny", "--data", "{tmp}"], "--tiny generates its own data"),
        (["table2", "--rows", "no_vmf", "--gpus", "5", "--dry-run"], "--gpus 5: table2/no_vmf trains at a global"),
        (["table2", "--rows", "no_vmf", "--evaclip-weights", "{tmp}/none.bin", "--dry-run"], "none.bin: no such file"),
    ],
)
def test_bad_inputs_are_one_line_errors_before_any_work(argv, message, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path) for a in argv]
    err = _one_line_error(["reproduce", *argv, "--out", str(tmp_path / "out")], capsys)
    assert message.format(tmp=tmp_path) in err
    assert not (tmp_path / "out").exists()


def test_missing_weights_name_the_rows_that_need_them(tmp_path, capsys):
    data = tmp_path / "data"
    from patseg.data.registry import get_dataset_spec

    for name, split in [("coco_stuff_171", "train"), *((b, "val") for b in BENCHMARKS)]:
        layout = get_dataset_spec(name).split(split)
        os.makedirs(data / layout.image_dir, exist_ok=True)
        os.makedirs(data / layout.label_dir, exist_ok=True)
    err = _one_line_error(["reproduce", "table1", "--data", str(data), "--out", str(tmp_path / "out")], capsys)
    assert "table1 rows san_clip, pat_clip need --clip-weights FILE" in err
