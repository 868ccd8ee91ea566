import json
import math

import numpy as np
import pytest

from patseg.cli import main
from patseg.evaluation import aggregate, format_markdown, load_results, table_json, write_results

PAT = {  # three seeds of one model, two of another
    0: {"pcontext_59": 55.0, "ade20k_150": 28.0, "pcontext_459": 16.5, "ade20k_847": 10.2},
    1: {"pcontext_59": 55.4, "ade20k_150": 28.6, "pcontext_459": 17.0, "ade20k_847": 10.5},
    2: {"pcontext_59": 54.9, "ade20k_150": 28.6, "pcontext_459": 16.9, "ade20k_847": 10.5},
}


def record(model, seed, values, rfid=None):
    out = {
        "model": model,
        "seed": seed,
        "datasets": {name: {"mIoU": v, "mIoU_gt_or_pred": v - 1.0, "num_images": 10} for name, v in values.items()},
    }
    if rfid is not None:
        out["rfid"] = {"value": rfid, "num_images": 5000}
    return out


@pytest.fixture
def result_files(tmp_path):
    paths = []
    for seed, values in PAT.items():
        paths.append(tmp_path / f"pat_{seed}.json")
        write_results(paths[-1], record("pat", seed, values, rfid=13.0 + seed))
    for seed in (0, 1):
        paths.append(tmp_path / f"san_{seed}.json")
        write_results(paths[-1], record("san", seed, {"ade20k_150": 27.5 + seed, "voc_20": 94.0}))
    return paths


def test_aggregate_gives_mean_and_sample_std(result_files):
    rows = aggregate([load_results(p) for p in result_files])
    pat, san = rows
    assert pat.model == "pat" and pat.seeds == [0, 1, 2]
    for name in PAT[0]:
        values = np.array([PAT[s][name] for s in PAT])
        assert pat.cells[name].mean == pytest.approx(values.mean())
        assert pat.cells[name].std == pytest.approx(values.std(ddof=1))
        assert pat.cells[name].n == 3
    assert pat.rfid.mean == pytest.approx(14.0)
    assert san.cells["ade20k_150"].mean == pytest.approx(28.0) and san.rfid is None
    old_rule = aggregate([load_results(p) for p in result_files], metric="mIoU_gt_or_pred")
    assert old_rule[0].cells["pcontext_59"].mean == pytest.approx(pat.cells["pcontext_59"].mean - 1.0)


def test_markdown_and_json_tables(result_files):
    rows = aggregate([load_results(p) for p in result_files])
    text = format_markdown(rows)
    lines = text.splitlines()
    header = lines[2]
    assert header == "| Method | PC-59 | A-150 | PC-459 | A-847 | VOC-20 | Avg | rFID | runs |"
    pc59 = np.array([PAT[s]["pcontext_59"] for s in PAT])
    assert f"{pc59.mean():.1f} ± {pc59.std(ddof=1):.1f}" in lines[4]
    assert lines[5].startswith("| san | – | 28.0 ± 0.7 | – | – | 94.0 ± 0.0 | – | – | 2 |")
    table = table_json(rows)
    assert table["datasets"] == ["pcontext_59", "ade20k_150", "pcontext_459", "ade20k_847", "voc_20"]
    assert table["rows"][1]["cells"]["voc_20"] == {"mean": 94.0, "std": 0.0, "n": 2}
    assert table["rows"][0]["average"] is None  # pat has no VOC-20 result
    single = table_json(aggregate([record("x", 0, {"voc_20": 90.0})]))
    assert single["rows"][0]["cells"]["voc_20"]["std"] is None


def test_duplicate_seed_and_bad_files_are_errors(tmp_path, result_files, capsys):
    with pytest.raises(ValueError, match="two results for seed 0"):
        aggregate([record("a", 0, {"voc_20": 1.0}), record("a", 0, {"voc_20": 2.0})])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": "m", "seed": "zero", "datasets": {}}))
    assert main(["report", str(bad)]) == 2
    assert "'seed' must be a int" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "absent.json")]) == 2
    with pytest.raises(ValueError, match="numeric 'mIoU'"):
        write_results(tmp_path / "x.json", {"model": "m", "seed": 0, "datasets": {"voc_20": {"mIoU": "high"}}})


def test_report_cli_prints_and_writes(tmp_path, result_files, capsys):
    out = tmp_path / "tables" / "table1"
    assert main(["report", *map(str, result_files), "--out", str(out), "--digits", "2"]) == 0
    printed = capsys.readouterr().out
    assert (tmp_path / "tables" / "table1.md").read_text() == printed
    data = json.loads((tmp_path / "tables" / "table1.json").read_text())
    assert data["metric"] == "mIoU" and [r["model"] for r in data["rows"]] == ["pat", "san"]
    assert math.isclose(data["rows"][0]["cells"]["ade20k_847"]["mean"], 10.4)
    assert "10.40 ± 0.17" in printed


def test_write_results_stores_nan_as_null(tmp_path):
    rec = record("m", 0, {"voc_20": 90.0})
    rec["datasets"]["voc_20"]["per_class"] = {"aeroplane": 80.0, "tv": float("nan")}
    write_results(tmp_path / "r.json", rec)
    text = (tmp_path / "r.json").read_text()
    assert "NaN" not in text
    assert load_results(tmp_path / "r.json")["datasets"]["voc_20"]["per_class"] == {"aeroplane": 80.0, "tv": None}


def test_report_on_eval_table_files_names_the_files_it_takes(tmp_path, capsys):
    # What `patseg eval --out results/pat` writes: results/pat.json (tables) and results/pat_seed<N>.json (runs).
    runs = [record("pat", seed, PAT[seed]) for seed in (0, 1)]
    folder = tmp_path / "results"
    folder.mkdir()
    for r in runs:
        write_results(folder / f"pat_seed{r['seed']}.json", r)
    tables = {m: table_json(aggregate(runs, m), m) for m in ("mIoU", "mIoU_gt_or_pred")}
    (folder / "pat.json").write_text(json.dumps(tables))
    assert main(["report", str(folder / "pat.json")]) == 2
    err = capsys.readouterr().err
    assert "must be a str" not in err and err.count("\n") == 1
    assert f"{folder / 'pat.json'} is the table file OUT.json of `patseg eval --out OUT`" in err
    assert str(folder / "pat_seed0.json") in err and str(folder / "pat_seed1.json") in err
    # Without the per-run files next to it, the message says which files report takes.
    (folder / "pat_seed0.json").unlink()
    (folder / "pat_seed1.json").unlink()
    assert main(["report", str(folder / "pat.json")]) == 2
    assert "takes the OUT_seed<N>.json files that `patseg eval --out OUT` writes" in capsys.readouterr().err
    # A table of `patseg report --out` and an OVSS-mini report are named as what they are.
    (folder / "t.json").write_text(json.dumps(tables["mIoU"]))
    assert main(["report", str(folder / "t.json")]) == 2
    assert "is a table written by `patseg report --out`" in capsys.readouterr().err
    (folder / "mini.json").write_text(json.dumps({"world": "w", "results": {}, "settings": {}}))
    assert main(["report", str(folder / "mini.json")]) == 2
    assert "OVSS-mini report" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "pat_seed9.json")]) == 2
    assert "does not exist; patseg report takes" in capsys.readouterr().err
