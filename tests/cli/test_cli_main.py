"""`patseg.cli.main`: one error family caught once, exit codes, logging levels, --set parsing, cheap --help."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from patseg.cli import build_parser, main
from patseg.errors import ConfigError, DatasetError, MissingFileError, UsageError

SRC = Path(__file__).parents[2] / "src"
HEAVY = ("torch", "torchvision", "scipy", "open_clip", "timm", "gradio")


def _commands() -> list[str]:
    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    return sorted(subparsers.choices)


@pytest.mark.parametrize("argv", [[]] + [[name] for name in _commands()], ids=lambda a: a[0] if a else "patseg")
def test_help_imports_no_heavy_module(argv):
    """``patseg [COMMAND] --help`` in a fresh interpreter leaves torch & co. unimported (it builds every parser)."""
    script = f"""
import sys
from patseg.cli import main
try:
    main({argv + ["--help"]!r})
except SystemExit:
    pass
print("HEAVY", sorted(m for m in {HEAVY!r} if m in sys.modules))
"""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "usage: patseg" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "HEAVY []"


def _run_with(monkeypatch, func, argv=("info", "pat_tiny")):
    """main(argv) with the command's work replaced by ``func(args)``."""
    from patseg.cli import info

    monkeypatch.setattr(info, "run", func)
    return main(list(argv))


@pytest.mark.parametrize(
    "error",
    [
        ConfigError("config key 'pat.vmff' is unknown"),
        UsageError("bad options"),
        MissingFileError("weights file not found: w.safetensors"),
        DatasetError("coco/val: no image/label pairs"),
    ],
)
def test_patseg_errors_are_one_line_with_exit_code_2(monkeypatch, capsys, error):
    def fail(args):
        raise error

    assert _run_with(monkeypatch, fail) == 2
    captured = capsys.readouterr()
    assert captured.err == f"patseg: error: {error}\n" and captured.out == ""


def test_other_errors_are_bugs_and_keep_their_traceback(monkeypatch):
    def fail(args):
        raise ValueError("an internal mistake")

    with pytest.raises(ValueError, match="internal mistake"):
        _run_with(monkeypatch, fail)


def test_interrupt_and_broken_pipe(monkeypatch, capsys):
    def interrupt(args):
        raise KeyboardInterrupt

    def broken(args):
        raise BrokenPipeError

    assert _run_with(monkeypatch, interrupt) == 130
    assert capsys.readouterr().err == "patseg: interrupted\n"
    assert _run_with(monkeypatch, broken) == 1
    assert capsys.readouterr().err == ""


def test_closed_stdout_pipe_exits_quietly():
    """`patseg info ... | head -0`: the reader is gone before the first write; no traceback, no shutdown noise."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "patseg", "info", "san_tiny", "--depth", "1"],
            check=False,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            timeout=300,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr


@pytest.mark.parametrize(
    "flags, rank, shown",
    [
        ([], "0", {"info", "warning"}),
        (["-v"], "0", {"debug", "info", "warning"}),
        (["--quiet"], "0", {"warning"}),
        ([], "1", {"warning"}),  # torchrun: only rank 0 speaks at INFO
        (["-v"], "1", {"debug", "info", "warning"}),
    ],
)
def test_log_levels(monkeypatch, capsys, flags, rank, shown):
    def chatty(args):
        log = logging.getLogger("patseg.engine.trainer")
        log.debug("debug")
        log.info("info")
        log.warning("warning")

    monkeypatch.setenv("RANK", rank)
    assert _run_with(monkeypatch, chatty, [*flags, "info", "pat_tiny"]) == 0
    prefix = "patseg" if rank == "0" else f"patseg (rank {rank})"
    expected = [
        f"{prefix}: {'warning: ' if m == 'warning' else ''}{m}" for m in ("debug", "info", "warning") if m in shown
    ]
    assert capsys.readouterr().err.splitlines() == expected
    assert logging.getLogger("patseg").handlers == []  # restored after the command


def test_verbose_and_quiet_exclude_each_other(capsys):
    with pytest.raises(SystemExit):
        main(["-v", "-q", "info", "pat_tiny"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


@pytest.mark.parametrize(
    "items, message",
    [
        (["pat.vmff=false"], "'pat.vmff'"),
        (["pat.vmf=1"], "'pat.vmf' must be true or false"),
        (["pat.vmf"], "'pat.vmf' is not KEY=VALUE"),
        (["pat.stage_scales=[4,4"], "not valid YAML"),
    ],
)
def test_set_errors_name_the_key(capsys, items, message):
    assert main(["info", "pat_tiny", "--set", *items]) == 2
    err = capsys.readouterr().err
    assert err.startswith("patseg: error: ") and message in err


def test_set_is_repeatable_and_reaches_the_model(capsys):
    from patseg.build import build_model
    from patseg.models.introspect import parameter_breakdown

    assert (
        main(
            [
                "info",
                "pat_tiny",
                "--json",
                "--set",
                "pat.token_mixer=false",
                "--set",
                "pat.stage_scales=[4,4,4]",
                "loss.vq_weight=1e-4",
            ]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    overrides = {"pat.token_mixer": False, "pat.stage_scales": [4, 4, 4]}
    expected = parameter_breakdown(build_model("pat_tiny", overrides=overrides), depth=2)
    assert printed["total"] == expected["total"] and printed["modules"] == expected["modules"]
    assert printed["total"] != parameter_breakdown(build_model("pat_tiny"), depth=2)["total"]
