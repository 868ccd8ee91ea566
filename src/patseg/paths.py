"""Where patseg keeps generated files, and how result files name a file without a machine's absolute path.

- :func:`cache_dir`: the one cache root (text embeddings, the OVSS-mini CLIP): ``$PATSEG_CACHE``, else
  ``~/.cache/patseg``.
- :func:`portable_path`: the form of a path that result files record, so that a JSON written on one machine says
  the same thing on another: ``patseg/...`` inside the package, ``$PATSEG_CACHE/...`` inside the cache,
  relative to the working directory (the repository when run from its root) inside it.
"""

from __future__ import annotations

import os
from pathlib import Path

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
