"""Where patseg keeps generated files, and how result files name a file without a machine's absolute path.

- :func:`cache_dir`: the one cache root (text embeddings, the OVSS-mini CLIP): ``$PATSEG_CACHE``, else
  ``~/.cache/patseg``.
- :func:`portable_path`: the form of a path that result files record, so that a JSON written on one machine says
  the same thing on another: ``patseg/...`` inside the package, ``$PATSEG_CACHE/...`` inside the cache,
  relative to the working directory (the repository when run from its root) inside it.
- :func:`check_writable`: a command's output path, proved writable before the command does any work.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from patseg.errors import UsageError

CACHE_ENV = "PATSEG_CACHE"
PACKAGE_DIR = Path(__file__).resolve().parent


def cache_dir() -> Path:
    """The cache root: ``$PATSEG_CACHE`` if set, else ``~/.cache/patseg`` (``~`` expanded)."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "patseg")).expanduser()


def portable_path(path: str | os.PathLike) -> str:
    """``path`` as result files record it, never absolute.

    In order: ``patseg/<rest>`` inside the installed package, ``$PATSEG_CACHE/<rest>`` inside :func:`cache_dir`
    (whether or not the variable is set), ``<rest>`` relative to the working directory inside it, and otherwise
    the file name alone: a folder outside these is specific to one machine and means nothing on another.
    """
    resolved = Path(path).expanduser().resolve()
    anchors = ((PACKAGE_DIR, "patseg"), (cache_dir().resolve(), f"${CACHE_ENV}"), (Path.cwd().resolve(), None))
    for root, prefix in anchors:
        if not resolved.is_relative_to(root):
            continue
        rest = resolved.relative_to(root).as_posix()
        if prefix is None:
            return rest
        return prefix if rest == "." else f"{prefix}/{rest}"
    return resolved.name


def check_writable(path: str | os.PathLike, *, is_dir: bool, what: str = "--out") -> Path:
    """Prove, before any work, that ``path`` can be written; create nothing.

    ``is_dir``: ``path`` is a folder the command fills (it may exist); otherwise a file, written beside itself
    (atomic writes put a temporary file in its folder). The nearest existing folder on the way must be a folder,
    not a file, and writable. Returns ``path`` as a Path.

    Raises:
        UsageError: naming ``what`` and ``path``: a file where a folder is needed (or the other way round), or a
            folder the user may not write to.
    """
    target = Path(path).expanduser()
    if is_dir and target.exists() and not target.is_dir():
        raise UsageError(f"{what} {path}: is a file, not a folder; give a folder (new or existing)")
    if not is_dir and target.is_dir():
        raise UsageError(f"{what} {path}: is a folder; give a file name")
    folder = target if is_dir else target.parent
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    shown = existing if str(existing) else Path(".")
    if not existing.is_dir():
        raise UsageError(f"{what} {path}: cannot create a folder under {shown}, which is a file; choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {path}: the folder {shown} is not writable; choose another path")
    return target


def refuse_replacing(paths: Iterable[str | os.PathLike], *, overwrite: bool, what: str = "--out") -> None:
    """Refuse, before any work, to replace the outputs of an earlier run unless the user passed ``--overwrite``.

    Raises:
        UsageError: naming the first existing path (and how many more), ``--overwrite`` and ``what``.
    """
    if overwrite:
        return
    existing = [Path(p) for p in paths if Path(p).exists()]
    if existing:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise UsageError(
            f"{what}: {existing[0]}{more} already exist from an earlier run; pass --overwrite to "
            f"replace them, or choose another {what}"
        )
