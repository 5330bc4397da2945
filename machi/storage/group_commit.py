"""Group commit: many operations share one data fdatasync and one SQLite commit.

Owns: batching metadata records, the order "fdatasync every dirty data file, THEN commit
the metadata that points at those bytes, THEN wake every waiter", and the failure rule
(a failed sync or commit poisons the store: every later operation fails, because the
in-memory index is now ahead of what is durable).  Must not: decide semantics or build
records (``flu_store`` does).

Leader/follower, no background task: an operation adds its records to the open batch.
The batch's first member is its leader: it takes the commit lock (leaders queue in order),
waits (at most ``max_delay_ms``, and only while other operations are known to be on the
way) for the batch to fill, closes it, flushes it, hands the lock on and then wakes the
members.  Followers only wait for their batch's ``done``: they never queue for the lock,
so the next batch's commit starts as soon as the previous one ends (it used to wait until
every follower had taken and released the lock in turn, one loop round each, while the
disk idled).  Batches are bounded by ``max_chunks`` records.

Sync modes: "batch" as above; "always" flushes each operation alone (fdatasync + commit
per operation); "none" returns at once and flushes without fsync when the batch is full,
on :meth:`flush`, on close, when :meth:`background` runs, and inline by a submitter when
the last commit is older than ``NONE_FLUSH_INTERVAL_MS``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio
import anyio.lowlevel

from .metadata import Batch, SyncMode

log = logging.getLogger("machi.storage")

#: sync "none": a submitter commits the open batch (without fsync) when the last commit is
#: older than this, so metadata reaches SQLite even without ``background`` running.
NONE_FLUSH_INTERVAL_MS = 50
#: TEST ONLY canary ack-before-sync: metadata reaches the database this late (like a
#: kernel's dirty write-back: every 5 s on Linux by default, pages up to 30 s old), so a
#: crash of every node at once loses what was acknowledged since -- what a power failure
#: does to a store that acknowledges before fdatasync (docs/node.md "Test canaries")
CANARY_WRITEBACK_INTERVAL_MS = 5000


class StoreFailed(Exception):
    """The store hit an I/O error while making data durable; it refuses further work."""


class _Pending:
    __slots__ = ("batch", "done", "error", "full", "led")

    def __init__(self) -> None:
        self.led = False  # its leader (first member) is on the way to commit it
        self.batch = Batch()
        self.done = anyio.Event()
        self.full = anyio.Event()
        self.error: BaseException | None = None


class GroupCommitter:
    def __init__(
        self,
        flush_fn: Callable[[Batch, bool], Awaitable[None]],
        *,
        sync: SyncMode,
        max_delay_ms: int,
        max_chunks: int,
        none_flush_interval_ms: int = NONE_FLUSH_INTERVAL_MS,
    ) -> None:
        assert max_delay_ms >= 0 and max_chunks >= 1 and none_flush_interval_ms >= 0
        self._flush_fn = flush_fn
        self.sync = sync
        self.max_delay_ms = max_delay_ms
        self.max_chunks = max_chunks
        #: sync "none": a submit commits inline when the last commit is older than this
        self.none_flush_interval_ms = none_flush_interval_ms
        self._open = _Pending()
        self._lock = anyio.Lock()
        self.in_flight = 0  # operations between "started" and "submitted"
        self.failed: BaseException | None = None
        self._last_flush_s = 0.0
        # counters for metrics and the benchmark
        self.commits = 0
        self.records = 0
        self.max_batch_ops = 0
        self.leader_waits = 0  # times a leader waited for its batch to fill

    def check(self) -> None:
        if self.failed is not None:
            raise StoreFailed(f"store failed earlier and refuses work: {self.failed!r}")

    async def submit(self, batch: Batch) -> None:
        """Add ``batch`` and return when it is durable as configured."""
        self.check()
        if self.sync == "none":
            self._open.batch.merge(batch)
            if self._open.batch.n_ops >= self.max_chunks:
                await self.flush()  # bounded memory: wait even if another flush runs
            elif (
                anyio.current_time() - self._last_flush_s >= self.none_flush_interval_ms / 1000
                and not self._lock.locked()
            ):
                await self.flush()
            else:
                # nothing above awaited: yield once, or a tight loop of appends starves
                # every other task (including the commit this mode relies on)
                await anyio.lowlevel.checkpoint()
            return
        if self.sync == "always":
            async with self._lock:
                self.check()
                await self._run(batch)
            return
        pending = self._open
        if pending.full.is_set():
            # bounded batch: the full one waits for the lock; start the next one.  The lock
            # is FIFO and leaders queue in submission order, so batches commit in order.
            pending = self._open = _Pending()
        pending.batch.merge(batch)
        if pending.batch.n_ops >= self.max_chunks:
            pending.full.set()
        if pending.led:
            await pending.done.wait()  # a follower: the leader commits for it
        else:
            pending.led = True
            # Shielded: the members of the batch depend on its leader finishing the job.
            with anyio.CancelScope(shield=True):
                try:
                    async with self._lock:
                        # (a flush that had the lock first may have committed it already)
                        if not pending.done.is_set():
                            if (pending is self._open and self.in_flight > 0
                                    and not pending.full.is_set() and self.max_delay_ms):
                                self.leader_waits += 1
                                with anyio.move_on_after(self.max_delay_ms / 1000):
                                    await pending.full.wait()
                            if pending is self._open:
                                self._open = _Pending()
                            await self._finish(pending, wake=False)
                finally:
                    # after the lock went to the next leader: its commit starts first
                    pending.done.set()
        if pending.error is not None:
            raise StoreFailed(f"metadata commit failed: {pending.error!r}") from pending.error

    async def flush(self) -> None:
        """Make everything submitted so far durable (used by close and by sync "none")."""
        async with self._lock:
            self.check()
            self._last_flush_s = anyio.current_time()
            pending = self._open
            self._open = _Pending()
            if pending.batch.empty():
                pending.done.set()
                return
            await self._finish(pending)
        if pending.error is not None:
            raise StoreFailed(f"metadata commit failed: {pending.error!r}") from pending.error

    async def _finish(self, pending: _Pending, *, wake: bool = True) -> None:
        try:
            # Never commit behind a failed commit: an fdatasync that "succeeds" after a
            # failed one does not prove the earlier bytes reached the disk.
            self.check()
            await self._run(pending.batch)
        except Exception as exc:
            pending.error = exc
        finally:
            if wake:
                pending.done.set()

    async def commit_now(self, batch: Batch) -> None:
        """Commit ``batch`` alone and durably whatever the sync mode (projections, counters)."""
        async with self._lock:
            self.check()
            await self._run(batch, durable=True)

    async def _run(self, batch: Batch, durable: bool = False) -> None:
        # Shielded: a cancelled leader must not leave its followers' batch half done.
        with anyio.CancelScope(shield=True):
            try:
                await self._flush_fn(batch, durable)
            except Exception as exc:
                log.error("group commit failed, store is now failed: %r", exc)
                self.failed = exc
                raise
        self.commits += 1
        self.records += len(batch.ops)
        self.max_batch_ops = max(self.max_batch_ops, batch.n_ops)

    async def background(self, interval_ms: int = 50) -> None:
        """For sync "none": flush every ``interval_ms`` (run in the node's task group)."""
        while True:
            await anyio.sleep(interval_ms / 1000)
            await self.flush()
