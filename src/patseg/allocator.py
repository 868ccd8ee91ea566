"""Reusing freed memory for large tensors instead of mapping fresh pages every time (glibc malloc).

glibc serves every allocation above its mmap threshold (at most 32 MB) with a fresh ``mmap`` and returns it with
``munmap`` when freed, so each large tensor of every forward pass is new memory: the kernel zero-fills each page at
its first touch. PAT's 640x640 forward makes dozens of such tensors (the (1200, 160 x 160) bias map alone is 123 MB):
measured on the 2-core Xeon, a product into a fresh 123 MB output took 88 ms, into a reused one 59 ms. With
:func:`keep_large_blocks` every allocation comes from the heap, and up to ``keep`` bytes of freed memory stay there
for the next call: PAT's ``predict`` at 640x640 ran 1.08x faster (fresh processes taking turns,
``benchmarks/allocator.py``), SAN's 1.02x (within noise), with the same results and process peaks within 3%.

The cost is memory: the process keeps what it freed (up to ``keep``) instead of returning it, so its resident size
stays near its peak. The ``patseg`` command applies it to itself (an inference or training process is sized by its
peak anyway); a program that uses patseg as a library may call it. It is a no-op where the C library is not glibc.
PyTorch's CPU performance guide suggests jemalloc or tcmalloc (``LD_PRELOAD``) for the same reason; this needs no
extra library.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

# mallopt parameters, from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def keep_large_blocks(keep: int = 1 << 30) -> bool:
    """Serve every allocation from the heap and keep up to ``keep`` bytes of freed memory there; True when applied
    (Linux with glibc), False elsewhere. Process-wide, for the rest of the process."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; M_MMAP_MAX 0: no allocation goes to mmap (glibc still falls back to mmap when
    # the heap cannot grow)
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, min(keep, 2**31 - 1)))
