"""Goal: the allocator tuning applies on glibc, once, and says so; elsewhere it is a no-op
that says False."""

from __future__ import annotations

import ctypes
import sys

from machi import memtune


def _is_glibc() -> bool:
    try:
        return hasattr(ctypes.CDLL(None), "gnu_get_libc_version")
    except OSError:
        return False


def test_keep_big_buffers_is_applied_once() -> None:
    first = memtune.keep_big_buffers()
    assert first == (sys.platform.startswith("linux") and _is_glibc())
    assert memtune.keep_big_buffers() == first  # idempotent, same answer
    big = bytearray(4 * 1024 * 1024)  # still allocates and frees normally
    big[-1] = 1
    assert big[-1] == 1
