"""The I/O half of the wire protocol: moving frames between a socket and a
``machi.core.wire.Connection`` for the daemon and the client.

Owns: two stream kinds with one small interface (``receive_into``, ``send_parts``,
``aclose``, ``bytes_received``):

- ``FramedStream``: plain TCP on an asyncio ``BufferedProtocol``.  The transport reads
  straight into the codec's buffers (``Connection.get_buffer``), so a big frame's
  payload lands in its final buffer with no copy after the kernel's, and the waiting task
  is woken once per batch of complete frames instead of once per socket read.  Sends go
  to the transport part by part (header, then the payload object itself: no join);
  small frames sent in one loop round are written together (``COALESCE_FRAME_MAX``).
- ``AnyioFramedStream``: any anyio byte stream (TLS), fed with ``receive_data`` (one copy).

and ``FramedListener`` (accepts plain TCP as ``FramedStream``) and ``connect_framed``.
Must not: interpret frames (the codec does) or hold more than a bounded amount of
received data: reading stops while ``READY_BYTES_MAX`` bytes of complete frames wait,
and sending waits while the transport holds more than ``WRITE_BUFFER_HIGH`` bytes.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Sequence
from typing import Any, cast

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.abc import SocketAttribute

from machi.core import wire

#: Reading pauses while this many bytes of complete frames wait for ``next_event``
#: (one big frame over the bound is allowed: it cannot be split).
READY_BYTES_MAX = 4 * 1024 * 1024
#: Sending waits (flow control) while the transport buffers more than this.
WRITE_BUFFER_HIGH = 4 * 1024 * 1024
WRITE_BUFFER_LOW = 1024 * 1024
#: Parts up to this size are joined with the frame header into one write.
JOIN_LIMIT = 64 * 1024
#: A frame sent as one ``bytes`` of at most this size is held until the event loop's next
#: round and written together with every other frame sent to the connection meanwhile:
#: the replies of one group commit (or the requests of woken callers) leave in one
#: ``writev``/``write`` instead of one system call each (loopback TCP: ~30 % of a FLU's
#: CPU per 4 KiB append went to per-reply sends).  Bigger frames go out at once, after
#: the held ones (order is kept).
COALESCE_FRAME_MAX = 64 * 1024 + 1024
#: Held frames are written at once when they reach this many bytes.
COALESCE_BYTES_MAX = 256 * 1024
#: ``AnyioFramedStream`` reads at most this much per receive outside a big frame.
RECEIVE_SIZE = 256 * 1024

Buffer = bytes | bytearray | memoryview

_alloc: Callable[[int], memoryview] = wire.bytearray_alloc


def big_buffer(n: int) -> memoryview:
    """The ``wire.BufferAlloc`` of machi's connections: a zero-filled ``bytearray`` unless
    ``use_uninitialised_buffers`` switched to numpy arrays that are not zeroed (every byte
    is overwritten by the decoder before anything reads it)."""
    return _alloc(n)


def use_uninitialised_buffers() -> bool:
    """Receive big frames into uninitialised numpy arrays (the ``fast`` extra) instead of
    zero-filled bytearrays: saves a ``memset`` of every big frame (~12 % of a client's CPU
    per 1 MiB read, measured).  Call it at start-up: importing numpy takes 0.1-0.7 s, which
    must not happen on the event loop (it did, lazily, and stalled the first big reply).
    False when numpy is not installed."""
    global _alloc
    try:
        import numpy
    except ImportError:
        return False
    uint8, np_empty = numpy.uint8, numpy.empty

    def _np(size: int) -> memoryview:
        return memoryview(np_empty(size, uint8))  # type: ignore[arg-type]

    _alloc = _np
    return True


#: Bytes a connection may receive before its codec is attached (the hello); reading
#: pauses above this.  (uvloop may read before ``connection_made`` could pause it.)
EARLY_BYTES_MAX = 64 * 1024


class _FramedProtocol(asyncio.BufferedProtocol):
    """The protocol behind one ``FramedStream``.  Bytes that arrive before a codec is
    attached are kept (bounded) and fed to it when it is; reading pauses while too many
    complete frames wait."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.sink: wire.Connection | None = None
        self.bytes_received = 0
        self.read_paused = False
        self.eof = False
        self.closed = False
        self.error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self.write_paused = False
        self._early = bytearray()
        self._early_view: memoryview | None = None

    # -- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses)
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(WRITE_BUFFER_HIGH, WRITE_BUFFER_LOW)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.sink is not None:
            return self.sink.get_buffer(sizehint)
        if self._early_view is None:
            self._early_view = memoryview(bytearray(EARLY_BYTES_MAX))
        return self._early_view[len(self._early):]

    def buffer_updated(self, nbytes: int) -> None:
        sink = self.sink
        self.bytes_received += nbytes
        if sink is None:
            assert self._early_view is not None
            n = len(self._early)
            self._early += self._early_view[n:n + nbytes]
            if len(self._early) >= EARLY_BYTES_MAX and not self.read_paused:
                assert self.transport is not None
                self.transport.pause_reading()
                self.read_paused = True
            return
        sink.buffer_updated(nbytes)
        if sink.has_event:
            if sink.ready_bytes >= READY_BYTES_MAX and not self.read_paused:
                assert self.transport is not None
                self.transport.pause_reading()
                self.read_paused = True
            self._wake()

    def eof_received(self) -> bool:
        self._end()
        return True  # keep the transport open: replies may still be sent

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if exc is not None and self.error is None:
            self.error = exc
        self._end()
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- helpers
    def attach(self, sink: wire.Connection) -> None:
        """Start feeding ``sink`` (first with the bytes that came before)."""
        self.sink = sink
        early, self._early, self._early_view = self._early, bytearray(), None
        if early:
            sink.receive_data(early)
        if self.eof:
            sink.receive_data(b"")

    def _end(self) -> None:
        if not self.eof:
            self.eof = True
            if self.sink is not None:
                self.sink.receive_data(b"")
        self._wake()

    def _wake(self) -> None:
        w, self._waiter = self._waiter, None
        if w is not None and not w.done():
            w.set_result(None)

    async def wait_event(self) -> None:
        """Until the sink has an event (complete frame, error or EOF)."""
        assert self.sink is not None and self.transport is not None
        if self.sink.has_event:
            return
        if self.read_paused and not self.closed:
            self.read_paused = False
            self.transport.resume_reading()
        w = asyncio.get_running_loop().create_future()
        self._waiter = w
        try:
            await w
        finally:
            if self._waiter is w:
                self._waiter = None

    async def drain(self) -> None:
        while self.write_paused and not self.closed:
            if self._drain is None:
                self._drain = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._drain)


class FramedStream(anyio.TypedAttributeProvider):
    """A plain TCP connection on a ``BufferedProtocol`` (see the module docstring)."""

    #: ``send_parts`` hands every part of a frame to the transport before it can yield
    #: (it only waits afterwards, for flow control): concurrent senders need no lock to
    #: keep frames whole.
    atomic_send = True

    def __init__(self, transport: asyncio.Transport, protocol: _FramedProtocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self._closing = False
        self._loop = asyncio.get_running_loop()
        #: small frames waiting for the end of the loop round (``COALESCE_FRAME_MAX``)
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._flush_handle: asyncio.Handle | None = None
        # uvloop's writelines sends the parts with one writev; asyncio's (3.11) joins them
        # into one new bytes object first, so there each part is written on its own.
        self._writelines = type(transport).__module__.startswith("uvloop")

    @property
    def bytes_received(self) -> int:
        return self._protocol.bytes_received

    async def receive_into(self, sink: wire.Connection) -> None:
        """Wait until ``sink.next_event()`` has something (frames, an error, or EOF).
        Raises ``anyio.ClosedResourceError`` after our own ``aclose``."""
        if self._closing:
            raise anyio.ClosedResourceError
        p = self._protocol
        if p.sink is None:
            p.attach(sink)
        elif p.sink is not sink:
            raise RuntimeError("a FramedStream feeds one codec")
        await p.wait_event()
        if self._closing:
            raise anyio.ClosedResourceError

    async def send_parts(self, parts: Sequence[Buffer]) -> None:
        """Write the parts back to back (they are not joined or copied here; the transport
        keeps a reference to what it could not send yet).  A small frame given as one
        ``bytes`` is held until the loop's next round and written with the other frames
        held by then (``COALESCE_FRAME_MAX``); frames keep their order.  Returns without
        yielding unless flow control makes it wait (the frame is written either way)."""
        if self._closing:
            raise anyio.ClosedResourceError
        p = self._protocol
        if p.closed or self._transport.is_closing():
            raise anyio.BrokenResourceError(p.error or "connection closed")
        if len(parts) == 1 and type(parts[0]) is bytes and len(parts[0]) <= COALESCE_FRAME_MAX:
            frame = parts[0]
            self._held.append(frame)
            self._held_bytes += len(frame)
            if self._held_bytes >= COALESCE_BYTES_MAX:
                self._flush()
            elif self._flush_handle is None:
                self._flush_handle = self._loop.call_soon(self._flush)
        else:
            self._flush()
            self._write(parts)
        if p.write_paused:
            await p.drain()
            if p.closed:
                raise anyio.BrokenResourceError(p.error or "connection closed")

    def _write(self, parts: Sequence[Buffer]) -> None:
        if self._writelines:
            self._transport.writelines([p for p in parts if p])
        else:
            write = self._transport.write
            for part in parts:
                if part:
                    write(part)

    def _flush(self) -> None:
        """Write the held frames (one call; a no-op once the transport is closing, whose
        ``close`` came after a flush)."""
        handle, self._flush_handle = self._flush_handle, None
        if handle is not None:
            handle.cancel()
        held, self._held, self._held_bytes = self._held, [], 0
        if not held or self._transport.is_closing():
            return
        if len(held) == 1:
            self._transport.write(held[0])
        elif self._writelines:
            self._transport.writelines(held)
        else:
            self._transport.write(b"".join(held))

    async def aclose(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._flush()
        self._transport.close()  # sends what is buffered, then closes
        self._protocol._wake()
        await anyio.lowlevel.checkpoint()

    @property
    def extra_attributes(self) -> dict[Any, Callable[[], Any]]:
        sock = self._transport.get_extra_info("socket")
        out: dict[Any, Callable[[], Any]] = {}
        if sock is not None:
            out[SocketAttribute.raw_socket] = lambda: sock
            out[SocketAttribute.local_address] = lambda: sock.getsockname()
            out[SocketAttribute.remote_address] = lambda: sock.getpeername()
        return out


class AnyioFramedStream(anyio.TypedAttributeProvider):
    """The same interface over an anyio byte stream (TLS): received bytes are copied into
    the codec with ``receive_data``."""

    #: parts are sent one ``await`` each: concurrent senders must hold a lock
    atomic_send = False

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.bytes_received = 0

    async def receive_into(self, sink: wire.Connection) -> None:
        while not sink.has_event:
            try:
                data = await self.stream.receive(sink.receive_size_hint(RECEIVE_SIZE))
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                data = b""
            self.bytes_received += len(data)
            sink.receive_data(data)

    async def send_parts(self, parts: Sequence[Buffer]) -> None:
        for part in parts:
            if part:
                await self.stream.send(part)  # type: ignore[arg-type]

    async def aclose(self) -> None:
        await self.stream.aclose()

    @property
    def extra_attributes(self) -> Any:
        return self.stream.extra_attributes


WireStream = FramedStream | AnyioFramedStream


def as_wire_stream(stream: Any) -> WireStream:
    if isinstance(stream, (FramedStream, AnyioFramedStream)):
        return stream
    return AnyioFramedStream(stream)


def join_small(head: bytes, parts: Sequence[Buffer]) -> list[Buffer]:
    """``[head + parts]`` as one buffer when the payload is small, else head and parts."""
    size = sum(len(p) for p in parts)
    if size <= JOIN_LIMIT:
        return [b"".join([head, *parts]) if size else head]
    return [head, *parts]


def _nodelay(sock: socket.socket | None) -> None:
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def connect_framed(host: str, port: int) -> FramedStream:
    """Open a plain TCP connection as a ``FramedStream`` (raises ``OSError``)."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_connection(_FramedProtocol, host, port)
    _nodelay(transport.get_extra_info("socket"))
    return FramedStream(transport, protocol)


class FramedListener(anyio.abc.Listener[FramedStream]):
    """Accepts plain TCP connections of an anyio TCP listener as ``FramedStream``s."""

    def __init__(self, tcp: anyio.abc.SocketListener) -> None:
        self.tcp = tcp
        self._sock: socket.socket = tcp.extra(SocketAttribute.raw_socket)

    async def accept(self) -> FramedStream:
        loop = asyncio.get_running_loop()
        sock, _addr = await loop.sock_accept(self._sock)
        try:
            _nodelay(sock)
            transport, protocol = await loop.connect_accepted_socket(_FramedProtocol, sock)
        except BaseException:
            sock.close()
            raise
        return FramedStream(transport, protocol)

    async def serve(
        self, handler: Callable[[FramedStream], Any],
        task_group: anyio.abc.TaskGroup | None = None,
    ) -> None:
        async with anyio.create_task_group() as own:
            tg = task_group or own
            while True:
                try:
                    stream = await self.accept()
                except OSError:  # e.g. EMFILE, or a peer that reset before accept
                    await anyio.sleep(0.01)
                    continue
                tg.start_soon(handler, stream)

    async def aclose(self) -> None:
        await self.tcp.aclose()

    @property
    def extra_attributes(self) -> Any:
        return self.tcp.extra_attributes
