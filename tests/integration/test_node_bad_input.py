"""Goal: hostile or mistaken input (garbage, malformed and oversize frames, unknown ops,
bad checksums, path-like prefixes, wrong epochs, wrong secrets, witness misuse, bad
config) gets a clear error or a closed connection, while the daemon keeps serving
everyone else and loses nothing it acknowledged."""

from __future__ import annotations

import os
import random
import socket
import ssl
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from machi.core import wire
from machi.core.checksum import CsumTag, TaggedCsum
from machi.core.epoch import EpochId
from machi.core.errors import (
    AuthFailed,
    AuthRequired,
    BadArg,
    BadChecksum,
    BadEpoch,
    Partition,
    UnknownOp,
    Wedged,
)
from machi.core.projection import make_projection
from machi.core.status import Status
from machi.core.wire import Kind, Op
from machi.node.process import NodeProcess, bootstrap
from tests.integration.tls_certs import self_signed

pytestmark = pytest.mark.timeout(120)
SECRET = b"correct horse battery staple"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    n = NodeProcess("b1", tmp_path_factory.mktemp("bad") / "b1",
                    extra_args=["--log-level", "warning"])
    try:
        n.start()
        anyio.run(_boot, n)
        yield n
    finally:
        n.kill()


async def _boot(n: NodeProcess, **kw: object) -> EpochId:
    async with n.client(**kw) as c:
        return await bootstrap(c, n.name)


class Raw:
    """A raw socket speaking the codec by hand (to send what a client library would not)."""

    def __init__(self, n: NodeProcess, *, hello: bool = True) -> None:
        self.sock = socket.create_connection((n.host, n.port), timeout=10)
        self.proto = wire.Connection(wire.Role.CLIENT)
        if hello:
            self.sock.sendall(self.proto.send_client_hello(b"r" * 32, "raw"))
            assert isinstance(self.event(), wire.Hello)

    def event(self) -> wire.Event:
        while True:
            ev = self.proto.next_event()
            if not isinstance(ev, wire.NeedData):
                return ev
            self.proto.receive_data(self.sock.recv(65536))

    def response(self) -> wire.Frame:
        ev = self.event()
        assert isinstance(ev, wire.Response), ev
        return ev.frame

    def closed(self) -> bool:
        """True when the server closes the connection (after any final frames)."""
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


def still_serving(n: NodeProcess, acked: list[tuple[str, int, bytes]] | None = None) -> None:
    """The node answers a fresh client, and every acknowledged chunk reads back intact."""

    async def go() -> None:
        async with n.client() as c:
            assert await c.echo(b"alive?") == b"alive?"
            eid = (await c.wedge_status()).epoch_id
            for f, o, data in acked or []:
                assert (await c.read(f, o, len(data), epoch_id=eid)).data() == data

    anyio.run(go)
    assert n.running()
    assert '"level":"error"' not in n.log_path.read_text(), "the node logged an internal error"


@pytest.fixture(scope="module")
def acked(node: NodeProcess) -> list[tuple[str, int, bytes]]:
    """A few chunks written before the abuse starts."""
    out = []

    async def go() -> None:
        async with node.client() as c:
            eid = (await c.wedge_status()).epoch_id
            for i in range(5):
                data = os.urandom(1000 + i)
                p = await c.append("keep", data, epoch_id=eid)
                out.append((p.file, p.offset, data))

    anyio.run(go)
    return out


def test_random_garbage_connections(node: NodeProcess, acked: list) -> None:
    """Random bytes, before and after the hello, close only that connection."""
    rng = random.Random(1234)
    for i in range(20):
        r = Raw(node, hello=bool(i % 2))
        try:
            body = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 3000)))
            if i % 4 >= 2:  # a plausible length prefix, so the header parser sees garbage
                body = struct.pack(">I", len(body)) + body
            r.sock.sendall(body)
            r.sock.shutdown(socket.SHUT_WR)
            r.closed()
        except OSError:
            pass
        finally:
            r.close()
    still_serving(node, acked)


def test_oversize_frame_refused_before_body(node: NodeProcess, acked: list) -> None:
    """A 3 GiB length prefix gets TOO_LARGE and a close, without the body being sent."""
    r = Raw(node)
    try:
        r.sock.sendall(struct.pack(">I", 3 * 2**30) + b"\x01" * 60)
        f = r.response()
        assert f.status == Status.TOO_LARGE and f.request_id == 0
        assert r.closed()
    finally:
        r.close()
    still_serving(node, acked)


def test_unknown_op_and_bad_meta_keep_the_connection(node: NodeProcess) -> None:
    """UNKNOWN_OP and PROTOCOL_ERROR answers, then the same connection still works."""
    r = Raw(node)
    try:
        r.sock.sendall(r.proto.send_request(1, 200))
        f = r.response()
        assert (f.request_id, f.status) == (1, Status.UNKNOWN_OP)
        bad = bytearray(r.proto.send_request(2, Op.ECHO, meta={"a": 1}))
        bad[60:67] = b"[1,2,3]"
        r.sock.sendall(bytes(bad))
        f = r.response()
        assert (f.request_id, f.status) == (2, Status.PROTOCOL_ERROR)
        r.sock.sendall(r.proto.send_request(3, Op.READ, meta={"file": 5}))
        f = r.response()
        assert (f.request_id, f.status) == (3, Status.BAD_ARG) and "file" in f.meta["msg"]
        r.sock.sendall(r.proto.send_request(4, Op.ECHO, payload_size=2) + b"ok")
        f = r.response()
        assert (f.request_id, f.status, bytes(f.payload)) == (4, Status.OK, b"ok")
    finally:
        r.close()


def test_truncated_frames_and_abrupt_disconnects(node: NodeProcess, acked: list) -> None:
    """Half a frame then a close, or a close with requests in flight, hurts nobody."""
    for cut in (3, 30, 61, 500):
        r = Raw(node)
        frame = r.proto.send_request(9, Op.APPEND, meta={"prefix": "t", "csum": "00"},
                                     payload_size=1000) + b"z" * 1000
        r.sock.sendall(frame[:cut])
        r.close()
    r = Raw(node)
    for i in range(20):
        r.sock.sendall(r.proto.send_request(i + 1, Op.LIST_FILES))
    r.close()
    still_serving(node, acked)


def test_bad_checksum_writes_nothing(node: NodeProcess) -> None:
    """A checksum that does not match the bytes is BAD_CHECKSUM and no file grows."""

    async def go() -> None:
        async with node.client() as c:
            eid = (await c.wedge_status()).epoch_id
            before = dict(await c.list_files())
            wrong = TaggedCsum(CsumTag.CLIENT, b"\x01" * 32)
            with pytest.raises(BadChecksum):
                await c.append("csum", b"some bytes", epoch_id=eid, csum=wrong)
            assert dict(await c.list_files()) == before
            r = Raw(node)
            try:
                head = r.proto.send_request(1, Op.APPEND, epoch_id=eid,
                                            meta={"prefix": "csum", "csum": "09" + "00" * 32},
                                            payload_size=3)
                r.sock.sendall(head + b"abc")
                assert r.response().status == Status.BAD_CHECKSUM  # unknown tag
            finally:
                r.close()
            assert dict(await c.list_files()) == before

    anyio.run(go)


@pytest.mark.parametrize("prefix", ["../x", "a/b", "/abs", "nul\x00", "ctl\x07", "", "p^q",
                                    "x" * 200, ".hidden"])
def test_path_like_prefixes(node: NodeProcess, prefix: str) -> None:
    """Path-like, control-character, empty and over-long prefixes are BAD_ARG."""

    async def go() -> None:
        async with node.client() as c:
            eid = (await c.wedge_status()).epoch_id
            with pytest.raises(BadArg):
                await c.append(prefix, b"data", epoch_id=eid)

    anyio.run(go)


def test_wrong_epochs(tmp_path: Path) -> None:
    """Old epoch -> BAD_EPOCH; newer epoch -> WEDGED and the node stays wedged until a
    newer private projection is adopted; nothing acknowledged is lost."""
    n = NodeProcess("e1", tmp_path / "e1")
    try:
        n.start()

        async def go() -> None:
            async with n.client() as c:
                eid = await bootstrap(c, "e1", epoch_number=3)
                p = await c.append("ep", b"kept", epoch_id=eid)
                with pytest.raises(BadEpoch):
                    await c.append("ep", b"x", epoch_id=EpochId(2, b"\x02" * 32))
                assert not (await c.wedge_status()).wedged
                with pytest.raises(Wedged):
                    await c.append("ep", b"x", epoch_id=EpochId(3, b"\x03" * 32))
                assert (await c.wedge_status()).wedged
                with pytest.raises(Wedged):
                    await c.read(p.file, p.offset, p.size, epoch_id=eid)
                p4 = make_projection(epoch_number=4, author_server="e1", chain_name="c1",
                                     all_members=["e1"], upi=["e1"])
                await c.projection_write("private", p4)
                st = await c.wedge_status()
                assert not st.wedged and st.epoch_id == p4.epoch_id
                r = await c.read(p.file, p.offset, p.size, epoch_id=p4.epoch_id)
                assert r.data() == b"kept"

        anyio.run(go)
    finally:
        n.kill()


def test_wrong_secret(tmp_path: Path) -> None:
    """With a secret: no secret -> AUTH_REQUIRED, wrong one -> AUTH_FAILED, raw requests
    get AUTH_REQUIRED and a close; the right secret works throughout."""
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(SECRET + b"\n")
    n = NodeProcess("s1", tmp_path / "s1", extra_args=["--secret-file", str(secret_file)])
    try:
        n.start()
        eid = anyio.run(lambda: _boot(n, secret=SECRET))

        async def refused(**kw: object) -> None:
            async with n.client(**kw) as c:
                await c.echo(b"x")

        with pytest.raises(AuthRequired):
            anyio.run(refused)
        with pytest.raises(AuthFailed):
            anyio.run(lambda: refused(secret=b"not the secret at all"))
        r = Raw(n)
        try:
            r.sock.sendall(r.proto.send_request(1, Op.LIST_FILES))
            f = r.response()
            assert f.status == Status.AUTH_REQUIRED and r.closed()
        finally:
            r.close()

        async def ok() -> None:
            async with n.client(secret=SECRET) as c:
                p = await c.append("s", b"secret data", epoch_id=eid)
                assert (await c.read(p.file, p.offset, p.size, epoch_id=eid)).data() == (
                    b"secret data")

        anyio.run(ok)
        cli = subprocess.run(
            [sys.executable, "-m", "machi.cli", "flu", "echo", "--server", n.address, "hi"],
            capture_output=True, timeout=60, check=False)
        assert cli.returncode != 0 and cli.stderr.startswith(b"AUTH_REQUIRED")
        cli = subprocess.run(
            [sys.executable, "-m", "machi.cli", "flu", "echo", "--server", n.address,
             "--secret-file", str(secret_file), "hi"],
            capture_output=True, timeout=60, check=False)
        assert cli.returncode == 0 and cli.stdout.strip() == b"hi"
    finally:
        n.kill()


def test_tls(tmp_path: Path) -> None:
    """A TLS node serves TLS clients that trust its certificate; a plain client fails
    with PARTITION and the node keeps serving."""
    cert, key = self_signed(tmp_path)
    n = NodeProcess("t1", tmp_path / "t1",
                    extra_args=["--tls-cert", str(cert), "--tls-key", str(key)])
    ctx = ssl.create_default_context(cafile=str(cert))
    try:
        n.start()
        eid = anyio.run(lambda: _boot(n, ssl_context=ctx, tls_hostname="localhost"))

        async def plain() -> None:
            async with n.client(connect_timeout_ms=2000) as c:
                await c.echo(b"x")

        with pytest.raises(Partition):
            anyio.run(plain)

        async def ok() -> None:
            async with n.client(ssl_context=ctx, tls_hostname="localhost") as c:
                data = os.urandom(200_000)
                p = await c.append("tls", data, epoch_id=eid)
                assert (await c.read(p.file, p.offset, p.size, epoch_id=eid)).data() == data

        anyio.run(ok)
    finally:
        n.kill()


def test_witness_refuses_data_ops(tmp_path: Path) -> None:
    """A witness answers BAD_ARG to data ops but serves the projection store."""
    n = NodeProcess("w1", tmp_path / "w1", extra_args=["--witness"])
    try:
        n.start()

        async def go() -> None:
            async with n.client() as c:
                eid = await bootstrap(c, "w1")
                assert (await c.wedge_status()).witness
                with pytest.raises(BadArg):
                    await c.append("w", b"x", epoch_id=eid)
                assert await c.list_files() == []
                assert await c.projection_list("private") == [1]

        anyio.run(go)
    finally:
        n.kill()


def test_unknown_op_via_client_api(node: NodeProcess) -> None:
    """The client maps UNKNOWN_OP to its typed exception."""

    async def go() -> None:
        async with node.client() as c:
            with pytest.raises(UnknownOp):
                await c._call(Op.HELLO)  # hello is not a request op

    anyio.run(go)


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    """An unknown TOML key or a bad value stops start-up with exit 2 naming the key."""
    cfg = tmp_path / "node.toml"
    cfg.write_text('name = "c1"\nlisten = "127.0.0.1:1"\ndata_dir = "d"\nsycn = "batch"\n')
    r = subprocess.run([sys.executable, "-m", "machi.cli", "node", "run", "--config", str(cfg)],
                       capture_output=True, timeout=60, check=False)
    assert r.returncode == 2 and b"sycn" in r.stderr
    cfg.write_text('name = "c1"\nlisten = "127.0.0.1:1"\ndata_dir = "d"\n'
                   "max_in_flight_per_connection = 0\n")
    r = subprocess.run([sys.executable, "-m", "machi.cli", "node", "run", "--config", str(cfg)],
                       capture_output=True, timeout=60, check=False)
    assert r.returncode == 2 and b"max_in_flight_per_connection" in r.stderr


def test_hello_rules_on_the_wire(node: NodeProcess) -> None:
    """A request before the hello, or an unknown version, is refused and closed."""
    r = Raw(node, hello=False)
    try:
        r.sock.sendall(wire.frame_bytes(Kind.REQUEST, Op.ECHO))
        assert r.closed()
    finally:
        r.close()
    r = Raw(node, hello=False)
    try:
        meta = {"protocol": "machi-py", "versions": [42], "nonce": "aa" * 32}
        r.sock.sendall(wire.frame_bytes(Kind.HELLO, Op.HELLO, meta=meta))
        r.proto._sent_hello = True
        r.proto.state = wire.State.HELLO_SENT
        h = r.event()
        assert isinstance(h, wire.Hello) and h.status is Status.PROTOCOL_ERROR
        assert r.closed()
    finally:
        r.close()


def test_malformed_multi_chunk_requests_write_nothing(node: NodeProcess, acked: list) -> None:
    """Multi-chunk appends and writes with a size mismatch, too many chunks, a bad
    checksum in one chunk or an overlap are refused whole (naming the chunk); nothing is
    written, the connection and the daemon keep serving; a version-1 connection gets
    UNKNOWN_OP for them."""
    from machi.core.checksum import client_csum

    async def files() -> list[tuple[str, int]]:
        async with node.client() as c:
            return await c.list_files()

    before = anyio.run(files)
    eid = anyio.run(_boot, node)
    r = Raw(node)
    ok = client_csum(b"abc").hex()
    cases: list[tuple[Op, dict[str, object], bytes, Status, int | None]] = [
        (Op.APPEND_CHUNKS, {"prefix": "m", "chunks": [[3, ok, 0], [3, ok, 0]]}, b"abcab",
         Status.BAD_ARG, None),
        (Op.APPEND_CHUNKS, {"prefix": "m", "chunks": [[1, "00", 0]] * 1025}, b"x" * 1025,
         Status.BAD_ARG, None),
        (Op.APPEND_CHUNKS, {"prefix": "m", "chunks": [[3, ok, 0], [3, ok, 0]]}, b"abcabd",
         Status.BAD_CHECKSUM, 1),
        (Op.APPEND_CHUNKS, {"prefix": "m", "chunks": [[3, ok, 0], [3, "zz", 0]]}, b"abcabc",
         Status.BAD_ARG, 1),
        (Op.APPEND_CHUNKS, {"prefix": "../m", "chunks": [[3, ok, 0]]}, b"abc",
         Status.BAD_ARG, None),
        (Op.APPEND_CHUNKS, {"prefix": "m", "chunks": [[3, ok, 2**40]]}, b"abc",
         Status.BAD_ARG, None),
        (Op.WRITE_CHUNKS, {"file": acked[0][0], "chunks": [[5000, 3, ok], [5001, 3, ok]]},
         b"abcabc", Status.BAD_ARG, 1),
        (Op.WRITE_CHUNKS, {"file": acked[0][0], "chunks": [[acked[0][1], 3, ok],
                                                          [90000, 3, ok]]},
         b"abcabc", Status.WRITTEN, 0),
    ]
    try:
        for i, (op, meta, payload, status, chunk) in enumerate(cases):
            r.sock.sendall(r.proto.send_request(i + 1, op, epoch_id=eid, meta=meta,
                                                payload_size=len(payload)) + payload)
            f = r.response()
            assert (f.request_id, f.status) == (i + 1, status), (i, f.meta)
            assert f.meta.get("chunk") == chunk, (i, f.meta)
        r.sock.sendall(r.proto.send_request(99, Op.ECHO, payload_size=2) + b"ok")
        assert bytes(r.response().payload) == b"ok"
    finally:
        r.close()
    assert anyio.run(files) == before
    old = Raw(node, hello=False)  # a version-1 client
    try:
        meta = {"protocol": "machi-py", "versions": [1], "nonce": (b"o" * 32).hex()}
        old.proto.send_client_hello(b"o" * 32)  # our codec's state; the peer gets v1 only
        old.sock.sendall(wire.frame_bytes(Kind.HELLO, Op.HELLO, meta=meta))
        assert isinstance(old.event(), wire.Hello) and old.proto.version == 1
        body = {"prefix": "m", "chunks": [[3, ok, 0]]}
        old.sock.sendall(old.proto.send_request(1, Op.APPEND_CHUNKS, epoch_id=eid,
                                                meta=body, payload_size=3) + b"abc")
        assert old.response().status == Status.UNKNOWN_OP
    finally:
        old.close()
    assert anyio.run(files) == before
    still_serving(node, acked)
