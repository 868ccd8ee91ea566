"""The examples users copy: the README's Python snippet and every `patseg ...` example in the README and in the help
epilogs. Those that need no external file (weights, images, datasets) are run; the others must at least parse."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

import patseg
from patseg.cli import EPILOG, build_parser, main

README = Path(__file__).parents[2] / "README.md"
RUNNABLE = {"info"}  # builds a preset with random weights: no file needed
TINY = 'patseg.build_model("san_tiny")'
# What the README says next to its `patseg info` examples, checked when they run.
README_COUNTS = {"san_vitb16": 8_370_866, "pat_vitb16_clip": 20_580_355}


def _command_lines(text: str) -> list[str]:
    """Lines starting with ``patseg `` (backslash continuations joined); inline code spans with arguments too."""
    lines, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if current:
            current += " " + line
        elif line.startswith("patseg "):
            current = line
        if current and current.endswith("\\"):
            current = current[:-1].rstrip()
            continue
        if current:
            lines.append(current)
            current = ""
    return lines + [s for s in re.findall(r"`(patseg [^`]+)`", text) if len(s.split()) > 2]


def _epilogs() -> str:
    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    return "\n".join([EPILOG] + [p.epilog or "" for p in subparsers.choices.values()])


def _readme_bash() -> str:
    return "\n".join(re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.DOTALL))


def _readme_inline() -> list[str]:
    """`patseg ...` code spans in the README's prose (its sentences may start with the word patseg)."""
    return [s for s in re.findall(r"`(patseg [^`]+)`", README.read_text()) if len(s.split()) > 2]


EXAMPLES = sorted(set(_command_lines(_readme_bash()) + _readme_inline() + _command_lines(_epilogs())))


def _argv(example: str) -> list[str]:
    return shlex.split(example, comments=True)[1:]


def _command(argv: list[str]) -> str:
    return next(a for a in argv if not a.startswith("-"))


def test_examples_were_found():
    commands = {_command(_argv(e)) for e in EXAMPLES}
    assert {"info", "segment", "train", "eval", "tokenize", "convert-san", "prepare", "mini", "bench"} <= commands
    assert "patseg info pat_tiny --json --set pat.vmf=false" in EXAMPLES


@pytest.mark.parametrize("example", [e for e in EXAMPLES if _command(_argv(e)) not in RUNNABLE], ids=str)
def test_example_parses(example):
    """Examples that need files or run for minutes: the options they use must exist and fit together."""
    args = build_parser().parse_args(_argv(example))
    assert args.func is not None


@pytest.mark.parametrize("example", [e for e in EXAMPLES if _command(_argv(e)) in RUNNABLE], ids=str)
def test_example_runs(example, capsys):
    argv = _argv(example)
    assert main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    preset = argv[argv.index("info") + 1]
    if preset in README_COUNTS and "--set" not in argv:
        expected = README_COUNTS[preset]
        assert f"{expected:,}" in README.read_text()
        trainable = json.loads(out)["trainable"] if "--json" in argv else out.splitlines()[-1].split()[-1]
        assert trainable in (expected, f"{expected:,}")
    if "--json" in argv:
        assert json.loads(out)["preset"] == preset
    else:
        assert out.startswith(f"preset {preset}")


def _run_snippet(code: str, pattern: str, image_name: str) -> dict:
    """Run ``code`` with its build_model call (which names weights files) replaced by the tiny SAN preset."""
    code, count = re.subn(pattern, TINY, code)
    assert count == 1, code
    rgb = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    namespace = {image_name: rgb}
    exec(compile(code, "<snippet>", "exec"), namespace)  # noqa: S102 -- running the documented snippet is the test
    namespace["rgb"] = rgb
    return namespace


def test_readme_python_snippet_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert len(blocks) == 1
    ns = _run_snippet(blocks[0], r'patseg\.build_model\("\w+", weights="[^"]+"\)', "rgb")
    labels, scores = ns["labels"], ns["scores"]
    # the snippet's comments: (H, W) int64 labels and (C, H, W) float32 scores for an (H, W, 3) uint8 image
    assert labels.shape == (48, 64) and labels.dtype == np.int64
    assert scores.shape == (3, 48, 64) and scores.dtype == np.float32
    assert np.array_equal(labels, scores.argmax(0))
    assert ns["model"].config.name == "san_tiny"


def test_package_docstring_snippet_runs():
    code = "\n".join(line[4:] for line in patseg.__doc__.splitlines() if line.startswith("    "))
    ns = _run_snippet(code, r'patseg\.build_model\("\w+", clip_weights="[^"]+"\)', "rgb_uint8_array")
    assert ns["labels"].shape == (48, 64) and int(ns["labels"].max()) < 3
