"""The metadata plane of one FLU: ONE SQLite database (WAL) through SQLAlchemy's async
engine on ``sqlite+aiosqlite``.

Owns: the schema, loading everything at start-up, and applying a batch of metadata
records in ONE transaction (the group committer calls :meth:`MetadataDb.apply`).  Must
not: decide semantics (``flu_store`` and ``machi.core.ranges`` do), touch data files, or
be called once per chunk on the hot path.

Tables:
  files(name, prefix, namespace, locator, seq, eof)      every known data file
  chunks(file, offset, size, csum)                        written chunks (tagged csum)
  trims(file, offset, size)                               trimmed ranges (merged)
  seq_counters(namespace, locator, prefix, next_seq)      next sequence number to mint
  trimmed_files(name)                                     deleted names, never reused
  lost_chunks(file, offset, size, csum, reason)           dropped by repair_metadata
  projections(kind, epoch_number, epoch_csum, body)       projection store halves
  machi_meta(key, value)                                  schema_version, incarnation

``synchronous`` is FULL for sync modes "always" and "batch" (a commit is on disk when it
returns) and OFF for "none".
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiosqlite
import anyio
from sqlalchemy import (
    Column,
    Connection,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    event,
    select,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

log = logging.getLogger("machi.storage")

DB_NAME = "machi.sqlite3"
SCHEMA_VERSION = 1

md = MetaData()
files_t = Table(
    "files", md,
    Column("name", String, primary_key=True),
    Column("prefix", String, nullable=False),
    Column("namespace", String, nullable=False),
    Column("locator", Integer, nullable=False),
    Column("seq", Integer, nullable=False),
    Column("eof", Integer, nullable=False),
)
chunks_t = Table(
    "chunks", md,
    Column("file", String, nullable=False),
    Column("offset", Integer, nullable=False),
    Column("size", Integer, nullable=False),
    Column("csum", LargeBinary, nullable=False),
    PrimaryKeyConstraint("file", "offset"),
)
trims_t = Table(
    "trims", md,
    Column("file", String, nullable=False),
    Column("offset", Integer, nullable=False),
    Column("size", Integer, nullable=False),
    PrimaryKeyConstraint("file", "offset"),
)
seq_t = Table(
    "seq_counters", md,
    Column("namespace", String, nullable=False),
    Column("locator", Integer, nullable=False),
    Column("prefix", String, nullable=False),
    Column("next_seq", Integer, nullable=False),
    PrimaryKeyConstraint("namespace", "locator", "prefix"),
)
trimmed_files_t = Table("trimmed_files", md, Column("name", String, primary_key=True))
lost_t = Table(
    "lost_chunks", md,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("file", String, nullable=False),
    Column("offset", Integer, nullable=False),
    Column("size", Integer, nullable=False),
    Column("csum", LargeBinary, nullable=True),
    Column("reason", String, nullable=False),
)
projections_t = Table(
    "projections", md,
    Column("kind", String, nullable=False),
    Column("epoch_number", Integer, nullable=False),
    Column("epoch_csum", LargeBinary, nullable=False),
    Column("body", LargeBinary, nullable=False),
    PrimaryKeyConstraint("kind", "epoch_number"),
)
meta_t = Table(
    "machi_meta", md,
    Column("key", String, primary_key=True),
    Column("value", String, nullable=False),
)

SyncMode = Literal["always", "batch", "none"]


@dataclass(slots=True)
class Batch:
    """Metadata records of many operations, applied in one transaction.

    ``ops`` keeps the order of chunk/trim changes (a trim deletes a chunk an earlier append
    in the same batch inserted); file EOFs only grow, so the largest per file is kept.
    """

    ops: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    files: dict[str, tuple[str, str, int, int, int]] = field(default_factory=dict)
    seqs: dict[tuple[str, int, str], int] = field(default_factory=dict)
    deleted_files: list[str] = field(default_factory=list)
    projections: list[tuple[str, int, bytes, bytes]] = field(default_factory=list)
    n_ops: int = 0

    def chunk_put(self, file: str, offset: int, size: int, csum: bytes) -> None:
        self.ops.append(("chunk_put", (file, offset, size, csum)))

    def chunk_del(self, file: str, offset: int) -> None:
        self.ops.append(("chunk_del", (file, offset)))

    def trim_put(self, file: str, offset: int, size: int) -> None:
        self.ops.append(("trim_put", (file, offset, size)))

    def trim_del(self, file: str, offset: int) -> None:
        self.ops.append(("trim_del", (file, offset)))

    def file_eof(self, name: str, prefix: str, ns: str, locator: int, seq: int, eof: int) -> None:
        old = self.files.get(name)
        if old is None or old[4] < eof:
            self.files[name] = (prefix, ns, locator, seq, eof)

    def merge(self, other: Batch) -> None:
        self.ops.extend(other.ops)
        for name, row in other.files.items():
            self.file_eof(name, *row)
        self.seqs.update(other.seqs)
        self.deleted_files.extend(other.deleted_files)
        self.projections.extend(other.projections)
        self.n_ops += max(other.n_ops, 1)

    def empty(self) -> bool:
        return not (
            self.ops or self.files or self.seqs or self.deleted_files or self.projections
        )


_SQL = {
    "chunk_put": "INSERT OR REPLACE INTO chunks (file, offset, size, csum) VALUES (?, ?, ?, ?)",
    "chunk_del": "DELETE FROM chunks WHERE file = ? AND offset = ?",
    "trim_put": "INSERT OR REPLACE INTO trims (file, offset, size) VALUES (?, ?, ?)",
    "trim_del": "DELETE FROM trims WHERE file = ? AND offset = ?",
}
_FILE_UPSERT = (
    "INSERT INTO files (name, prefix, namespace, locator, seq, eof) VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT(name) DO UPDATE SET eof = max(eof, excluded.eof)"
)
_SEQ_UPSERT = (
    "INSERT INTO seq_counters (namespace, locator, prefix, next_seq) VALUES (?, ?, ?, ?) "
    "ON CONFLICT(namespace, locator, prefix) DO UPDATE SET "
    "next_seq = max(next_seq, excluded.next_seq)"
)
_PROJ_PUT = (
    "INSERT OR REPLACE INTO projections (kind, epoch_number, epoch_csum, body) "
    "VALUES (?, ?, ?, ?)"
)


@dataclass(slots=True)
class Loaded:
    files: list[tuple[str, str, str, int, int, int]]
    chunks: list[tuple[str, int, int, bytes]]
    trims: list[tuple[str, int, int]]
    seqs: dict[tuple[str, int, str], int]
    trimmed_files: set[str]
    projections: list[tuple[str, int, bytes, bytes]]


class MetadataDb:
    """One async connection to the FLU's database, used by one writer at a time."""

    def __init__(self, engine: AsyncEngine, conn: AsyncConnection, driver: Any,
                 sync: SyncMode) -> None:
        self.engine = engine
        self.conn = conn
        #: the aiosqlite connection under ``conn`` when its private "run this function on
        #: your thread" API is there (``apply`` then runs on its worker thread in one
        #: hop); None: ``apply`` takes the public SQLAlchemy path (``_private_api``)
        self._driver = driver
        self.sync = sync
        self.apply_calls = 0  # transactions applied (each one hop to the database thread)

    @property
    def one_hop_apply(self) -> bool:
        """True when ``apply`` runs as one call on aiosqlite's thread (private API)."""
        return self._driver is not None

    @classmethod
    async def open(cls, data_dir: Path, sync: SyncMode, *,
                   private_api: bool = True) -> MetadataDb:
        """Open (create) the database.  ``private_api=False`` forces the public
        SQLAlchemy path for ``apply`` (tests; it is also taken, with a warning, when the
        installed aiosqlite lacks the private API)."""
        engine = create_async_engine(f"sqlite+aiosqlite:///{data_dir / DB_NAME}",
                                     poolclass=NullPool)
        level = "OFF" if sync == "none" else "FULL"

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={level}")
            cur.execute("PRAGMA foreign_keys=OFF")
            cur.close()

        conn = await engine.connect()
        try:
            await conn.run_sync(md.create_all)
            await conn.exec_driver_sql(
                "INSERT OR IGNORE INTO machi_meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
            await conn.commit()
            driver = _private_api((await conn.get_raw_connection()).driver_connection)
            if driver is None and private_api:
                log.warning("aiosqlite %s has no Connection._execute/_conn: metadata "
                            "commits take the public SQLAlchemy path (more thread hops)",
                            getattr(aiosqlite, "__version__", "?"))
            if not private_api:
                driver = None
        except BaseException:
            await conn.close()
            await engine.dispose()
            raise
        return cls(engine, conn, driver, sync)

    async def close(self) -> None:
        try:
            await self.conn.close()
        finally:
            await self.engine.dispose()

    async def load(self) -> Loaded:
        c = self.conn
        files = [tuple(r) for r in (await c.execute(select(files_t))).all()]
        chunks = [
            tuple(r)
            for r in (await c.execute(select(chunks_t).order_by(chunks_t.c.file,
                                                                chunks_t.c.offset))).all()
        ]
        trims = [tuple(r) for r in (await c.execute(select(trims_t))).all()]
        seqs = {(r[0], r[1], r[2]): r[3] for r in (await c.execute(select(seq_t))).all()}
        tf = {r[0] for r in (await c.execute(select(trimmed_files_t))).all()}
        projs = [tuple(r) for r in (await c.execute(select(projections_t))).all()]
        await c.commit()
        return Loaded(files, chunks, trims, seqs, tf, projs)

    async def next_incarnation(self) -> int:
        """Raise the persisted start counter (``machi_meta`` key ``incarnation``) by one
        and return it: 1 at the first start.  Committed with synchronous=FULL in every
        sync mode (a counter that went back after a power cut would make this start's
        fitness reports lose to the previous start's, machi.core.fitness)."""
        c = self.conn
        try:
            if self.sync == "none":
                await c.exec_driver_sql("PRAGMA synchronous=FULL")
            await c.exec_driver_sql(
                "INSERT OR IGNORE INTO machi_meta (key, value) VALUES ('incarnation', '0')")
            await c.exec_driver_sql(
                "UPDATE machi_meta SET value = CAST(value AS INTEGER) + 1 "
                "WHERE key = 'incarnation'")
            row = (await c.exec_driver_sql(
                "SELECT value FROM machi_meta WHERE key = 'incarnation'")).one()
            await c.commit()
        finally:
            if self.sync == "none":
                with anyio.CancelScope(shield=True):
                    await c.exec_driver_sql("PRAGMA synchronous=OFF")
                    await c.commit()
        return int(row[0])

    async def apply(self, batch: Batch, *, durable: bool = False,
                    before: Callable[[], object] | None = None) -> None:
        """Apply ``batch`` in one transaction and commit, in ONE hop to the database thread.

        ``durable`` forces synchronous=FULL for this commit even in sync mode "none"
        (projection writes and sequence counters must never be lost).  ``before`` runs on
        the database thread first, in the same hop (the store's data fdatasync); if it
        raises, nothing is applied.

        Every SQLAlchemy/aiosqlite call is its own round trip to aiosqlite's worker thread
        (cursor, execute and close per statement: 7 hops for one append), and on a busy
        machine each hop waits for a CPU.  So the whole transaction runs as one function
        on that thread, on the DB-API connection SQLAlchemy holds (its own transaction
        state is untouched: it has none open between calls).
        """
        force = durable and self.sync == "none"
        stmts = _statements(batch)
        if self._driver is not None:
            await self._driver._execute(_apply_sync, self._driver._conn, stmts, force, before)
        else:
            if before is not None:
                await anyio.to_thread.run_sync(before)
            await self._apply_public(stmts, force)
        self.apply_calls += 1

    async def _apply_public(self, stmts: list[_Stmt], force: bool) -> None:
        """``apply`` through SQLAlchemy's public API only: the same statements in the same
        transaction, but each call is its own hop to aiosqlite's thread (the fallback when
        aiosqlite's private API is missing)."""

        def run(sync_conn: Connection) -> None:
            for sql, rows in stmts:
                sync_conn.exec_driver_sql(sql, rows)

        c = self.conn
        if force:
            await c.exec_driver_sql("PRAGMA synchronous=FULL")
            await c.commit()
        try:
            try:
                await c.run_sync(run)
                await c.commit()
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await c.rollback()
                raise
        finally:
            if force:
                with anyio.CancelScope(shield=True):
                    await c.exec_driver_sql("PRAGMA synchronous=OFF")
                    await c.commit()


_Stmt = tuple[str, list[tuple[Any, ...]]]


def _private_api(driver: Any) -> Any:
    """``driver`` when it has the aiosqlite internals ``apply`` uses (``_execute`` runs a
    function on the connection's worker thread; ``_conn`` is the sqlite3 connection),
    else None.  aiosqlite is pinned below 0.23 in pyproject.toml for this; the check
    keeps a newer or different version working, only slower."""
    try:
        execute = getattr(driver, "_execute", None)
        conn = getattr(driver, "_conn", None)
    except Exception:  # a property that raises (e.g. not connected)
        return None
    if callable(execute) and isinstance(conn, sqlite3.Connection):
        return driver
    return None


def _statements(batch: Batch) -> list[_Stmt]:
    """The SQL of ``batch`` in order: (statement, rows) pairs, each run by executemany."""
    out: list[_Stmt] = []
    if batch.seqs:
        out.append((_SEQ_UPSERT, [(ns, loc, p, n) for (ns, loc, p), n in batch.seqs.items()]))
    if batch.files:
        out.append((_FILE_UPSERT, [(name, *row) for name, row in batch.files.items()]))
    run_kind: str | None = None
    run: list[tuple[Any, ...]] = []
    for kind, args in [*batch.ops, ("", ())]:
        if kind != run_kind and run:
            assert run_kind is not None
            out.append((_SQL[run_kind], run))
            run = []
        run_kind = kind
        run.append(args)
    if batch.deleted_files:
        names = [(name,) for name in batch.deleted_files]
        out.append(("DELETE FROM chunks WHERE file = ?", names))
        out.append(("DELETE FROM trims WHERE file = ?", names))
        out.append(("DELETE FROM files WHERE name = ?", names))
        out.append(("INSERT OR IGNORE INTO trimmed_files (name) VALUES (?)", names))
    if batch.projections:
        out.append((_PROJ_PUT, list(batch.projections)))
    return out


def _apply_sync(conn: sqlite3.Connection, stmts: list[_Stmt], force: bool,
                before: Callable[[], object] | None = None) -> None:
    """Runs on aiosqlite's worker thread: the body of :meth:`MetadataDb.apply`."""
    if before is not None:
        before()
    if force:
        conn.execute("PRAGMA synchronous=FULL")
    try:
        if not conn.in_transaction:
            conn.execute("BEGIN")
        for sql, rows in stmts:
            conn.executemany(sql, rows)
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    finally:
        if force:
            conn.execute("PRAGMA synchronous=OFF")
