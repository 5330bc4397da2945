"""In-process storage benchmarks: the raw disk baseline and FluStore append/read rates.

Owns: measuring; prints nothing and asserts nothing (callers such as ``machi bench flu``
print JSON).  Must not: run unbounded (every function stops after ``duration_s``) or
leave files behind (callers pass a scratch directory they remove).

Numbers are ratios against :func:`raw_disk_baseline` measured in the same run, because
absolute numbers depend on the machine and its load.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from machi.core.checksum import client_csum
from machi.core.epoch import DUMMY_EPOCH_ID

from .flu_store import FluStore, StoreConfig, SyncMode


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    i = min(len(sorted_values) - 1, int(q * len(sorted_values)))
    return sorted_values[i]


def _raw(path: Path, duration_s: float) -> dict[str, float]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        small = os.urandom(4096)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < duration_s / 2:
            os.pwrite(fd, small, n * 4096)
            os.fdatasync(fd)
            n += 1
        fsync_s = time.perf_counter() - t0
        big = os.urandom(1 << 20)
        m, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < duration_s / 2:
            os.pwrite(fd, big, (n * 4096) + m * len(big))
            m += 1
            if m % 16 == 0:
                os.fdatasync(fd)
        os.fdatasync(fd)
        write_s = time.perf_counter() - t0
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    return {
        "fdatasync_4k_per_s": n / fsync_s,
        "seq_write_mb_per_s": m * len(big) / write_s / 1e6,
    }


async def raw_disk_baseline(directory: Path, duration_s: float = 2.0) -> dict[str, float]:
    """Sequential 4 KiB pwrite+fdatasync rate and 1 MiB sequential write bandwidth
    (fdatasync every 16 MiB) of the disk holding ``directory``."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    return await anyio.to_thread.run_sync(_raw, Path(directory) / "raw-baseline.tmp",
                                          duration_s)


async def bench_store(
    directory: Path,
    *,
    sync: SyncMode = "batch",
    chunk_size: int = 4096,
    concurrency: int = 16,
    duration_s: float = 2.0,
    read: bool = True,
) -> dict[str, Any]:
    """Append (then read back) ``chunk_size`` chunks from ``concurrency`` tasks for about
    ``duration_s`` seconds each; returns rates and latency percentiles (ms)."""
    directory = Path(directory) / f"store-{sync}-{chunk_size}-{concurrency}"
    shutil.rmtree(directory, ignore_errors=True)
    payload = os.urandom(chunk_size)
    csum = client_csum(payload)
    lat_ms: list[float] = []
    placed: list[tuple[str, int]] = []
    store = await FluStore.open(directory, StoreConfig(sync=sync))
    try:
        stop_at = time.perf_counter() + duration_s

        async def appender(w: int) -> None:
            while time.perf_counter() < stop_at:
                t = time.perf_counter()
                pos, _ = await store.append(f"bench{w % 4}", payload, csum,
                                            epoch_id=DUMMY_EPOCH_ID)
                lat_ms.append((time.perf_counter() - t) * 1000)
                placed.append((pos.file, pos.offset))

        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for w in range(concurrency):
                tg.start_soon(appender, w)
        elapsed = time.perf_counter() - t0
        await store.flush()
        stats = store.stats()
        lat_ms.sort()
        out: dict[str, Any] = {
            "sync": sync, "chunk_size": chunk_size, "concurrency": concurrency,
            "appends": len(lat_ms),
            "append_per_s": len(lat_ms) / elapsed,
            "append_mb_per_s": len(lat_ms) * chunk_size / elapsed / 1e6,
            "append_p50_ms": _percentile(lat_ms, 0.50),
            "append_p99_ms": _percentile(lat_ms, 0.99),
            "commits": stats["commits"],
            "chunks_per_commit": len(lat_ms) / max(1, stats["commits"]),
        }
        if read and placed:
            rlat: list[float] = []
            n_read = 0
            t0 = time.perf_counter()
            read_stop = t0 + duration_s / 2
            while time.perf_counter() < read_stop:
                file, offset = placed[n_read % len(placed)]
                t = time.perf_counter()
                res = await store.read(file, offset, chunk_size)
                rlat.append((time.perf_counter() - t) * 1000)
                assert res.chunks[0].data == payload
                n_read += 1
            elapsed = time.perf_counter() - t0
            rlat.sort()
            out.update({
                "read_per_s": n_read / elapsed,
                "read_mb_per_s": n_read * chunk_size / elapsed / 1e6,
                "read_p50_ms": _percentile(rlat, 0.50),
                "read_p99_ms": _percentile(rlat, 0.99),
            })
        return out
    finally:
        await store.close()
        shutil.rmtree(directory, ignore_errors=True)
