"""Async Chain Replication client (reference section 4): one logical store over a chain.

Owns: projection discovery (latest *private* projection of every known member, read in
parallel; the largest epoch id wins; an empty UPI is "not available yet"), a pool of
``FluClient``s (one per member address, each living in a task of this client's task
group), client-driven propagation (append at the head, then ``write`` to every other
member of the mutation chain in order), reads from the UPI tail with read repair, trim,
checksum_list and list_files, bounded retries with backoff and projection refresh, the
CP witness check, and per-call information for histories (``CallInfo``).

Must not: decide anything the pure core decides (``machi.core.cr_plan`` plans,
``machi.core.outcome`` is the one table of reactions and outcomes), send data to a
witness, retry without a bound, or repair a conflict silently (two different byte
strings at one place raise ``Written`` with both members named).

Every final exception is the ``MachiError`` subclass of its status with two extra
attributes: ``outcome`` (``machi.core.outcome.Outcome``: ok / fail / info) and
``call_info`` (``CallInfo``).  Giving up (attempts or deadline) raises ``Partition``;
its outcome still comes from the operation's progress (a chain that was WEDGED the whole
time is a definite ``fail``).  Use :func:`outcome_of` to classify any exception.
"""

from __future__ import annotations

import random
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

import anyio
import anyio.abc

from machi.client.flu_client import ChecksumEntry, ChunkPos, FluClient, ReadReply
from machi.core import cr_plan, wire
from machi.core.checksum import CsumTag, TaggedCsum, client_csum
from machi.core.epoch import EpochId
from machi.core.errors import (
    AuthFailed,
    AuthRequired,
    MachiError,
    Partition,
    error_for_status,
)
from machi.core.outcome import (
    MAYBE_EFFECT,
    MUTATIONS,
    OpKind,
    Outcome,
    Progress,
    Reaction,
    Role,
    classify,
    classify_gave_up,
    reaction,
)
from machi.core.projection import Projection
from machi.core.status import Status

T = TypeVar("T")

#: Read repair asks every candidate at once only for ranges up to this size.
REPAIR_PARALLEL_MAX_BYTES = 4 * 1024 * 1024
#: Bound on pooled FluClients (members x address changes); older unused ones are closed.
MAX_POOL = 256


@dataclass
class CallInfo:
    """What one chain-client call did (for the harness's history fields)."""

    op: str = ""
    outcome: str = ""  # ok / fail / info
    error: str = ""  # status name of the final error ("" when ok)
    epoch_id: EpochId | None = None  # epoch of the last request sent
    node: str | None = None  # head (mutations), tail or repair source (reads)
    acked: list[str] = field(default_factory=list)  # members holding our bytes
    repaired: list[str] = field(default_factory=list)  # members written by read repair
    attempts: int = 0  # retries taken (0 = first try succeeded)
    stage: str = ""  # not_sent / sent / partial (mutations)

    def to_json(self) -> dict[str, Any]:
        return {
            "op": self.op, "outcome": self.outcome, "error": self.error,
            "epoch": None if self.epoch_id is None else self.epoch_id.number,
            "epoch_csum": None if self.epoch_id is None else self.epoch_id.csum.hex(),
            "node": self.node, "acked": list(self.acked), "repaired": list(self.repaired),
            "attempts": self.attempts, "stage": self.stage,
        }


def outcome_of(exc: BaseException, op: OpKind) -> Outcome:
    """ok / fail / info for an exception raised by a ChainClient call (or anything else:
    unknown exceptions of a mutation are ``info``, of a read ``fail``)."""
    oc = getattr(exc, "outcome", None)
    if isinstance(oc, Outcome):
        return oc
    if isinstance(exc, MachiError):
        return classify(op, exc.status, Progress(maybe_written=True))
    return Outcome.INFO if op in MUTATIONS else Outcome.FAIL


class _GiveUp(Exception):
    """Internal: retries or deadline exhausted (raised as Partition by the op)."""


class _Split(Exception):
    """Internal: a batch got an answer it cannot handle for all its chunks at once (a
    definite rejection, or WRITTEN downstream): every chunk continues alone, from the
    batch's progress (``positions``: where the head put them; None before that)."""

    def __init__(self, positions: list[ChunkPos] | None) -> None:
        super().__init__("split")
        self.positions = positions


@dataclass(eq=False)
class _Queued:
    """One append waiting for (or riding in) a batch."""

    op: _Op
    data: bytes | bytearray | memoryview
    csum: TaggedCsum
    chunk_extra: int
    done: anyio.Event = field(default_factory=anyio.Event)
    taken: bool = False
    result: ChunkPos | None = None
    error: BaseException | None = None

    def deliver(self, result: ChunkPos | None = None, error: BaseException | None = None
                ) -> None:
        if not self.done.is_set():
            self.result, self.error = result, error
            self.done.set()


@dataclass(eq=False)
class _PrefixQueue:
    items: list[_Queued] = field(default_factory=list)
    in_flight: int = 0  # batch tasks started and not finished (bounded by K)
    starting: int = 0  # of those, tasks that have not taken their chunks yet (0 or 1)


class _Op:
    """One public call: deadline, attempts, progress, and the request helper."""

    def __init__(self, cc: ChainClient, kind: OpKind, info: CallInfo | None) -> None:
        self.cc = cc
        self.kind = kind
        self.info = info if info is not None else CallInfo()
        self.info.op = kind.value
        self.deadline = time.monotonic() + cc.op_timeout_ms / 1000
        self.attempt = 0
        self.progress = Progress()
        self.last_status = Status.OK
        self.last_msg = ""

    def remaining_s(self) -> float:
        return self.deadline - time.monotonic()

    async def call(
        self, member: str, fn: Callable[[FluClient], Awaitable[T]], *, mutation: bool = False
    ) -> tuple[Status, T | None, str]:
        """One request to ``member``: (status, result or None, error message)."""
        if self.remaining_s() * 1000 < self.cc.min_request_ms:
            # too little time left to expect an answer: a request cut short by our own
            # deadline would turn a clean failure into an unknown outcome
            raise _GiveUp()
        try:
            c = await self.cc._flu(member)
        except KeyError:
            return Status.PARTITION, None, f"no address known for member {member!r}"
        timeout_s = min(self.cc.request_timeout_ms / 1000, self.remaining_s())
        try:
            with anyio.fail_after(timeout_s):
                res = await fn(c)
            st, msg = Status.OK, ""
        except TimeoutError:
            res, st, msg = None, Status.PARTITION, f"{member}: request timed out"
        except MachiError as e:
            res, st, msg = None, e.status, f"{member}: {e}"
        except BaseException:
            if mutation:  # cancelled with the request in flight: its effect is unknown
                self.progress = self.progress.after(Status.PARTITION)
            raise
        if mutation:
            self.progress = self.progress.after(st)
        if st is not Status.OK:
            self.last_status, self.last_msg = st, msg
        return st, res, msg

    async def backoff(self) -> None:
        now_ms = int(time.monotonic() * 1000)
        delay = self.cc.backoff.next_delay_ms(
            self.attempt, now_ms, int(self.deadline * 1000),
            self.cc._rng.randint(0, self.cc.backoff.jitter_ms),
        )
        self.attempt += 1
        self.info.attempts = self.attempt
        if delay is None:
            raise _GiveUp()
        await anyio.sleep(delay / 1000)

    async def retry(self, p: Projection) -> Projection:
        """Back off, then refresh the projection (unless someone already moved past ``p``)."""
        await self.backoff()
        return await self.cc._refresh(self, stale=p.epoch_id)

    def error(self, status: Status, msg: str, *, outcome: Outcome | None = None) -> MachiError:
        err = error_for_status(status, msg) if status is not Status.OK else Partition(msg)
        oc = outcome if outcome is not None else classify(self.kind, status, self.progress)
        return self._annotate(err, oc)

    def _annotate(self, err: MachiError, oc: Outcome) -> MachiError:
        self.info.outcome = oc.value
        self.info.error = err.status.name
        self.info.stage = self.progress.stage if self.kind in MUTATIONS else ""
        self.info.acked = sorted(self.progress.acked)
        err.outcome = oc  # type: ignore[attr-defined]
        err.call_info = self.info  # type: ignore[attr-defined]
        return err

    def gave_up(self) -> MachiError:
        status = self.last_status if self.last_status is not Status.OK else Status.PARTITION
        oc = classify_gave_up(self.kind, self.progress)
        err = Partition(
            f"{self.kind.value}: gave up after {self.attempt} retries; last: "
            f"{self.last_msg or status.name}"
        )
        return self._annotate(err, oc)

    def ok(self) -> None:
        self.info.outcome = Outcome.OK.value
        self.info.error = ""
        self.info.stage = "done" if self.kind in MUTATIONS else ""
        self.info.acked = sorted(self.progress.acked)

    async def run(self, body: Callable[[], Awaitable[T]]) -> T:
        # Every request and backoff is bounded by the deadline already; this scope is the
        # safety net (e.g. waiting for another task's projection refresh).
        with anyio.move_on_after(max(0.0, self.remaining_s()) + 1.0):
            try:
                res = await body()
            except _GiveUp:
                raise self.gave_up() from None
            except MachiError as e:
                if not isinstance(getattr(e, "outcome", None), Outcome):
                    self._annotate(e, classify(self.kind, e.status, self.progress))
                raise
            self.ok()
            return res
        raise self.gave_up()


def _inherit(op: _Op, bop: _Op) -> None:
    """A batched chunk's own ``_Op`` takes over what its batch did."""
    op.progress = bop.progress
    op.attempt = max(op.attempt, bop.attempt)
    op.info.attempts = op.attempt
    op.last_status, op.last_msg = bop.last_status, bop.last_msg
    op.info.node = bop.info.node
    op.info.epoch_id = bop.info.epoch_id


class ChainClient:
    """Client of one chain.  ``async with ChainClient({"a": ("127.0.0.1", 20401), ...})``.

    ``members`` seeds discovery; the ``members_dict`` of the adopted projection wins for
    later calls.  ``tls``: an ``ssl.SSLContext`` for every member.  Timeouts: each request
    ``request_timeout_ms``, each call ``op_timeout_ms`` overall, each projection read
    ``discovery_timeout_ms``; retries at most ``max_retries`` per call; no request is
    sent with less than ``min_request_ms`` left before the call's deadline.
    ``flu_factory`` builds the per-member clients (a ``FluClient`` subclass can add fault
    points in tests or metrics in a harness); it gets ``FluClient``'s arguments.
    """

    def __init__(
        self,
        members: Mapping[str, tuple[str, int]],
        *,
        secret: bytes | None = None,
        tls: ssl.SSLContext | None = None,
        tls_hostname: str | None = None,
        op_timeout_ms: int = 30_000,
        request_timeout_ms: int = 5_000,
        discovery_timeout_ms: int = 2_000,
        min_request_ms: int = 200,
        max_retries: int = 40,
        backoff: cr_plan.Backoff | None = None,
        seed: int | None = None,
        name: str = "chain-client",
        flu_factory: Callable[..., FluClient] = FluClient,
        batch_max_chunks: int = 64,
        batch_max_bytes: int = 4 * 1024 * 1024,
        batch_chunk_max_bytes: int = 64 * 1024,
        batches_in_flight: int = 2,
        batch_queue_max: int = 4096,
    ) -> None:
        if not members:
            raise ValueError("ChainClient needs at least one member")
        if min(batch_max_chunks, batch_max_bytes, batch_chunk_max_bytes, batches_in_flight,
               batch_queue_max) < 1:
            raise ValueError("batch_max_chunks, batch_max_bytes, batch_chunk_max_bytes, "
                             "batches_in_flight and batch_queue_max must be >= 1")
        if batch_max_chunks > wire.MAX_CHUNKS_PER_REQUEST:
            raise ValueError(f"batch_max_chunks: at most {wire.MAX_CHUNKS_PER_REQUEST}")
        # Natural batching of appends (docs/client.md, "Batching"): 1 chunk = off.
        self.batch_max_chunks = batch_max_chunks
        self.batch_max_bytes = batch_max_bytes
        self.batch_chunk_max_bytes = min(batch_chunk_max_bytes, batch_max_bytes)
        self.batches_in_flight = batches_in_flight
        self.batch_queue_max = batch_queue_max
        self._queues: dict[str, _PrefixQueue] = {}
        #: counters: append requests sent to a head, chunks they carried, batches split
        self.stats = {"head_requests": 0, "head_chunks": 0, "batch_splits": 0}
        self._seed_addrs = {str(n): (str(h), int(p)) for n, (h, p) in members.items()}
        self._addrs = dict(self._seed_addrs)
        self.secret = secret
        self.tls = tls
        self.tls_hostname = tls_hostname
        self.op_timeout_ms = op_timeout_ms
        self.request_timeout_ms = request_timeout_ms
        self.discovery_timeout_ms = discovery_timeout_ms
        self.min_request_ms = min(min_request_ms, request_timeout_ms)
        base = backoff or cr_plan.Backoff()
        self.backoff = cr_plan.Backoff(
            base.base_ms, base.factor, base.cap_ms, base.jitter_ms, max_retries + 1
        )
        self.name = name
        self._flu_factory = flu_factory
        self._rng = random.Random(seed)
        self._proj: Projection | None = None
        self._pool: dict[tuple[str, str, int], tuple[FluClient, anyio.Event, anyio.Event]] = {}
        self._refresh_lock = anyio.Lock()
        self._discovered_at = 0.0
        self._tg: anyio.abc.TaskGroup | None = None

    # ---- lifetime -------------------------------------------------------------------------
    async def __aenter__(self) -> ChainClient:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for _c, _ready, stop in self._pool.values():
            stop.set()
        self._pool.clear()
        assert self._tg is not None
        tg, self._tg = self._tg, None
        await tg.__aexit__(None, None, None)

    @staticmethod
    async def _hold(c: FluClient, ready: anyio.Event, stop: anyio.Event) -> None:
        async with c:
            ready.set()
            await stop.wait()

    async def _flu(self, member: str) -> FluClient:
        """The pooled FluClient of ``member`` (KeyError when its address is unknown)."""
        if self._tg is None:
            raise RuntimeError("use `async with ChainClient(...)`")
        host, port = self._addrs[member]
        key = (member, host, port)
        entry = self._pool.get(key)
        if entry is None:
            self._trim_pool(member)
            c = self._flu_factory(
                host, port, secret=self.secret, ssl_context=self.tls,
                tls_hostname=self.tls_hostname, timeout_ms=self.request_timeout_ms,
                connect_timeout_ms=min(self.request_timeout_ms, 5_000), name=self.name,
            )
            entry = (c, anyio.Event(), anyio.Event())
            self._pool[key] = entry
            self._tg.start_soon(self._hold, *entry)
        await entry[1].wait()
        return entry[0]

    def _trim_pool(self, member: str) -> None:
        """Close clients of ``member`` at an old address, and the oldest beyond MAX_POOL."""
        for key in [k for k in self._pool if k[0] == member]:
            self._pool.pop(key)[2].set()
        while len(self._pool) >= MAX_POOL:
            self._pool.pop(next(iter(self._pool)))[2].set()

    # ---- projections ------------------------------------------------------------------------
    @property
    def projection(self) -> Projection | None:
        """The adopted projection (None before the first call)."""
        return self._proj

    @property
    def last_epoch_id(self) -> EpochId | None:
        return None if self._proj is None else self._proj.epoch_id

    async def refresh(self) -> Projection:
        """Rediscover the projection now (bounded by ``op_timeout_ms``)."""
        op = _Op(self, OpKind.LIST_FILES, None)
        return await op.run(lambda: self._refresh(op, stale=self.last_epoch_id, force=True))

    async def _projection(self, op: _Op) -> Projection:
        p = self._proj
        if p is not None and cr_plan.available(p):
            op.info.epoch_id = p.epoch_id
            return p
        return await self._refresh(op, stale=None if p is None else p.epoch_id, force=True)

    async def _refresh(self, op: _Op, *, stale: EpochId | None, force: bool = False) -> Projection:
        """Discover the latest projection, waiting with backoff while none is available.

        Concurrent callers share the work: a caller whose failure predates a discovery
        that finished meanwhile (or who saw an epoch that was already replaced) reuses it.
        """
        asked_at = time.monotonic()
        try:
            with anyio.fail_after(max(0.001, op.remaining_s())):
                await self._refresh_lock.acquire()
        except TimeoutError:
            raise _GiveUp() from None
        try:
            while True:
                cur = self._proj
                fresh = self._discovered_at > asked_at or (
                    cur is not None and stale is not None and cur.epoch_id != stale)
                if not force and fresh and cur is not None and cr_plan.available(cur):
                    op.info.epoch_id = cur.epoch_id
                    return cur
                force = False
                found = await self._discover()
                self._discovered_at = time.monotonic()
                best = cr_plan.pick_latest([cur, found])
                if best is not None and best is not cur:
                    self._adopt(best)
                if best is not None and cr_plan.available(best):
                    op.info.epoch_id = best.epoch_id
                    return best
                op.last_status, op.last_msg = Status.PARTITION, "no usable projection"
                await op.backoff()
                asked_at = time.monotonic()
        finally:
            self._refresh_lock.release()

    async def _discover(self) -> Projection | None:
        """The largest private projection any known member reports (None: nobody answered
        with one).  When nobody answered and some member refused our credentials, that
        refusal is raised: retrying cannot help."""
        results: list[Projection] = []
        refusals: list[MachiError] = []

        async def one(member: str) -> None:
            try:
                with anyio.fail_after(self.discovery_timeout_ms / 1000):
                    c = await self._flu(member)
                    results.append(await c.projection_read_latest("private"))
            except (AuthFailed, AuthRequired) as e:
                refusals.append(e)
            except (MachiError, TimeoutError, KeyError):
                pass

        async with anyio.create_task_group() as tg:
            for m in sorted(self._addrs):
                tg.start_soon(one, m)
        if not results and refusals:
            raise refusals[0]
        return cr_plan.pick_latest(results)

    def _adopt(self, p: Projection) -> None:
        for name, spec in p.members_dict.items():
            if spec.port > 0 and spec.address:
                self._addrs[name] = (spec.address, spec.port)
        self._proj = p

    async def _witnesses_ok(self, op: _Op, p: Projection) -> bool:
        """CP: every witness in the UPI reports our epoch, not wedged (never sent data)."""
        for w in cr_plan.witnesses_to_check(p):
            st, ws, _msg = await op.call(w, lambda c: c.wedge_status())
            if st is not Status.OK or ws is None:
                return False
            if not cr_plan.witness_ok(p, ws.wedged, ws.epoch_id):
                op.last_status, op.last_msg = Status.WEDGED, f"witness {w} not at our epoch"
                return False
        return True

    # ---- mutations ----------------------------------------------------------------------------
    async def append(
        self, prefix: str, data: bytes | bytearray | memoryview, *, chunk_extra: int = 0,
        info: CallInfo | None = None,
    ) -> ChunkPos:
        """Append ``data`` to a file of ``prefix`` on every member of the mutation chain;
        returns where it landed (with the stored checksum)."""
        csum = client_csum(data)  # computed once; every replica verifies it
        op = _Op(self, OpKind.APPEND, info)
        if self.batch_max_chunks > 1 and len(data) + chunk_extra <= self.batch_chunk_max_bytes:
            return await op.run(lambda: self._append_queued(op, prefix, data, csum,
                                                            chunk_extra))
        return await op.run(lambda: self._append(op, prefix, data, csum, chunk_extra))

    async def _append(
        self, op: _Op, prefix: str, data: bytes | bytearray | memoryview, csum: TaggedCsum,
        chunk_extra: int, pos: ChunkPos | None = None,
    ) -> ChunkPos:
        """One chunk down the chain; ``pos``: the head already placed it (a split batch)."""
        p = await self._projection(op)
        while True:
            if pos is None:
                head = p.head
                assert head is not None  # available() guarantees a real UPI member
                epoch = p.epoch_id
                st, res, msg = await op.call(head, lambda c, epoch=epoch: c.append(
                    prefix, data, epoch_id=epoch, csum=csum, chunk_extra=chunk_extra),
                    mutation=True)
                self.stats["head_requests"] += 1
                self.stats["head_chunks"] += 1
                r = reaction(OpKind.APPEND, Role.HEAD, st)
                if r is Reaction.DONE and res is not None:
                    pos = res
                    op.progress = op.progress.with_ack(head)
                    op.info.node = head
                elif r is Reaction.RESTART:
                    await op.backoff()  # lost the sequencer race: new assignment, same chain
                elif r is Reaction.RETRY:
                    p = await op.retry(p)
                else:
                    raise op.error(st, msg)
                continue
            plan = cr_plan.replan(OpKind.APPEND, p, op.progress.acked)
            if isinstance(plan, cr_plan.Restart):
                op.progress = op.progress.abandoned()
                pos = None
                continue
            if not plan.members:
                if await self._witnesses_ok(op, p):
                    return pos
                p = await op.retry(p)
                continue
            p = await self._write_one(op, p, plan.members[0], pos, data, csum)

    # ---- batching (docs/client.md, "Batching") -------------------------------------------
    async def _append_queued(
        self, op: _Op, prefix: str, data: bytes | bytearray | memoryview, csum: TaggedCsum,
        chunk_extra: int,
    ) -> ChunkPos:
        """Queue the append for ``prefix``; a batch task (owned by this client, so that a
        cancelled caller cannot break the others of its batch) carries it."""
        if self._tg is None:
            raise RuntimeError("use `async with ChainClient(...)`")
        q = self._queues.get(prefix)
        if q is None:
            q = self._queues[prefix] = _PrefixQueue()
        if len(q.items) >= self.batch_queue_max:  # bounded queue: go alone instead
            return await self._append(op, prefix, data, csum, chunk_extra)
        item = _Queued(op, data, csum, chunk_extra)
        q.items.append(item)
        self._start_batches(prefix, q)
        try:
            await item.done.wait()
        except BaseException:
            if not item.taken:  # never sent: just leave the queue
                q.items.remove(item)
            elif not item.done.is_set():
                # cancelled (or our deadline's safety net fired) while the batch carries
                # the chunk: it may still be written, as with a cancelled request
                op.progress = op.progress.after(Status.PARTITION)
            raise
        if item.error is not None:
            raise item.error
        assert item.result is not None
        return item.result

    def _start_batches(self, prefix: str, q: _PrefixQueue) -> None:
        """With fewer than ``batches_in_flight`` batches of ``prefix`` running, start a
        batch task.  The task takes its chunks when it first runs, so that every append
        queued before that (e.g. the callers woken by the previous batch) rides along:
        batches fill up without any timer."""
        if self._tg is None:  # the client is closing: nobody will carry these
            items, q.items = q.items, []
            for it in items:
                it.deliver(error=Partition("chain client closed"))
            return
        if q.items and q.starting == 0 and q.in_flight < self.batches_in_flight:
            q.starting += 1
            q.in_flight += 1
            self._tg.start_soon(self._run_batch, prefix, q)

    def _take(self, q: _PrefixQueue) -> list[_Queued]:
        """The next batch from the queue: bounded by chunks and bytes (at least one), and
        a fair share of the queue among the batch slots still free (this one included),
        so that a burst fills K batches that overlap on different members (pipelining)
        rather than one batch that visits the members one after the other."""
        free = self.batches_in_flight - q.in_flight + 1
        share = -(-len(q.items) // max(1, free))
        limit = max(1, min(self.batch_max_chunks, share))
        batch: list[_Queued] = []
        size = 0
        for it in q.items:
            n = len(it.data) + it.chunk_extra
            if batch and (len(batch) >= limit or size + n > self.batch_max_bytes):
                break
            batch.append(it)
            size += n
        del q.items[:len(batch)]
        for it in batch:
            it.taken = True
        return batch

    async def _run_batch(self, prefix: str, q: _PrefixQueue) -> None:
        q.starting -= 1
        batch = self._take(q)
        self._start_batches(prefix, q)  # what did not fit may start the next batch
        try:
            if not batch:
                pass  # every queued caller left before we ran
            elif len(batch) == 1:
                await self._run_alone(prefix, batch[0])
            else:
                await self._append_batch(prefix, batch)
        except Exception as e:  # never into the client's task group: to the callers
            for it in batch:  # (a fresh exception each; PARTITION: the outcome is info)
                it.deliver(error=Partition(f"append batch failed: {e!r}"))
        finally:
            for it in batch:
                it.deliver(error=Partition("append batch ended without an answer"))
            q.in_flight -= 1
            self._start_batches(prefix, q)
            if not q.items and q.in_flight == 0 and self._queues.get(prefix) is q:
                del self._queues[prefix]

    async def _run_alone(self, prefix: str, it: _Queued, pos: ChunkPos | None = None) -> None:
        """One chunk through the single-chunk path, with its caller's own ``_Op``."""
        try:
            res = await self._append(it.op, prefix, it.data, it.csum, it.chunk_extra, pos)
        except Exception as e:  # _GiveUp and MachiError: the caller's op.run classifies
            it.deliver(error=e)
        else:
            it.deliver(result=res)

    async def _append_batch(self, prefix: str, batch: list[_Queued]) -> None:
        """Several chunks as one multi-chunk append at the head and one multi-chunk write
        per other member; each chunk ends with the outcome it would have alone."""
        bop = _Op(self, OpKind.APPEND, None)
        bop.deadline = min(it.op.deadline for it in batch)
        try:
            with anyio.move_on_after(max(0.0, bop.remaining_s()) + 1.0):
                try:
                    positions = await self._append_multi(bop, prefix, batch)
                except _Split as sp:
                    self.stats["batch_splits"] += 1
                    async with anyio.create_task_group() as tg:
                        for i, it in enumerate(batch):
                            _inherit(it.op, bop)
                            pos = None if sp.positions is None else sp.positions[i]
                            tg.start_soon(self._run_alone, prefix, it, pos)
                    return
                except _GiveUp:
                    for it in batch:
                        _inherit(it.op, bop)
                        it.deliver(error=_GiveUp())
                    return
                except MachiError as e:
                    for it in batch:
                        _inherit(it.op, bop)
                        err = error_for_status(e.status, e.message)
                        oc = getattr(e, "outcome", None)
                        if isinstance(oc, Outcome):
                            err = it.op._annotate(err, oc)
                        it.deliver(error=err)
                    return
                for it, pos in zip(batch, positions, strict=True):
                    _inherit(it.op, bop)
                    it.deliver(result=pos)
                return
            for it in batch:  # the safety net fired
                _inherit(it.op, bop)
                it.deliver(error=_GiveUp())
        except BaseException:
            # Cancelled (the client is closing): the callers' effect is unknown.
            for it in batch:
                it.op.progress = it.op.progress.after(Status.PARTITION)
                it.deliver(error=_GiveUp())
            raise

    async def _append_multi(self, op: _Op, prefix: str, batch: list[_Queued]
                            ) -> list[ChunkPos]:
        """``_append`` for a batch: the same reactions, with the batch's one ``_Op``.
        Raises ``_Split`` where a chunk alone could end differently from its batch."""
        datas = [it.data for it in batch]
        csums = [it.csum for it in batch]
        extras = [it.chunk_extra for it in batch]
        pos: list[ChunkPos] | None = None
        p = await self._projection(op)
        while True:
            if pos is None:
                head = p.head
                assert head is not None
                epoch = p.epoch_id
                st, res, msg = await op.call(head, lambda c, epoch=epoch: c.append_chunks(
                    prefix, datas, epoch_id=epoch, csums=csums, chunk_extras=extras),
                    mutation=True)
                self.stats["head_requests"] += 1
                self.stats["head_chunks"] += len(batch)
                r = reaction(OpKind.APPEND, Role.HEAD, st)
                if r is Reaction.DONE and res is not None:
                    pos = res
                    op.progress = op.progress.with_ack(head)
                    op.info.node = head
                elif r is Reaction.RESTART:
                    await op.backoff()
                elif r is Reaction.RETRY:
                    p = await op.retry(p)
                elif st in MAYBE_EFFECT:
                    raise op.error(st, msg)  # alone: the same unknown outcome
                else:
                    raise _Split(None)  # rejected before anything was written
                continue
            plan = cr_plan.replan(OpKind.APPEND, p, op.progress.acked)
            if isinstance(plan, cr_plan.Restart):
                op.progress = op.progress.abandoned()
                pos = None
                continue
            if not plan.members:
                if await self._witnesses_ok(op, p):
                    return pos
                p = await op.retry(p)
                continue
            member = plan.members[0]
            role = Role.DOWNSTREAM if op.progress.acked else Role.HEAD
            epoch = p.epoch_id
            places = [(q.offset, d) for q, d in zip(pos, datas, strict=True)]
            st, _res, msg = await op.call(
                member, lambda c, epoch=epoch, file=pos[0].file, places=places: (
                    c.write_chunks(file, places, epoch_id=epoch, csums=csums)),
                mutation=True)
            r = reaction(OpKind.APPEND, role, st)
            if r is Reaction.DONE:
                op.progress = op.progress.with_ack(member)
            elif r is Reaction.RETRY:
                p = await op.retry(p)
            elif st in MAYBE_EFFECT:
                raise op.error(st, msg)
            else:
                raise _Split(pos)  # WRITTEN (verify) or a rejection: chunk by chunk

    async def _write_one(
        self, op: _Op, p: Projection, member: str, pos: ChunkPos,
        data: bytes | bytearray | memoryview, csum: TaggedCsum,
    ) -> Projection:
        """Write our bytes at ``pos`` to one member; returns the projection to go on with."""
        epoch = p.epoch_id
        role = Role.DOWNSTREAM if op.progress.acked else Role.HEAD
        st, _res, msg = await op.call(member, lambda c: c.write(
            pos.file, pos.offset, data, epoch_id=epoch, csum=csum), mutation=True)
        r = reaction(op.kind, role, st)
        if r is Reaction.DONE:
            op.progress = op.progress.with_ack(member)
            if role is Role.HEAD:
                op.info.node = member
            return p
        if r is Reaction.VERIFY:
            if await self._holds(op, p, member, pos.file, pos.offset, data):
                op.progress = op.progress.with_ack(member)  # someone read-repaired it
                return p
            raise op.error(Status.WRITTEN, f"conflict: {member} holds other bytes at "
                                           f"{pos.file}@{pos.offset}+{pos.size}")
        if r is Reaction.RETRY:
            return await op.retry(p)
        raise op.error(st, msg)

    async def _holds(
        self, op: _Op, p: Projection, member: str, file: str, offset: int,
        data: bytes | bytearray | memoryview,
    ) -> bool:
        """True when ``member`` holds exactly ``data`` at ``file``/``offset``."""
        epoch = p.epoch_id
        st, rep, _ = await op.call(member, lambda c: c.read(
            file, offset, len(data), epoch_id=epoch))
        return st is Status.OK and rep is not None and not rep.partial and rep.data() == data

    async def write(
        self, file: str, offset: int, data: bytes | bytearray | memoryview, *,
        info: CallInfo | None = None,
    ) -> ChunkPos:
        """Write ``data`` at an explicit place on every mutation member (head first)."""
        csum = client_csum(data)
        op = _Op(self, OpKind.WRITE, info)
        pos = ChunkPos(file, offset, len(data), csum)

        async def body() -> ChunkPos:
            p = await self._projection(op)
            while True:
                plan = cr_plan.replan(OpKind.WRITE, p, op.progress.acked)
                assert isinstance(plan, cr_plan.Continue)
                if not plan.members:
                    if await self._witnesses_ok(op, p):
                        return pos
                    p = await op.retry(p)
                    continue
                p = await self._write_one(op, p, plan.members[0], pos, data, csum)

        return await op.run(body)

    async def trim(
        self, file: str, offset: int, size: int, *, info: CallInfo | None = None
    ) -> None:
        """Trim at the head, then every other mutation member (TRIMMED = done there)."""
        op = _Op(self, OpKind.TRIM, info)

        async def body() -> None:
            p = await self._projection(op)
            while True:
                plan = cr_plan.replan(OpKind.TRIM, p, op.progress.acked)
                assert isinstance(plan, cr_plan.Continue)
                if not plan.members:
                    if await self._witnesses_ok(op, p):
                        return
                    p = await op.retry(p)
                    continue
                member = plan.members[0]
                role = Role.DOWNSTREAM if op.progress.acked else Role.HEAD
                epoch = p.epoch_id
                st, _r, msg = await op.call(member, lambda c, epoch=epoch: c.trim(
                    file, offset, size, epoch_id=epoch), mutation=True)
                r = reaction(OpKind.TRIM, role, st)
                if r is Reaction.DONE:
                    op.progress = op.progress.with_ack(member)
                elif r is Reaction.RETRY:
                    p = await op.retry(p)
                else:
                    raise op.error(st, msg)

        await op.run(body)

    # ---- reads -------------------------------------------------------------------------------
    async def read(
        self, file: str, offset: int, size: int, *, info: CallInfo | None = None
    ) -> bytes:
        """The bytes of ``[offset, offset+size)``; ``NotWritten`` (outcome ok: an unwritten
        read) when any part is not written anywhere the read may look."""
        reply = await self.read_reply(file, offset, size, info=info)
        data = reply.data()
        if reply.partial or len(data) != size:
            op = _Op(self, OpKind.READ, info)
            raise op.error(Status.NOT_WRITTEN, f"{file}@{offset}+{size} is partially written")
        return data

    async def read_reply(
        self, file: str, offset: int, size: int, *, needs_trimmed: bool = False,
        info: CallInfo | None = None,
    ) -> ReadReply:
        """Read from the UPI tail (chunks verified end to end), with read repair.

        CP: an answer that claims absence (not written, or partially written) is returned
        only after the quorum epoch check (``cr_plan.absence_verdict``); BAD_CHECKSUM at
        the tail is answered from another UPI member, whose good bytes heal the tail."""
        op = _Op(self, OpKind.READ, info)

        async def body() -> ReadReply:
            p = await self._projection(op)
            while True:
                tail = cr_plan.read_target(p)
                assert tail is not None
                epoch = p.epoch_id
                st, rep, msg = await op.call(tail, lambda c, epoch=epoch: c.read(
                    file, offset, size, epoch_id=epoch, needs_trimmed=needs_trimmed))
                served_by = tail
                if st is Status.BAD_CHECKSUM:
                    around = await self._read_around_corruption(
                        op, p, tail, file, offset, size, needs_trimmed)
                    if around is None:
                        raise op.error(st, msg)
                    served_by, rep = around
                    st = Status.OK
                r = reaction(OpKind.READ, Role.TAIL, st)
                if r is Reaction.RETRY:
                    p = await op.retry(p)
                    continue
                if r is Reaction.RETURN:
                    raise op.error(st, msg)
                op.info.node = served_by
                result: ReadReply | None
                if r is Reaction.DONE and rep is not None and not rep.partial:
                    result = rep
                else:
                    repaired = await self._read_repair(
                        op, p, file, offset, size, needs_trimmed)
                    result = repaired if repaired is not None else rep
                    if cr_plan.absence_needs_check(p) and (result is None or result.partial):
                        verdict = await self._absence_check(op, p)
                        if verdict is not cr_plan.Absence.STANDS:
                            p = await op.retry(p)
                            continue
                if not await self._witnesses_ok(op, p):
                    p = await op.retry(p)
                    continue
                if result is None:
                    raise op.error(Status.NOT_WRITTEN, f"{file}@{offset}+{size}")
                return result

        return await op.run(body)

    async def _absence_check(self, op: _Op, p: Projection) -> cr_plan.Absence:
        """CP quorum epoch check, started after an absence answer arrived: every member
        (witnesses too) is asked for its FLU's current epoch in parallel; we stop as soon
        as the verdict is decided (docs/client.md, "CP reads that find nothing")."""
        answers: dict[str, EpochId] = {}
        verdict = cr_plan.Absence.NO_QUORUM

        async def one(member: str, scope: anyio.CancelScope) -> None:
            nonlocal verdict
            try:
                st, ws, _msg = await op.call(member, lambda c: c.wedge_status())
            except _GiveUp:  # out of time: the retry after the check gives up cleanly
                return
            if st is Status.OK and ws is not None:
                answers[member] = ws.epoch_id
                verdict = cr_plan.absence_verdict(p, answers)
                if verdict is not cr_plan.Absence.NO_QUORUM:
                    scope.cancel()

        async with anyio.create_task_group() as tg:
            for m in cr_plan.absence_quorum_members(p):
                tg.start_soon(one, m, tg.cancel_scope)
        if verdict is cr_plan.Absence.NO_QUORUM:
            op.last_status = Status.PARTITION
            op.last_msg = (f"CP read found nothing, and only {len(answers)} of "
                           f"{cr_plan.absence_quorum(p)} members needed confirmed epoch "
                           f"{p.epoch_number}")
        elif verdict is cr_plan.Absence.REFRESH:
            op.last_status, op.last_msg = Status.BAD_EPOCH, "a member moved to a newer epoch"
        return verdict

    async def _read_around_corruption(
        self, op: _Op, p: Projection, bad: str, file: str, offset: int, size: int,
        needs_trimmed: bool,
    ) -> tuple[str, ReadReply] | None:
        """The tail's stored bytes fail their checksum: read the range from another UPI
        member (verified end to end by the FluClient), heal ``bad`` with those bytes (its
        FLU accepts an exact rewrite over a corrupt chunk) and return them; None when no
        other member has good bytes.  Returns (the member that served, its reply)."""
        epoch = p.epoch_id
        for m in cr_plan.checksum_sources(p, bad):
            st, rep, _msg = await op.call(m, lambda c: c.read(
                file, offset, size, epoch_id=epoch, needs_trimmed=needs_trimmed))
            if st is Status.OK and rep is not None:
                if await self._heal(op, p, bad, rep):
                    op.info.repaired.append(bad)
                return m, rep
        return None

    async def _heal(self, op: _Op, p: Projection, target: str, reply: ReadReply) -> bool:
        """Rewrite good bytes over ``target``'s corrupt copy (whole chunks only: the FLU
        heals an exact rewrite whose bytes match its stored checksum).  Best effort: a
        member that refuses stays corrupt and keeps answering BAD_CHECKSUM, which every
        reader routes around; repair heals it too (docs/repair.md)."""
        epoch = p.epoch_id
        healed = True
        for ch in reply.chunks:
            if ch.csum.tag is CsumTag.SERVER_REGEN:
                healed = False  # a clipped piece of a chunk: cannot rewrite the whole
                continue
            st, _r, _m = await op.call(target, lambda c, ch=ch: c.write(
                ch.file, ch.offset, ch.data, epoch_id=epoch, csum=ch.csum))
            healed = healed and st is Status.OK
        return healed

    async def _read_repair(
        self, op: _Op, p: Projection, file: str, offset: int, size: int, needs_trimmed: bool
    ) -> ReadReply | None:
        """Find the bytes on a repair source and write them to the members lacking them.

        Returns the source's reply, or None when no source has the whole range.
        """
        sources = cr_plan.repair_sources(p)
        replies: dict[str, ReadReply] = {}
        epoch = p.epoch_id

        async def one(member: str) -> None:
            try:
                st, rep, _msg = await op.call(member, lambda c: c.read(
                    file, offset, size, epoch_id=epoch, needs_trimmed=needs_trimmed))
            except _GiveUp:  # out of time; raised inside a task group it would be wrapped
                return
            r = reaction(OpKind.READ, Role.REPAIR_READ, st)
            if r is Reaction.DONE and rep is not None and not rep.partial:
                replies[member] = rep

        if size <= REPAIR_PARALLEL_MAX_BYTES:
            async with anyio.create_task_group() as tg:
                for m in sources:
                    tg.start_soon(one, m)
        else:  # large ranges: one candidate at a time, so memory stays one range
            for m in sources:
                await one(m)
                if m in replies:
                    break
        source = next((m for m in sources if m in replies), None)
        if source is None:
            return None
        reply = replies[source]
        op.info.node = source
        for target in cr_plan.repair_targets(p, source, have=replies):
            if await self._repair_write(op, p, target, reply):
                op.info.repaired.append(target)
        return reply

    async def _repair_write(self, op: _Op, p: Projection, target: str, reply: ReadReply) -> bool:
        """Write every chunk of ``reply`` to ``target``; False when it could not (skipped)."""
        epoch = p.epoch_id
        for ch in reply.chunks:
            st, _r, _m = await op.call(target, lambda c, ch=ch: c.write(
                ch.file, ch.offset, ch.data, epoch_id=epoch, csum=ch.csum))
            r = reaction(OpKind.READ, Role.REPAIR_WRITE, st)
            if r is Reaction.VERIFY:
                if not await self._holds(op, p, target, ch.file, ch.offset, bytes(ch.data)):
                    raise op.error(Status.WRITTEN, (
                        f"conflict: {target} holds other bytes than {op.info.node} at "
                        f"{ch.file}@{ch.offset}+{len(ch.data)}"), outcome=Outcome.FAIL)
            elif r is not Reaction.DONE:
                return False
        return True

    async def checksum_list(self, file: str, *, info: CallInfo | None = None
                            ) -> list[ChecksumEntry]:
        """The checksum list of ``file`` at the UPI tail."""
        return await self._tail_op(OpKind.CHECKSUM_LIST, info,
                                   lambda c: c.checksum_list(file))

    async def list_files(self, *, info: CallInfo | None = None) -> list[tuple[str, int]]:
        """``(file, size)`` of every file at the UPI tail."""
        return await self._tail_op(OpKind.LIST_FILES, info, lambda c: c.list_files())

    async def _tail_op(
        self, kind: OpKind, info: CallInfo | None, fn: Callable[[FluClient], Awaitable[T]]
    ) -> T:
        op = _Op(self, kind, info)

        async def body() -> T:
            p = await self._projection(op)
            while True:
                tail = cr_plan.read_target(p)
                assert tail is not None
                st, res, msg = await op.call(tail, fn)
                r = reaction(kind, Role.TAIL, st)
                if r is Reaction.DONE and await self._witnesses_ok(op, p):
                    op.info.node = tail
                    return res  # type: ignore[return-value]
                if r is Reaction.RETURN:
                    raise op.error(st, msg)
                p = await op.retry(p)

        return await op.run(body)


__all__ = ["REPAIR_PARALLEL_MAX_BYTES", "CallInfo", "ChainClient", "ChunkPos", "outcome_of"]
