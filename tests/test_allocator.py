"""keep_large_blocks: applied on glibc (every allocation then comes from the heap and freed blocks are reused), a
no-op elsewhere. Checked in a child process: the setting lasts for the rest of the process."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

CHILD = """
import torch
from patseg.allocator import keep_large_blocks

def in_heap(t):  # whether the tensor's memory lies in the brk heap, not in a mapping of its own
    for line in open("/proc/self/maps"):
        if line.rstrip().endswith("[heap]"):
            start, end = (int(v, 16) for v in line.split()[0].split("-"))
            return start <= t.data_ptr() < end
    return False

x = torch.empty(64 << 20, dtype=torch.uint8)  # 64 MB: above glibc's largest mmap threshold
default = in_heap(x)
del x
applied = keep_large_blocks()
y = torch.empty(64 << 20, dtype=torch.uint8)
y.fill_(1)
assert int(y.sum()) == 64 << 20  # the memory works
print(applied, default, in_heap(y))
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_large_allocations_come_from_the_heap_once_applied() -> None:
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["True", "False", "True"]  # by default a 64 MB block gets a mapping of its own


def test_the_patseg_command_applies_it(monkeypatch) -> None:
    import patseg.cli as cli

    calls = []
    monkeypatch.setattr(cli, "keep_large_blocks", lambda: calls.append(True) or True)
    assert cli.main(["info", "san_tiny"]) == 0
    assert calls == [True]
