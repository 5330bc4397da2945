"""The storage of one FLU: write-once data files + in-memory index + SQLite metadata +
projection store, behind one async API used by the node daemon.

Owns: the semantics of append / write / read / trim / checksum_list / list_files
(reference sections 1 and 2.4, rules in ``machi.core.ranges``), file naming and rollover
per (namespace, locator, prefix) and per epoch, the pending/durable distinction, whole-file
deletion of fully trimmed files, and the projection store API.  Must not: decide epochs or
wedge state (the node applies ``machi.core.wedge``; the store only calls the node's
``epoch_guard`` where an append reserves space or mints a file, reference 2.3 step 6),
speak the wire protocol, or await one SQL statement per chunk (records go through
``group_commit``).

Visibility: a chunk is visible to reads and ``checksum_list`` only once it is durable as
configured (acknowledged); while pending it already blocks overlapping writes (a replay
of it waits for it).  See docs/storage.md for durability and recovery rules.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import anyio
import anyio.lowlevel

from machi.core.checksum import (
    CsumTag,
    TaggedCsum,
    csum_to_store,
    digest,
    verify,
)
from machi.core.epoch import EpochId
from machi.core.errors import (
    BadArg,
    BadChecksum,
    ConfigError,
    MachiError,
    NoSuchFile,
    NotWritten,
    PartialRead,
    Trimmed,
    Written,
)
from machi.core.filename import (
    MAX_LOCATOR,
    FileName,
    make_filename,
    namespace_error,
    parse_filename,
    prefix_error,
)
from machi.core.list_summary import Summarizer, Summary
from machi.core.projection import Projection
from machi.core.ranges import MIN_OFFSET, Entry, FileIndex, WriteCheck, check_range

from .data_file import DataFiles
from .errors import StorageCorrupt
from .group_commit import CANARY_WRITEBACK_INTERVAL_MS, NONE_FLUSH_INTERVAL_MS, GroupCommitter
from .metadata import Batch, MetadataDb
from .projection_store import Kind, ProjectionCache, check_kind
from .recovery import build_indexes, scan_tails

log = logging.getLogger("machi.storage")

SyncMode = Literal["always", "batch", "none"]
SYNC_MODES: tuple[SyncMode, ...] = ("always", "batch", "none")
LOCK_NAME = "LOCK"
DATA_SUBDIR = "data"


@dataclass(frozen=True, slots=True)
class StoreConfig:
    sync: SyncMode = "batch"
    group_commit_max_delay_ms: int = 2  # bounded delay of a batch
    group_commit_max_chunks: int = 1024  # bounded batch
    max_file_size: int = 2**32 - 1  # rollover threshold (bytes)
    namespace: str = ""
    #: largest range one read may cover (bounds the memory a single request can pin)
    max_read_bytes: int = 256 * 1024 * 1024
    #: TEST ONLY canary "ack-before-sync": acknowledge before fdatasync/commit (behave like
    #: sync "none" while ``sync`` still says what was configured)
    test_ack_before_sync: bool = False
    #: TEST ONLY canary "epoch-reuse": accept a different projection at a written epoch
    test_epoch_reuse: bool = False

    def __post_init__(self) -> None:
        if self.sync not in SYNC_MODES:
            raise ConfigError(f"sync: want one of {list(SYNC_MODES)}, got {self.sync!r}")
        for key, lo in (
            ("group_commit_max_delay_ms", 0),
            ("group_commit_max_chunks", 1),
            ("max_file_size", MIN_OFFSET + 1),
            ("max_read_bytes", 1),
        ):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(f"{key}: want an integer >= {lo}, got {v!r}")
        if self.group_commit_max_delay_ms > 1000:
            raise ConfigError("group_commit_max_delay_ms: at most 1000")
        err = namespace_error(self.namespace)
        if err:
            raise ConfigError(f"namespace: {err}")


@dataclass(frozen=True, slots=True)
class ChunkPos:
    file: str
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class ReadChunk:
    file: str
    offset: int
    data: bytes
    csum: TaggedCsum


@dataclass(frozen=True, slots=True)
class ReadResult:
    chunks: list[ReadChunk]
    trimmed: list[tuple[int, int]]
    partial: bool


@dataclass(frozen=True, slots=True)
class ChecksumEntry:
    offset: int
    size: int
    csum: TaggedCsum | None  # None = trimmed
    #: the stored bytes are known to fail ``csum`` (found at start-up or by a read): the
    #: place is written, but this copy needs an exact rewrite from a good one (repair)
    corrupt: bool = False


@dataclass(slots=True)
class DataFile:
    """One known data file: its parsed name and its index."""

    name: str
    fn: FileName
    index: FileIndex


@dataclass(frozen=True, slots=True)
class _Target:
    name: str
    epoch_id: EpochId


_Key = tuple[str, int, str]  # (namespace, locator, prefix)
#: change tokens a store keeps live at once (list_file_changes): one per anti-entropy
#: pass of each observer (normally one: the UPI tail; two while the tail moves)
MAX_CHANGE_TOKENS = 4
#: entries hashed between two checkpoints by ``checksum_summary``
SUMMARY_STEP = 16384


class FluStore:
    """See the module docstring.  Build with :meth:`open`; always :meth:`close`."""

    def __init__(
        self,
        data_dir: Path,
        config: StoreConfig,
        db: MetadataDb,
        data: DataFiles,
        lock_fd: int,
    ) -> None:
        self.data_dir = data_dir
        self.config = config
        self._db = db
        self._data = data
        self._lock_fd = lock_fd
        self._files: dict[str, DataFile] = {}
        #: live change tokens (list_file_changes), shared by every file's index
        self._change_tokens: list[int] = []
        self._token_seq = 0
        self._trimmed_files: set[str] = set()
        self._seqs: dict[_Key, int] = {}
        self._targets: dict[_Key, _Target] = {}
        #: files this store minted since it opened (append targets, current or past): only
        #: these may be deleted once fully trimmed before they are full (_maybe_delete)
        self._minted: set[str] = set()
        self._key_locks: dict[_Key, anyio.Lock] = {}
        #: set by the node: raises (``Wedged`` / ``BadEpoch``) when an append's epoch id is
        #: no longer the node's current, unwedged epoch; called with no await before the
        #: reservation (or the mint) it guards.  None: no re-check (store-only users).
        self.epoch_guard: Callable[[EpochId], None] | None = None
        #: chunks written but not yet durable -> the event their waiters wait for, made
        #: only when someone waits (``_pending_event``): most chunks never get one
        self._pending: dict[tuple[str, int], anyio.Event | None] = {}
        self._projections = ProjectionCache(reuse_epochs=config.test_epoch_reuse)
        self._projection_lock = anyio.Lock()
        self._closed = False
        #: this open of the store (1, 2, ...: persisted, raised at every open): the chain
        #: manager's fitness reports carry it (machi.core.fitness.Report.incarnation)
        self.incarnation = 0
        #: chunks rewritten over corrupt stored bytes (``_heal``), reads that met corrupt
        #: bytes, and corrupt chunks the start-up check found (recovery.scan_tails)
        self.healed_chunks = 0
        self.bad_checksum_reads = 0
        self.corrupt_at_start: list[tuple[str, int, int]] = []
        #: (file, offset) of chunks whose stored bytes are known to fail their checksum
        #: and not healed since: flagged in checksum lists so that repair rewrites them
        self._known_corrupt: set[tuple[str, int]] = set()
        #: the sync mode actually used (differs from config.sync only under a test canary)
        self._sync: SyncMode = "none" if config.test_ack_before_sync else config.sync
        self._committer = GroupCommitter(
            self._flush,
            sync=self._sync,
            max_delay_ms=config.group_commit_max_delay_ms,
            max_chunks=config.group_commit_max_chunks,
            # TEST ONLY canary: metadata written back late (machi.node.run, docs/node.md)
            none_flush_interval_ms=(CANARY_WRITEBACK_INTERVAL_MS if config.test_ack_before_sync
                                    else NONE_FLUSH_INTERVAL_MS),
        )

    # ---- life cycle ---------------------------------------------------------------
    @classmethod
    async def open(cls, data_dir: Path, config: StoreConfig | None = None) -> FluStore:
        """Create or recover the store in ``data_dir``.

        Raises ``StorageCorrupt`` (naming files, ranges and the repair command) when the
        metadata points past the end of a data file, and ``ConfigError`` when another
        process holds the directory.
        """
        config = config or StoreConfig()
        data_dir = Path(data_dir)
        try:
            (data_dir / DATA_SUBDIR).mkdir(parents=True, exist_ok=True)
            lock_fd = os.open(data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                              0o644)
        except OSError as exc:
            raise ConfigError(f"data dir {data_dir}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise ConfigError(f"data dir {data_dir} is in use by another process") from None
        try:
            db = await MetadataDb.open(
                data_dir, "none" if config.test_ack_before_sync else config.sync)
        except BaseException:
            os.close(lock_fd)
            raise
        data = DataFiles(data_dir / DATA_SUBDIR)
        store = cls(data_dir, config, db, data, lock_fd)
        try:
            store.incarnation = await db.next_incarnation()
            await store._recover()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await store._release()
            raise
        return store

    async def _recover(self) -> None:
        loaded = await self._db.load()
        state = build_indexes(loaded, self._data, self.data_dir)
        for name, (fn, index) in state.files.items():
            self._files[name] = self._data_file(name, fn, index)
        for name in state.recreate:
            log.warning("data file %s was missing and held no chunks: recreated", name)
            await self._data.create(name)
        self._trimmed_files = set(loaded.trimmed_files)
        self.corrupt_at_start, _ = await anyio.to_thread.run_sync(
            lambda: scan_tails(state.files, self._data))
        self._known_corrupt = {(name, off) for name, off, _size in self.corrupt_at_start}
        self._seqs = dict(loaded.seqs)
        for kind, n, _csum, body in loaded.projections:
            try:
                self._projections.load(kind, n, body)
            except ValueError as exc:
                raise StorageCorrupt(
                    f"{self.data_dir}: stored {kind} projection at epoch {n} is invalid: {exc}"
                ) from None

    async def close(self) -> None:
        """Flush pending metadata and release everything (idempotent)."""
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            try:
                if self._committer.failed is None:
                    await self._committer.flush()
            finally:
                await self._release()

    async def _release(self) -> None:
        try:
            await self._db.close()
        finally:
            self._data.close()
            os.close(self._lock_fd)

    async def __aenter__(self) -> FluStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def flush(self) -> None:
        """Make everything acknowledged so far durable (useful with sync "none")."""
        self._check_open()
        await self._committer.flush()

    async def background_flush(self, interval_ms: int = 50) -> None:
        """With sync "none": run in the node's task group to commit metadata regularly."""
        await self._committer.background(interval_ms)

    def stats(self) -> dict[str, int]:
        return {
            "files": len(self._files),
            "trimmed_files": len(self._trimmed_files),
            "commits": self._committer.commits,
            "records_committed": self._committer.records,
            "max_batch_ops": self._committer.max_batch_ops,
            "leader_waits": self._committer.leader_waits,
            "pending_chunks": len(self._pending),
            "healed_chunks": self.healed_chunks,
            "bad_checksum_reads": self.bad_checksum_reads,
            "corrupt_chunks_at_start": len(self.corrupt_at_start),
        }

    async def _flush(self, batch: Batch, durable: bool) -> None:
        # Data first: committed metadata must never point at bytes that are not durable.
        if not self._db.one_hop_apply:
            if self._sync != "none":
                await self._data.sync_dirty()
            await self._db.apply(batch, durable=durable)
            return
        # One hop to the database thread for both: fdatasync the data files written so
        # far (pinned: no descriptor closes under the sync), then the transaction.
        fds: dict[str, int] = {}
        if self._sync != "none":
            self._data.take_dirty(fds)
        sync = partial(DataFiles.fdatasync_fds, list(fds.values())) if fds else None
        try:
            await self._db.apply(batch, durable=durable, before=sync)
        except BaseException:
            self._data.redirty(fds)
            raise
        finally:
            self._data.release(fds)

    def _check_open(self) -> None:
        if self._closed:
            raise BadArg("the store is closed")
        self._committer.check()

    # ---- helpers ------------------------------------------------------------------
    def _parse(self, file: object) -> FileName:
        try:
            fn = parse_filename(file)
        except ValueError as exc:
            raise BadArg(str(exc)) from None
        if file in self._trimmed_files:
            raise Trimmed(f"file {file} was trimmed and deleted")
        return fn

    @staticmethod
    def _bytes(chunk: object) -> bytes | memoryview:
        """The chunk's bytes for this request.  ``bytes`` and a flat byte ``memoryview``
        are used as they are, down to ``pwrite`` (no copy: a 1 MiB append no longer pays
        one more memcpy); the view's buffer must not change until the call returns --
        the node passes views into a request frame that nothing touches again.  A
        ``bytearray`` (callers reuse those) and any other view are copied."""
        if isinstance(chunk, bytes):
            return chunk
        if (isinstance(chunk, memoryview) and chunk.ndim == 1 and chunk.c_contiguous
                and chunk.format in ("B", "b", "c")):
            return chunk if chunk.format == "B" else chunk.cast("B")
        if isinstance(chunk, (bytearray, memoryview)):
            return bytes(chunk)
        raise BadArg(f"chunk must be bytes, got {type(chunk).__name__}")

    @staticmethod
    def _stored_csum(chunk: bytes | memoryview, csum: object) -> TaggedCsum:
        if not isinstance(csum, TaggedCsum):
            raise BadArg(f"checksum must be a TaggedCsum, got {type(csum).__name__}")
        stored = csum_to_store(chunk, csum)
        if stored is None:
            raise BadChecksum("the checksum does not match the chunk; nothing written")
        return stored

    async def _adopt(self, name: str, fn: FileName) -> DataFile:
        """A file first named by a write or trim (repair, explicit writers)."""
        f = self._files.get(name)
        if f is not None:
            return f
        # FileExistsError: bytes left from an uncommitted earlier life; not readable
        with contextlib.suppress(FileExistsError):
            await self._data.create(name)
        if name in self._trimmed_files:
            raise Trimmed(f"file {name} was trimmed and deleted")
        f = self._files.get(name)
        if f is None:
            f = self._files[name] = self._data_file(name, fn, FileIndex())
        return f

    def _data_file(self, name: str, fn: FileName, index: FileIndex) -> DataFile:
        index.tokens = self._change_tokens  # change marks for anti-entropy (shared list)
        return DataFile(name, fn, index)

    def _file_record(self, batch: Batch, f: DataFile) -> None:
        fn = f.fn
        batch.file_eof(f.name, fn.prefix, fn.namespace, fn.locator, fn.seq, f.index.eof)

    async def _store_chunk(self, f: DataFile, offset: int, chunk: bytes | memoryview,
                           stored: TaggedCsum,
                           entry: Entry) -> None:
        """pwrite a chunk already in the index as pending, then make it durable."""
        key = (f.name, offset)
        self._pending[key] = None
        try:
            try:
                await self._data.pwrite(f.name, chunk, offset)
            except BaseException:
                f.index.remove(entry)
                raise
            batch = Batch()
            batch.chunk_put(f.name, offset, len(chunk), stored.to_bytes())
            self._file_record(batch, f)
            self._committer.in_flight -= 1
            try:
                # Shielded (bounded by one commit): a cancelled caller must not drop the
                # pending mark, and so expose the chunk to readers, before it is durable.
                with anyio.CancelScope(shield=True):
                    await self._committer.submit(batch)
            finally:
                self._committer.in_flight += 1
        finally:
            ev = self._pending.pop(key)
            f.index.touch(offset)  # the chunk shows in checksum lists from now on
            if ev is not None:
                ev.set()

    def _pending_event(self, key: tuple[str, int]) -> anyio.Event | None:
        """The event set when the pending chunk at ``key`` is done; None if not pending."""
        if key not in self._pending:
            return None
        ev = self._pending[key]
        if ev is None:
            ev = self._pending[key] = anyio.Event()
        return ev

    async def _store_chunks(
        self, f: DataFile, items: list[tuple[int, bytes | memoryview, TaggedCsum, Entry]]
    ) -> None:
        """``_store_chunk`` for many chunks of one file: every chunk is pending until the
        one group commit that covers them all is durable (all-or-nothing: a failed pwrite
        removes every entry of the request)."""
        keys = [(f.name, off) for off, _d, _c, _e in items]
        for key in keys:
            self._pending[key] = None
        try:
            try:
                for off, data, _stored, _entry in items:
                    await self._data.pwrite(f.name, data, off)
            except BaseException:
                for *_x, entry in items:
                    f.index.remove(entry)
                raise
            batch = Batch()
            for off, data, stored, _entry in items:
                batch.chunk_put(f.name, off, len(data), stored.to_bytes())
            self._file_record(batch, f)
            self._committer.in_flight -= 1
            try:
                with anyio.CancelScope(shield=True):  # see _store_chunk
                    await self._committer.submit(batch)
            finally:
                self._committer.in_flight += 1
        finally:
            for key in keys:
                ev = self._pending.pop(key)
                if ev is not None:
                    ev.set()
            f.index.touch(min(k[1] for k in keys))  # see _store_chunk

    # ---- append -------------------------------------------------------------------
    async def append(
        self,
        prefix: str,
        chunk: bytes,
        csum: TaggedCsum,
        *,
        epoch_id: EpochId,
        chunk_extra: int = 0,
        locator: int = 0,
    ) -> tuple[ChunkPos, TaggedCsum]:
        """Append ``chunk`` to the current file of ``prefix``; the store picks the place."""
        self._check_open()
        err = prefix_error(prefix)
        if err:
            raise BadArg(err)
        if isinstance(locator, bool) or not isinstance(locator, int) or not (
            0 <= locator <= MAX_LOCATOR
        ):
            raise BadArg(f"locator must be an integer in 0..{MAX_LOCATOR}, got {locator!r}")
        if isinstance(chunk_extra, bool) or not isinstance(chunk_extra, int) or chunk_extra < 0:
            raise BadArg(f"chunk_extra must be a non-negative integer, got {chunk_extra!r}")
        if not isinstance(epoch_id, tuple) or len(epoch_id) != 2:
            raise BadArg(f"bad epoch id {epoch_id!r}")
        data = self._bytes(chunk)
        if not data:
            raise BadArg("empty chunk")
        total = len(data) + chunk_extra
        if MIN_OFFSET + total > self.config.max_file_size:
            raise BadArg(
                f"chunk of {len(data)} bytes (+{chunk_extra} extra) cannot fit a file of at "
                f"most {self.config.max_file_size} bytes"
            )
        stored = self._stored_csum(data, csum)
        key: _Key = (self.config.namespace, locator, prefix)
        self._committer.in_flight += 1
        try:
            f, offset = await self._reserve(key, EpochId(*epoch_id), total)
            entry = f.index.add_written(offset, len(data), stored)
            await self._store_chunk(f, offset, data, stored, entry)
        finally:
            self._committer.in_flight -= 1
        return ChunkPos(f.name, offset, len(data)), stored

    async def append_chunks(
        self,
        prefix: str,
        chunks: list[tuple[bytes | memoryview, TaggedCsum, int]],
        *,
        epoch_id: EpochId,
        locator: int = 0,
    ) -> list[tuple[ChunkPos, TaggedCsum]]:
        """Append many ``(chunk, csum, chunk_extra)`` at once: placed contiguously (each
        followed by its extra bytes) in ONE file, each stored and checksummed as its own
        chunk, made durable by one group commit.  All or nothing: a bad chunk (its index
        in the error's message and ``chunk_index``) fails the request before anything is
        written."""
        self._check_open()
        err = prefix_error(prefix)
        if err:
            raise BadArg(err)
        if isinstance(locator, bool) or not isinstance(locator, int) or not (
            0 <= locator <= MAX_LOCATOR
        ):
            raise BadArg(f"locator must be an integer in 0..{MAX_LOCATOR}, got {locator!r}")
        if not isinstance(epoch_id, tuple) or len(epoch_id) != 2:
            raise BadArg(f"bad epoch id {epoch_id!r}")
        if not chunks:
            raise BadArg("no chunks")
        prepared: list[tuple[bytes | memoryview, TaggedCsum, int]] = []
        total = 0
        for i, (chunk, csum, extra) in enumerate(chunks):
            try:
                if isinstance(extra, bool) or not isinstance(extra, int) or extra < 0:
                    raise BadArg(f"chunk_extra must be a non-negative integer, got {extra!r}")
                data = self._bytes(chunk)
                if not data:
                    raise BadArg("empty chunk")
                prepared.append((data, self._stored_csum(data, csum), extra))
            except MachiError as e:
                raise _for_chunk(e, i, len(chunks)) from None
            total += len(data) + extra
        if MIN_OFFSET + total > self.config.max_file_size:
            raise BadArg(
                f"{len(chunks)} chunks of {total} bytes (extra included) cannot fit a file "
                f"of at most {self.config.max_file_size} bytes"
            )
        key: _Key = (self.config.namespace, locator, prefix)
        self._committer.in_flight += 1
        try:
            f, offset = await self._reserve(key, EpochId(*epoch_id), total)
            items: list[tuple[int, bytes | memoryview, TaggedCsum, Entry]] = []
            out: list[tuple[ChunkPos, TaggedCsum]] = []
            for data, stored, extra in prepared:
                items.append((offset, data, stored, f.index.add_written(offset, len(data),
                                                                        stored)))
                out.append((ChunkPos(f.name, offset, len(data)), stored))
                offset += len(data) + extra
            await self._store_chunks(f, items)
        finally:
            self._committer.in_flight -= 1
        return out

    async def _reserve(self, key: _Key, epoch_id: EpochId, total: int) -> tuple[DataFile, int]:
        """The file and offset for ``total`` bytes; mints a new file on rollover or when
        the epoch changed (per key: the original tracked one epoch for all prefixes).

        The node's ``epoch_guard`` runs right before the reservation and before a mint
        (reference 2.3 step 6): an append that waited for the key's lock or for a file
        creation while a projection write moved the node on fails (``BAD_EPOCH`` /
        ``WEDGED``, nothing written) instead of landing in, or creating, a file of the
        old epoch."""
        for _ in range(1000):
            f = self._fitting_target(key, epoch_id, total)
            if f is not None:
                if self.epoch_guard is not None:
                    self.epoch_guard(epoch_id)
                return f, f.index.reserve(total)
            # One lock per key, kept (like the key's target): dropping idle locks would let
            # two tasks hold different locks for one key and mint two files at once.
            lock = self._key_locks.setdefault(key, anyio.Lock())
            async with lock:
                if self._fitting_target(key, epoch_id, total) is None:
                    if self.epoch_guard is not None:
                        self.epoch_guard(epoch_id)
                    await self._mint(key, epoch_id)
        raise AssertionError("could not reserve space after 1000 new files")

    def _fitting_target(self, key: _Key, epoch_id: EpochId, total: int) -> DataFile | None:
        t = self._targets.get(key)
        if t is None or t.epoch_id != epoch_id:
            return None
        f = self._files.get(t.name)
        if f is None or f.index.eof + total > self.config.max_file_size:
            return None
        return f

    async def _mint(self, key: _Key, epoch_id: EpochId) -> None:
        ns, locator, prefix = key
        seq = self._seqs.get(key, 1)
        uid = str(uuid.uuid4())
        name = make_filename(prefix, ns, locator, uid, seq)
        await self._data.create(name)
        batch = Batch()
        batch.seqs[key] = seq + 1
        batch.file_eof(name, prefix, ns, locator, seq, MIN_OFFSET)
        # committed (durably, in every sync mode) before the name is handed out
        await self._committer.commit_now(batch)
        self._seqs[key] = seq + 1
        self._files[name] = self._data_file(name, FileName(prefix, ns, locator, uid, seq),
                                            FileIndex())
        self._minted.add(name)
        old = self._targets.get(key)
        self._targets[key] = _Target(name, epoch_id)
        log.info("new data file %s (epoch %s, previous %s)", name, epoch_id.number,
                 old.name if old else None)

    # ---- write ----------------------------------------------------------------------
    async def write(self, file: str, offset: int, chunk: bytes, csum: TaggedCsum) -> TaggedCsum:
        """Write ``chunk`` at an explicit place (repair, clients that choose offsets)."""
        self._check_open()
        fn = self._parse(file)
        data = self._bytes(chunk)
        err = check_range(offset, len(data))
        if err:
            raise BadArg(err)
        stored = self._stored_csum(data, csum)
        f = await self._adopt(file, fn)
        for _ in range(100):
            if self._files.get(file) is not f:
                raise Trimmed(f"file {file} was trimmed and deleted")
            decision, old = f.index.check_write(offset, len(data))
            if decision is WriteCheck.FREE:
                entry = f.index.add_written(offset, len(data), stored)
                self._committer.in_flight += 1
                try:
                    await self._store_chunk(f, offset, data, stored, entry)
                finally:
                    self._committer.in_flight -= 1
                return stored
            if decision is WriteCheck.TRIMMED:
                raise Trimmed(f"{file} [{offset}, +{len(data)}) overlaps trimmed bytes")
            if decision is WriteCheck.WRITTEN:
                raise Written(f"{file} [{offset}, +{len(data)}) overlaps written bytes")
            assert old is not None and old.csum is not None
            ev = self._pending_event((file, offset))
            if ev is not None:
                await ev.wait()  # a replay of a chunk not yet durable: judge it once it is
                continue
            return await self._judge_replay(f, old, data)
        raise Written(f"{file} [{offset}, +{len(data)}): still pending after 100 waits")

    async def write_chunks(
        self, file: str, chunks: list[tuple[int, bytes | memoryview, TaggedCsum]]
    ) -> list[TaggedCsum]:
        """Write many ``(offset, chunk, csum)`` of one file at once, all or nothing: every
        chunk is checked (range, checksum, no overlap with another chunk of the request,
        write-once against the file: exact replays are allowed and left as they are)
        before any is written; the new ones are made durable by one group commit.  A bad
        chunk fails the whole request (its index in the message and ``chunk_index``)."""
        self._check_open()
        fn = self._parse(file)
        if not chunks:
            raise BadArg("no chunks")
        prepared: list[tuple[int, bytes | memoryview, TaggedCsum]] = []
        for i, (offset, chunk, csum) in enumerate(chunks):
            try:
                data = self._bytes(chunk)
                err = check_range(offset, len(data))
                if err:
                    raise BadArg(err)
                if prepared and offset < prepared[-1][0] + len(prepared[-1][1]):
                    raise BadArg("chunks must be in ascending offset order without overlap")
                prepared.append((offset, data, self._stored_csum(data, csum)))
            except MachiError as e:
                raise _for_chunk(e, i, len(chunks)) from None
        f = await self._adopt(file, fn)
        judged: dict[int, TaggedCsum] = {}  # chunk index -> stored csum of a verified replay
        for _ in range(100):
            if self._files.get(file) is not f:
                raise Trimmed(f"file {file} was trimmed and deleted")
            waiting: anyio.Event | None = None
            replay: tuple[int, Entry] | None = None
            for i, (offset, data, _stored) in enumerate(prepared):
                decision, old = f.index.check_write(offset, len(data))
                if decision is WriteCheck.FREE or (decision is WriteCheck.REPLAY
                                                   and i in judged):
                    continue
                where = f"{file} [{offset}, +{len(data)})"
                if decision is WriteCheck.TRIMMED:
                    raise _for_chunk(Trimmed(f"{where} overlaps trimmed bytes"), i, len(chunks))
                if decision is WriteCheck.WRITTEN:
                    raise _for_chunk(Written(f"{where} overlaps written bytes"), i, len(chunks))
                assert old is not None
                waiting = waiting or self._pending_event((file, offset))
                replay = replay or (i, old)
            if waiting is not None:
                await waiting.wait()  # judge replays of pending chunks once they are durable
                continue
            if replay is not None:
                i, old = replay
                try:
                    judged[i] = await self._judge_replay(f, old, prepared[i][1])
                except MachiError as e:
                    raise _for_chunk(e, i, len(chunks)) from None
                continue  # judging awaited: check everything again
            # Every check passed with no await since: claim the free places at once.
            items = [
                (offset, data, stored, f.index.add_written(offset, len(data), stored))
                for i, (offset, data, stored) in enumerate(prepared) if i not in judged
            ]
            if items:
                self._committer.in_flight += 1
                try:
                    await self._store_chunks(f, items)
                finally:
                    self._committer.in_flight -= 1
            return [judged.get(i, stored) for i, (_o, _d, stored) in enumerate(prepared)]
        raise Written(f"{file}: chunks still pending after 100 waits")

    async def _judge_replay(self, f: DataFile, old: Entry, data: bytes | memoryview
                            ) -> TaggedCsum:
        assert old.csum is not None
        if old.csum.digest != digest(data):
            raise Written(f"{f.name} [{old.offset}, +{old.size}) holds different bytes")
        disk = await self._data.pread(f.name, old.size, old.offset)
        if disk != data:
            if verify(disk, old.csum):  # cannot happen with a sound hash; never overwrite
                raise BadChecksum(f"{f.name} [{old.offset}, +{old.size}): stored bytes differ")
            await self._heal(f, old, data)
        return old.csum

    async def _heal(self, f: DataFile, old: Entry, data: bytes | memoryview) -> None:
        """The stored bytes of ``old`` fail its stored checksum (a torn write, a bit flip)
        and ``data`` matches it: rewrite them.  Write-once holds: the logical value of the
        place (its checksum) does not change; only bytes that could never be read are."""
        await self._data.pwrite(f.name, data, old.offset)
        if self._sync != "none":
            await self._data.sync_dirty()
        self.healed_chunks += 1
        self._known_corrupt.discard((f.name, old.offset))
        f.index.touch(old.offset)  # the checksum list drops its corrupt flag
        log.warning("healed corrupt chunk %s [%d, +%d) with bytes matching its checksum",
                    f.name, old.offset, old.size)

    # ---- read -----------------------------------------------------------------------
    async def read(
        self, file: str, offset: int, size: int, *, needs_trimmed: bool = False
    ) -> ReadResult:
        """Every durable written chunk overlapping the range, clipped to it."""
        self._check_open()
        self._parse(file)
        err = check_range(offset, size)
        if err:
            raise BadArg(err)
        if size > self.config.max_read_bytes:
            raise BadArg(f"read of {size} bytes is over max_read_bytes "
                         f"{self.config.max_read_bytes}")
        f = self._files.get(file)
        if f is None:
            raise NotWritten(f"no bytes written in {file}")
        if offset >= f.index.eof:
            raise NotWritten(f"{file}: offset {offset} is past EOF {f.index.eof}")
        plan = f.index.plan_read(offset, size)
        pieces = [p for p in plan.pieces if (file, p.entry.offset) not in self._pending]
        if not pieces:
            if plan.trimmed_bytes == size:
                raise Trimmed(f"{file} [{offset}, +{size}) is trimmed")
            if plan.trimmed and needs_trimmed:
                return ReadResult([], list(plan.trimmed), True)
            raise NotWritten(f"{file} [{offset}, +{size}): no written bytes")
        chunks: list[ReadChunk] = []
        for i, p in enumerate(pieces):
            if i % 64 == 63:
                await anyio.lowlevel.checkpoint()  # a long read must not hog the loop
            e = p.entry
            assert e.csum is not None
            try:
                raw = await self._data.pread(file, e.size, e.offset)
            except FileNotFoundError:
                raise Trimmed(f"file {file} was trimmed and deleted") from None
            if len(raw) < e.size:
                raise PartialRead(f"{file} [{e.offset}, +{e.size}): only {len(raw)} bytes on disk")
            if not verify(raw, e.csum):
                log.error("bad checksum on disk: %s [%d, +%d)", file, e.offset, e.size)
                self.bad_checksum_reads += 1
                self._known_corrupt.add((file, e.offset))
                f.index.touch(e.offset)  # the checksum list flags it from now on
                raise BadChecksum(f"{file} [{e.offset}, +{e.size}): bytes on disk are corrupt")
            if p.clipped:
                lo = p.offset - e.offset
                piece = raw[lo:lo + p.size]
                chunks.append(ReadChunk(file, p.offset, piece,
                                        TaggedCsum(CsumTag.SERVER_REGEN, digest(piece))))
            else:
                chunks.append(ReadChunk(file, e.offset, raw, e.csum))
        written = sum(len(c.data) for c in chunks)
        trimmed = list(plan.trimmed) if needs_trimmed else []
        return ReadResult(chunks, trimmed, written < size)

    # ---- trim -----------------------------------------------------------------------
    async def trim(self, file: str, offset: int, size: int) -> None:
        """Mark a range trimmed; delete the file once it is fully trimmed and retired
        (``_retired``)."""
        self._check_open()
        fn = self._parse(file)
        err = check_range(offset, size)
        if err:
            raise BadArg(err)
        f = await self._adopt(file, fn)
        for _ in range(100):
            waits = [
                ev for e in f.index.overlapping(offset, size)
                if (ev := self._pending_event((file, e.offset))) is not None
            ]
            if not waits:
                break
            await waits[0].wait()
        if self._files.get(file) is not f:
            raise Trimmed(f"file {file} was trimmed and deleted")

        def regen(e: Entry, off: int, n: int) -> TaggedCsum:
            assert e.csum is not None
            raw = self._data.pread_now(file, e.size, e.offset)
            if len(raw) < e.size or not verify(raw, e.csum):
                raise BadChecksum(f"{file} [{e.offset}, +{e.size}): corrupt, cannot split it")
            lo = off - e.offset
            return TaggedCsum(CsumTag.SERVER_REGEN, digest(raw[lo:lo + n]))

        res = f.index.trim(offset, size, regen)
        batch = Batch()
        for e in res.removed:
            if e.trimmed:
                batch.trim_del(file, e.offset)
            else:
                batch.chunk_del(file, e.offset)
        for e in res.added:
            if e.trimmed:
                batch.trim_put(file, e.offset, e.size)
            else:
                assert e.csum is not None
                batch.chunk_put(file, e.offset, e.size, e.csum.to_bytes())
        self._file_record(batch, f)
        with anyio.CancelScope(shield=True):  # the index already changed: finish the job
            await self._committer.submit(batch)
            await self._maybe_delete(f)

    # ---- repair reset (CP repair only) -------------------------------------------------
    async def repair_reset(self, file: str, offset: int, size: int) -> int:
        """Forget the written chunks inside ``[offset, offset+size)``: CP repair undoing
        bytes a failed write left on a repairing replica that the UPI tail never wrote.

        Narrow on purpose (docs/storage.md): only whole written chunks inside the extent
        lose their metadata; trimmed ranges stay trimmed; a chunk crossing the extent's
        edges is refused (``BadArg``).  The data bytes stay on disk but become unreadable
        and overwritable, exactly like bytes without committed metadata after a crash.
        The node allows it only on a FLU listed as repairing.  Returns the chunks removed.
        """
        self._check_open()
        self._parse(file)
        err = check_range(offset, size)
        if err:
            raise BadArg(err)
        f = self._files.get(file)
        if f is None:
            return 0
        end = offset + size
        for _ in range(100):
            waits = [
                ev for e in f.index.overlapping(offset, size)
                if (ev := self._pending_event((file, e.offset))) is not None
            ]
            if not waits:
                break
            await waits[0].wait()
        victims = [e for e in f.index.overlapping(offset, size) if not e.trimmed]
        for e in victims:
            if e.offset < offset or e.end > end:
                raise BadArg(f"{file} [{e.offset}, +{e.size}) crosses the edge of the reset "
                             f"range [{offset}, +{size}); nothing reset")
        if not victims:
            return 0
        batch = Batch()
        for e in victims:
            f.index.remove(e)
            batch.chunk_del(file, e.offset)
        self._file_record(batch, f)
        with anyio.CancelScope(shield=True):  # the index already changed: finish the job
            await self._committer.submit(batch)
        log.warning("repair reset %s [%d, +%d): %d chunks forgotten", file, offset, size,
                    len(victims))
        return len(victims)

    def _is_target(self, name: str) -> bool:
        return any(t.name == name for t in self._targets.values())

    def _retired(self, f: DataFile) -> bool:
        """No member of a chain can legitimately get new bytes past this FLU's EOF of
        ``f`` (docs/storage.md, "Whole-file deletion"): the file is full (its EOF reached
        ``max_file_size``, so no head can append to it), or this store minted it and has
        moved its key on (every chunk ever placed in it was placed here, below our EOF).
        A file that only reached us through writes (a replica of the head's current
        file) is neither: the head may still append to it."""
        if f.index.eof >= self.config.max_file_size:
            return True
        return f.name in self._minted and not self._is_target(f.name)

    async def _maybe_delete(self, f: DataFile) -> None:
        if (
            self._files.get(f.name) is not f
            or not f.index.fully_trimmed()
            or not self._retired(f)
            or any(k[0] == f.name for k in self._pending)
        ):
            return
        del self._files[f.name]
        self._trimmed_files.add(f.name)
        batch = Batch()
        batch.deleted_files.append(f.name)
        await self._committer.submit(batch)
        if self._sync == "none":
            await self._committer.flush()
        self._data.unlink(f.name)
        log.info("data file %s fully trimmed: deleted, name kept as trimmed", f.name)

    # ---- listing --------------------------------------------------------------------
    async def checksum_list(
        self, file: str, *, batch_size: int = 4096, from_offset: int = MIN_OFFSET
    ) -> AsyncIterator[list[ChecksumEntry]]:
        """Durable entries of ``file`` in offset order, streamed in batches; only those
        that end after ``from_offset`` (AP anti-entropy plans the changed part)."""
        self._check_open()
        self._parse(file)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise BadArg(f"batch_size must be a positive integer, got {batch_size!r}")
        f = self._files.get(file)
        if f is None:
            raise NoSuchFile(f"no file {file}")
        if isinstance(from_offset, bool) or not isinstance(from_offset, int) or from_offset < 0:
            raise BadArg(f"from_offset must be a non-negative integer, got {from_offset!r}")
        entries = [e for e in f.index.entries_from(from_offset)
                   if (file, e.offset) not in self._pending]
        for i in range(0, len(entries), batch_size):
            yield [ChecksumEntry(e.offset, e.size, e.csum,
                                 e.csum is not None and (file, e.offset) in self._known_corrupt)
                   for e in entries[i:i + batch_size]]

    async def checksum_summary(self, file: str, *, from_offset: int = MIN_OFFSET,
                               to_offset: int | None = None) -> Summary | None:
        """The summary (``machi.core.list_summary``) of the entries ``checksum_list``
        would list now with ``from_offset`` that start below ``to_offset`` (None: no
        bound): equal summaries on two FLUs mean equal lists (AP anti-entropy skips
        listing them).  None when one of those entries is a copy known to be corrupt
        (it needs a rewrite: list it).  Cost: one hash update per entry, computed when
        asked (nothing is kept between calls)."""
        self._check_open()
        self._parse(file)
        f = self._files.get(file)
        if f is None:
            raise NoSuchFile(f"no file {file}")
        for name, value in (("from_offset", from_offset), ("to_offset", to_offset)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 0):
                raise BadArg(f"{name} must be a non-negative integer, got {value!r}")
        entries = [e for e in f.index.entries_between(from_offset, to_offset)
                   if (file, e.offset) not in self._pending]
        if self._known_corrupt and any(
                e.csum is not None and (file, e.offset) in self._known_corrupt
                for e in entries):
            return None
        s = Summarizer()
        for i in range(0, len(entries), SUMMARY_STEP):
            if i:
                await anyio.lowlevel.checkpoint()  # a long file must not hog the loop
            s.add(entries[i:i + SUMMARY_STEP])
        return s.value()

    async def list_files(self) -> list[tuple[str, int]]:
        """(name, EOF) of every file, sorted by name."""
        self._check_open()
        return sorted((name, f.index.eof) for name, f in self._files.items())

    async def list_file_changes(
        self, since: int | None = None
    ) -> tuple[int, list[tuple[str, int, int | None]]]:
        """AP anti-entropy's listing (docs/repair.md): a new change token and (name, EOF,
        low) of every file, sorted by name, where ``low`` is the lowest offset whose
        checksum-list entry changed since token ``since`` was issued by this store (None:
        unchanged).  ``since`` None, or a token this store does not know (issued before its
        last open, or one of more than ``MAX_CHANGE_TOKENS`` issued since), gives
        ``MIN_OFFSET`` for every file (everything may have changed).  Cost: one dict
        lookup per file; every change of a file updates at most ``MAX_CHANGE_TOKENS``
        numbers."""
        self._check_open()
        known = since is not None and since in self._change_tokens
        self._token_seq += 1
        token = (self.incarnation << 32) | (self._token_seq & 0xFFFF_FFFF)
        rows: list[tuple[str, int, int | None]] = []
        for name in sorted(self._files):
            f = self._files[name]
            low = f.index.low_since(since) if known and since is not None else MIN_OFFSET
            rows.append((name, f.index.eof, low))
        # the new token goes live in the same step as the listing (no await in between)
        self._change_tokens.append(token)
        if len(self._change_tokens) > MAX_CHANGE_TOKENS:
            del self._change_tokens[0]
        return token, rows

    # ---- projection store ------------------------------------------------------------
    async def projection_write(self, kind: Literal["public", "private"], p: Projection) -> None:
        self._check_open()
        k = check_kind(kind)
        async with self._projection_lock:  # check + commit + cache as one step
            self._projections.check_write(k, p)
            batch = Batch()
            batch.projections.append((k, p.epoch_number, p.epoch_csum, p.to_bytes()))
            await self._committer.commit_now(batch)
            self._projections.put(k, p)

    async def projection_read(self, kind: Kind, epoch_number: int) -> Projection:
        self._check_open()
        if isinstance(epoch_number, bool) or not isinstance(epoch_number, int):
            raise BadArg(f"epoch number must be an integer, got {epoch_number!r}")
        return self._projections.read(check_kind(kind), epoch_number)

    async def projection_read_latest(self, kind: Kind) -> Projection:
        self._check_open()
        return self._projections.read_latest(check_kind(kind))

    async def projection_latest_epoch_id(self, kind: Kind) -> EpochId:
        self._check_open()
        return self._projections.latest_epoch_id(check_kind(kind))

    async def projection_list(self, kind: Kind) -> list[int]:
        self._check_open()
        return self._projections.epochs(check_kind(kind))

    async def projection_get_all(self, kind: Kind) -> list[Projection]:
        self._check_open()
        return self._projections.get_all(check_kind(kind))


def _for_chunk(err: MachiError, index: int, count: int) -> MachiError:
    """``err`` re-raised for chunk ``index`` of a multi-chunk request (same status)."""
    msg = err.message if "nothing written" in err.message else f"{err.message}; nothing written"
    out = type(err)(f"chunk {index} of {count}: {msg}")
    out.chunk_index = index  # type: ignore[attr-defined]
    return out
