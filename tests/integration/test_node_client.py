"""Goal: the FLU client turns silence and broken connections into PARTITION (failing every
in-flight request), reconnects on the next use, and matches out-of-order responses."""

from __future__ import annotations

from pathlib import Path

import anyio
import anyio.abc
import pytest

from machi.client.flu_client import FluClient
from machi.core import wire
from machi.core.errors import Partition
from machi.core.wire import Op
from machi.node.process import NodeProcess, bootstrap

pytestmark = pytest.mark.timeout(60)


async def fake_server(behaviour: str, task_status: anyio.abc.TaskStatus[int]) -> None:
    """A hand-written peer on 127.0.0.1: 'silent' never answers the hello; 'mute' answers
    the hello but no request; 'reverse' answers requests in reverse order of arrival;
    'drop' closes the connection after receiving two requests."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)

    async def handle(stream: anyio.abc.SocketStream) -> None:
        proto = wire.Connection(wire.Role.SERVER)
        requests: list[wire.Frame] = []
        async with stream:
            while True:
                ev = proto.next_event()
                if isinstance(ev, wire.NeedData):
                    try:
                        proto.receive_data(await stream.receive())
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        return
                    continue
                if isinstance(ev, wire.Hello):
                    if behaviour == "silent":
                        await anyio.sleep_forever()
                    await stream.send(proto.send_server_hello(b"s" * 32, "fake",
                                                              auth_required=False))
                elif isinstance(ev, wire.Request):
                    requests.append(ev.frame)
                    if behaviour == "drop" and len(requests) == 2:
                        return
                    if behaviour == "reverse" and len(requests) == 3:
                        for f in reversed(requests):
                            await stream.send(proto.send_response(
                                f.request_id, f.op, payload_size=len(f.payload))
                                + bytes(f.payload))
                        requests.clear()
                else:
                    return

    async with listener:
        task_status.started(listener.extra(anyio.abc.SocketAttribute.local_port))
        await listener.serve(handle)


def run_against(behaviour: str, body: object) -> None:
    async def go() -> None:
        async with anyio.create_task_group() as tg:
            port = await tg.start(fake_server, behaviour)
            await body(port)  # type: ignore[operator]
            tg.cancel_scope.cancel()

    anyio.run(go)


def test_silent_server_is_a_partition() -> None:
    """No hello within the connect timeout -> PARTITION."""

    async def body(port: int) -> None:
        async with FluClient("127.0.0.1", port, connect_timeout_ms=300) as c:
            with pytest.raises(Partition):
                await c.echo(b"x")

    run_against("silent", body)


def test_request_timeout_is_a_partition() -> None:
    """A request that gets no answer within its timeout -> PARTITION."""

    async def body(port: int) -> None:
        async with FluClient("127.0.0.1", port, timeout_ms=300) as c:
            with pytest.raises(Partition):
                await c.echo(b"x")

    run_against("mute", body)


def test_out_of_order_responses_are_matched() -> None:
    """Three pipelined echoes answered in reverse order each get their own payload."""

    async def body(port: int) -> None:
        async with FluClient("127.0.0.1", port, timeout_ms=5000) as c:
            got: dict[int, bytes] = {}

            async def one(i: int) -> None:
                got[i] = await c.echo(bytes([i]) * (i + 1))

            async with anyio.create_task_group() as tg:
                for i in range(3):
                    tg.start_soon(one, i)
                    await anyio.sleep(0.01)
            assert got == {i: bytes([i]) * (i + 1) for i in range(3)}

    run_against("reverse", body)


def test_broken_connection_fails_all_in_flight() -> None:
    """A connection that drops with requests in flight fails every one with PARTITION."""

    async def body(port: int) -> None:
        async with FluClient("127.0.0.1", port, timeout_ms=5000) as c:
            outcomes: list[BaseException] = []

            async def one() -> None:
                try:
                    await c._call(Op.LIST_FILES)
                except Partition as e:
                    outcomes.append(e)

            with anyio.fail_after(4):  # well below the request timeout
                async with anyio.create_task_group() as tg:
                    for _ in range(2):
                        tg.start_soon(one)
            assert len(outcomes) == 2

    run_against("drop", body)


def test_reconnect_after_node_restart(tmp_path: Path) -> None:
    """After the node restarts on the same port, the same client works again."""
    n = NodeProcess("r1", tmp_path / "r1")
    try:
        n.start()

        async def go() -> None:
            async with n.client(timeout_ms=3000) as c:
                eid = await bootstrap(c, "r1")
                p = await c.append("re", b"before", epoch_id=eid)
                await anyio.to_thread.run_sync(n.stop)
                with pytest.raises(Partition):
                    await c.echo(b"x")
                await anyio.to_thread.run_sync(n.start)
                assert (await c.read(p.file, p.offset, p.size, epoch_id=eid)).data() == (
                    b"before")

        anyio.run(go)
    finally:
        n.kill()


def test_node_killed_under_big_concurrent_sends(tmp_path: Path) -> None:
    """Killing the node while many 1 MiB requests are being sent fails each of them with
    PARTITION and nothing else (no stray transport exceptions)."""
    n = NodeProcess("k2", tmp_path / "k2", sync="none")
    try:
        n.start()
        errors: list[BaseException] = []

        async def go() -> None:
            async with n.client(timeout_ms=10_000) as c:
                eid = await bootstrap(c, "k2")
                data = b"\xab" * (1 << 20)
                sent = 0

                async def writer() -> None:
                    nonlocal sent
                    while True:
                        try:
                            await c.append("big", data, epoch_id=eid)
                        except Exception as e:
                            errors.append(e)
                            return
                        sent += 1

                async with anyio.create_task_group() as tg:
                    for _ in range(8):
                        tg.start_soon(writer)
                    with anyio.fail_after(30):
                        while sent < 8:
                            await anyio.sleep(0.01)
                    n.kill()

        anyio.run(go)
        assert len(errors) == 8
        assert all(isinstance(e, Partition) for e in errors), [repr(e) for e in errors]
    finally:
        n.kill()
