"""Allocator tuning for processes that move big buffers (the daemon, the benchmark).

Owns one thing: asking glibc's malloc to keep memory for big buffers instead of mapping
and unmapping it for each one.  By default glibc serves allocations above a dynamic
threshold (128 KiB at start) with ``mmap`` and returns them with ``munmap``, and trims
the heap top above ``2 x`` that threshold; a 1 MiB chunk then costs 256 page faults (and
the kernel zeroing 1 MiB) every time a fresh buffer is touched.  With
``M_MMAP_THRESHOLD`` at 32 MiB (glibc's maximum) and ``M_TRIM_THRESHOLD`` at 128 MiB,
freed chunk buffers are reused from the heap.  Cost: up to ``TRIM_THRESHOLD_BYTES`` of
freed memory stays with the process.  Must not: do anything on other C libraries
(musl, macOS): there it returns False.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc's maximum (HEAP_MAX_SIZE / 2 on 64-bit)
TRIM_THRESHOLD_BYTES = 128 * 1024 * 1024

_done: bool | None = None


def keep_big_buffers() -> bool:
    """Apply the tuning once per process; True when glibc accepted both settings."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        gnu = libc.gnu_get_libc_version  # glibc only
    except (OSError, AttributeError):
        return False
    del gnu
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    ok = bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)) and ok
    _done = ok
    return ok


__all__ = ["keep_big_buffers"]
