"""Atomic writes: the final file has the mode a plain open() gives it, and nothing is left behind on failure."""

import os
import stat

import pytest
import torch

from patseg import atomic


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_current_umask_reads_without_changing(umask):
    assert atomic.current_umask() == umask
    assert atomic.current_umask() == umask
    assert atomic.file_mode() == 0o666 & ~umask and atomic.dir_mode() == 0o777 & ~umask


def test_written_files_follow_the_umask(tmp_path, umask):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what every writer must match
    expected = 0o666 & ~umask
    assert _mode(plain) == expected
    written = [
        atomic.atomic_write_text(tmp_path / "a.txt", "text"),
        atomic.atomic_write_json(tmp_path / "sub" / "b.json", {"k": 1}),
        atomic.atomic_write_bytes(tmp_path / "c.bin", b"\0"),
        atomic.atomic_save_safetensors({"w": torch.zeros(2)}, tmp_path / "d.safetensors"),
    ]
    with atomic.atomic_path(tmp_path / "e.pt") as tmp:
        torch.save({"w": torch.zeros(2)}, tmp)
    written.append(tmp_path / "e.pt")
    for path in written:
        assert _mode(path) == expected, (path.name, oct(_mode(path)))
    assert _mode(tmp_path / "sub") == 0o777 & ~umask


def test_replacing_a_file_gives_the_umask_mode_too(tmp_path, umask):
    path = tmp_path / "a.txt"
    path.write_text("old")
    os.chmod(path, 0o600)
    atomic.atomic_write_text(path, "new")
    assert path.read_text() == "new" and _mode(path) == 0o666 & ~umask


def test_a_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(tmp_path / "a.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
