"""Prometheus text-format metrics for one node, and the tiny HTTP server that serves them.

Owns: the counters (requests per op and status, bytes in and out, connections), the
latency histograms per op, the gauges (wedged, epoch), the repair series (``RepairMetrics``:
runs, chunks and bytes moved, bad chunks, in progress, last duration; docs/repair.md) and
their rendering.  Must not
block the event loop (rendering is O(series)) or accept unbounded requests (header bytes
and time per scrape are bounded).
"""

from __future__ import annotations

import bisect
import contextlib
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc

LATENCY_BUCKETS_S = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)
MAX_REQUEST_BYTES = 8192
SCRAPE_TIMEOUT_S = 5.0


class _Histogram:
    __slots__ = ("buckets", "count", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * (len(LATENCY_BUCKETS_S) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, value_s: float) -> None:
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS_S, value_s)] += 1
        self.count += 1
        self.sum += value_s


#: kinds of repair run a node reports (``machi.node.chain_driver``): the repair of the
#: repairing members, the CP UPI sync after a confirmation, and the periodic AP
#: anti-entropy pass of a stable chain
REPAIR_KINDS = ("repair", "upi_sync", "anti_entropy")
#: ``RepairStats`` fields exported as ``machi_repair_<field>_total`` counters
REPAIR_COUNTERS = (
    "files_done", "files_skipped", "files_unchanged", "files_equal", "chunks_copied", "bytes_in",
    "bytes_out", "chunks_reset", "ranges_trimmed", "bad_chunks", "chunks_healed",
    "conflicts", "errors",
)
#: repair runs tracked at once, at most (the driver runs one repair and one UPI sync
#: loop; a leak must not grow the scrape)
MAX_RUNNING_REPAIRS = 16


class RepairMetrics:
    """Repair progress for the metrics endpoint: totals of the finished runs per kind plus
    the live counters of the running ones (so ``*_total`` rises while a run copies), runs
    per kind and result, runs in progress, and the duration and result of the last run.

    The runner registers a live stats object (``machi.node.repair.RepairStats``: integer
    attributes named in ``REPAIR_COUNTERS`` and ``files``) with ``started`` and hands it
    back with ``finished``; nothing else is shared with the repair code."""

    def __init__(self) -> None:
        self.runs: dict[tuple[str, str], int] = {}
        self.totals: dict[str, dict[str, int]] = {
            k: dict.fromkeys(REPAIR_COUNTERS, 0) for k in REPAIR_KINDS}
        self.running: dict[int, tuple[str, Any, float]] = {}
        self.last_duration_s: dict[str, float] = {}
        self.last_ok: dict[str, bool] = {}
        self.last_files: dict[str, int] = {}
        self._next_token = 0

    def started(self, kind: str, stats: Any) -> int:
        """Track a run of ``kind``; returns the token for ``finished``."""
        if kind not in self.totals:
            raise ValueError(f"unknown repair kind {kind!r}")
        if len(self.running) >= MAX_RUNNING_REPAIRS:  # never: runs end in a finally
            self.running.pop(next(iter(self.running)))
        self._next_token += 1
        self.running[self._next_token] = (kind, stats, time.monotonic())
        return self._next_token

    def finished(self, token: int, ok: bool) -> None:
        entry = self.running.pop(token, None)
        if entry is None:
            return
        kind, stats, t0 = entry
        totals = self.totals[kind]
        for key in REPAIR_COUNTERS:
            totals[key] += int(getattr(stats, key))
        result = "ok" if ok else "failed"
        self.runs[(kind, result)] = self.runs.get((kind, result), 0) + 1
        self.last_duration_s[kind] = time.monotonic() - t0
        self.last_ok[kind] = ok
        self.last_files[kind] = int(stats.files)

    def render(self, n: str) -> list[str]:
        lines = ["# TYPE machi_repair_runs_total counter"]
        for kind in REPAIR_KINDS:
            for result in ("ok", "failed"):
                lines.append(f'machi_repair_runs_total{{{n},kind="{kind}",result="{result}"}} '
                             f"{self.runs.get((kind, result), 0)}")
        live = {k: dict(v) for k, v in self.totals.items()}
        in_progress = dict.fromkeys(REPAIR_KINDS, 0)
        files = dict(self.last_files)
        for kind, stats, _ in self.running.values():
            in_progress[kind] += 1
            files[kind] = int(stats.files)
            for key in REPAIR_COUNTERS:
                live[kind][key] += int(getattr(stats, key))
        for key in REPAIR_COUNTERS:
            name = f"machi_repair_{key}_total"
            lines.append(f"# TYPE {name} counter")
            lines += [f'{name}{{{n},kind="{k}"}} {live[k][key]}' for k in REPAIR_KINDS]
        lines.append("# TYPE machi_repair_in_progress gauge")
        lines += [f'machi_repair_in_progress{{{n},kind="{k}"}} {in_progress[k]}'
                  for k in REPAIR_KINDS]
        lines.append("# TYPE machi_repair_files gauge")
        lines += [f'machi_repair_files{{{n},kind="{k}"}} {files.get(k, 0)}'
                  for k in REPAIR_KINDS]
        lines.append("# TYPE machi_repair_last_duration_seconds gauge")
        lines += [f'machi_repair_last_duration_seconds{{{n},kind="{k}"}} '
                  f"{self.last_duration_s[k]:.6f}" for k in REPAIR_KINDS
                  if k in self.last_duration_s]
        lines.append("# TYPE machi_repair_last_ok gauge")
        lines += [f'machi_repair_last_ok{{{n},kind="{k}"}} {int(self.last_ok[k])}'
                  for k in REPAIR_KINDS if k in self.last_ok]
        return lines


class Metrics:
    def __init__(self, node: str) -> None:
        self.node = node
        self.requests: dict[tuple[str, str], int] = {}
        self.latency: dict[str, _Histogram] = {}
        self.bytes_in = 0
        self.bytes_out = 0
        self.connections_open = 0
        self.connections_total = 0
        self.protocol_errors = 0
        #: set by the node: () -> {"wedged": 0|1, "epoch": n, ...}
        self.gauges: Callable[[], dict[str, float]] = dict
        #: set by the node when the store exposes statistics
        self.store_stats: Callable[[], dict[str, Any]] | None = None
        #: repair runs of this node's chain driver (as UPI tail)
        self.repair = RepairMetrics()

    def observe(self, op: str, status: str, latency_s: float) -> None:
        key = (op, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        h = self.latency.get(op)
        if h is None:
            h = self.latency[op] = _Histogram()
        h.observe(latency_s)

    def render(self) -> str:
        lines: list[str] = []
        n = f'node="{self.node}"'
        lines += ["# TYPE machi_requests_total counter"]
        for (op, status), count in sorted(self.requests.items()):
            lines.append(f'machi_requests_total{{{n},op="{op}",status="{status}"}} {count}')
        lines += ["# TYPE machi_request_latency_seconds histogram"]
        for op, h in sorted(self.latency.items()):
            cum = 0
            for bound, c in zip((*LATENCY_BUCKETS_S, float("inf")), h.buckets, strict=True):
                cum += c
                le = "+Inf" if bound == float("inf") else repr(bound)
                lines.append(
                    f'machi_request_latency_seconds_bucket{{{n},op="{op}",le="{le}"}} {cum}'
                )
            lines.append(f'machi_request_latency_seconds_sum{{{n},op="{op}"}} {h.sum:.6f}')
            lines.append(f'machi_request_latency_seconds_count{{{n},op="{op}"}} {h.count}')
        for name, value, typ in (
            ("machi_bytes_in_total", self.bytes_in, "counter"),
            ("machi_bytes_out_total", self.bytes_out, "counter"),
            ("machi_connections_open", self.connections_open, "gauge"),
            ("machi_connections_total", self.connections_total, "counter"),
            ("machi_protocol_errors_total", self.protocol_errors, "counter"),
        ):
            lines += [f"# TYPE {name} {typ}", f"{name}{{{n}}} {value}"]
        for key, gauge in sorted(self.gauges().items()):
            lines += [f"# TYPE machi_{key} gauge", f"machi_{key}{{{n}}} {gauge}"]
        if self.store_stats is not None:
            for key, value in sorted(self.store_stats().items()):
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    name = f"machi_store_{key}"
                    lines += [f"# TYPE {name} untyped", f"{name}{{{n}}} {value}"]
        lines += self.repair.render(n)
        return "\n".join(lines) + "\n"


async def serve_metrics(
    metrics: Metrics, listener: anyio.abc.Listener[anyio.abc.SocketStream]
) -> None:
    """Serve ``GET /metrics`` on ``listener`` until cancelled."""

    async def handle(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            buf = b""
            with anyio.move_on_after(SCRAPE_TIMEOUT_S):
                while b"\r\n\r\n" not in buf and len(buf) < MAX_REQUEST_BYTES:
                    try:
                        buf += await stream.receive(4096)
                    except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                        return
                line = buf.split(b"\r\n", 1)[0].split()
                if len(line) >= 2 and line[0] == b"GET" and line[1].split(b"?")[0] in (
                    b"/metrics", b"/"
                ):
                    body = metrics.render().encode()
                    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                else:
                    body = b"not found\n"
                    head = b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n"
                head += b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
                with contextlib.suppress(anyio.BrokenResourceError, OSError):
                    await stream.send(head + body)

    await listener.serve(handle)
