"""Every command on bad inputs: a missing file, a corrupt file, a bad value, an output path that cannot be written.

Each case runs ``patseg.cli.main`` in-process and asserts what a user sees: a non-zero exit code, no traceback, and
a message on stderr that names the problem (the option, value or file at fault). A bug (any exception that is not a
``PatsegError``) escapes ``main`` and fails the case. The files are generated; the models are the tiny presets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from patseg.build import build_model
from patseg.cli import main
from patseg.weights.files import save_weights


@dataclass(frozen=True)
class Files:
    """Paths of the generated inputs; ``blocker`` is a regular file, so that nothing can be written under it."""

    root: Path
    image: Path
    pat: Path
    truncated_weights: Path
    junk: Path
    tokens: Path
    truncated_tokens: Path
    results: Path
    blocker: Path

    def __getitem__(self, name: str) -> str:
        return str(getattr(self, name))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Files:
    root = tmp_path_factory.mktemp("bad_inputs")
    image = root / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(image)
    pat = root / "pat_tiny.safetensors"
    save_weights(build_model("pat_tiny"), pat)
    truncated = root / "truncated.safetensors"
    truncated.write_bytes(pat.read_bytes()[: pat.stat().st_size // 2])
    junk = root / "junk.pth"
    junk.write_text("hello, this is not a checkpoint\n")
    tokens = root / "tokens.npz"
    assert main(["tokenize", str(image), "--weights", str(pat), "--size", "32", "--out", str(tokens)]) == 0
    truncated_tokens = root / "truncated.npz"
    truncated_tokens.write_bytes(tokens.read_bytes()[: tokens.stat().st_size // 2])
    results = root / "results.json"
    results.write_text('{"model": "x", "datasets": {')  # cut short
    blocker = root / "blocker"
    blocker.write_text("a regular file\n")
    return Files(root, image, pat, truncated, junk, tokens, truncated_tokens, results, blocker)


def _under_file(f: Files, name: str = "out") -> str:
    return str(f.blocker / name)


# (id, argv built from the files, text the message must contain)
CASES = [
    # info
    ("info-unknown-preset", lambda f: ["info", "no_such_preset"], "no_such_preset"),
    ("info-bad-key", lambda f: ["info", "san_tiny", "--set", "nokey=1"], "nokey"),
    ("info-bad-depth", lambda f: ["info", "san_tiny", "--depth", "two"], "--depth"),
    # segment
    (
        "segment-truncated-weights",
        lambda f: ["segment", f["image"], "--vocab", "a,b", "--weights", f["truncated_weights"], "--out", f["root"]],
        "truncated.safetensors",
    ),
    (
        "segment-missing-weights",
        lambda f: ["segment", f["image"], "--vocab", "a", "--weights", f["root"] + "/none.safetensors", "--out", "o"],
        "none.safetensors",
    ),
    (
        "segment-short-side-0",
        lambda f: ["segment", f["image"], "--vocab", "a", "--preset", "san_tiny", "--short-side", "0", "--out", "o"],
        "--short-side",
    ),
    (
        "segment-device-gpu",
        lambda f: ["segment", f["image"], "--vocab", "a", "--preset", "san_tiny", "--device", "gpu", "--out", "o"],
        "--device",
    ),
    (
        "segment-device-absent",
        lambda f: ["segment", f["image"], "--vocab", "a", "--preset", "san_tiny", "--device", "cuda:99", "--out", "o"],
        "--device cuda:99",
    ),
    (
        "segment-out-under-file",
        lambda f: ["segment", f["image"], "--vocab", "a", "--preset", "san_tiny", "--out", _under_file(f)],
        "blocker",
    ),
    # eval
    ("eval-truncated-weights", lambda f: ["eval", "--weights", f["truncated_weights"]], "truncated.safetensors"),
    ("eval-limit-0", lambda f: ["eval", "--weights", f["pat"], "--limit", "0"], "--limit"),
    ("eval-out-under-file", lambda f: ["eval", "--weights", f["pat"], "--out", _under_file(f, "r")], "blocker"),
    # train (argument checks only)
    ("train-missing-config", lambda f: ["train", f["root"] + "/none.yaml"], "none.yaml"),
    # tokenize / detokenize
    (
        "tokenize-size-0",
        lambda f: ["tokenize", f["image"], "--weights", f["pat"], "--size", "0", "--out", "t.npz"],
        "--size",
    ),
    (
        "tokenize-truncated-weights",
        lambda f: ["tokenize", f["image"], "--weights", f["truncated_weights"], "--out", f["root"] + "/t.npz"],
        "truncated.safetensors",
    ),
    (
        "tokenize-out-under-file",
        lambda f: ["tokenize", f["image"], "--weights", f["pat"], "--out", _under_file(f, "t.npz")],
        "blocker",
    ),
    ("detokenize-truncated", lambda f: ["detokenize", f["truncated_tokens"], "--out", f["root"]], "truncated.npz"),
    ("detokenize-missing", lambda f: ["detokenize", f["root"] + "/none.npz", "--out", f["root"]], "none.npz"),
    ("detokenize-out-under-file", lambda f: ["detokenize", f["tokens"], "--out", _under_file(f)], "blocker"),
    # visualize
    (
        "visualize-clusters-0",
        lambda f: ["visualize", f["image"], "--weights", f["pat"], "--clusters", "0", "--out", "v"],
        "--clusters",
    ),
    (
        "visualize-size-0",
        lambda f: ["visualize", f["image"], "--weights", f["pat"], "--size", "0", "--out", "v"],
        "--size",
    ),
    (
        "visualize-missing-image",
        lambda f: ["visualize", f["root"] + "/none.png", "--weights", f["pat"], "--out", f["root"] + "/v"],
        "none.png",
    ),
    (
        "visualize-out-under-file",
        lambda f: ["visualize", f["image"], "--weights", f["pat"], "--out", _under_file(f)],
        "blocker",
    ),
    # bench
    ("bench-device-gpu", lambda f: ["bench", "--quick", "--device", "gpu"], "--device"),
    ("bench-repeats-0", lambda f: ["bench", "--quick", "--repeats", "0"], "--repeats"),
    ("bench-json-under-file", lambda f: ["bench", "--quick", "--json", _under_file(f, "b.json")], "blocker"),
    ("bench-markdown-folder", lambda f: ["bench", "--quick", "--markdown", f["root"]], "--markdown"),
    # mini
    ("mini-out-under-file", lambda f: ["mini", "--quick", "--out", _under_file(f)], "blocker"),
    # prepare
    ("prepare-unknown-dataset", lambda f: ["prepare", "no_such_set", "--src", f["root"]], "no_such_set"),
    # report
    ("report-missing", lambda f: ["report", f["root"] + "/none.json"], "none.json"),
    ("report-corrupt", lambda f: ["report", f["results"]], "results.json"),
    ("report-out-under-file", lambda f: ["report", f["results"], "--out", _under_file(f, "t")], "blocker"),
    # reproduce
    ("reproduce-unknown-row", lambda f: ["reproduce", "table2", "--rows", "no_such_row", "--dry-run"], "no_such_row"),
    ("reproduce-missing-data", lambda f: ["reproduce", "table1", "--data", f["root"] + "/none"], "none"),
    ("reproduce-gpus-0", lambda f: ["reproduce", "table1", "--gpus", "0", "--dry-run"], "--gpus"),
    ("reproduce-out-under-file", lambda f: ["reproduce", "table1", "--tiny", "--out", _under_file(f)], "blocker"),
    # convert-san
    ("convert-san-junk", lambda f: ["convert-san", f["junk"], "--out", f["root"] + "/c.safetensors"], "junk.pth"),
    (
        "convert-san-missing",
        lambda f: ["convert-san", f["root"] + "/none.pth", "--out", f["root"] + "/c.safetensors"],
        "none.pth",
    ),
    (
        "convert-san-out-under-file",
        lambda f: ["convert-san", f["junk"], "--out", _under_file(f, "c.safetensors")],
        "blocker",
    ),
]

COMMANDS = {"info", "segment", "eval", "train", "tokenize", "detokenize", "visualize", "bench", "mini", "prepare"}
COMMANDS |= {"report", "convert-san", "reproduce"}


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """Exit code and stderr of one in-process run (argparse's own refusals exit through SystemExit)."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    return code, capsys.readouterr().err


def test_every_command_is_covered():
    assert {c for c in COMMANDS if any(case[0].startswith(f"{c}-") for case in CASES)} == COMMANDS


@pytest.mark.parametrize("argv, expected", [pytest.param(a, e, id=i) for i, a, e in CASES])
def test_bad_input_is_a_clear_message(files, argv, expected, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative --out paths land here, never in the repository
    monkeypatch.setenv("PATSEG_DATA", str(tmp_path / "no_data"))
    before = sorted(files.root.iterdir())
    code, err = run_cli(argv(files), capsys)
    assert code != 0, err
    assert "Traceback" not in err
    assert expected in err, err
    assert sorted(files.root.iterdir()) == before, "a refused command writes nothing"


def test_user_errors_are_one_line(files, capsys, tmp_path):
    code, err = run_cli(["convert-san", str(files.junk), "--out", str(tmp_path / "c.safetensors")], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("patseg: error: ")
