"""Goal: the Chain Replication client over three real daemons on loopback (an AP chain
formed by projection writes) appends and reads concurrently, through the library and the
CLI, read-repairs, survives a SIGKILLed tail replaced by a new projection, and feeds a
re-added repairing member; every acknowledged chunk reads back identically from every UPI
member.  (CP with confirmed epochs: test_chain_client_cp.py in-process, and
test_chain_daemons.py with the daemons' chain managers.)"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from machi.client.chain_client import CallInfo, ChainClient, outcome_of
from machi.client.flu_client import ChunkPos, FluClient
from machi.core.checksum import verify
from machi.core.errors import MachiError, NotWritten, Trimmed, Written
from machi.core.outcome import OpKind, Outcome
from machi.core.projection import MemberSpec, Projection, make_projection
from machi.node.process import NodeProcess
from tests.integration.tls_certs import self_signed

pytestmark = pytest.mark.timeout(120)
NAMES = ("a", "b", "c")


class Chain:
    """Three ``machi node run`` processes and the projections the test installs."""

    def __init__(self, base: Path, sync: str = "none") -> None:
        self.nodes = {n: NodeProcess(n, base / n, sync=sync) for n in NAMES}
        self.epoch = 0

    def start(self) -> Chain:
        for n in self.nodes.values():
            n.start(wait=False)
        for n in self.nodes.values():
            n.wait_ready()
        return self

    def kill_all(self) -> None:
        for n in self.nodes.values():
            n.kill()

    @property
    def seeds(self) -> dict[str, tuple[str, int]]:
        return {n: (x.host, x.port) for n, x in self.nodes.items()}

    def client(self, name: str) -> FluClient:
        return self.nodes[name].client(timeout_ms=5_000)

    async def install(
        self, upi: tuple[str, ...], repairing: tuple[str, ...] = (),
        on: tuple[str, ...] | None = None,
    ) -> Projection:
        """Write the next AP projection (public, then private: the node unwedges) to
        ``on`` (default: UPI and repairing members)."""
        self.epoch += 1
        down = tuple(m for m in NAMES if m not in upi + repairing)
        p = make_projection(
            epoch_number=self.epoch, author_server=upi[0], chain_name="c1",
            all_members=NAMES, upi=upi, repairing=repairing, down=down,
            members_dict={n: MemberSpec(n, x.host, x.port) for n, x in self.nodes.items()},
        )
        for name in on if on is not None else upi + repairing:
            async with self.client(name) as c:
                await c.projection_write("public", p)
                await c.projection_write("private", p)
        return p


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    ch = Chain(tmp_path_factory.mktemp("chain"))
    try:
        ch.start()
        anyio.run(ch.install, NAMES)
        yield ch
    finally:
        ch.kill_all()


@pytest.fixture
def fresh_chain(tmp_path: Path) -> Iterator[Chain]:
    ch = Chain(tmp_path)
    try:
        yield ch.start()
    finally:
        ch.kill_all()


def payload(w: int, i: int) -> bytes:
    """Deterministic chunk for writer ``w``'s ``i``-th append (sizes 1 B .. 200 KiB)."""
    rng = random.Random(hashlib.blake2b(f"{w}/{i}".encode()).digest())
    head = f"w{w}-{i}|".encode()
    return head + rng.randbytes(rng.choice([0, 100, 4096, 70_000, 200_000]))


async def check_everywhere(
    ch: Chain, p: Projection, acked: list[tuple[ChunkPos, bytes]]
) -> None:
    """Every acknowledged chunk reads back identically, checksum verified, from every
    UPI member read directly."""
    for name in p.upi:
        async with ch.client(name) as c:
            for pos, data in acked:
                r = await c.read(pos.file, pos.offset, pos.size, epoch_id=p.epoch_id)
                assert not r.partial and r.data() == data, (name, pos)
                assert all(verify(x.data, x.csum) for x in r.chunks)


def cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "machi.cli", *args], input=stdin,
                          capture_output=True, timeout=60, check=False)


def test_concurrent_appends_and_reads(chain: Chain) -> None:
    """Eight concurrent writers and two readers through one ChainClient: every ack reads
    back, and every chunk is identical on every UPI member."""
    acked: list[tuple[ChunkPos, bytes]] = []
    reads = 0

    async def go() -> None:
        nonlocal reads
        async with ChainClient(chain.seeds, seed=1) as cc:

            async def writer(w: int) -> None:
                for i in range(12):
                    data = payload(w, i)
                    info = CallInfo()
                    pos = await cc.append(f"cc{w % 3}", data, info=info)
                    assert pos.size == len(data) and info.outcome == "ok"
                    assert info.acked == list(NAMES) and info.node == "a"
                    acked.append((pos, data))

            async def reader() -> None:
                nonlocal reads
                for _ in range(40):
                    if acked:
                        pos, data = random.Random(reads).choice(acked)
                        assert await cc.read(pos.file, pos.offset, pos.size) == data
                        reads += 1
                    await anyio.sleep(0.005)

            async with anyio.create_task_group() as tg:
                for w in range(8):
                    tg.start_soon(writer, w)
                for _ in range(2):
                    tg.start_soon(reader)
            assert cc.last_epoch_id is not None and cc.last_epoch_id.number == chain.epoch
            files = dict(await cc.list_files())
            for pos, _ in acked:
                assert files[pos.file] >= pos.offset + pos.size
            entries = await cc.checksum_list(acked[0][0].file)
            assert any(e.offset == acked[0][0].offset for e in entries)
            p = cc.projection
            assert p is not None
        await check_everywhere(chain, p, acked)

    anyio.run(go)
    assert len(acked) == 96 and reads > 0


def test_read_repair_fills_the_tail(chain: Chain) -> None:
    """A chunk only the head has is served by the chain client, which writes it to the
    middle and the tail; a never-written range is an ok NOT_WRITTEN answer."""

    async def go() -> None:
        async with ChainClient(chain.seeds) as cc:
            p = await cc.refresh()
            async with chain.client("a") as head:
                pos = await head.append("rr", b"head only", epoch_id=p.epoch_id)
            async with chain.client("c") as tail:
                with pytest.raises(NotWritten):
                    await tail.read(pos.file, pos.offset, pos.size, epoch_id=p.epoch_id)
            info = CallInfo()
            assert await cc.read(pos.file, pos.offset, pos.size, info=info) == b"head only"
            assert info.node == "a" and info.repaired == ["b", "c"]
            await check_everywhere(chain, p, [(pos, b"head only")])
            info = CallInfo()
            with pytest.raises(NotWritten) as ei:
                await cc.read(pos.file, pos.offset + 4096, 10, info=info)
            assert outcome_of(ei.value, OpKind.READ) is Outcome.OK
            assert info.outcome == "ok" and info.error == "NOT_WRITTEN"

    anyio.run(go)


def test_trim_and_explicit_write_reach_every_member(chain: Chain) -> None:
    """trim goes head first to every member (a repeated trim is fine); an explicit write
    lands on every member, and a second write of other bytes there is a definite fail."""

    async def go() -> None:
        async with ChainClient(chain.seeds) as cc:
            p = await cc.refresh()
            pos = await cc.append("tr", b"to be trimmed")
            info = CallInfo()
            await cc.trim(pos.file, pos.offset, pos.size, info=info)
            assert info.acked == list(NAMES)
            await cc.trim(pos.file, pos.offset, pos.size)  # TRIMMED everywhere: done
            for name in NAMES:
                async with chain.client(name) as c:
                    with pytest.raises(Trimmed):
                        await c.read(pos.file, pos.offset, pos.size, epoch_id=p.epoch_id)
            with pytest.raises(Trimmed) as ei:
                await cc.read(pos.file, pos.offset, pos.size)
            assert outcome_of(ei.value, OpKind.READ) is Outcome.FAIL
            # (explicit writes go to a file that still has data)
            other = await cc.append("wr", b"keeps the file")
            wpos = await cc.write(other.file, other.offset + 8192, b"explicit")
            await check_everywhere(chain, p, [(wpos, b"explicit")])
            info = CallInfo()
            with pytest.raises(Written) as ei:
                await cc.write(other.file, other.offset + 8192, b"EXPLICIT", info=info)
            assert outcome_of(ei.value, OpKind.WRITE) is Outcome.FAIL
            assert info.stage == "not_sent" and info.acked == []

    anyio.run(go)


def test_append_after_trimming_everything_so_far(chain: Chain) -> None:
    """A consumer that trims every chunk it has read does not break the next append: the
    replicas keep the head's current file although it is wholly trimmed there."""

    async def go() -> None:
        async with ChainClient(chain.seeds) as cc:
            p = await cc.refresh()
            first = await cc.append("consumed", b"read then trimmed")
            await cc.trim(first.file, first.offset, first.size)
            second = await cc.append("consumed", b"the next one")
            assert second.file == first.file  # same epoch, same head file
            await check_everywhere(chain, p, [(second, b"the next one")])

    anyio.run(go)


def test_cli_append_and_read(chain: Chain, tmp_path: Path) -> None:
    """`machi append` prints the position; `machi read` (via --members or --cluster)
    writes the verified bytes; an unwritten read exits 2 with its outcome."""
    members = ",".join(f"{n}={h}:{p}" for n, (h, p) in chain.seeds.items())
    datas = [bytes([i]) * 1000 * (i + 1) for i in range(3)]
    procs = [subprocess.Popen(  # three CLI appends at once
        [sys.executable, "-m", "machi.cli", "append", "--members", members, "--prefix", "cli",
         "-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in datas]
    positions = []
    for proc, d in zip(procs, datas, strict=True):
        out, err = proc.communicate(d, timeout=60)
        assert proc.returncode == 0, err
        positions.append(json.loads(out))
    assert len({(q["file"], q["offset"]) for q in positions}) == 3

    async def everywhere() -> None:
        async with ChainClient(chain.seeds) as cc:
            p = await cc.refresh()
        await check_everywhere(chain, p, [
            (ChunkPos(q["file"], q["offset"], q["size"], None), d)  # type: ignore[arg-type]
            for q, d in zip(positions, datas, strict=True)])

    anyio.run(everywhere)
    data = bytes(range(256)) * 100
    r = cli("append", "--members", members, "--prefix", "cli", "-", stdin=data)
    assert r.returncode == 0, r.stderr
    pos = json.loads(r.stdout)
    assert set(pos) == {"file", "offset", "size", "checksum"} and pos["size"] == len(data)
    cluster = tmp_path / "cluster.toml"
    cluster.write_text("[members]\n" + "".join(
        f'{n} = "{h}:{p}"\n' for n, (h, p) in chain.seeds.items()))
    args = ["--file", pos["file"], "--offset", str(pos["offset"]), "--size", str(pos["size"])]
    r = cli("read", "--cluster", str(cluster), *args, "--checksum", pos["checksum"])
    assert r.returncode == 0, r.stderr
    assert r.stdout == data
    src = tmp_path / "chunk.bin"
    src.write_bytes(b"from a file")
    r = cli("append", "--cluster", str(cluster), "--prefix", "cli", str(src))
    assert r.returncode == 0, r.stderr
    pos2 = json.loads(r.stdout)
    r = cli("read", "--members", members, "--file", pos2["file"], "--offset",
            str(pos2["offset"]), "--size", str(pos2["size"]))
    assert r.stdout == b"from a file"
    r = cli("read", "--members", members, "--file", pos["file"], "--offset", "10000000",
            "--size", "5")
    assert r.returncode == 2 and r.stderr.startswith(b"NOT_WRITTEN (ok)")


def test_tail_killed_mid_load_then_readded_as_repairing(fresh_chain: Chain) -> None:
    """SIGKILL the tail under append load and install a projection without it: appends
    continue; restart it, add it back as repairing (chunks it lacks copied by the test),
    then into the UPI: every acknowledged chunk is on all three."""
    ch = fresh_chain
    acked: list[tuple[ChunkPos, bytes]] = []
    failures: list[tuple[str, Outcome]] = []
    phase = {"n": 0}
    acked_in_phase = [0, 0, 0]
    after_readd: list[tuple[ChunkPos, bytes]] = []

    async def go() -> None:
        await ch.install(NAMES)
        async with ChainClient(ch.seeds, seed=2, op_timeout_ms=20_000) as cc:
            stop = anyio.Event()

            async def writer(w: int) -> None:
                i = 0
                while not stop.is_set():
                    if acked_in_phase[phase["n"]] >= 60:  # bound the read-back work
                        await anyio.sleep(0.01)
                        continue
                    data = payload(w, i)
                    i += 1
                    try:
                        pos = await cc.append(f"k{w % 2}", data)
                    except MachiError as e:
                        oc = outcome_of(e, OpKind.APPEND)
                        assert oc in (Outcome.FAIL, Outcome.INFO), e
                        failures.append((e.status.name, oc))
                        continue
                    acked.append((pos, data))
                    acked_in_phase[phase["n"]] += 1
                    if phase["n"] == 2:
                        after_readd.append((pos, data))

            async with anyio.create_task_group() as tg:
                for w in range(6):
                    tg.start_soon(writer, w)
                await anyio.sleep(0.6)
                ch.nodes["c"].kill()  # SIGKILL the tail with appends in flight
                phase["n"] = 1
                p2 = await ch.install(("a", "b"))
                await anyio.sleep(0.8)
                await anyio.to_thread.run_sync(ch.nodes["c"].start)  # appends go on
                await ch.install(("a", "b"), ("c",))
                phase["n"] = 2
                await anyio.sleep(0.6)
                stop.set()
            assert cc.last_epoch_id is not None and cc.last_epoch_id.number == 3
        assert acked_in_phase[1] > 0 and acked_in_phase[2] > 0, acked_in_phase
        assert p2.upi == ("a", "b")
        # stand-in for the chain manager's repair (another helper's): copy what c lacks
        # from the UPI tail, then promote c into the UPI
        async with ch.client("b") as src, ch.client("c") as dst:
            cur = (await dst.wedge_status()).epoch_id
            assert cur.number == 3
            for pos, data in after_readd:  # appends after the re-add reached c themselves
                assert (await dst.read(pos.file, pos.offset, pos.size, epoch_id=cur)
                        ).data() == data
            for pos, data in acked:
                try:
                    r = await dst.read(pos.file, pos.offset, pos.size, epoch_id=cur)
                    assert r.data() == data
                except NotWritten:
                    got = await src.read(pos.file, pos.offset, pos.size, epoch_id=cur)
                    await dst.write(pos.file, pos.offset, got.data(), epoch_id=cur)
        p4 = await ch.install(NAMES)
        await check_everywhere(ch, p4, acked)

    anyio.run(go)
    print("acked per phase", acked_in_phase, "failures", failures)
    assert len(acked) > 20 and after_readd
    for status, oc in failures:
        assert status in {"PARTITION", "WEDGED", "BAD_EPOCH", "WRITTEN"}, (status, oc)


def test_outcomes_when_the_chain_cannot_finish(fresh_chain: Chain) -> None:
    """A dead tail nobody replaces: the append gives up as info (head and middle wrote);
    an unconfirmed CP chain (wedged everywhere): the append gives up as a definite fail."""
    ch = fresh_chain

    async def go() -> None:
        await ch.install(NAMES)
        ch.nodes["c"].kill()
        async with ChainClient(ch.seeds, op_timeout_ms=1_500, request_timeout_ms=500) as cc:
            info = CallInfo()
            with pytest.raises(MachiError) as ei:
                await cc.append("out", b"half", info=info)
            assert ei.value.status.name == "PARTITION"
            assert outcome_of(ei.value, OpKind.APPEND) is Outcome.INFO
            assert info.stage == "partial" and info.acked == ["a", "b"] and info.attempts > 0
            info = CallInfo()
            with pytest.raises(MachiError) as ei:
                await cc.read("out^^00000000^x^1", 1024, 4, info=info)
            assert outcome_of(ei.value, OpKind.READ) is Outcome.FAIL

        ch.epoch += 1
        p = make_projection(
            epoch_number=ch.epoch, author_server="a", chain_name="c1", all_members=NAMES,
            mode="cp", upi=("a", "b"), down=("c",),
            members_dict={n: MemberSpec(n, x.host, x.port) for n, x in ch.nodes.items()},
        )
        for name in ("a", "b"):
            async with ch.client(name) as c:
                await c.projection_write("public", p)
                await c.projection_write("private", p)
                assert (await c.wedge_status()).wedged  # CP waits for confirmation
        async with ChainClient(ch.seeds, op_timeout_ms=1_000) as cc:
            info = CallInfo()
            with pytest.raises(MachiError) as ei:
                await cc.append("out", b"never", info=info)
            assert outcome_of(ei.value, OpKind.APPEND) is Outcome.FAIL
            assert info.stage == "not_sent" and info.acked == [] and info.attempts > 0
            assert cc.last_epoch_id == p.epoch_id

    anyio.run(go)


def test_cli_cluster_file_with_secret_and_tls(tmp_path: Path) -> None:
    """A cluster file's secret_file and [tls] reach every member: append and read work on
    a one-member chain that requires both; a wrong secret is a clean, definite failure."""
    cert, key = self_signed(tmp_path)
    (tmp_path / "secret").write_bytes(b"cluster secret 0123456789\n")
    n = NodeProcess("s", tmp_path / "s", extra_args=[
        "--secret-file", str(tmp_path / "secret"), "--tls-cert", str(cert),
        "--tls-key", str(key)])
    try:
        n.start()
        import ssl

        ctx = ssl.create_default_context(cafile=str(cert))

        async def boot() -> None:
            p = make_projection(
                epoch_number=1, author_server="s", chain_name="c1", all_members=["s"],
                upi=["s"], members_dict={"s": MemberSpec("s", n.host, n.port)})
            async with n.client(secret=b"cluster secret 0123456789", ssl_context=ctx,
                                tls_hostname="localhost") as c:
                await c.projection_write("public", p)
                await c.projection_write("private", p)

        anyio.run(boot)
        cluster = tmp_path / "cluster.toml"
        cluster.write_text(f'secret_file = "secret"\n[members]\ns = "{n.address}"\n'
                           f'[tls]\nca = "{cert.name}"\nserver_hostname = "localhost"\n')
        r = cli("append", "--cluster", str(cluster), "--prefix", "sec", "-", stdin=b"sealed")
        assert r.returncode == 0, r.stderr
        pos = json.loads(r.stdout)
        r = cli("read", "--cluster", str(cluster), "--file", pos["file"], "--offset",
                str(pos["offset"]), "--size", str(pos["size"]), "--checksum", pos["checksum"])
        assert r.returncode == 0 and r.stdout == b"sealed", r.stderr
        (tmp_path / "wrong").write_bytes(b"wrong secret 0123456789")
        r = cli("append", "--cluster", str(cluster), "--secret-file", str(tmp_path / "wrong"),
                "--op-timeout-ms", "1000", "--prefix", "sec", "-", stdin=b"x")
        assert r.returncode == 1 and r.stderr.startswith(b"AUTH_FAILED (fail)"), r.stderr
    finally:
        n.kill()
