"""What the benchmark scripts record about the code they measured, and the rule for their result files (imported
by them as a sibling module)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
