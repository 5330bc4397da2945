"""Goal: the BufferedProtocol connections of machi.wire_io (what the daemon and the client
use for plain TCP) carry pipelined frames of every size intact, keep their bounds (reading
pauses while complete frames pile up), and leave the node serving after an oversized
frame or a peer that disconnects inside a frame."""

from __future__ import annotations

import io
import os
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from machi.client.flu_client import FluClient
from machi.core import wire
from machi.core.wire import Kind, Op
from machi.node.log import JsonLog
from machi.node.process import bootstrap
from machi.node.server import FluNode
from machi.storage.flu_store import FluStore, StoreConfig
from machi.wire_io import READY_BYTES_MAX, FramedListener, FramedStream, connect_framed

pytestmark = pytest.mark.timeout(120)
MIB = 1024 * 1024


@asynccontextmanager
async def framed_node(tmp: Path, **kw: int) -> AsyncIterator[tuple[FluNode, int]]:
    """A FluNode behind a FramedListener on 127.0.0.1 (as ``machi node run`` serves)."""
    store = await FluStore.open(tmp / "n", StoreConfig(sync="none"))
    node = FluNode("n", store, log=JsonLog("n", "warning", stream=io.StringIO()), **kw)
    await node.load_state()
    tcp = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = tcp.extra(anyio.abc.SocketAttribute.local_port)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(node.serve, FramedListener(tcp))
            try:
                yield node, port
            finally:
                await node.stop()
    finally:
        await store.close()


def test_pipelined_frames_of_every_size_arrive_intact(tmp_path: Path) -> None:
    """Concurrent echoes from 0 bytes to over 1 MiB on one connection, and 1 MiB reads
    whose data is a view of the received frame."""
    sizes = [0, 1, 100, 65_535, 65_536, 65_537, 300_000, MIB + 3]

    async def go() -> None:
        async with framed_node(tmp_path) as (_node, port), \
                FluClient("127.0.0.1", port) as c:
            eid = await bootstrap(c, "n", port=port)

            async def echo(i: int) -> None:
                data = os.urandom(sizes[i % len(sizes)])
                assert await c.echo(data) == data

            async with anyio.create_task_group() as tg:
                for i in range(4 * len(sizes)):
                    tg.start_soon(echo, i)
            blob = os.urandom(MIB)
            pos = await c.append("p", blob, epoch_id=eid)
            r = await c.read(pos.file, pos.offset, pos.size, epoch_id=eid)
            assert r.chunks[0].data == blob and isinstance(r.chunks[0].data, memoryview)

    anyio.run(go)


def _raw_hello(sock: socket.socket) -> wire.Connection:
    """A hand-driven client: hello exchanged on a blocking socket."""
    proto = wire.Connection(wire.Role.CLIENT)
    sock.sendall(proto.send_client_hello(b"c" * 32, "raw"))
    while not isinstance(ev := proto.next_event(), wire.Hello):
        assert ev is wire.NEED_DATA
        proto.receive_data(sock.recv(65536))
    return proto


def _events_until_closed(sock: socket.socket, proto: wire.Connection) -> list[wire.Event]:
    out: list[wire.Event] = []
    while True:
        try:
            ev = proto.next_event()
        except wire.RemoteProtocolError:
            return out
        if ev is wire.CLOSED:
            return out
        if ev is wire.NEED_DATA:
            proto.receive_data(sock.recv(65536))
            continue
        out.append(ev)


def test_oversized_frame_is_refused_before_its_body(tmp_path: Path) -> None:
    """Only a header announcing too many bytes is sent: the node answers TOO_LARGE and
    closes without waiting for the body, then serves the next client."""

    async def go() -> None:
        async with framed_node(tmp_path, max_frame_size=100_000) as (node, port):
            def raw() -> list[wire.Event]:
                with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                    proto = _raw_hello(s)
                    head = proto.send_request(1, Op.ECHO)
                    s.sendall(struct.pack(">I", 10 * MIB) + head[4:])
                    return _events_until_closed(s, proto)

            events = await anyio.to_thread.run_sync(raw)
            assert [e.frame.status for e in events  # type: ignore[union-attr]
                    ] == [wire.Status.TOO_LARGE]
            assert node.metrics.protocol_errors == 1
            async with FluClient("127.0.0.1", port) as c:
                assert await c.echo(b"still here") == b"still here"

    anyio.run(go)


@pytest.mark.parametrize("sent", [30, 70, 512 * 1024])
def test_disconnect_mid_frame_leaves_the_node_serving(tmp_path: Path, sent: int) -> None:
    """A peer that closes inside a frame (its header, or the body of a 1 MiB frame) is a
    protocol error on that connection only."""

    async def go() -> None:
        async with framed_node(tmp_path) as (node, port):
            def raw() -> None:
                with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                    proto = _raw_hello(s)
                    frame = proto.send_request(1, Op.ECHO, payload_size=MIB) + b"x" * MIB
                    s.sendall(frame[:sent])

            await anyio.to_thread.run_sync(raw)
            with anyio.fail_after(10):
                while node.metrics.protocol_errors < 1:
                    await anyio.sleep(0.01)
            async with FluClient("127.0.0.1", port) as c:
                assert await c.echo(b"x" * MIB) == b"x" * MIB

    anyio.run(go)


def test_reading_pauses_while_complete_frames_wait() -> None:
    """A receiver that does not take its frames stops reading at READY_BYTES_MAX (plus at
    most one frame); the sender then waits on flow control; nothing is lost."""
    n_frames, size = 12, MIB

    async def go() -> None:
        tcp = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = tcp.extra(anyio.abc.SocketAttribute.local_port)
        listener = FramedListener(tcp)
        accepted: list[FramedStream] = []
        async with anyio.create_task_group() as tg:
            async def accept() -> None:
                accepted.append(await listener.accept())

            tg.start_soon(accept)
            client = await connect_framed("127.0.0.1", port)
            cproto = wire.Connection(wire.Role.CLIENT)
            await client.send_parts([cproto.send_client_hello(b"c" * 32, "c")])
            with anyio.fail_after(10):
                while not accepted:
                    await anyio.sleep(0.01)
            server = accepted[0]
            sproto = wire.Connection(wire.Role.SERVER)
            await server.receive_into(sproto)
            assert isinstance(sproto.next_event(), wire.Hello)
            await server.send_parts([sproto.send_server_hello(b"s" * 32, "s",
                                                             auth_required=False)])
            await client.receive_into(cproto)
            assert isinstance(cproto.next_event(), wire.Hello)

            payload = os.urandom(size)

            async def send_all() -> None:
                for i in range(n_frames):
                    head = cproto.send_request(i + 1, Op.ECHO, payload_size=size)
                    await client.send_parts([head, payload])

            tg.start_soon(send_all)
            with anyio.fail_after(20):
                while server.bytes_received < READY_BYTES_MAX:
                    await server.receive_into(sproto)
                    await anyio.sleep(0.05)
            await anyio.sleep(0.3)  # the sender keeps going if nothing stops the reader
            frame_bytes = size + 200
            assert sproto.ready_bytes <= READY_BYTES_MAX + frame_bytes
            assert server.bytes_received < n_frames * size
            got = []
            with anyio.fail_after(20):
                while len(got) < n_frames:
                    ev = sproto.next_event()
                    if ev is wire.NEED_DATA:
                        await server.receive_into(sproto)
                        continue
                    assert isinstance(ev, wire.Request)
                    assert ev.frame.payload == payload
                    got.append(ev.frame.request_id)
            assert got == list(range(1, n_frames + 1))
            await client.aclose()
            await server.aclose()
            await listener.aclose()

    anyio.run(go)


def test_frames_written_in_parts_are_not_joined() -> None:
    """wire_io.join_small joins a small payload with its header and passes a big payload
    through as the same object (the transport sends it from there)."""
    from machi.wire_io import JOIN_LIMIT, join_small

    head = wire.frame_bytes(Kind.REQUEST, Op.ECHO)
    small = b"s" * JOIN_LIMIT
    assert join_small(head, [small]) == [head + small]
    big = bytearray(JOIN_LIMIT + 1)
    parts = join_small(head, [big])
    assert parts[0] is head and parts[1] is big


def test_small_frames_of_one_round_leave_in_one_write_in_order() -> None:
    """Small frames sent in one loop round are held and written together (one transport
    call); a big frame sent in the same round goes out after them; ``aclose`` writes what
    is held.  The receiver gets every frame intact and in order."""
    from machi import wire_io

    async def go() -> None:
        tcp = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = tcp.extra(anyio.abc.SocketAttribute.local_port)
        listener = FramedListener(tcp)
        accepted: list[FramedStream] = []
        async with anyio.create_task_group() as tg:
            async def accept() -> None:
                accepted.append(await listener.accept())

            tg.start_soon(accept)
            client = await connect_framed("127.0.0.1", port)
            with anyio.fail_after(10):
                while not accepted:
                    await anyio.sleep(0.01)
            server = accepted[0]
            writes: list[int] = []
            transport = client._transport
            real_write, real_writelines = transport.write, transport.writelines

            def write(data: Any) -> None:  # bytes per transport call
                writes.append(len(data))
                real_write(data)

            def writelines(parts: Any) -> None:
                parts = list(parts)
                writes.append(sum(len(p) for p in parts))
                real_writelines(parts)

            client._transport = _Spy(transport, write=write, writelines=writelines)
            cproto = wire.Connection(wire.Role.CLIENT)
            sproto = wire.Connection(wire.Role.SERVER)
            hello = cproto.send_client_hello(b"c" * 32, "c")
            await client.send_parts([hello])
            assert writes == []  # held ...
            await anyio.sleep(0.05)
            assert writes == [len(hello)]  # ... and written once the round ended
            await server.receive_into(sproto)
            assert isinstance(sproto.next_event(), wire.Hello)
            await server.send_parts([sproto.send_server_hello(b"s" * 32, "s",
                                                             auth_required=False)])
            await client.receive_into(cproto)
            assert isinstance(cproto.next_event(), wire.Hello)

            writes.clear()
            big = os.urandom(wire_io.COALESCE_FRAME_MAX + 10)
            sent = []
            small_bytes = 0
            for i in range(1, 21):  # send_parts does not yield: all in one round
                body = bytes([i]) * (i * 100)
                frame = cproto.send_request(i, Op.ECHO, payload_size=len(body)) + body
                await client.send_parts([frame])
                small_bytes += len(frame)
                sent.append((i, body))
            assert writes == []
            await client.send_parts([cproto.send_request(21, Op.ECHO, payload_size=len(big)),
                                     big])  # writes the 20 held frames first, in one call
            sent.append((21, big))
            assert writes[0] == small_bytes
            for i in range(22, 25):
                body = b"t%d" % i
                await client.send_parts([cproto.send_request(i, Op.ECHO,
                                                             payload_size=len(body)) + body])
                sent.append((i, body))
            await client.aclose()  # writes the held frames before closing
            got = []
            with anyio.fail_after(20):
                while len(got) < len(sent):
                    ev = sproto.next_event()
                    if ev is wire.NEED_DATA:
                        await server.receive_into(sproto)
                        continue
                    assert isinstance(ev, wire.Request)
                    got.append((ev.frame.request_id, bytes(ev.frame.payload)))
            assert got == sent
            await server.aclose()
            await listener.aclose()

    anyio.run(go)


class _Spy:
    """A transport whose write/writelines are replaced (everything else passed on)."""

    def __init__(self, inner: Any, **overrides: Any) -> None:
        self._inner = inner
        self.__dict__.update(overrides)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
