"""Output paths are proved writable before any work; devices and warnings say what is wrong or random.

A read-only folder is simulated by a mocked ``os.access`` (root may write anywhere), a path under a regular file is
real. "Before any work" is checked by replacing the work (model building, measuring, training) with a failure.
"""

from __future__ import annotations

import argparse
import logging
import os
from types import SimpleNamespace

import pytest

import patseg.bench
import patseg.build
import patseg.mini.benchmark
from patseg.build import build_model
from patseg.cli import main
from patseg.cli._common import device_name, pick_device, warn_random_parts
from patseg.errors import UsageError
from patseg.paths import check_writable


@pytest.fixture
def read_only(monkeypatch, tmp_path):
    """``tmp_path/ro`` exists and os.access says it (and everything under it) is not writable."""
    folder = tmp_path / "ro"
    folder.mkdir()
    real = os.access

    def access(path, mode, *args, **kwargs):
        if str(path).startswith(str(folder)) and mode & os.W_OK:
            return False
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    return folder


@pytest.fixture
def no_work(monkeypatch):
    """Any model build, benchmark measurement or OVSS-mini run fails the test."""

    def work(*args, **kwargs):
        raise AssertionError("the command started its work before checking its output path")

    monkeypatch.setattr(patseg.build, "build_model", work)
    monkeypatch.setattr(patseg.bench, "run_suite", work)
    monkeypatch.setattr(patseg.mini.benchmark, "run_benchmark", work)


def test_check_writable_accepts_new_and_existing_paths_and_creates_nothing(tmp_path):
    before = sorted(tmp_path.rglob("*"))
    assert check_writable(tmp_path / "a" / "b", is_dir=True) == tmp_path / "a" / "b"
    assert check_writable(tmp_path / "a" / "f.json", is_dir=False) == tmp_path / "a" / "f.json"
    assert check_writable(tmp_path, is_dir=True) == tmp_path
    assert sorted(tmp_path.rglob("*")) == before


def test_check_writable_refuses_files_and_folders_in_the_wrong_place(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    with pytest.raises(UsageError, match=r"--out .*blocker/sub.*blocker, which is a file"):
        check_writable(blocker / "sub" / "f.json", is_dir=False)
    with pytest.raises(UsageError, match="is a file, not a folder"):
        check_writable(blocker, is_dir=True)
    with pytest.raises(UsageError, match="--json .* is a folder; give a file name"):
        check_writable(tmp_path, is_dir=False, what="--json")


def test_check_writable_refuses_a_read_only_folder(read_only):
    with pytest.raises(UsageError, match=r"the folder .*ro is not writable"):
        check_writable(read_only / "new" / "deeper", is_dir=True)
    with pytest.raises(UsageError, match="not writable"):
        check_writable(read_only / "f.npz", is_dir=False)


@pytest.mark.parametrize(
    "argv",
    [
        ["segment", "x.png", "--vocab", "a", "--preset", "san_tiny", "--out", "{ro}/seg"],
        ["eval", "--weights", "w.safetensors", "--out", "{ro}/results/pat"],
        ["tokenize", "x.png", "--weights", "w.safetensors", "--out", "{ro}/t.npz"],
        ["detokenize", "t.npz", "--out", "{ro}/recon"],
        ["visualize", "x.png", "--weights", "w.safetensors", "--out", "{ro}/vis"],
        ["bench", "--quick", "--json", "{ro}/b.json"],
        ["bench", "--quick", "--markdown", "{ro}/b.md"],
        ["mini", "--quick", "--out", "{ro}/mini"],
        ["report", "r.json", "--out", "{ro}/table"],
        ["convert-san", "san.pth", "--out", "{ro}/san.safetensors"],
        ["reproduce", "table1", "--tiny", "--out", "{ro}/reproduce"],
    ],
    ids=lambda argv: "-".join(argv[:2]) if argv[0] == "bench" else argv[0],
)
def test_every_command_checks_its_output_before_working(argv, read_only, no_work, capsys):
    code = main([a.format(ro=read_only) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"{read_only}" in err and "not writable" in err
    assert list(read_only.iterdir()) == []


def test_device_names_are_checked():
    assert device_name("CUDA:1") == "cuda:1" and device_name("cpu") == "cpu"
    for bad in ("gpu", "cuda:x", "cuda1", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="unknown device"):
            device_name(bad)
    with pytest.raises(UsageError, match="--device cuda:99: this machine has"):
        pick_device("cuda:99")
    assert pick_device("cpu") == "cpu" and pick_device(None) in ("cpu", "cuda")


def _fake_model(clip_name: str) -> SimpleNamespace:
    return SimpleNamespace(config=SimpleNamespace(name="a_preset", clip=SimpleNamespace(model_name=clip_name)))


def test_random_parts_are_named_once(caplog):
    caplog.set_level(logging.WARNING, logger="patseg")
    warn_random_parts(_fake_model("ViT-B-16"), None, None, head=True)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "no --weights" in messages[0] and "untrained" in messages[0]
    assert "no --clip-weights" in messages[1] and "ViT-B-16" in messages[1]
    caplog.clear()
    warn_random_parts(_fake_model("ViT-B-16"), None, "ViT-B-16.bin")  # CLIP from its file, head not asked about
    warn_random_parts(_fake_model("ViT-B-16"), "san.safetensors", None)  # the weights file carries CLIP
    warn_random_parts(_fake_model("patseg-tiny-ViT"), None, None)  # tiny CLIPs are random by design
    assert caplog.records == []


def test_open_clip_random_init_notice_is_silenced(caplog):
    caplog.set_level(logging.DEBUG)
    build_model("san_tiny")
    assert not [r for r in caplog.records if "No pretrained weights" in r.getMessage()]
    assert logging.getLogger().filters == []  # the filter is removed afterwards


def test_segment_without_weights_warns(tmp_path, capsys):
    from PIL import Image

    Image.new("RGB", (40, 32), (10, 200, 30)).save(tmp_path / "x.png")
    code = main(
        ["segment", str(tmp_path / "x.png"), "--vocab", "a,b", "--preset", "san_tiny", "--short-side", "32"]
        + ["--out", str(tmp_path / "seg")]
    )
    err = capsys.readouterr().err
    assert code == 0
    warnings = [line for line in err.splitlines() if line.startswith("patseg: warning:")]
    assert len(warnings) == 1 and "no --weights" in warnings[0] and "san_tiny" in warnings[0]
    assert "No pretrained weights" not in err


@pytest.mark.parametrize(
    ("argv", "earlier"),
    [
        (["eval", "--weights", "w.safetensors", "--out", "{d}/pat"], "pat_seed0.json"),
        (["bench", "--quick", "--json", "{d}/b.json"], "b.json"),
        (["mini", "--quick", "--out", "{d}"], "results.json"),
        (["report", "r.json", "--out", "{d}/table"], "table.md"),
        (["convert-san", "san.pth", "--out", "{d}/san.safetensors"], "san.safetensors"),
        (["visualize", "x.png", "--weights", "w.safetensors", "--out", "{d}"], "codes_mid.png"),
        (["tokenize", "x.png", "--weights", "w.safetensors", "--out", "{d}/t.npz"], "t.npz"),
    ],
    ids=lambda v: v[0] if isinstance(v, list) else v,
)
def test_an_earlier_run_is_not_replaced_without_overwrite(argv, earlier, tmp_path, no_work, capsys):
    (tmp_path / earlier).write_text("earlier run")
    code = main([a.format(d=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert earlier in err and "--overwrite" in err and "Traceback" not in err
    assert (tmp_path / earlier).read_text() == "earlier run"


def test_segment_overwrites_only_when_asked(tmp_path, capsys):
    from PIL import Image

    Image.new("RGB", (16, 16)).save(tmp_path / "a.png")
    argv = ["segment", str(tmp_path / "a.png"), "--vocab", "sky,tree", "--preset", "san_tiny", "--short-side", "32"]
    out = ["--out", str(tmp_path / "seg")]
    assert main(argv + out) == 0
    before = (tmp_path / "seg" / "a.json").read_bytes()
    (tmp_path / "seg" / "a.json").write_text("kept")
    assert main(argv + out) == 2
    assert "a_labels.png" in capsys.readouterr().err and (tmp_path / "seg" / "a.json").read_text() == "kept"
    assert main(argv + out + ["--overwrite"]) == 0
    assert (tmp_path / "seg" / "a.json").read_bytes() == before
