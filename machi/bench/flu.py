"""``machi bench flu``: append and read throughput/latency of one FLU, per sync mode, chunk
size and concurrency, next to the raw disk baseline of the same directory.

Owns: the plan (which cells, how long, byte bounds), starting one ``machi node run``
daemon per sync mode in a fresh temporary data dir (or targeting ``--server``), driving
it with one pipelined ``FluClient`` (concurrency = requests in flight), the result object
and the ratios against the baseline.  Must not: leave a daemon or a data dir behind
(also on errors and Ctrl-C), run unbounded, or write projections to a server it did not
start.

Client-side costs are kept out of the numbers where they are not the FLU's: every append
of a cell sends the same random payload with a checksum computed once, and reads skip the
client's end-to-end checksum verification (the server still verifies stored checksums).
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from machi import __version__
from machi.client.flu_client import FluClient, parse_server
from machi.core.checksum import client_csum
from machi.core.epoch import EpochId
from machi.memtune import keep_big_buffers
from machi.node.process import NodeProcess, bootstrap
from machi.node.run import uvloop_available
from machi.wire_io import use_uninitialised_buffers

from . import raw_disk
from .daemon import node_args
from .stats import size_label, summarize

SYNC_MODES = ("always", "batch", "none")
DURABLE_MODES = ("always", "batch")
CELL_BYTES_MAX = 1024**3  # bound on the bytes appended by one cell
CLIENT_TIMEOUT_MS = 30_000
TARGET_APPEND_4K_VS_FDATASYNC = 0.60
TARGET_APPEND_1M_VS_SEQ_WRITE = 0.50
TARGET_READ_GB_PER_S = 1.0
SMALL_SIZE = 4096
#: multi-chunk cells (protocol version 2): chunks per request, for sizes up to MULTI_SIZE_MAX
MULTI_CHUNKS = 16
MULTI_SIZE_MAX = 64 * 1024
LARGE_SIZE = 1024 * 1024

Progress = Callable[[str], None]


class BenchError(Exception):
    """The benchmark could not run (bad target, daemon failed to start, ...)."""


@dataclass(frozen=True, slots=True)
class BenchPlan:
    sync_modes: tuple[str, ...] = SYNC_MODES
    sizes: tuple[int, ...] = (SMALL_SIZE, LARGE_SIZE)
    concurrency: tuple[int, ...] = (1, 8, 32)
    duration_s: float = 2.0  # per cell, for appends and again for reads
    baseline_s: float = 2.0  # per baseline measurement
    data_dir: Path | None = None  # parent of the temporary dir (default: system temp)
    server: str | None = None  # HOST:PORT of an existing FLU instead of our own daemons
    cell_bytes_max: int = CELL_BYTES_MAX
    uvloop: bool = True

    def validate(self) -> None:
        bad = [m for m in self.sync_modes if m not in SYNC_MODES]
        if bad or not self.sync_modes:
            raise BenchError(f"--sync: want some of {','.join(SYNC_MODES)}, got {bad}")
        if not self.sizes or any(s <= 0 or s > 64 * 1024**2 for s in self.sizes):
            raise BenchError("--sizes: every size must be in 1 B .. 64 MiB")
        if not self.concurrency or any(not 1 <= c <= 256 for c in self.concurrency):
            raise BenchError("--concurrency: every value must be in 1..256")
        if not 0 < self.duration_s <= 60 or not 0 < self.baseline_s <= 60:
            raise BenchError("--duration-s: want 0 < N <= 60")
        if self.server is not None:
            parse_server(self.server)


@dataclass(slots=True)
class _Cell:
    """Shared state of the workers of one cell."""

    deadline: float
    ops_max: int
    latencies_s: list[float] = field(default_factory=list)
    positions: list[tuple[str, int, int]] = field(default_factory=list)
    bytes_read: int = 0


@dataclass(frozen=True, slots=True)
class _ProcSample:
    """CPU seconds (user + system, all threads) and minor page faults of a process."""

    cpu_s: float
    minflt: int


def _proc_sample(pid: int | None) -> _ProcSample | None:
    """From /proc/PID/stat (None when unknown or gone)."""
    if pid is None:
        return None
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return _ProcSample((int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK"), int(f[7]))
    except (OSError, IndexError, ValueError):
        return None


def _cpu_fields(
    pid: int | None, server0: _ProcSample | None, client0: float, ops: int
) -> dict[str, Any]:
    """CPU seconds spent by the client and the daemon during a cell, and per op (on a
    shared machine CPU per op is steadier than wall-clock throughput); the daemon's minor
    page faults per op show allocator churn on big chunks."""
    client_s = time.process_time() - client0
    out: dict[str, Any] = {"client_cpu_s": round(client_s, 3)}
    if ops:
        out["client_cpu_us_per_op"] = round(client_s / ops * 1e6, 1)
    server1 = _proc_sample(pid)
    if server0 is not None and server1 is not None:
        cpu_s = server1.cpu_s - server0.cpu_s
        out["server_cpu_s"] = round(cpu_s, 3)
        if ops:
            out["server_cpu_us_per_op"] = round(cpu_s / ops * 1e6, 1)
            out["server_minflt_per_op"] = round((server1.minflt - server0.minflt) / ops, 1)
    return out


async def append_cell(
    c: FluClient, epoch_id: EpochId, prefix: str, size: int, concurrency: int,
    duration_s: float, bytes_max: int, pid: int | None = None,
) -> tuple[dict[str, Any], list[tuple[str, int, int]]]:
    """``concurrency`` appends in flight on one connection for ``duration_s``."""
    payload = os.urandom(size)
    csum = client_csum(payload)
    cell = _Cell(time.perf_counter() + duration_s, max(concurrency, bytes_max // size))

    async def worker() -> None:
        while time.perf_counter() < cell.deadline and len(cell.latencies_s) < cell.ops_max:
            t0 = time.perf_counter()
            pos = await c.append(prefix, payload, epoch_id=epoch_id, csum=csum)
            cell.latencies_s.append(time.perf_counter() - t0)
            cell.positions.append((pos.file, pos.offset, pos.size))

    server0, client0 = _proc_sample(pid), time.process_time()
    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    result = summarize(cell.latencies_s, time.perf_counter() - start, size)
    result.update(_cpu_fields(pid, server0, client0, result["ops"]))
    return result, cell.positions


async def append_chunks_cell(
    c: FluClient, epoch_id: EpochId, prefix: str, size: int, concurrency: int,
    duration_s: float, bytes_max: int, pid: int | None = None,
    chunks_per_request: int = MULTI_CHUNKS,
) -> dict[str, Any]:
    """Like ``append_cell`` with multi-chunk requests (protocol version 2): each of the
    ``concurrency`` requests in flight carries ``chunks_per_request`` chunks.  Rates and
    CPU are per chunk; latencies per request."""
    payload = os.urandom(size)
    csum = client_csum(payload)
    chunks = [payload] * chunks_per_request
    csums = [csum] * chunks_per_request
    cell = _Cell(time.perf_counter() + duration_s,
                 max(concurrency, bytes_max // (size * chunks_per_request)))

    async def worker() -> None:
        while time.perf_counter() < cell.deadline and len(cell.latencies_s) < cell.ops_max:
            t0 = time.perf_counter()
            await c.append_chunks(prefix, chunks, epoch_id=epoch_id, csums=csums)
            cell.latencies_s.append(time.perf_counter() - t0)

    server0, client0 = _proc_sample(pid), time.process_time()
    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    elapsed = time.perf_counter() - start
    result = summarize(cell.latencies_s, elapsed, size * chunks_per_request)
    n_chunks = result["ops"] * chunks_per_request
    result["chunks_per_request"] = chunks_per_request
    result["chunks"] = n_chunks
    result["chunks_per_s"] = round(n_chunks / elapsed, 1) if elapsed > 0 else 0.0
    result.update(_cpu_fields(pid, server0, client0, n_chunks))  # per chunk
    return result


async def read_cell(
    c: FluClient, epoch_id: EpochId, positions: list[tuple[str, int, int]], size: int,
    concurrency: int, duration_s: float, pid: int | None = None,
) -> dict[str, Any]:
    """Read the appended chunks back (round robin) with ``concurrency`` reads in flight."""
    if not positions:
        return summarize([], 0.0, size)
    cell = _Cell(time.perf_counter() + duration_s, 10_000_000)
    counter = itertools.count()

    async def worker() -> None:
        while time.perf_counter() < cell.deadline:
            file, offset, n = positions[next(counter) % len(positions)]
            t0 = time.perf_counter()
            r = await c.read(file, offset, n, epoch_id=epoch_id, verify_csum=False)
            cell.latencies_s.append(time.perf_counter() - t0)
            got = sum(len(ch.data) for ch in r.chunks)
            if got != n:
                raise BenchError(f"read of {file}@{offset} returned {got} of {n} bytes")
            cell.bytes_read += got

    server0, client0 = _proc_sample(pid), time.process_time()
    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    result = summarize(cell.latencies_s, time.perf_counter() - start, size)
    result.update(_cpu_fields(pid, server0, client0, result["ops"]))
    return result


async def measure_server(
    host: str, port: int, plan: BenchPlan, *, mode: str, pid: int | None,
    own_daemon: bool, progress: Progress,
) -> list[dict[str, Any]]:
    """All cells of one sync mode against one FLU."""
    inflight = max(plan.concurrency) + 8
    async with FluClient(host, port, timeout_ms=CLIENT_TIMEOUT_MS, max_in_flight=inflight,
                         name="bench") as c:
        if own_daemon:
            await bootstrap(c, f"bench-{mode}", port=port)
        ws = await c.wedge_status()
        if ws.wedged:
            raise BenchError(f"{host}:{port} is wedged at epoch {ws.epoch_id.number}; "
                             "give it a projection first (machi projection write)")
        run_tag = os.urandom(3).hex()
        cells: list[dict[str, Any]] = []
        for size in plan.sizes:
            for conc in plan.concurrency:
                prefix = f"bench_{run_tag}_{size_label(size)}_c{conc}"
                app, positions = await append_cell(
                    c, ws.epoch_id, prefix, size, conc, plan.duration_s,
                    plan.cell_bytes_max, pid)
                rd = await read_cell(c, ws.epoch_id, positions, size, conc,
                                     plan.duration_s, pid)
                multi = None
                if size <= MULTI_SIZE_MAX and c.protocol_version >= 2:
                    multi = await append_chunks_cell(
                        c, ws.epoch_id, prefix + "_m", size, conc, plan.duration_s,
                        plan.cell_bytes_max, pid)
                progress(
                    f"sync={mode:<6} size={size_label(size):>6} conc={conc:<3} "
                    f"append {app['ops_per_s']:>9.1f} op/s {app['mb_per_s']:>8.1f} MB/s "
                    f"p50 {app['latency_ms_p50']:.2f} ms p99 {app['latency_ms_p99']:.2f} ms | "
                    f"read {rd['gb_per_s']:.3f} GB/s p50 {rd['latency_ms_p50']:.2f} ms"
                    + ("" if multi is None else
                       f" | append_chunks x{MULTI_CHUNKS} {multi['chunks_per_s']:.1f} "
                       f"chunks/s srv {multi.get('server_cpu_us_per_op', '-')} us/chunk")
                )
                cell: dict[str, Any] = {
                    "sync": mode, "size": size, "size_label": size_label(size),
                    "concurrency": conc, "append": app, "read": rd}
                if multi is not None:
                    cell["append_chunks"] = multi
                cells.append(cell)
        return cells


def _run_async(fn: Callable[..., Any], *args: Any, use_uvloop: bool, **kw: Any) -> Any:
    async def call() -> Any:
        return await fn(*args, **kw)

    options = {"use_uvloop": use_uvloop and uvloop_available()}
    return anyio.run(call, backend="asyncio", backend_options=options)


def _own_daemon(plan: BenchPlan, mode: str, root: Path, progress: Progress) -> dict[str, Any]:
    """Start a daemon with ``mode`` in a fresh dir under ``root``, measure, stop it."""
    work = Path(tempfile.mkdtemp(prefix=f"flu-{mode}-", dir=root))
    node = NodeProcess(f"bench-{mode}", work / "data", sync=mode, log_path=work / "node.log",
                       extra_args=node_args(work, f"bench-{mode}"))
    info: dict[str, Any] = {"sync": mode, "data_dir": str(work / "data")}
    try:
        node.start()
        assert node.proc is not None
        info["pid"] = node.proc.pid
        progress(f"started FLU sync={mode} pid={node.proc.pid} on {node.address}")
        info["cells"] = _run_async(
            measure_server, node.host, node.port, plan, mode=mode, pid=node.proc.pid,
            own_daemon=True, progress=progress, use_uvloop=plan.uvloop)
        info["exit_code"] = node.stop()
        if info["exit_code"] != 0:
            raise BenchError(f"daemon sync={mode} exited {info['exit_code']}: "
                             f"{node.log_tail()}")
        return info
    except BaseException:
        tail = node.log_tail(5)
        if tail:
            progress(f"daemon log tail:\n{tail}")
        raise
    finally:
        node.kill()
        shutil.rmtree(work, ignore_errors=True)


def _best(cells: list[dict[str, Any]], modes: tuple[str, ...], size: int, op: str,
          key: str) -> tuple[float, dict[str, Any] | None]:
    best: tuple[float, dict[str, Any] | None] = (0.0, None)
    for cell in cells:
        if cell["sync"] in modes and cell["size"] == size and cell[op][key] > best[0]:
            best = (float(cell[op][key]), cell)
    return best


def _ratio(value: float, base: float) -> float | None:
    return round(value / base, 3) if base > 0 else None


def ratios(cells: list[dict[str, Any]], base: dict[str, Any]) -> dict[str, Any]:
    """The three issue-2 targets, each from the best cell that qualifies."""
    durable = (*DURABLE_MODES, "server")
    fsync_rate = float(base["fdatasync_4k"]["ops_per_s"])
    seq_mb = float(base["seq_write_1m"]["mb_per_s"])
    out: dict[str, Any] = {}
    small, small_cell = _best(cells, durable, SMALL_SIZE, "append", "ops_per_s")
    r = _ratio(small, fsync_rate) if small_cell else None
    out["append_4k_durable_vs_raw_fdatasync"] = {
        "value": r, "target": TARGET_APPEND_4K_VS_FDATASYNC,
        "met": None if r is None else r >= TARGET_APPEND_4K_VS_FDATASYNC,
        "append_ops_per_s": small, "raw_fdatasync_ops_per_s": fsync_rate,
        "cell": _cell_name(small_cell),
        "per_mode_concurrency_1": {
            c["sync"]: _ratio(float(c["append"]["ops_per_s"]), fsync_rate) for c in cells
            if c["size"] == SMALL_SIZE and c["concurrency"] == 1
        },
    }
    large, large_cell = _best(cells, durable, LARGE_SIZE, "append", "mb_per_s")
    r = _ratio(large, seq_mb) if large_cell else None
    out["append_1m_durable_vs_raw_seq_write"] = {
        "value": r, "target": TARGET_APPEND_1M_VS_SEQ_WRITE,
        "met": None if r is None else r >= TARGET_APPEND_1M_VS_SEQ_WRITE,
        "append_mb_per_s": large, "raw_seq_write_mb_per_s": seq_mb,
        "cell": _cell_name(large_cell),
    }
    biggest = max((c["size"] for c in cells), default=0)
    gbs, read_cell_ = _best(cells, (*SYNC_MODES, "server"), biggest, "read", "gb_per_s")
    out["read_gb_per_s"] = {
        "value": gbs if read_cell_ else None, "target": TARGET_READ_GB_PER_S,
        "met": None if read_cell_ is None else gbs >= TARGET_READ_GB_PER_S,
        "cell": _cell_name(read_cell_),
    }
    return out


def _cell_name(cell: dict[str, Any] | None) -> str | None:
    if cell is None:
        return None
    return f"sync={cell['sync']} size={cell['size_label']} conc={cell['concurrency']}"


def run_bench(plan: BenchPlan, progress: Progress) -> dict[str, Any]:
    """Run the whole plan; returns the result object (see docs/benchmarks.md)."""
    plan.validate()
    keep_big_buffers()  # the measuring client too (the daemons do it themselves)
    use_uninitialised_buffers()  # the client receives the 1 MiB read replies
    parent = plan.data_dir
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="machi-bench-", dir=parent))
    started = time.time()
    try:
        progress(f"raw disk baseline in {root} ({plan.baseline_s:g} s each)")
        base = raw_disk.baseline(root, plan.baseline_s)
        progress(
            f"raw: 4KiB write+fdatasync {base['fdatasync_4k']['ops_per_s']:.1f} op/s "
            f"(p50 {base['fdatasync_4k']['latency_ms_p50']:.2f} ms); "
            f"1MiB sequential write {base['seq_write_1m']['mb_per_s']:.1f} MB/s"
        )
        daemons: list[dict[str, Any]] = []
        cells: list[dict[str, Any]] = []
        if plan.server is not None:
            host, port = parse_server(plan.server)
            cells = _run_async(measure_server, host, port, plan, mode="server", pid=None,
                               own_daemon=False, progress=progress, use_uvloop=plan.uvloop)
        else:
            for mode in plan.sync_modes:
                d = _own_daemon(plan, mode, root, progress)
                cells.extend(d.pop("cells"))
                daemons.append(d)
        return {
            "bench": "flu",
            "version": __version__,
            "started_unix_s": round(started, 3),
            "elapsed_s": round(time.time() - started, 3),
            "host": {"cpus": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2)},
            "plan": {
                "sync_modes": list(plan.sync_modes) if plan.server is None else ["server"],
                "sizes": list(plan.sizes), "concurrency": list(plan.concurrency),
                "duration_s": plan.duration_s, "baseline_s": plan.baseline_s,
                "server": plan.server, "cell_bytes_max": plan.cell_bytes_max,
            },
            "workdir": str(root),
            "baseline": base,
            "daemons": daemons,
            "cells": cells,
            "ratios": ratios(cells, base),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def format_table(result: dict[str, Any]) -> str:
    """A short human-readable table of a result object."""
    lines = [
        f"{'sync':<7}{'size':>7}{'conc':>5} | {'append op/s':>11}{'MB/s':>9}{'p50 ms':>8}"
        f"{'p99 ms':>8}{'srv us/op':>10} | {'read op/s':>10}{'GB/s':>8}{'p50 ms':>8}"
        f"{'p99 ms':>8}{'srv us/op':>10}",
    ]
    for c in result["cells"]:
        a, r = c["append"], c["read"]
        m = c.get("append_chunks")
        lines.append(
            f"{c['sync']:<7}{c['size_label']:>7}{c['concurrency']:>5} | "
            f"{a['ops_per_s']:>11.1f}{a['mb_per_s']:>9.1f}{a['latency_ms_p50']:>8.2f}"
            f"{a['latency_ms_p99']:>8.2f}{a.get('server_cpu_us_per_op', '-'):>10} | "
            f"{r['ops_per_s']:>10.1f}{r['gb_per_s']:>8.3f}{r['latency_ms_p50']:>8.2f}"
            f"{r['latency_ms_p99']:>8.2f}{r.get('server_cpu_us_per_op', '-'):>10}"
            + ("" if m is None else
               f" | x{m['chunks_per_request']} {m['chunks_per_s']:.1f} chunks/s, "
               f"srv {m.get('server_cpu_us_per_op', '-')} us/chunk")
        )
    b = result["baseline"]
    lines.append(
        f"raw disk: 4KiB write+fdatasync {b['fdatasync_4k']['ops_per_s']:.1f} op/s, "
        f"1MiB sequential write {b['seq_write_1m']['mb_per_s']:.1f} MB/s"
    )
    for name, r in result["ratios"].items():
        met = {True: "met", False: "MISSED", None: "n/a"}[r["met"]]
        lines.append(f"{name}: {r['value']} (target {r['target']}) {met}  [{r['cell']}]")
    return "\n".join(lines)
