"""Chain repair, run by the UPI tail (reference section 6; docs/repair.md).

Owns: the I/O around the pure planner ``machi.core.repair_plan``: the same-epoch check,
file inventories, streaming checksum lists, executing directives (copy with checksum
verification, taking another holder when a source's copy is corrupt and healing that
copy; CP reset; trim) with bounded concurrency and an overall deadline, the CP UPI sync
pass (``run_upi_sync``, and first in every CP ``run_repair``), progress as JSON log lines
and a live ``RepairStats`` object (the daemon's metrics export it while the run goes on,
``machi.node.metrics.RepairMetrics``).  Must not: decide *when* to
repair or promote anyone (the chain manager does, from ``RepairDone``), overwrite written
bytes (a heal rewrites only bytes that fail their own checksum, with bytes that match
it), copy corrupt bytes, or run any directive of a file whose plan has a problem.

Memory: per member one checksum-list batch (plus the client's bounded stream buffer),
one overlap cluster, and at most ``max_in_flight`` chunks of data.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Mapping
from contextlib import AsyncExitStack, aclosing
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc

from machi.client.flu_client import FluClient, parse_checksum_entries
from machi.core.checksum import CsumTag, TaggedCsum, digest
from machi.core.errors import (
    BadArg,
    BadChecksum,
    MachiError,
    NoSuchFile,
    NotWritten,
    Trimmed,
    Written,
)
from machi.core.list_summary import Summary, summarize
from machi.core.projection import Projection
from machi.core.ranges import MIN_OFFSET
from machi.core.repair_plan import (
    ChangeMemory,
    Copy,
    Directive,
    FilePlanner,
    Listing,
    Problem,
    Reset,
    Roles,
    Trim,
    anti_entropy_roles,
    repair_roles,
    upi_sync_roles,
)

from .log import JsonLog

PROBLEMS_IN_DETAIL = 3
PROBLEMS_LOGGED_MAX = 100


@dataclass(slots=True)
class RepairStats:
    """Counters of one repair (the original's: files/chunks/bytes per destination, bad
    chunks, conflicts), updated while it runs."""

    files: int = 0
    files_done: int = 0
    files_skipped: int = 0  # plans with problems: nothing executed for them
    chunks_copied: int = 0  # chunk writes (one per destination)
    bytes_in: int = 0  # read from sources
    bytes_out: int = 0  # written to destinations
    chunks_reset: int = 0
    ranges_trimmed: int = 0
    files_unchanged: int = 0  # anti-entropy: skipped, unchanged since they last agreed
    #: anti-entropy: planned part equal on every member by its summary (not listed)
    files_equal: int = 0
    #: checksum-list entries every participant listed identically (equal batches, not
    #: planned; counted per planning pass)
    entries_equal: int = 0
    bad_chunks: int = 0  # corrupt copies met on sources (each logged)
    chunks_healed: int = 0  # corrupt source copies rewritten with good bytes
    conflicts: int = 0  # problems other than bad chunks (planning, WRITTEN, races)
    errors: int = 0
    seconds: float = 0.0
    per_destination: dict[str, dict[str, int]] = field(default_factory=dict)

    def copied_to(self, member: str, size: int) -> None:
        d = self.per_destination.setdefault(member, {"chunks": 0, "bytes": 0})
        d["chunks"] += 1
        d["bytes"] += size
        self.chunks_copied += 1
        self.bytes_out += size

    def to_json(self) -> dict[str, Any]:
        return {
            "files": self.files, "files_done": self.files_done,
            "files_skipped": self.files_skipped, "files_unchanged": self.files_unchanged,
            "files_equal": self.files_equal,
            "entries_equal": self.entries_equal,
            "chunks_copied": self.chunks_copied,
            "bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
            "chunks_reset": self.chunks_reset, "ranges_trimmed": self.ranges_trimmed,
            "bad_chunks": self.bad_chunks, "chunks_healed": self.chunks_healed,
            "conflicts": self.conflicts,
            "errors": self.errors, "seconds": round(self.seconds, 3),
            "per_destination": {m: dict(d) for m, d in sorted(self.per_destination.items())},
        }


@dataclass(frozen=True, slots=True)
class RepairResult:
    ok: bool
    detail: str
    stats: RepairStats


class _Abort(Exception):
    """Stop the repair: ``detail`` says why."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class _Member:
    """One participant, reached through its FluClient, or through the local store when
    the caller gave no client for the local node."""

    def __init__(self, name: str, client: FluClient | None, store: Any,
                 lister: FluClient | None = None) -> None:
        self.name = name
        self.client = client
        self.store = store
        #: checksum lists stream over their own connection: a paused stream fills the
        #: client's buffer and would stall the data requests sharing its connection
        self.lister = lister

    async def epoch_id(self) -> Any:
        if self.client is not None:
            return (await self.client.wedge_status()).epoch_id
        return await self.store.projection_latest_epoch_id("private")

    async def list_files(self) -> list[tuple[str, int]]:
        if self.client is not None:
            return await self.client.list_files()
        return list(await self.store.list_files())

    async def list_file_changes(self, since: int | None
                                ) -> tuple[int, list[tuple[str, int, int | None]]]:
        if self.client is not None:
            return await self.client.list_file_changes(since)
        token, rows = await self.store.list_file_changes(since)
        return int(token), list(rows)

    async def summary(self, file: str, start: int, stop: int | None) -> Summary | None:
        """The summary of the file's checksum-list entries that end after ``start`` and
        start below ``stop`` (a missing file: the empty list's); None when the FLU gives
        none (a copy flagged corrupt, or the file deleted once fully trimmed: list it).
        BAD_ARG from a FLU without the field."""
        try:
            if self.client is not None:
                return await self.client.checksum_summary(
                    file, from_offset=start if start > MIN_OFFSET else None, to_offset=stop)
            return await self.store.checksum_summary(file, from_offset=start,
                                                     to_offset=stop)
        except NoSuchFile:
            return summarize(())
        except Trimmed:
            return None

    async def raw_batches(self, file: str, batch_size: int, eof: int,
                          from_offset: int = MIN_OFFSET) -> AsyncGenerator[list[Any], None]:
        """The file's checksum list in non-empty batches of raw wire entries (``[offset,
        size, csum hex or None(, 1)]``; ``parse_checksum_entries`` parses them), so that
        equal batches of several members compare without parsing.  A missing file has
        none.  A file this FLU deleted once it was fully trimmed reads as one trimmed
        range up to ``eof`` (the largest EOF any participant listed)."""
        batches: Any
        since = {"from_offset": from_offset} if from_offset > MIN_OFFSET else {}
        local = self.client is None
        if not local:
            client = self.lister or self.client
            assert client is not None
            batches = client.checksum_list_raw_batches(file, batch_size=batch_size, **since)
        else:
            batches = self.store.checksum_list(file, batch_size=batch_size, **since)
        try:
            async for batch in batches:
                if batch and local:  # the server's encoding (machi.node.server)
                    batch = [[e.offset, e.size, None if e.csum is None else e.csum.hex(),
                              *((1,) if e.corrupt else ())] for e in batch]
                if batch:
                    yield batch
        except NoSuchFile:
            return
        except Trimmed:
            if eof > MIN_OFFSET:
                yield [[MIN_OFFSET, eof - MIN_OFFSET, None]]
            return
        finally:
            aclose = getattr(batches, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()

    async def contents(self, file: str, offset: int, size: int, epoch: Any
                       ) -> tuple[list[Any], list[Any]]:
        """(written chunks, trimmed ranges) inside the range here now."""
        try:
            if self.client is not None:
                r: Any = await self.client.read(file, offset, size, epoch_id=epoch,
                                                needs_trimmed=True)
            else:
                r = await self.store.read(file, offset, size, needs_trimmed=True)
        except (NotWritten, NoSuchFile):
            return [], []
        except Trimmed:
            return [], [(offset, size)]
        return list(r.chunks), list(r.trimmed)

    async def read(self, file: str, offset: int, size: int, epoch: Any) -> tuple[bytes, Any]:
        if self.client is not None:
            r = await self.client.read(file, offset, size, epoch_id=epoch)
        else:
            r = await self.store.read(file, offset, size)
        if len(r.chunks) != 1 or r.chunks[0].offset != offset or len(r.chunks[0].data) != size:
            raise BadChecksum(f"{file} @{offset}+{size} on {self.name}: not one whole chunk")
        c = r.chunks[0]
        return bytes(c.data), c.csum

    async def write(self, file: str, offset: int, data: bytes, csum: TaggedCsum,
                    epoch: Any) -> None:
        if self.client is not None:
            await self.client.write(file, offset, data, epoch_id=epoch, csum=csum)
        else:
            await self.store.write(file, offset, data, csum)

    async def trim(self, file: str, offset: int, size: int, epoch: Any) -> None:
        if self.client is not None:
            await self.client.trim(file, offset, size, epoch_id=epoch)
        else:
            await self.store.trim(file, offset, size)

    async def repair_reset(self, file: str, offset: int, size: int, epoch: Any) -> int:
        if self.client is None:
            raise _Abort(f"reset on {self.name}: the repair source is never reset")
        return await self.client.repair_reset(file, offset, size, epoch_id=epoch)


class _Run:
    def __init__(self, p: Projection, roles: Roles, members: dict[str, _Member],
                 log: JsonLog, stats: RepairStats, max_in_flight: int,
                 max_bad_chunks: int, batch_size: int,
                 memory: ChangeMemory | None = None) -> None:
        self.p = p
        self.memory = memory
        self.roles = roles
        self.members = members
        self.log = log
        self.stats = stats
        self.max_in_flight = max_in_flight
        self.max_bad_chunks = max_bad_chunks
        self.batch_size = batch_size
        self.problems: list[str] = []  # the first PROBLEMS_LOGGED_MAX
        self.problem_count = 0
        self.eofs: dict[str, int] = {}
        #: anti-entropy: the part of each selected file to plan (from, entries below)
        self.starts: dict[str, tuple[int, int | None]] = {}
        #: members that answered a summary request BAD_ARG (older FLUs): listed only
        self.no_summary: set[str] = set()

    def problem(self, text: str, *, conflict: bool = True) -> None:
        self.problem_count += 1
        if conflict:
            self.stats.conflicts += 1
        if len(self.problems) < PROBLEMS_LOGGED_MAX:
            self.problems.append(text)
            self.log.error("repair problem", problem=text, epoch=self.p.epoch_id.short())

    async def check_epochs(self) -> None:
        for name, m in self.members.items():
            try:
                eid = await m.epoch_id()
            except MachiError as e:
                raise _Abort(f"not all in same epoch: {name} unreachable ({e})") from None
            if eid != self.p.epoch_id:
                raise _Abort(f"not all in same epoch: {name} at {eid.short()}, "
                             f"repair at {self.p.epoch_id.short()}")

    async def inventory(self) -> list[str]:
        """Every file any participant lists, sorted; remembers the largest EOF of each.
        With a ``ChangeMemory`` (anti-entropy): only the files it selects (changed since
        they last agreed; every file when a member cannot list changes)."""
        if self.memory is None:
            for m in self.members.values():
                for n, eof in await m.list_files():
                    self.eofs[n] = max(eof, self.eofs.get(n, 0))
            return sorted(self.eofs)
        listings: dict[str, Listing] | None = {}
        for name, m in self.members.items():
            since = self.memory.since(name)
            rows: list[tuple[str, int, int | None]]
            try:
                token, rows = await m.list_file_changes(since)
            except BadArg:  # a FLU without the ``changes`` field: plan every file
                rows = [(n, eof, MIN_OFFSET) for n, eof in await m.list_files()]
                listings = None
            if listings is not None:
                listings[name] = Listing(since, token, {n: low for n, _eof, low in rows})
            for n, eof, _low in rows:
                self.eofs[n] = max(eof, self.eofs.get(n, 0))
        self.starts = {f: (a, b) for f, a, b in self.memory.select(listings, self.eofs)}
        self.stats.files_unchanged += len(self.eofs) - len(self.starts)
        return sorted(self.starts)

    async def _plan(self, file: str) -> AsyncGenerator[Directive | Problem, None]:
        """The file's plan, streamed: checksum-list batches are fetched on demand.

        Equal prefix first: while every participant's next raw batch is the same list
        (same entries: every member lists them, nothing to do there), the batches are
        dropped unparsed; from the first batch that differs on some member (they all
        start right after the same entry) the planner takes over.  Most of a pass over
        entries that reached every replica costs a comparison, not a plan."""
        planner = FilePlanner(file, self.roles)
        eof = self.eofs.get(file, 0)
        start, stop = self.starts.get(file, (MIN_OFFSET, None))
        iters = {n: _below(m.raw_batches(file, self.batch_size, eof, start), stop)
                 for n, m in self.members.items()}
        first: dict[str, list[Any] | None] = {}
        try:
            while True:
                first = {n: await anext(it, None) for n, it in iters.items()}
                ref = next(iter(first.values()))
                if ref is None or any(b != ref for b in first.values()):
                    break
                self.stats.entries_equal += len(ref)
            while (name := planner.needs()) is not None:
                raw = first.pop(name, None) if name in first else await anext(
                    iters[name], None)
                if raw is None:
                    planner.end(name)
                else:
                    planner.feed(name, parse_checksum_entries(raw))
                for x in planner.take():
                    yield x
            for x in planner.take():
                yield x
        finally:
            with anyio.CancelScope(shield=True):
                for it in iters.values():
                    await it.aclose()

    async def repair_file(self, file: str) -> bool:
        """Pass 1 only checks the plan for problems (nothing kept); pass 2 plans again and
        executes while streaming (skipped when pass 1 found nothing to do: the common case
        of anti-entropy).  A file with a problem gets no directive at all, and memory
        stays bounded by one batch per member and one overlap cluster."""
        if self.memory is not None and await self._summaries_equal(file):
            self.stats.files_equal += 1
            self.stats.files_done += 1
            return True
        bad = work = False
        async with aclosing(self._plan(file)) as plan:
            async for x in plan:
                if isinstance(x, Problem):
                    bad = True
                    self.problem(str(x))
                else:
                    work = True
        if bad:
            self.stats.files_skipped += 1
            return False
        if not work:
            self.stats.files_done += 1
            return True
        send, recv = anyio.create_memory_object_stream[Directive](0)
        async with anyio.create_task_group() as tg:
            for _ in range(self.max_in_flight):
                tg.start_soon(self._worker, recv.clone())
            recv.close()
            async with send, aclosing(self._plan(file)) as plan:
                async for x in plan:
                    if isinstance(x, Problem):  # the lists changed since pass 1
                        self.problem(str(x))
                        bad = True
                        break
                    await send.send(x)
        if bad:
            self.stats.files_skipped += 1
        else:
            self.stats.files_done += 1
        return not bad

    async def _summaries_equal(self, file: str) -> bool:
        """Anti-entropy: every member gives the same summary of the part to plan, so
        their checksum lists there are equal (up to a BLAKE2b-256 collision) and the
        plan would be empty: no listing (docs/repair.md, "Equal summaries").  False as
        soon as one differs or a member gives none."""
        if self.no_summary:
            return False
        start, stop = self.starts.get(file, (MIN_OFFSET, None))
        ref: Summary | None = None
        for name, m in self.members.items():
            try:
                s = await m.summary(file, start, stop)
            except BadArg:  # a FLU without the field: list, as before
                self.no_summary.add(name)
                return False
            if s is None or (ref is not None and s != ref):
                return False
            ref = s
        return ref is not None

    async def _worker(self, recv: anyio.abc.ObjectReceiveStream[Directive]) -> None:
        async with recv:
            async for d in recv:
                await self._execute(d)

    async def _execute(self, d: Directive) -> None:
        epoch = self.p.epoch_id
        try:
            if isinstance(d, Trim):
                for name in d.members:
                    await self.members[name].trim(d.file, d.offset, d.size, epoch)
                    self.stats.ranges_trimmed += 1
            elif isinstance(d, Reset):
                await self._reset(d)
            else:
                await self._copy(d)
        except _Abort:
            raise
        except MachiError as e:
            self.stats.errors += 1
            raise _Abort(f"{type(d).__name__.lower()} {d.file} @{d.offset}+{d.size}: "
                         f"{type(e).__name__}: {e}") from None

    async def _reset(self, d: Reset) -> None:
        """CP reset with a re-check at the source before and after.

        A checksum list is a snapshot: the tail's may predate a write that then reached a
        repairing member (writes go down UPI ++ repairing, tail first).  Before: the tail
        must still have nothing there.  After: whatever the tail got in between (it may
        have been acknowledged) is copied to the reset members, so nothing acknowledged is
        lost; later writes find the place free.
        """
        src, epoch = self.members[self.roles.source], self.p.epoch_id
        where = f"{d.file} @{d.offset}+{d.size} on {','.join(d.members)}"
        chunks, trimmed = await src.contents(d.file, d.offset, d.size, epoch)
        if chunks or trimmed:
            self.problem(f"written at the source during repair, not reset: {where}")
            return
        for name in d.members:
            self.stats.chunks_reset += await self.members[name].repair_reset(
                d.file, d.offset, d.size, epoch)
        chunks, trimmed = await src.contents(d.file, d.offset, d.size, epoch)
        if trimmed:
            self.problem(f"trimmed at the source during the reset: {where}")
        for c in chunks:
            if c.csum.tag is CsumTag.SERVER_REGEN:  # maybe a clipped piece: no guessing
                self.problem(f"written at the source during the reset: {where}")
                continue
            data = bytes(c.data)
            for name in d.members:
                try:
                    await self.members[name].write(d.file, c.offset, data, c.csum, epoch)
                except Written:
                    self.problem(f"written with other bytes after the reset: {where}")
                    continue
                self.stats.copied_to(name, len(data))

    async def _read_good(self, d: Copy) -> tuple[bytes | None, list[str]]:
        """The chunk's bytes from the first source whose bytes match the checksum (the
        planned source, then the fallbacks); also the sources found corrupt, each one
        logged loudly and counted (never dropped silently)."""
        bad: list[str] = []
        for name in (d.source, *d.fallbacks):
            m = self.members.get(name)
            if m is None:
                continue
            try:
                data, _ = await m.read(d.file, d.offset, d.size, self.p.epoch_id)
                if digest(data) != d.csum.digest:
                    raise BadChecksum("bytes do not match the checksum list")
            except BadChecksum as e:
                self.stats.bad_chunks += 1
                bad.append(name)
                self.log.error("repair: corrupt chunk on a source, trying another",
                               file=d.file, offset=d.offset, size=d.size, member=name,
                               error=str(e), epoch=self.p.epoch_id.short())
                if self.stats.bad_chunks > self.max_bad_chunks:
                    raise _Abort(f"more than {self.max_bad_chunks} bad chunks") from None
                continue
            return data, bad
        return None, bad

    async def _copy(self, d: Copy) -> None:
        data, bad = await self._read_good(d)
        if data is None:
            self.problem(f"bad chunk: {d.file} @{d.offset}+{d.size}: no good copy on "
                         f"{','.join(bad) or d.source}", conflict=False)
            return
        self.stats.bytes_in += len(data)
        for name in bad:  # an exact rewrite over corrupt bytes heals them (the FLU's rule)
            try:
                await self.members[name].write(d.file, d.offset, data, d.csum, self.p.epoch_id)
            except MachiError as e:
                self.problem(f"bad chunk not healed: {d.file} @{d.offset}+{d.size} on "
                             f"{name}: {type(e).__name__}: {e}", conflict=False)
                continue
            self.stats.chunks_healed += 1
            self.log.warning("repair: healed corrupt chunk", file=d.file, offset=d.offset,
                             size=d.size, member=name, epoch=self.p.epoch_id.short())
        for name in d.destinations:
            try:
                await self.members[name].write(d.file, d.offset, data, d.csum, self.p.epoch_id)
            except Written:
                # an exact replay is OK in the store: WRITTEN means other bytes are there
                self.problem(f"written with other bytes: {d.file} @{d.offset}+{d.size} on "
                             f"{name} (source {d.source})")
                continue
            self.stats.copied_to(name, len(data))


async def _below(batches: AsyncGenerator[list[Any], None], stop: int | None
                 ) -> AsyncGenerator[list[Any], None]:
    """The raw batches' entries that start below ``stop`` (all when None); the stream is
    closed at the first entry at or past it (lists are sorted)."""
    try:
        async for batch in batches:
            if stop is None or batch[-1][0] < stop:
                yield batch
                continue
            head = [e for e in batch if e[0] < stop]
            if head:
                yield head
            return
    finally:
        with anyio.CancelScope(shield=True):
            await batches.aclose()


def _sibling(c: FluClient) -> FluClient:
    """Another client to the same FLU (own connection), for checksum-list streams."""
    return FluClient(
        c.host, c.port, secret=c.secret, ssl_context=c.ssl_context,
        tls_hostname=c.tls_hostname, timeout_ms=c.timeout_ms,
        connect_timeout_ms=c.connect_timeout_ms, max_frame_size=c.max_frame_size,
        name=f"{c.name}-repair-lists",
    )


def _leaves(eg: BaseExceptionGroup[Any]) -> list[BaseException]:
    out: list[BaseException] = []
    for e in eg.exceptions:
        out.extend(_leaves(e) if isinstance(e, BaseExceptionGroup) else [e])
    return out


async def run_repair(
    projection: Projection,
    *,
    local_name: str,
    store: Any = None,
    clients: Mapping[str, FluClient],
    log: JsonLog,
    progress_every_s: float = 5.0,
    deadline_s: float = 600.0,
    max_in_flight: int = 4,
    max_bad_chunks: int = 100,
    checksum_batch_size: int = 1024,
    stats: RepairStats | None = None,
) -> RepairResult:
    """Repair the repairing members of ``projection`` (called on its UPI tail).

    CP runs the UPI sync first (the paper's step 3: the UPI members agree, by copying
    forward), then makes the repairing members match the tail.  ``clients`` reach the
    participants (the local node may be reached through ``store`` instead).  Never raises
    for repair failures: they come back as ``ok=False`` with a detail naming file, offset
    and members.  Pass ``stats`` to watch it while it runs.
    """
    roles = repair_roles(projection)
    if roles is None:
        return RepairResult(True, "nothing to repair", stats or RepairStats())
    sync = upi_sync_roles(projection)
    passes = [roles] if sync is None else [sync, roles]
    return await _run_passes(
        projection, passes, "repair", local_name=local_name, store=store, clients=clients,
        log=log, progress_every_s=progress_every_s, deadline_s=deadline_s,
        max_in_flight=max_in_flight, max_bad_chunks=max_bad_chunks,
        checksum_batch_size=checksum_batch_size, stats=stats)


async def run_upi_sync(
    projection: Projection,
    *,
    local_name: str,
    store: Any = None,
    clients: Mapping[str, FluClient],
    log: JsonLog,
    deadline_s: float = 600.0,
    max_in_flight: int = 4,
    max_bad_chunks: int = 100,
    checksum_batch_size: int = 1024,
    stats: RepairStats | None = None,
) -> RepairResult:
    """CP, on the UPI tail after an epoch change: make the real UPI members agree (chunks
    an abandoned append left upstream are copied forward to the tail; docs/repair.md).
    Same guarantees and result as :func:`run_repair`."""
    roles = upi_sync_roles(projection)
    if roles is None:
        return RepairResult(True, "nothing to sync", stats or RepairStats())
    return await _run_passes(
        projection, [roles], "upi sync", local_name=local_name, store=store,
        clients=clients, log=log, progress_every_s=5.0, deadline_s=deadline_s,
        max_in_flight=max_in_flight, max_bad_chunks=max_bad_chunks,
        checksum_batch_size=checksum_batch_size, stats=stats)


async def run_anti_entropy(
    projection: Projection,
    *,
    local_name: str,
    store: Any = None,
    clients: Mapping[str, FluClient],
    log: JsonLog,
    memory: ChangeMemory | None = None,
    progress_every_s: float = 5.0,
    deadline_s: float = 600.0,
    max_in_flight: int = 4,
    max_bad_chunks: int = 100,
    checksum_batch_size: int = 1024,
    stats: RepairStats | None = None,
) -> RepairResult:
    """AP anti-entropy, on the UPI tail of a stable AP chain: the AP repair's union rule
    over the UPI members (chunks and trims some member lacks are copied to it; conflicts
    are problems, never resolved), planning only the files ``memory`` selects: those
    changed on some member since a pass last found them in agreement (pass the same
    ``ChangeMemory`` to every pass; None plans every file).  Same guarantees and result
    as :func:`run_repair`; ``ok=False`` without doing anything when ``projection`` is not
    a stable AP chain (never in CP, docs/repair.md)."""
    roles = anti_entropy_roles(projection)
    if roles is None:
        return RepairResult(False, "not a stable AP chain: no anti-entropy",
                            stats or RepairStats())
    return await _run_passes(
        projection, [roles], "anti-entropy", local_name=local_name, store=store,
        clients=clients, log=log, progress_every_s=progress_every_s, deadline_s=deadline_s,
        max_in_flight=max_in_flight, max_bad_chunks=max_bad_chunks,
        checksum_batch_size=checksum_batch_size, stats=stats,
        memory=memory if memory is not None else ChangeMemory())


async def _run_passes(
    projection: Projection,
    passes: list[Roles],
    what: str,
    *,
    local_name: str,
    store: Any,
    clients: Mapping[str, FluClient],
    log: JsonLog,
    progress_every_s: float,
    deadline_s: float,
    max_in_flight: int,
    max_bad_chunks: int,
    checksum_batch_size: int,
    stats: RepairStats | None,
    memory: ChangeMemory | None = None,
) -> RepairResult:
    stats = stats if stats is not None else RepairStats()
    t0 = time.monotonic()
    fields = {"epoch": projection.epoch_id.short(), "upi": list(projection.upi),
              "repairing": list(projection.repairing), "mode": projection.mode}
    source = passes[0].source
    if source != local_name:
        return RepairResult(False, f"{local_name} is not the UPI tail ({source})", stats)
    members: dict[str, _Member] = {}
    names = [n for r in passes for n in (*r.participants, *r.upi_others)]
    for name in dict.fromkeys(names):
        client = clients.get(name)
        if client is None and (name != local_name or store is None):
            return RepairResult(False, f"no client for {name}", stats)
        members[name] = _Member(name, client, store)
    runs = [_Run(projection, r, {n: members[n] for n in dict.fromkeys(
                (*r.participants, *r.upi_others))}, log, stats, max(1, max_in_flight),
                 max_bad_chunks, max(1, checksum_batch_size), memory) for r in passes]
    # a periodic anti-entropy pass logs at info only when it planned a file or failed
    quiet = memory is not None
    (log.debug if quiet else log.info)(f"{what} started", **fields)

    async def progress() -> None:
        while True:
            await anyio.sleep(progress_every_s)
            stats.seconds = time.monotonic() - t0
            log.info(f"{what} progress", **fields, **stats.to_json())

    abort: str | None = None
    with anyio.move_on_after(deadline_s) as deadline:
        try:
            async with AsyncExitStack() as stack:
                for m in members.values():
                    if m.client is not None:
                        m.lister = await stack.enter_async_context(_sibling(m.client))
                tg = await stack.enter_async_context(anyio.create_task_group())
                tg.start_soon(progress)
                try:
                    for run in runs:
                        await run.check_epochs()
                        files = await run.inventory()
                        stats.files = max(stats.files, len(files))
                        for file in files:
                            if await run.repair_file(file) and run.memory is not None:
                                run.memory.done(file)
                        if run.problems:
                            break  # the next pass builds on this one: stop here
                finally:
                    tg.cancel_scope.cancel()
        except* _Abort as eg:
            abort = "; ".join(e.detail for e in _leaves(eg) if isinstance(e, _Abort))
        except* MachiError as eg:
            stats.errors += 1
            abort = "; ".join(f"{type(e).__name__}: {e}" for e in _leaves(eg))
    stats.seconds = time.monotonic() - t0
    if deadline.cancelled_caught:
        abort = f"deadline of {deadline_s} s passed"
    problems = [p for run in runs for p in run.problems]
    count = sum(run.problem_count for run in runs)
    if abort is None and problems:
        shown = "; ".join(problems[:PROBLEMS_IN_DETAIL])
        more = count - PROBLEMS_IN_DETAIL
        abort = f"{count} problems ({what} refused): {shown}" + (
            f"; and {more} more" if more > 0 else "")
    ok = abort is None
    detail = abort or (
        f"{what}: {stats.files} files"
        + (f" ({stats.files_unchanged} unchanged, not planned)" if quiet else "")
        + f": {stats.chunks_copied} chunk copies "
        f"({stats.bytes_out} bytes), {stats.chunks_reset} reset, "
        f"{stats.ranges_trimmed} trimmed, {stats.chunks_healed} healed")
    level = log.error if not ok else (
        log.debug if quiet and not (stats.chunks_copied or stats.ranges_trimmed
                                    or stats.chunks_healed) else log.info)
    level(f"{what} finished", ok=ok, detail=detail, **fields, **stats.to_json())
    return RepairResult(ok, detail, stats)
