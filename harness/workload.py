"""Client workloads of a harness run: concurrent chunk operations through the chain client,
recorded as a write-once history (docs/history-write-once.md), and the final read-back.

Owns: the generator (concurrency, rate, time limit counted from the first successful op,
op mix; reads of acknowledged positions and probes just past the newest one),
self-describing payloads (`v|client|seq|checksum` then padding, so a value read back names
its one attempt), the ok / fail / info classification of every outcome
(`machi.client.chain_client.outcome_of`, i.e. `machi.core.outcome`; an unwritten read is
an ok read of null), incremental history
writing with `node` and `epoch` fields, and the final phase: read every acknowledged (and
every listed) chunk from every replica directly, and in AP mode compare replicas'
checksum lists.  The client-side canaries live in `harness.canary`.

Must not: decide verdicts (the checkers do), retry a failed op with the same payload id,
or run from outside the control namespace when the hosts are netns hosts.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio

from harness.history import Event, HistoryWriter
from machi.client.chain_client import CallInfo, ChainClient, outcome_of
from machi.client.flu_client import FluClient
from machi.core.epoch import EpochId
from machi.core.errors import NotWritten
from machi.core.filename import make_filename
from machi.core.outcome import OpKind, Outcome

PREFIX = "h"
WRITE_PREFIX = "w"
ACKED_MAX = 200_000  # positions remembered for reads and the final phase
FINAL_CHUNKS_MAX = 100_000
FINAL_READ_LANES = 16  # concurrent final reads per replica (each lane its own process)
#: the load's clock (and the nemesis schedule's) starts when the first client op has
#: succeeded, at most this long after the clients start (a slow start under load must not
#: let the first fault hit a cluster that has not served anything yet)
WARMUP_MAX_S = 10.0
REREADS_MAX = 3  # a probe that saw an in-flight value reads it again this many times
#: share of reads that probe just past the newest ack (appends in flight); the rest read
#: the newest ack (NEWEST_SHARE) or a random one
PROBE_SHARE = 0.5
NEWEST_SHARE = 0.15


@dataclass
class WorkloadOptions:
    concurrency: int = 6
    time_limit_s: float = 30.0
    rate_per_s: float = 0.0  # all clients together; 0 = as fast as they go
    mix: dict[str, float] = field(default_factory=lambda: {"append": 0.6, "read": 0.4})
    payload_bytes: int = 96
    seed: int = 0
    op_timeout_ms: int = 10_000
    canary: str | None = None

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.time_limit_s <= 0 or self.payload_bytes < 64:
            raise ValueError("concurrency >= 1, time limit > 0, payload >= 64 bytes")
        bad = set(self.mix) - {"append", "read", "write"}
        if bad or not self.mix or sum(self.mix.values()) <= 0:
            raise ValueError(f"bad op mix {self.mix}")


def payload(v: str, client: int, seq: int, size: int) -> bytes:
    head = f"{v}|{client}|{seq}|"
    digest = hashlib.sha256(head.encode()).hexdigest()[:16]
    body = f"{head}{digest}|".encode()
    return body + b"." * max(0, size - len(body))


def payload_id(data: bytes) -> str:
    """The attempt id a chunk names, or `garbage:<hex>` when it does not check out."""
    parts = data.split(b"|", 4)
    if len(parts) >= 4:
        head = b"|".join(parts[:3]) + b"|"
        if hashlib.sha256(head).hexdigest()[:16].encode() == parts[3]:
            return parts[0].decode(errors="replace")
    return "garbage:" + data[:32].hex()


class Recorder:
    """Numbers events, stamps them with monotonic time, writes them at once (one task
    loop, so no lock is needed), and keeps counts per f / type."""

    def __init__(self, writer: HistoryWriter, t0_ns: int) -> None:
        self.writer = writer
        self.t0_ns = t0_ns
        self.index = 0
        self.counts: dict[str, dict[str, int]] = {}
        self.latencies: list[tuple[float, float, str, str]] = []  # (t_s, ms, f, type)

    def now_ns(self) -> int:
        return time.monotonic_ns()

    def event(self, process: int | str, typ: str, f: str, value: Any, *,
              error: Any = None, **extra: Any) -> int:
        t = self.now_ns()
        self.writer.write(Event(self.index, t, process, typ, f, value, None, error,
                                {k: v for k, v in extra.items() if v is not None}))
        self.index += 1
        if typ != "invoke" and process != "nemesis":
            c = self.counts.setdefault(f, {})
            c[typ] = c.get(typ, 0) + 1
        return t


@dataclass
class Acked:
    positions: list[tuple[str, int, int]] = field(default_factory=list)
    values: dict[tuple[str, int, int], str] = field(default_factory=dict)

    def add(self, pos: tuple[str, int, int], v: str) -> None:
        if len(self.positions) < ACKED_MAX:
            self.positions.append(pos)
            self.values[pos] = v


ClientFactory = Callable[[int], ChainClient]


class Workload:
    """Runs client tasks until the time limit; `final_reads` after the heal."""

    def __init__(self, rec: Recorder, members: Mapping[str, tuple[str, int]],
                 opts: WorkloadOptions, client_factory: ClientFactory | None = None) -> None:
        self.rec = rec
        self.members = dict(members)
        self.opts = opts
        self.acked = Acked()
        self.client_factory = client_factory or self._client
        self._rate_lock = anyio.Lock()
        self._next_slot = 0.0
        self.stop_at = 0.0
        #: set when the first client op succeeded (or WARMUP_MAX_S passed): the time
        #: limit counts from then
        self.started = anyio.Event()
        self.started_at = 0.0

    def _client(self, i: int) -> ChainClient:
        return ChainClient(self.members, op_timeout_ms=self.opts.op_timeout_ms,
                           request_timeout_ms=min(3_000, self.opts.op_timeout_ms),
                           seed=self.opts.seed * 1000 + i, name=f"c{i}")

    def _start_clock(self) -> None:
        if not self.started.is_set():
            self.started_at = time.monotonic()
            self.stop_at = self.started_at + self.opts.time_limit_s
            self.started.set()

    async def _warmup_bound(self) -> None:
        with anyio.move_on_after(WARMUP_MAX_S):
            await self.started.wait()
        self._start_clock()

    async def run(self, progress: Callable[[], None] | None = None) -> None:
        self.stop_at = time.monotonic() + WARMUP_MAX_S + self.opts.time_limit_s
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._warmup_bound)
            for i in range(self.opts.concurrency):
                tg.start_soon(self._worker, i)
            if progress is not None:
                tg.start_soon(self._progress, progress)

    async def _progress(self, fn: Callable[[], None]) -> None:
        while time.monotonic() < self.stop_at:
            fn()
            await anyio.sleep(1.0)

    async def _pace(self) -> None:
        if self.opts.rate_per_s <= 0:
            return
        async with self._rate_lock:
            now = time.monotonic()
            slot = max(now, self._next_slot)
            self._next_slot = slot + 1.0 / self.opts.rate_per_s
        await anyio.sleep(max(0.0, slot - now))

    async def _worker(self, i: int) -> None:
        rng = random.Random(f"{self.opts.seed}/client/{i}")
        fs = list(self.opts.mix)
        weights = [self.opts.mix[f] for f in fs]
        seq = 0
        async with self.client_factory(i) as cc:
            while time.monotonic() < self.stop_at:
                await self._pace()
                if time.monotonic() >= self.stop_at:
                    break
                f = rng.choices(fs, weights)[0]
                if f == "read" and not self.acked.positions:
                    f = "append"
                seq += 1
                v = f"c{i}-{seq}"
                with anyio.fail_after(self.opts.op_timeout_ms / 1000 + 10):
                    if f == "append":
                        await self._append(cc, i, v, seq)
                    elif f == "write":
                        await self._write(cc, i, v, seq, rng)
                    else:
                        await self._read(cc, i, rng)

    def _done(self, i: int, f: str, kind: OpKind, value: dict[str, Any], info: CallInfo,
              t0: int, exc: BaseException | None) -> None:
        extra = {"node": info.node, "epoch": None if info.epoch_id is None
                 else info.epoch_id.number}
        if exc is None:
            typ, err = "ok", None
        elif f == "read" and isinstance(exc, NotWritten):
            typ, err = "ok", None
            value = {**value, "v": None}
        else:
            oc = outcome_of(exc, kind)
            typ = {Outcome.OK: "ok", Outcome.FAIL: "fail", Outcome.INFO: "info"}[oc]
            err = getattr(getattr(exc, "status", None), "name", None) or type(exc).__name__
            if typ == "ok":  # an error classified ok (cannot happen for these ops)
                typ = "info"
        if typ == "ok":
            self._start_clock()
        t1 = self.rec.event(i, typ, f, value, error=err, **extra)
        self.rec.latencies.append(((t0 - self.rec.t0_ns) / 1e9, (t1 - t0) / 1e6, f, typ))

    async def _append(self, cc: ChainClient, i: int, v: str, seq: int) -> None:
        data = payload(v, i, seq, self.opts.payload_bytes)
        t0 = self.rec.event(i, "invoke", "append", {"v": v, "prefix": PREFIX})
        info = CallInfo()
        try:
            pos = await cc.append(PREFIX, data, info=info)
        except Exception as e:  # every outcome is recorded
            self._done(i, "append", OpKind.APPEND, {"v": v, "prefix": PREFIX}, info, t0, e)
            return
        p = (pos.file, pos.offset, pos.size)
        self._done(i, "append", OpKind.APPEND, {"v": v, "pos": list(p)}, info, t0, None)
        self.acked.add(p, v)

    async def _write(self, cc: ChainClient, i: int, v: str, seq: int,
                     rng: random.Random) -> None:
        size = self.opts.payload_bytes
        # each client writes its own file; positions never repeat (write-once)
        uid = str(uuid.UUID(int=(self.opts.seed % 2**64) << 64 | i))
        p = (make_filename(WRITE_PREFIX, "", 0, uid, 1), 1024 + seq * size, size)
        data = payload(v, i, seq, size)
        value = {"pos": list(p), "v": v}
        t0 = self.rec.event(i, "invoke", "write", value)
        info = CallInfo()
        try:
            await cc.write(p[0], p[1], data, info=info)
        except Exception as e:
            self._done(i, "write", OpKind.WRITE, value, info, t0, e)
            return
        self._done(i, "write", OpKind.WRITE, value, info, t0, None)
        self.acked.add(p, v)

    async def _read(self, cc: ChainClient, i: int, rng: random.Random) -> None:
        ps = self.acked.positions
        r = rng.random()
        if r < PROBE_SHARE:
            # probe just past the newest ack: likely an append in flight right now (a read
            # there may see it before its ack -- fine -- but must never lose it again)
            last = ps[-1]
            p = (last[0], last[1] + last[2] * rng.randint(1, self.opts.concurrency), last[2])
            seen = await self._read_at(cc, i, p)
            # a probe that saw an in-flight value reads it again at once (REREADS_MAX
            # times at most): a value once seen must stay visible (in CP only the tail
            # may answer, so a value the tail does not hold yet must never be seen)
            for _ in range(REREADS_MAX):
                if seen is None or time.monotonic() >= self.stop_at:
                    break
                seen = await self._read_at(cc, i, p)
            return
        if r < PROBE_SHARE + NEWEST_SHARE:
            p = ps[-1]
        else:
            p = ps[rng.randrange(len(ps))]
        await self._read_at(cc, i, p)

    async def _read_at(self, cc: ChainClient, i: int, p: tuple[str, int, int]) -> str | None:
        """One recorded read; returns the id it saw (None: unwritten or failed)."""
        value: dict[str, Any] = {"pos": list(p)}
        t0 = self.rec.event(i, "invoke", "read", value)
        info = CallInfo()
        try:
            data = await cc.read(p[0], p[1], p[2], info=info)
        except Exception as e:
            self._done(i, "read", OpKind.READ, value, info, t0, e)
            return None
        v = payload_id(data)
        self._done(i, "read", OpKind.READ, {**value, "v": v}, info, t0, None)
        return v

    # ---- final phase -------------------------------------------------------------------
    async def final_reads(self, epoch_id: EpochId, replicas: list[str], *,
                          authority: str | None = None,
                          process_base: int = 10_000) -> dict[str, Any]:
        """Read every acked and every listed chunk from every replica (direct FLU reads at
        `epoch_id`, no repair), and the chunks only some replicas hold from `authority`
        (CP: the UPI tail; None: not read); returns per-file checksum lists per replica."""
        listed: dict[str, dict[str, list[tuple[int, int, str]]]] = {}
        positions = set(self.acked.positions)
        seen: dict[tuple[str, int, int], set[str]] = {}
        for r in replicas:
            host, port = self.members[r]
            files: dict[str, list[tuple[int, int, str]]] = {}
            try:
                async with FluClient(host, port, timeout_ms=10_000, name="final") as c:
                    for fname, _size in await c.list_files():
                        entries = await c.checksum_list(fname)
                        chunks = sorted(
                            (e.offset, e.size, e.csum.digest.hex() if e.csum else "trimmed")
                            for e in entries if e.size > 0)
                        if not chunks:
                            # a file with no chunk holds nothing to replicate (e.g. one
                            # whose only write a crash cut before its sync: recovery
                            # dropped the bytes, the empty file stays)
                            continue
                        files[fname] = chunks
                        for off, size, cs in files[fname]:
                            if cs != "trimmed" and len(seen) < FINAL_CHUNKS_MAX:
                                seen.setdefault((fname, off, size), set()).add(r)
            except Exception as e:  # an unlisted replica is reported
                files = {"error": [(0, 0, repr(e))]}
            listed[r] = files
        # Listed chunks held by every replica are read back too (unknown appends that
        # landed).  A chunk only some replicas hold ("divergent") is read back from the
        # authoritative replica only (`authority`: the CP UPI tail, where clients read):
        # an abandoned attempt (the head took it, the chain changed before it reached the
        # tail, the client re-appended elsewhere) must read as unwritten there, so a client
        # that saw it earlier (a read from a non-tail) shows up as unwritten-after-read.
        # Reading it from every replica would look like a value vanishing between two
        # reads.  Acknowledged positions are never "divergent": they are read everywhere,
        # and a replica missing one is a loss.
        divergent = sorted(p for p, rs in seen.items()
                           if len(rs) < len(replicas) and p not in positions)
        positions.update(p for p, rs in seen.items() if len(rs) == len(replicas))
        order = sorted(positions)
        upstream_only = [p for p in divergent if authority is not None
                         and authority not in seen[p]]
        on_authority = [p for p in divergent if authority is not None and authority in seen[p]]

        async def one_replica(k: int, r: str, order: list[tuple[str, int, int]]) -> None:
            host, port = self.members[r]
            async with contextlib.AsyncExitStack() as stack:
                c: FluClient | None = None
                conn_err = ""
                try:
                    c = await stack.enter_async_context(
                        FluClient(host, port, timeout_ms=10_000, name="final"))
                except Exception as e:  # every read of this replica fails: recorded
                    conn_err = type(e).__name__

                async def lane(j: int) -> None:
                    # lane j reads order[j::FINAL_READ_LANES] as its own process: the
                    # positions are distinct, so overlapping reads at one replica constrain
                    # every position exactly as one-at-a-time reads do
                    proc = process_base + k * FINAL_READ_LANES + j
                    for p in order[j::FINAL_READ_LANES]:
                        await read_one(proc, p)

                async def read_one(proc: int, p: tuple[str, int, int]) -> None:
                    value: dict[str, Any] = {"pos": list(p)}
                    self.rec.event(proc, "invoke", "read", value, final=True, node=r)
                    if c is None:
                        self.rec.event(proc, "fail", "read", value, final=True, node=r,
                                       error=f"no connection: {conn_err}")
                        return
                    try:
                        rep = await c.read(p[0], p[1], p[2], epoch_id=epoch_id)
                        data = rep.data()
                        v = None if rep.partial or len(data) != p[2] else payload_id(data)
                        self.rec.event(proc, "ok", "read", {**value, "v": v}, final=True,
                                       node=r, epoch=epoch_id.number)
                    except NotWritten:
                        self.rec.event(proc, "ok", "read", {**value, "v": None}, final=True,
                                       node=r, epoch=epoch_id.number)
                    except Exception as e:  # judged by harness.run.final_reads_check
                        self.rec.event(proc, "fail", "read", value, final=True, node=r,
                                       error=getattr(getattr(e, "status", None), "name",
                                                     type(e).__name__))

                async with anyio.create_task_group() as tg:
                    for j in range(min(FINAL_READ_LANES, len(order))):
                        tg.start_soon(lane, j)

        # one replica after the other (a value read at one replica, then unwritten at the
        # next, is an anomaly); the reads of one replica are pipelined over its lanes
        for k, r in enumerate(replicas):
            await one_replica(k, r, order)
        if authority is not None and divergent:
            await one_replica(len(replicas), authority, divergent)
        return {"replicas": replicas, "positions": len(order), "checksum_lists": listed,
                "authority": authority,
                "divergent": {"count": len(divergent),
                              "upstream_only": len(upstream_only),
                              "on_authority": len(on_authority),
                              "examples": [[*p, sorted(seen[p])] for p in divergent[:20]],
                              "on_authority_examples": [[*p, sorted(seen[p])]
                                                        for p in on_authority[:20]]}}
