"""The raw disk baseline of ``machi bench flu``: what this machine's filesystem can do
without Machi, measured in the directory the FLU's data lives in.

Owns two bounded measurements on a scratch file it creates and removes: the rate of
"write 4 KiB, fdatasync" repeated (ops/s) and the sequential bandwidth of 1 MiB writes
ending with one fdatasync (MB/s).  Must not: touch any other file, or run unbounded.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from .stats import summarize

FDATASYNC_WRITE_SIZE = 4096
SEQ_WRITE_SIZE = 1024 * 1024
SEQ_BYTES_MAX = 1024**3  # bound on the scratch file of the bandwidth test


def _scratch(directory: Path, name: str) -> tuple[Path, int]:
    path = Path(directory) / f".machi-bench-{name}-{os.getpid()}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    return path, fd


def fdatasync_rate(directory: Path, duration_s: float, ops_max: int = 1_000_000) -> dict[str, Any]:
    """Append 4 KiB then fdatasync, repeated for ``duration_s`` (or ``ops_max`` times)."""
    path, fd = _scratch(directory, "fsync")
    buf = os.urandom(FDATASYNC_WRITE_SIZE)
    lat: list[float] = []
    try:
        start = time.perf_counter()
        deadline = start + duration_s
        now = start
        while now < deadline and len(lat) < ops_max:
            os.write(fd, buf)
            os.fdatasync(fd)
            t = time.perf_counter()
            lat.append(t - now)
            now = t
        elapsed = now - start
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    return {"write_size": FDATASYNC_WRITE_SIZE, **summarize(lat, elapsed, FDATASYNC_WRITE_SIZE)}


def sequential_bandwidth(
    directory: Path, duration_s: float, bytes_max: int = SEQ_BYTES_MAX
) -> dict[str, Any]:
    """Write 1 MiB blocks for ``duration_s`` (at most ``bytes_max``), then one fdatasync;
    the bandwidth counts the final fdatasync."""
    path, fd = _scratch(directory, "seq")
    buf = os.urandom(SEQ_WRITE_SIZE)
    written = 0
    try:
        start = time.perf_counter()
        deadline = start + duration_s
        while time.perf_counter() < deadline and written + SEQ_WRITE_SIZE <= bytes_max:
            written += os.write(fd, buf)
        os.fdatasync(fd)
        elapsed = time.perf_counter() - start
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    return {
        "write_size": SEQ_WRITE_SIZE,
        "bytes": written,
        "elapsed_s": round(elapsed, 4),
        "mb_per_s": round(written / elapsed / 1e6, 2) if elapsed > 0 else 0.0,
    }


def baseline(directory: Path, duration_s: float) -> dict[str, Any]:
    return {
        "directory": str(directory),
        "fdatasync_4k": fdatasync_rate(directory, duration_s),
        "seq_write_1m": sequential_bandwidth(directory, duration_s),
    }
