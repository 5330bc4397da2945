"""Async client for one FLU over the wire protocol (``machi.core.wire``).

Owns: one long-lived connection per client (opened on first use, reopened on the next
use after a failure), pipelining (many requests in flight, one reader task matching
responses by request id), per-request timeouts that surface as ``Partition``, the hello
and mutual-authentication handshake, optional TLS, and typed exceptions per status.
Must not: know about chains or retry on its own (a ``Partition`` may or may not have
taken effect; the caller decides), nor pick epochs (the caller passes ``epoch_id``).

Lifetime: ``async with FluClient(host, port) as c: ...`` (the reader task lives in the
client's task group).  Every in-flight request fails with ``Partition`` when the
connection breaks.
"""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from machi.core import wire
from machi.core.chain_manager import MemberView
from machi.core.checksum import TaggedCsum, client_csum, verify
from machi.core.epoch import DUMMY_EPOCH_ID, EpochId
from machi.core.errors import (
    AuthFailed,
    AuthRequired,
    BadArg,
    BadChecksum,
    MachiError,
    Partition,
    ProtocolError,
    RemoteProtocolError,
    UnknownOp,
    error_for_status,
)
from machi.core.fitness import Report
from machi.core.list_summary import Summary, parse_summary
from machi.core.projection import Projection, projection_from_json
from machi.core.status import Status
from machi.core.wire import Op
from machi.wire_io import (
    AnyioFramedStream,
    WireStream,
    big_buffer,
    connect_framed,
    join_small,
)

STREAM_BUFFER_FRAMES = 16


@dataclass(frozen=True, slots=True)
class ChunkPos:
    file: str
    offset: int
    size: int
    csum: TaggedCsum


@dataclass(frozen=True, slots=True)
class ReadChunk:
    file: str
    offset: int
    data: memoryview  # a view into the response frame (compare with == or bytes())
    csum: TaggedCsum


@dataclass(frozen=True, slots=True)
class ReadReply:
    chunks: list[ReadChunk]
    trimmed: list[tuple[int, int]]
    partial: bool

    def data(self) -> bytes:
        return b"".join(bytes(c.data) for c in self.chunks)


@dataclass(frozen=True, slots=True)
class ChecksumEntry:
    offset: int
    size: int
    csum: TaggedCsum | None  # None: trimmed
    #: the FLU knows its stored copy fails ``csum`` (repair rewrites it from a good copy)
    corrupt: bool = False


@dataclass(frozen=True, slots=True)
class WedgeStatus:
    wedged: bool
    epoch_id: EpochId
    mode: str
    witness: bool
    name: str
    public_epoch_number: int


class _Waiter:
    """The slot of a single-response request (lighter than a memory stream)."""

    __slots__ = ("event", "item")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.item: wire.Frame | MachiError | None = None

    def deliver(self, item: wire.Frame | MachiError) -> None:
        if self.item is None:
            self.item = item
            self.event.set()


_Target = _Waiter | MemoryObjectSendStream[wire.Frame | MachiError]


class _Conn:
    """One open connection: the stream, the codec and the table of in-flight requests."""

    def __init__(self, stream: WireStream, proto: wire.Connection) -> None:
        self.stream = stream
        self.proto = proto
        self.pending: dict[int, _Target] = {}
        self.send_lock = anyio.Lock(fast_acquire=True)
        self.next_id = 1
        self.broken: MachiError | None = None
        self.peer_name = ""

    def new_id(self) -> int:
        rid = self.next_id
        self.next_id += 1
        return rid

    async def fail(self, err: MachiError) -> None:
        """Break the connection: every in-flight request gets ``err``."""
        if self.broken is None:
            self.broken = err
        pending, self.pending = self.pending, {}
        for target in pending.values():
            if isinstance(target, _Waiter):
                target.deliver(err)
                continue
            with contextlib.suppress(anyio.WouldBlock, anyio.BrokenResourceError):
                target.send_nowait(err)
            target.close()
        with anyio.CancelScope(shield=True):
            await self.stream.aclose()


class FluClient:
    """Client of one FLU.  See the module docstring for the lifetime rules."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        secret: bytes | None = None,
        ssl_context: ssl.SSLContext | None = None,
        tls_hostname: str | None = None,
        timeout_ms: int = 10_000,
        connect_timeout_ms: int = 5_000,
        max_in_flight: int = 128,
        max_frame_size: int = wire.MAX_FRAME_SIZE_DEFAULT,
        name: str = "client",
    ) -> None:
        self.host = host
        self.port = port
        self.secret = secret
        self.ssl_context = ssl_context
        self.tls_hostname = tls_hostname
        self.timeout_ms = timeout_ms
        self.connect_timeout_ms = connect_timeout_ms
        self.max_frame_size = max_frame_size
        self.name = name
        self._in_flight = anyio.Semaphore(max_in_flight, fast_acquire=True)
        self._connect_lock = anyio.Lock(fast_acquire=True)
        self._conn: _Conn | None = None
        self._tg: anyio.abc.TaskGroup | None = None

    def __repr__(self) -> str:
        return f"FluClient({self.host}:{self.port})"

    # ---- lifetime ----------------------------------------------------------------------
    async def __aenter__(self) -> FluClient:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # The reader tasks never raise, so the body's own exception (if any) propagates
        # unwrapped instead of inside an ExceptionGroup.
        await self.close()
        assert self._tg is not None
        tg, self._tg = self._tg, None
        tg.cancel_scope.cancel()
        await tg.__aexit__(None, None, None)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.fail(Partition("client closed"))

    # ---- connection --------------------------------------------------------------------
    async def _connection(self) -> _Conn:
        if self._tg is None:
            raise RuntimeError("use `async with FluClient(...)`")
        conn = self._conn
        if conn is not None and conn.broken is None:
            return conn
        async with self._connect_lock:
            conn = self._conn
            if conn is not None and conn.broken is None:
                return conn
            self._conn = None
            try:
                with anyio.fail_after(self.connect_timeout_ms / 1000):
                    conn = await self._open()
            except TimeoutError:
                raise Partition(f"connect to {self.host}:{self.port} timed out") from None
            except (OSError, anyio.BrokenResourceError, anyio.EndOfStream, ssl.SSLError) as e:
                raise Partition(f"connect to {self.host}:{self.port}: {e}") from None
            self._conn = conn
            self._tg.start_soon(self._reader, conn)
            return conn

    async def _open(self) -> _Conn:
        stream: WireStream
        if self.ssl_context is not None:
            stream = AnyioFramedStream(await anyio.connect_tcp(
                self.host, self.port, ssl_context=self.ssl_context,
                tls_hostname=self.tls_hostname or self.host,
                # no TLS close_notify exchange: closing must not read (the reader task
                # may be reading); frames are self-delimiting so truncation is detected
                tls_standard_compatible=False,
            ))
        else:
            # plain TCP: a BufferedProtocol connection (replies land in their final buffer)
            stream = await connect_framed(self.host, self.port)
        proto = wire.Connection(wire.Role.CLIENT, max_frame_size=self.max_frame_size,
                                alloc=big_buffer)
        conn = _Conn(stream, proto)
        try:
            await self._handshake(conn)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await stream.aclose()
            raise
        return conn

    async def _next_event(self, conn: _Conn) -> wire.Event:
        while True:
            ev = conn.proto.next_event()
            if not isinstance(ev, wire.NeedData):
                return ev
            try:
                await conn.stream.receive_into(conn.proto)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError,
                    OSError):
                conn.proto.receive_data(b"")

    async def _handshake(self, conn: _Conn) -> None:
        client_nonce = os.urandom(wire.NONCE_SIZE)
        await conn.stream.send_parts([conn.proto.send_client_hello(client_nonce, self.name)])
        ev = await self._next_event(conn)
        if not isinstance(ev, wire.Hello):
            raise Partition(f"server closed during hello ({ev!r})")
        if ev.status is not Status.OK:
            raise error_for_status(ev.status, str(ev.meta.get("msg", "")))
        conn.peer_name = ev.name
        if not ev.auth_required:
            return
        if self.secret is None:
            raise AuthRequired(f"{self.host}:{self.port} requires a secret")
        proof = wire.auth_proof(self.secret, "client", ev.nonce, client_nonce)
        rid = conn.new_id()
        await conn.stream.send_parts(
            [conn.proto.send_request(rid, Op.AUTH, meta={"proof": proof.hex()})]
        )
        reply = await self._next_event(conn)
        if not isinstance(reply, wire.Response):
            raise Partition("server closed during auth")
        f = reply.frame
        if f.status != Status.OK:
            raise error_for_status(f.status, wire.error_message(f))
        want = wire.auth_proof(self.secret, "server", ev.nonce, client_nonce)
        try:
            got = bytes.fromhex(str(f.meta.get("proof", "")))
        except ValueError:
            got = b""
        if not wire.proof_matches(want, got):
            raise AuthFailed("the server does not know our secret (server proof mismatch)")

    async def _reader(self, conn: _Conn) -> None:
        try:
            while True:
                ev = await self._next_event(conn)
                if isinstance(ev, wire.Closed):
                    raise Partition("server closed the connection")
                if not isinstance(ev, wire.Response):
                    raise RemoteProtocolError(f"unexpected event {ev!r}")
                f = ev.frame
                target = conn.pending.get(f.request_id)
                if target is None:
                    continue  # answered after its caller gave up (timeout, cancel)
                if isinstance(target, _Waiter):
                    if not f.final:
                        raise RemoteProtocolError(f"op {f.op} answered with a stream")
                    del conn.pending[f.request_id]
                    target.deliver(f)
                elif f.final:
                    del conn.pending[f.request_id]
                    with target, contextlib.suppress(anyio.BrokenResourceError):
                        try:
                            target.send_nowait(f)
                        except anyio.WouldBlock:  # a stream consumer is behind
                            await target.send(f)
                else:
                    try:
                        await target.send(f)
                    except anyio.BrokenResourceError:
                        conn.pending.pop(f.request_id, None)
        except MachiError as err:
            await conn.fail(err if isinstance(err, Partition) else Partition(str(err)))
        except Exception as err:  # the reader must never take the client's task group down
            await conn.fail(Partition(f"connection lost: {err!r}"))

    # ---- request/response ----------------------------------------------------------------
    async def _send(
        self,
        conn: _Conn,
        op: Op,
        epoch_id: EpochId,
        meta: dict[str, Any] | None,
        payload: bytes | bytearray | memoryview | list[bytes | bytearray | memoryview],
        target: _Target,
    ) -> int:
        """Send one request whose response(s) go to ``target``; returns its request id.
        ``payload`` may be a list of buffers (sent back to back: a multi-chunk request)."""
        parts = payload if isinstance(payload, list) else [payload]
        size = sum(map(len, parts))
        if conn.stream.atomic_send:
            # the frame is handed to the transport whole before anything can yield
            return await self._send_locked(conn, op, epoch_id, meta, parts, size, target)
        async with conn.send_lock:
            return await self._send_locked(conn, op, epoch_id, meta, parts, size, target)

    async def _send_locked(
        self, conn: _Conn, op: Op, epoch_id: EpochId, meta: dict[str, Any] | None,
        parts: list[bytes | bytearray | memoryview], size: int, target: _Target,
    ) -> int:
        """The body of ``_send`` (under the send lock, or none for an atomic stream)."""
        if conn.broken is not None:
            raise Partition(f"connection broken: {conn.broken}")
        min_version = wire.OP_MIN_VERSION.get(op, 1)
        if conn.proto.version < min_version:
            # nothing sent: a definite rejection, like the node's own UNKNOWN_OP
            raise UnknownOp(f"{op.name.lower()} needs protocol version {min_version}; "
                            f"{self.host}:{self.port} speaks {conn.proto.version}")
        rid = conn.new_id()
        head = conn.proto.send_request(
            rid, op, epoch_id=epoch_id, meta=meta, payload_size=size
        )
        conn.pending[rid] = target
        try:
            await conn.stream.send_parts(join_small(head, parts))
        except BaseException as exc:
            # A half-sent frame poisons the stream: break the connection.
            await conn.fail(Partition(f"send failed: {exc!r}"))
            if isinstance(exc, (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError)):
                raise Partition(f"send to {self.host}:{self.port}: {exc}") from None
            raise
        return rid

    async def _call(
        self,
        op: Op,
        meta: dict[str, Any] | None = None,
        payload: bytes | bytearray | memoryview | list[bytes | bytearray | memoryview] = b"",
        *,
        epoch_id: EpochId = DUMMY_EPOCH_ID,
        timeout_ms: int | None = None,
    ) -> wire.Frame:
        timeout_s = (timeout_ms if timeout_ms is not None else self.timeout_ms) / 1000
        async with self._in_flight:
            try:
                with anyio.fail_after(timeout_s):
                    conn = await self._connection()
                    waiter = _Waiter()
                    rid = await self._send(conn, op, epoch_id, meta, payload, waiter)
                    try:
                        await waiter.event.wait()
                    finally:
                        _forget(conn, rid)
                    item = waiter.item
                    assert item is not None
            except TimeoutError:
                raise Partition(f"{op.name.lower()} to {self.host}:{self.port} timed out") from None
        return _check(item)

    async def _stream(
        self,
        op: Op,
        meta: dict[str, Any],
        *,
        epoch_id: EpochId = DUMMY_EPOCH_ID,
        timeout_ms: int | None = None,
    ) -> AsyncIterator[wire.Frame]:
        """Frames of a streamed response; the timeout applies to each frame."""
        timeout_s = (timeout_ms if timeout_ms is not None else self.timeout_ms) / 1000
        async with self._in_flight:
            try:
                with anyio.fail_after(timeout_s):
                    conn = await self._connection()
                    send, recv = anyio.create_memory_object_stream[wire.Frame | MachiError](
                        STREAM_BUFFER_FRAMES
                    )
                    try:
                        rid = await self._send(conn, op, epoch_id, meta, b"", send)
                    except BaseException:
                        send.close()
                        recv.close()
                        raise
            except TimeoutError:
                raise Partition(f"{op.name.lower()} to {self.host}:{self.port} timed out") from None
            with recv:
                try:
                    while True:
                        try:
                            with anyio.fail_after(timeout_s):
                                item = await _receive(recv)
                        except TimeoutError:
                            raise Partition(f"{op.name.lower()} stream timed out") from None
                        f = _check(item)
                        yield f
                        if f.final:
                            return
                finally:
                    _forget(conn, rid)

    # ---- operations ----------------------------------------------------------------------
    async def echo(self, data: bytes = b"") -> bytes:
        return bytes((await self._call(Op.ECHO, None, data)).payload)

    async def append(
        self,
        prefix: str,
        chunk: bytes | bytearray | memoryview,
        *,
        epoch_id: EpochId,
        csum: TaggedCsum | None = None,
        chunk_extra: int = 0,
        locator: int = 0,
    ) -> ChunkPos:
        csum = csum if csum is not None else client_csum(chunk)
        meta: dict[str, Any] = {"prefix": prefix, "csum": csum.hex()}
        if chunk_extra:
            meta["chunk_extra"] = chunk_extra
        if locator:
            meta["locator"] = locator
        f = await self._call(Op.APPEND, meta, chunk, epoch_id=epoch_id)
        return ChunkPos(
            _field(f, "file", str), _field(f, "offset", int), _field(f, "size", int),
            _csum(f.meta.get("csum")),
        )

    async def write(
        self,
        file: str,
        offset: int,
        chunk: bytes | bytearray | memoryview,
        *,
        epoch_id: EpochId,
        csum: TaggedCsum | None = None,
    ) -> TaggedCsum:
        csum = csum if csum is not None else client_csum(chunk)
        meta = {"file": file, "offset": offset, "csum": csum.hex()}
        f = await self._call(Op.WRITE, meta, chunk, epoch_id=epoch_id)
        return _csum(f.meta.get("csum"))

    async def append_chunks(
        self,
        prefix: str,
        chunks: Sequence[bytes | bytearray | memoryview],
        *,
        epoch_id: EpochId,
        csums: Sequence[TaggedCsum] | None = None,
        chunk_extras: Sequence[int] | None = None,
        locator: int = 0,
    ) -> list[ChunkPos]:
        """One APPEND_CHUNKS request (protocol version 2): the chunks land contiguously in
        one file, all or none.  ``UnknownOp`` (nothing sent) when the node speaks only
        version 1.  A rejected chunk's index is the exception's ``chunk_index``."""
        csums = csums if csums is not None else [client_csum(c) for c in chunks]
        extras = chunk_extras if chunk_extras is not None else [0] * len(chunks)
        if not (len(csums) == len(extras) == len(chunks)):
            raise ValueError("chunks, csums and chunk_extras differ in length")
        meta: dict[str, Any] = {
            "prefix": prefix,
            "chunks": [[len(c), cs.hex(), x]
                       for c, cs, x in zip(chunks, csums, extras, strict=True)],
        }
        if locator:
            meta["locator"] = locator
        f = await self._call(Op.APPEND_CHUNKS, meta, list(chunks), epoch_id=epoch_id)
        file = _field(f, "file", str)
        got = f.meta.get("chunks")
        if not isinstance(got, list) or len(got) != len(chunks):
            raise RemoteProtocolError("append_chunks: want one reply entry per chunk")
        out: list[ChunkPos] = []
        for entry, c in zip(got, chunks, strict=True):
            try:
                offset, size, cs = entry
            except (TypeError, ValueError):
                raise RemoteProtocolError(f"append_chunks: bad entry {entry!r}") from None
            if not isinstance(offset, int) or size != len(c):
                raise RemoteProtocolError(f"append_chunks: bad entry {entry!r}")
            out.append(ChunkPos(file, offset, size, _csum(cs)))
        return out

    async def write_chunks(
        self,
        file: str,
        chunks: Sequence[tuple[int, bytes | bytearray | memoryview]],
        *,
        epoch_id: EpochId,
        csums: Sequence[TaggedCsum] | None = None,
    ) -> list[TaggedCsum]:
        """One WRITE_CHUNKS request (protocol version 2): ``(offset, bytes)`` in ascending
        offset order, all written (or exact replays) or none."""
        csums = csums if csums is not None else [client_csum(c) for _o, c in chunks]
        if len(csums) != len(chunks):
            raise ValueError("chunks and csums differ in length")
        meta = {"file": file,
                "chunks": [[o, len(c), cs.hex()] for (o, c), cs in zip(chunks, csums, strict=True)]}
        f = await self._call(Op.WRITE_CHUNKS, meta, [c for _o, c in chunks], epoch_id=epoch_id)
        got = f.meta.get("csums")
        if not isinstance(got, list) or len(got) != len(chunks):
            raise RemoteProtocolError("write_chunks: want one checksum per chunk")
        return [_csum(c) for c in got]

    @property
    def protocol_version(self) -> int:
        """The version negotiated on the current connection (0: not connected)."""
        conn = self._conn
        return 0 if conn is None or conn.broken is not None else conn.proto.version

    async def read(
        self,
        file: str,
        offset: int,
        size: int,
        *,
        epoch_id: EpochId,
        needs_trimmed: bool = False,
        verify_csum: bool = True,
    ) -> ReadReply:
        """Read; with ``verify_csum`` every chunk is checked against its checksum here too
        (end to end), raising ``BadChecksum`` on a mismatch."""
        meta: dict[str, Any] = {"file": file, "offset": offset, "size": size}
        if needs_trimmed:
            meta["needs_trimmed"] = True
        f = await self._call(Op.READ, meta, epoch_id=epoch_id)
        return _read_reply(f, verify_csum)

    async def trim(self, file: str, offset: int, size: int, *, epoch_id: EpochId) -> None:
        await self._call(
            Op.TRIM, {"file": file, "offset": offset, "size": size}, epoch_id=epoch_id
        )

    async def repair_reset(
        self, file: str, offset: int, size: int, *, epoch_id: EpochId
    ) -> int:
        """CP repair: forget the written chunks inside the extent on a repairing FLU
        (docs/repair.md); returns how many chunks were forgotten."""
        f = await self._call(
            Op.REPAIR_RESET, {"file": file, "offset": offset, "size": size},
            epoch_id=epoch_id,
        )
        return int(_field(f, "chunks", int))

    async def checksum_list_batches(
        self, file: str, *, batch_size: int = 4096, from_offset: int | None = None
    ) -> AsyncIterator[list[ChecksumEntry]]:
        """The checksum list of ``file``, one batch per response frame (only the entries
        that end after ``from_offset``, when given)."""
        async for raw in self.checksum_list_raw_batches(file, batch_size=batch_size,
                                                       from_offset=from_offset):
            yield parse_checksum_entries(raw)

    async def checksum_list_raw_batches(
        self, file: str, *, batch_size: int = 4096, from_offset: int | None = None
    ) -> AsyncIterator[list[Any]]:
        """``checksum_list_batches`` as the wire carries them (``[offset, size, csum hex
        or null(, 1)]`` each), not parsed: repair compares equal batches of several
        members without parsing them (``parse_checksum_entries`` parses one)."""
        meta: dict[str, Any] = {"file": file, "batch_size": batch_size}
        if from_offset is not None:
            meta["from_offset"] = from_offset
        async for f in self._stream(Op.CHECKSUM_LIST, meta):
            entries = f.meta.get("entries", [])
            if not isinstance(entries, list):
                raise RemoteProtocolError("checksum_list: entries must be a list")
            yield entries

    async def checksum_summary(self, file: str, *, from_offset: int | None = None,
                               to_offset: int | None = None) -> Summary | None:
        """The summary (``machi.core.list_summary``) of the checksum-list entries that end
        after ``from_offset`` and start below ``to_offset`` (AP anti-entropy compares
        it instead of listing); None when the FLU flags one of them corrupt.  A FLU
        older than the field answers BAD_ARG."""
        meta: dict[str, Any] = {"file": file, "summary": True}
        if from_offset is not None:
            meta["from_offset"] = from_offset
        if to_offset is not None:
            meta["to_offset"] = to_offset
        last: wire.Frame | None = None
        async for f in self._stream(Op.CHECKSUM_LIST, meta):
            last = f
        if last is None or "summary" not in last.meta:
            raise RemoteProtocolError("checksum_list: no summary in the reply")
        try:
            return parse_summary(last.meta["summary"])
        except ValueError as e:
            raise RemoteProtocolError(f"checksum_list: {e}") from None

    async def checksum_list(self, file: str) -> list[ChecksumEntry]:
        out: list[ChecksumEntry] = []
        async for batch in self.checksum_list_batches(file):
            out.extend(batch)
        return out

    async def list_files(self) -> list[tuple[str, int]]:
        f = await self._call(Op.LIST_FILES)
        files = f.meta.get("files", [])
        try:
            return [(str(n), int(s)) for n, s in files]
        except (TypeError, ValueError):
            raise RemoteProtocolError("list_files: malformed reply") from None

    async def list_file_changes(
        self, since: int | None = None
    ) -> tuple[int, list[tuple[str, int, int | None]]]:
        """AP anti-entropy's listing (docs/protocol.md, list_files with ``changes``): a new
        change token and [(name, size, low)], ``low`` the lowest offset whose checksum-list
        entry changed since the token ``since`` (None: unchanged; 1024 for every file when
        ``since`` is None or unknown to the FLU).  A FLU older than the field answers
        BAD_ARG."""
        meta: dict[str, Any] = {"changes": True}
        if since is not None:
            meta["since"] = since
        f = await self._call(Op.LIST_FILES, meta)
        files = f.meta.get("files", [])
        try:
            return int(f.meta["token"]), [
                (str(n), int(s), None if low is None else int(low)) for n, s, low in files]
        except (KeyError, TypeError, ValueError):
            raise RemoteProtocolError("list_files: malformed reply") from None

    async def wedge_status(self) -> WedgeStatus:
        f = await self._call(Op.WEDGE_STATUS)
        m = f.meta
        return WedgeStatus(
            bool(m.get("wedged")), _epoch_id(m.get("epoch_id")), str(m.get("mode", "ap")),
            bool(m.get("witness", False)), str(m.get("name", "")),
            int(m.get("public_epoch_number", 0)),
        )

    async def kick(self) -> None:
        await self._call(Op.KICK)

    # ---- projection store ----------------------------------------------------------------
    async def projection_write(self, kind: str, p: Projection) -> None:
        await self._call(Op.PROJ_WRITE, {"kind": kind, "projection": p.to_json()})

    async def projection_read(self, kind: str, epoch_number: int) -> Projection:
        f = await self._call(Op.PROJ_READ, {"kind": kind, "epoch_number": epoch_number})
        return _projection(f.meta.get("projection"))

    async def projection_read_latest(self, kind: str) -> Projection:
        f = await self._call(Op.PROJ_READ_LATEST, {"kind": kind})
        return _projection(f.meta.get("projection"))

    async def projection_latest_epoch_id(self, kind: str) -> EpochId:
        f = await self._call(Op.PROJ_LATEST_EPOCH_ID, {"kind": kind})
        return _epoch_id(f.meta.get("epoch_id"))

    async def projection_list(self, kind: str) -> list[int]:
        f = await self._call(Op.PROJ_LIST, {"kind": kind})
        epochs = f.meta.get("epochs", [])
        if not isinstance(epochs, list) or not all(isinstance(e, int) for e in epochs):
            raise RemoteProtocolError("proj_list: malformed reply")
        return epochs

    async def projection_get_all(self, kind: str) -> list[Projection]:
        f = await self._call(Op.PROJ_GET_ALL, {"kind": kind})
        ps = f.meta.get("projections", [])
        if not isinstance(ps, list):
            raise RemoteProtocolError("proj_get_all: malformed reply")
        return [_projection(p) for p in ps]

    # ---- chain manager -------------------------------------------------------------------
    async def chain_view(
        self, *, want_confirmed: bool = False, timeout_ms: int | None = None
    ) -> MemberView:
        """One chain-manager read of this member: latest public and private projections,
        newest confirmed private one (with ``want_confirmed``), fitness reports."""
        f = await self._call(Op.CHAIN_VIEW, {"want_confirmed": want_confirmed},
                             timeout_ms=timeout_ms)
        m = f.meta

        def opt(key: str) -> Projection | None:
            v = m.get(key)
            return None if v is None else _projection(v)

        raw = m.get("fitness", [])
        try:
            reports = [Report.from_json(r) for r in raw]
            # age on the member's clock when it answered; absent from older nodes (0)
            ages = {r.observer: int(d.get("age_ms", 0)) for r, d in zip(reports, raw,
                                                                        strict=True)}
        except (TypeError, KeyError, ValueError, AttributeError):
            raise RemoteProtocolError("chain_view: malformed fitness reports") from None
        if any(a < 0 for a in ages.values()):
            raise RemoteProtocolError("chain_view: negative fitness report age")
        return MemberView(opt("public"), opt("private"), opt("private_confirmed"),
                          {r.observer: r for r in reports}, fitness_age_ms=ages,
                          restarted=m.get("restarted") is True)

    async def chain_admin(self, op: Op, meta: dict[str, Any]) -> dict[str, Any]:
        """CHAIN_BOOTSTRAP / CHAIN_SET_MEMBERS / CHAIN_STATUS: the node's chain status."""
        if op not in (Op.CHAIN_BOOTSTRAP, Op.CHAIN_SET_MEMBERS, Op.CHAIN_STATUS):
            raise ValueError(f"not a chain admin op: {op!r}")
        return dict((await self._call(op, meta)).meta)


# ---- helpers ----------------------------------------------------------------------------
def _forget(conn: _Conn, rid: int) -> None:
    """Drop a request from the in-flight table (answered, timed out or abandoned)."""
    target = conn.pending.pop(rid, None)
    if target is not None and not isinstance(target, _Waiter):
        target.close()


async def _receive(recv: MemoryObjectReceiveStream[wire.Frame | MachiError]) -> Any:
    try:
        return await recv.receive()
    except anyio.EndOfStream:
        raise Partition("connection lost before the response") from None


def _check(item: wire.Frame | MachiError) -> wire.Frame:
    if isinstance(item, MachiError):
        raise Partition(str(item)) if not isinstance(item, Partition) else item
    if item.status != Status.OK:
        err = error_for_status(item.status, wire.error_message(item))
        index = item.meta.get("chunk")
        if isinstance(index, int) and not isinstance(index, bool):
            err.chunk_index = index  # type: ignore[attr-defined]
        raise err
    return item


def _field(f: wire.Frame, name: str, typ: type) -> Any:
    value = f.meta.get(name)
    if not isinstance(value, typ) or isinstance(value, bool) != (typ is bool):
        raise RemoteProtocolError(f"reply field {name!r}: want {typ.__name__}, got {value!r}")
    return value


def _csum(value: object) -> TaggedCsum:
    try:
        return TaggedCsum.from_hex(str(value))
    except ValueError as e:
        raise RemoteProtocolError(f"bad checksum in reply: {e}") from None


def _epoch_id(value: object) -> EpochId:
    try:
        return EpochId.from_json(value)
    except ValueError as e:
        raise RemoteProtocolError(f"bad epoch id in reply: {e}") from None


def _projection(value: object) -> Projection:
    try:
        return projection_from_json(value)  # type: ignore[arg-type]
    except ValueError as e:
        raise RemoteProtocolError(f"bad projection in reply: {e}") from None


def parse_checksum_entries(raw: list[Any]) -> list[ChecksumEntry]:
    """One batch of ``checksum_list_raw_batches``, parsed (RemoteProtocolError on a bad
    entry)."""
    return [_checksum_entry(e) for e in raw]


def _checksum_entry(e: object) -> ChecksumEntry:
    if not isinstance(e, list) or len(e) not in (3, 4) or (len(e) == 4 and e[3] != 1):
        raise RemoteProtocolError(f"checksum_list: bad entry {e!r}")
    off, size, cs = e[:3]
    return ChecksumEntry(int(off), int(size), None if cs is None else _csum(cs), len(e) == 4)


def _read_reply(f: wire.Frame, verify_csum: bool) -> ReadReply:
    chunks_meta = f.meta.get("chunks", [])
    if not isinstance(chunks_meta, list):
        raise RemoteProtocolError("read: chunks must be a list")
    chunks: list[ReadChunk] = []
    pos = 0
    payload = f.payload
    for c in chunks_meta:
        try:
            file, offset, size, cs = c
            size = int(size)
        except (TypeError, ValueError):
            raise RemoteProtocolError(f"read: bad chunk entry {c!r}") from None
        if size < 0 or pos + size > len(payload):
            raise RemoteProtocolError("read: chunk sizes exceed the payload")
        data = payload[pos:pos + size]
        pos += size
        csum = _csum(cs)
        if verify_csum and not verify(data, csum):
            raise BadChecksum(f"{file}@{offset}+{size}: checksum mismatch on the client")
        chunks.append(ReadChunk(str(file), int(offset), data, csum))
    if pos != len(payload):
        raise RemoteProtocolError("read: payload longer than the chunks")
    trimmed_meta = f.meta.get("trimmed", [])
    try:
        trimmed = [(int(o), int(s)) for o, s in trimmed_meta]
    except (TypeError, ValueError):
        raise RemoteProtocolError("read: bad trimmed list") from None
    return ReadReply(chunks, trimmed, bool(f.meta.get("partial", False)))


def parse_server(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 as ``[::1]:PORT``) -> (host, port); raises ``BadArg``."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BadArg(f"bad address {text!r}: want HOST:PORT")
    return host.strip("[]"), int(port)


__all__ = [
    "ChecksumEntry", "ChunkPos", "FluClient", "ProtocolError", "ReadChunk", "ReadReply",
    "WedgeStatus", "parse_checksum_entries", "parse_server",
]
