"""Atomic file writes: write to a temporary file in the same folder, fsync, then ``os.replace``.

A crash or an exception mid-write never leaves a half-written file under the final name. The final file gets the
mode a plain ``open()`` would give it (``0o666`` less the process umask), not ``tempfile.mkstemp``'s private 0600.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

if TYPE_CHECKING:
    from torch import Tensor


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without leaving it changed (``/proc/self/status`` where it exists)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:  # os.umask can only be read by setting it: restore it at once, one thread at a time
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """The permission bits ``open(path, "w")`` gives a new file: ``0o666 & ~umask``."""
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    """The permission bits ``os.mkdir`` gives a new folder: ``0o777 & ~umask``."""
    return 0o777 & ~current_umask()


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, file_mode())  # mkstemp made it 0600 whatever the umask
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_save_safetensors(
    tensors: dict[str, "Tensor"], path: Path, metadata: Optional[dict[str, str]] = None
) -> Path:
    """Save a flat tensor dict as safetensors atomically."""
    from safetensors.torch import save_file  # here: the rest of this module serves commands that need no torch

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)
