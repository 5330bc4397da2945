"""Goal: a real FLU daemon on loopback serves append/read/trim/listing/projection round
trips through the async client and through the `machi` CLI, and stops gracefully."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from machi.core.checksum import verify
from machi.core.errors import BadArg, BadEpoch, NoSuchFile, NotWritten, Trimmed, Written
from machi.core.projection import make_projection
from machi.node.process import NodeProcess, bootstrap, free_port

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    base = tmp_path_factory.mktemp("rt")
    metrics_port = free_port()
    n = NodeProcess("n1", base / "d1", extra_args=["--metrics", f"127.0.0.1:{metrics_port}"])
    n.metrics_port = metrics_port  # type: ignore[attr-defined]
    try:
        n.start()

        async def boot() -> None:
            async with n.client() as c:
                await bootstrap(c, "n1")

        anyio.run(boot)
        yield n
    finally:
        n.kill()


def cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "machi.cli", *args], input=stdin,
                          capture_output=True, timeout=60, check=False)


def test_client_round_trip(node: NodeProcess) -> None:
    """Append, read, partial read, trim, checksum_list and list_files agree end to end."""

    async def go() -> None:
        async with node.client() as c:
            eid = (await c.wedge_status()).epoch_id
            pos = await c.append("rt", b"hello world", epoch_id=eid)
            assert pos.offset >= 1024 and pos.size == 11
            r = await c.read(pos.file, pos.offset, pos.size, epoch_id=eid)
            assert r.data() == b"hello world" and not r.partial
            assert verify(r.chunks[0].data, r.chunks[0].csum)
            r2 = await c.read(pos.file, pos.offset, pos.size + 100, epoch_id=eid)
            assert r2.partial and r2.data() == b"hello world"
            big = os.urandom(3 * 1024 * 1024)
            pb = await c.append("rt", big, epoch_id=eid)
            assert (await c.read(pb.file, pb.offset, pb.size, epoch_id=eid)).data() == big
            entries = await c.checksum_list(pos.file)
            assert [(e.offset, e.size) for e in entries if e.offset >= 1024][:2] == [
                (pos.offset, 11), (pb.offset, len(big))]
            assert dict(await c.list_files())[pos.file] >= pb.offset + len(big)
            await c.trim(pos.file, pos.offset, pos.size, epoch_id=eid)
            with pytest.raises(Trimmed):
                await c.read(pos.file, pos.offset, pos.size, epoch_id=eid)
            with pytest.raises(NotWritten):
                await c.read(pos.file, 10**9, 10, epoch_id=eid)
            assert await c.echo(b"\x00\xffabc") == b"\x00\xffabc"

    anyio.run(go)


def test_pipelining_many_requests_one_connection(node: NodeProcess) -> None:
    """200 concurrent appends on one client connection all succeed and read back."""

    async def go() -> None:
        async with node.client(max_in_flight=64) as c:
            eid = (await c.wedge_status()).epoch_id
            results: dict[int, tuple[str, int, int]] = {}

            async def one(i: int) -> None:
                p = await c.append("pipe", i.to_bytes(4, "big") * (i + 1), epoch_id=eid)
                results[i] = (p.file, p.offset, p.size)

            async with anyio.create_task_group() as tg:
                for i in range(200):
                    tg.start_soon(one, i)
            assert len({(f, o) for f, o, _ in results.values()}) == 200
            for i in (0, 57, 199):
                f, o, s = results[i]
                assert (await c.read(f, o, s, epoch_id=eid)).data() == (
                    i.to_bytes(4, "big") * (i + 1))

    anyio.run(go)


def test_projection_ops_and_epoch_rule(node: NodeProcess) -> None:
    """Projection reads/lists work; an old epoch gets BAD_EPOCH; kick answers OK."""

    async def go() -> None:
        async with node.client() as c:
            latest = await c.projection_read_latest("private")
            assert latest.epoch_number == 1
            assert await c.projection_list("private") == [1]
            assert (await c.projection_latest_epoch_id("private")) == latest.epoch_id
            assert [p.epoch_id for p in await c.projection_get_all("private")] == [
                latest.epoch_id]
            assert (await c.projection_read("private", 1)) == latest
            with pytest.raises(NotWritten):
                await c.projection_read("public", 77)
            old = make_projection(epoch_number=0, author_server="n1", chain_name="c1",
                                  all_members=["n1"], upi=["n1"])
            with pytest.raises(BadEpoch):
                await c.append("x", b"y", epoch_id=old.epoch_id)
            await c.kick()

    anyio.run(go)


def test_cli_round_trip(node: NodeProcess, tmp_path: Path) -> None:
    """The flu CLI appends from stdin, reads raw bytes, lists, trims and reports errors."""
    srv = ["--server", node.address]
    data = bytes(range(256)) * 40
    r = cli("flu", "append", *srv, "--prefix", "cli", stdin=data)
    assert r.returncode == 0, r.stderr
    pos = json.loads(r.stdout)
    assert set(pos) == {"file", "offset", "size", "checksum"} and pos["size"] == len(data)
    r = cli("flu", "read", *srv, "--file", pos["file"], "--offset", str(pos["offset"]),
            "--size", str(pos["size"]))
    assert r.returncode == 0 and r.stdout == data
    src = tmp_path / "chunk"
    src.write_bytes(b"from a file")
    r = cli("flu", "append", *srv, "--prefix", "cli", "--input", str(src))
    assert r.returncode == 0 and json.loads(r.stdout)["size"] == 11
    r = cli("flu", "list-files", *srv)
    files = [json.loads(line) for line in r.stdout.splitlines()]
    assert any(f["file"] == pos["file"] for f in files)
    r = cli("flu", "checksum-list", *srv, "--file", pos["file"])
    entries = [json.loads(line) for line in r.stdout.splitlines()]
    assert {"offset": pos["offset"], "size": pos["size"], "checksum": pos["checksum"]} in entries
    r = cli("flu", "trim", *srv, "--file", pos["file"], "--offset", str(pos["offset"]),
            "--size", str(pos["size"]))
    assert r.returncode == 0
    r = cli("flu", "read", *srv, "--file", pos["file"], "--offset", str(pos["offset"]),
            "--size", str(pos["size"]))
    assert r.returncode != 0 and r.stderr.startswith(b"TRIMMED")
    r = cli("flu", "append", *srv, "--prefix", "../up", stdin=b"x")
    assert r.returncode != 0 and r.stderr.startswith(b"BAD_ARG")
    r = cli("flu", "echo", *srv, "ping")
    assert r.stdout.strip() == b"ping"
    status = json.loads(cli("flu", "wedge-status", *srv).stdout)
    assert status["wedged"] is False and status["epoch_id"][0] == 1


def test_cli_projection_commands(node: NodeProcess) -> None:
    """projection make | write, read-latest and list through the CLI (public half)."""
    srv = ["--server", node.address]
    made = cli("projection", "make", "--epoch", "5", "--author", "n1", "--chain", "c1",
               "--members", "n1")
    assert made.returncode == 0
    r = cli("projection", "write", *srv, "--kind", "public", stdin=made.stdout)
    assert r.returncode == 0, r.stderr
    r = cli("projection", "read-latest", *srv, "--kind", "public")
    assert json.loads(r.stdout)["epoch_number"] == 5
    assert cli("projection", "list", *srv, "--kind", "public").stdout.split() == [b"5"]
    again = cli("projection", "write", *srv, "--kind", "public", stdin=made.stdout)
    assert again.returncode != 0 and again.stderr.startswith(b"WRITTEN")
    # A newer public projection wedges the node (a proposal is in the air) ...
    assert json.loads(cli("flu", "wedge-status", *srv).stdout)["wedged"] is True
    # ... and adopting a newer private one unwedges it (AP).
    made6 = cli("projection", "make", "--epoch", "6", "--author", "n1", "--chain", "c1",
                "--members", "n1")
    assert cli("projection", "write", *srv, "--kind", "private",
               stdin=made6.stdout).returncode == 0
    status = json.loads(cli("flu", "wedge-status", *srv).stdout)
    assert status["wedged"] is False and status["epoch_id"][0] == 6


def test_metrics_endpoint(node: NodeProcess) -> None:
    """The metrics endpoint serves Prometheus text with per-op counters and gauges."""
    port = node.metrics_port  # type: ignore[attr-defined]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    assert 'machi_requests_total{node="n1",op="wedge_status",status="OK"}' in text
    assert "machi_request_latency_seconds_bucket" in text
    assert 'machi_wedged{node="n1"}' in text and "machi_bytes_in_total" in text


def test_graceful_sigterm(tmp_path: Path) -> None:
    """SIGTERM under load: exit code 0, a 'stopped' log line, and acked data survives."""
    n = NodeProcess("g1", tmp_path / "g1", sync="batch")
    try:
        n.start()
        acked: list[tuple[str, int, bytes]] = []

        async def load() -> None:
            async with n.client(timeout_ms=5000) as c:
                eid = await bootstrap(c, "g1")

                async def writer(w: int) -> None:
                    for i in range(10_000):
                        data = f"{w}-{i}".encode() * 50
                        try:
                            p = await c.append("g", data, epoch_id=eid)
                        except Exception:
                            return
                        acked.append((p.file, p.offset, data))

                async with anyio.create_task_group() as tg:
                    for w in range(4):
                        tg.start_soon(writer, w)
                    with anyio.fail_after(30):  # real load first, however slow the machine
                        while len(acked) < 20:
                            await anyio.sleep(0.02)
                    assert n.proc is not None
                    n.proc.send_signal(signal.SIGTERM)

        anyio.run(load)
        assert n.proc is not None and n.proc.wait(20) == 0
        assert '"msg":"stopped"' in n.log_path.read_text()
        assert acked
        n.start()

        async def check() -> None:
            async with n.client() as c:
                eid = (await c.wedge_status()).epoch_id
                for f, o, data in acked:
                    assert (await c.read(f, o, len(data), epoch_id=eid)).data() == data

        anyio.run(check)
    finally:
        n.kill()


def test_streamed_checksum_list_with_a_slow_consumer(node: NodeProcess) -> None:
    """A checksum_list of many small batches arrives complete and in order even when the
    consumer is slower than the stream (bounded client buffer, no lost final frame)."""

    async def go() -> None:
        async with node.client() as c:
            eid = (await c.wedge_status()).epoch_id
            offsets = [(await c.append("stream", bytes([i]) * 10, epoch_id=eid))
                       for i in range(60)]
            file = offsets[0].file
            got: list[int] = []
            async for batch in c.checksum_list_batches(file, batch_size=1):
                assert len(batch) <= 1
                got += [e.offset for e in batch if e.offset >= 1024]
                await anyio.sleep(0.002)
            assert [p.offset for p in offsets if p.file == file] == [
                o for o in got if o in {p.offset for p in offsets}]
            assert await c.echo(b"after") == b"after"  # the connection is still in sync

    anyio.run(go)


def test_write_once_over_the_wire(node: NodeProcess) -> None:
    """Explicit writes: exact replay is OK, different bytes are WRITTEN, the header is
    BAD_ARG, a missing file's checksum list is NO_SUCH_FILE."""

    async def go() -> None:
        async with node.client() as c:
            eid = (await c.wedge_status()).epoch_id
            p = await c.append("wo", b"abc", chunk_extra=100, epoch_id=eid)
            await c.write(p.file, p.offset + 3, b"reserved", epoch_id=eid)  # fill the extra
            await c.write(p.file, p.offset + 3, b"reserved", epoch_id=eid)  # exact replay
            with pytest.raises(Written):
                await c.write(p.file, p.offset, b"abd", epoch_id=eid)
            with pytest.raises(BadArg):
                await c.write(p.file, 0, b"x", epoch_id=eid)
            r = await c.read(p.file, p.offset, 11, epoch_id=eid)
            assert r.data() == b"abcreserved"
            missing = p.file.rsplit("^", 1)[0] + "^999"
            with pytest.raises(NoSuchFile):
                await c.checksum_list(missing)

    anyio.run(go)
