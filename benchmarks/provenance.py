"""What the benchmark scripts record about the code they measured, and the rule for their result files (imported
by them as a sibling module)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def git_commit() -> str | None:
    """The checkout's commit (``-dirty`` with uncommitted changes), or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def refuses_to_replace(paths: tuple[Path, ...], overwrite: bool) -> bool:
    """True (after saying so on stderr) when some of ``paths`` exist and ``overwrite`` was not given: a benchmark
    never replaces an earlier result unless asked."""
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        print(f"refusing to replace {', '.join(existing)}: pass --overwrite", file=sys.stderr)
        return True
    return False


def rounded(obj: Any, digits: int) -> Any:
    """``obj`` with every float rounded to ``digits`` decimals, through dicts and lists (shorter result files)."""
    if isinstance(obj, dict):
        return {k: rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, list):
        return [rounded(v, digits) for v in obj]
    if isinstance(obj, float):
        return round(obj, digits)
    return obj


def write_results(out_json: Path, out_md: Path, report: dict[str, Any], markdown: str, *, digits: int | None = None):
    """Write a benchmark's JSON report (floats rounded to ``digits`` when given) and its markdown, each atomically,
    creating the folder."""
    from patseg.atomic import atomic_write_json, atomic_write_text  # here: some scripts put src/ on the path first

    out_json.parent.mkdir(parents=True, exist_ok=True)
    if digits is None:
        atomic_write_json(out_json, report)
    else:
        atomic_write_text(out_json, json.dumps(rounded(report, digits), indent=1) + "\n")
    atomic_write_text(out_md, markdown)
