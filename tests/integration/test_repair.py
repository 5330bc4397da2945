"""Goal: ``run_repair`` against real FLU servers on loopback: AP repair (three ``machi
node run`` daemons) copies everything any replica has to every participant so that all
checksum lists end equal; CP repair (in-process servers, because CP epochs need a
confirmation that only the test can give until the chain-manager driver lands) resets a
never-acknowledged chunk on the repairing replica and copies the tail's; a conflict fails
the repair loudly and overwrites nothing; REPAIR_RESET is refused off the repairing list.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import pytest

from machi.client.flu_client import ChecksumEntry, FluClient
from machi.core.epoch import EpochId
from machi.core.errors import BadArg, BadChecksum, BadEpoch, NotWritten, Trimmed
from machi.core.projection import MemberSpec, Projection, make_projection
from machi.node.config import KNOWN_KEYS
from machi.node.log import JsonLog
from machi.node.process import NodeProcess
from machi.node.repair import RepairResult, run_repair, run_upi_sync
from machi.storage.flu_store import StoreConfig
from tests.integration.inproc_flu import Nodes, inproc_chain, install

pytestmark = pytest.mark.timeout(90)
NAMES = ("a", "b", "c")
B = 1024


class Daemons:
    """Three ``machi node run`` processes; every one is killed in teardown."""

    def __init__(self, base: Path) -> None:
        extra: list[str] = []
        if "chain_manager" in KNOWN_KEYS:  # the test installs projections itself
            cfg = base / "no-chain-manager.toml"
            cfg.write_text("chain_manager = false\n")
            extra = ["--config", str(cfg)]
        self.nodes = {n: NodeProcess(n, base / n, sync="none", extra_args=extra)
                      for n in NAMES}
        self.epoch = 0

    def start(self) -> Daemons:
        for n in self.nodes.values():
            n.start(wait=False)
        for n in self.nodes.values():
            n.wait_ready()
        return self

    def kill_all(self) -> None:
        for n in self.nodes.values():
            n.kill()

    async def install(self, clients: Mapping[str, FluClient], upi: tuple[str, ...],
                      repairing: tuple[str, ...] = ()) -> Projection:
        """The next AP projection, public then private, on the UPI and repairing members."""
        self.epoch += 1
        p = make_projection(
            epoch_number=self.epoch, author_server=upi[-1], chain_name="c1",
            all_members=NAMES, upi=upi, repairing=repairing,
            down=tuple(m for m in NAMES if m not in upi + repairing),
            members_dict={n: MemberSpec(n, x.host, x.port) for n, x in self.nodes.items()},
        )
        for name in upi + repairing:
            await clients[name].projection_write("public", p)
            await clients[name].projection_write("private", p)
        return p


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    d = Daemons(tmp_path)
    try:
        yield d.start()
    finally:
        d.kill_all()


async def chain_append(chain: Sequence[FluClient], prefix: str, data: bytes,
                       epoch: EpochId) -> tuple[str, int]:
    """Chain Replication by hand: append at the head, write the same place down the chain."""
    pos = await chain[0].append(prefix, data, epoch_id=epoch)
    for c in chain[1:]:
        await c.write(pos.file, pos.offset, data, epoch_id=epoch, csum=pos.csum)
    return pos.file, pos.offset


async def everything(c: FluClient) -> dict[str, list[ChecksumEntry]]:
    return {name: await c.checksum_list(name) for name, _ in await c.list_files()}


def quiet_log(buf: io.StringIO) -> JsonLog:
    return JsonLog("b", "info", stream=buf)


def test_ap_repair_copies_the_union_to_every_member(daemons: Daemons) -> None:
    """Data appended while c was out of the chain, a chunk only the head got and a chunk
    only c holds all end on every member; afterwards every checksum list is equal."""
    buf = io.StringIO()

    async def go() -> RepairResult:
        async with AsyncExitStack() as stack:
            cl = {n: await stack.enter_async_context(x.client(timeout_ms=5_000))
                  for n, x in daemons.nodes.items()}
            p1 = await daemons.install(cl, NAMES)
            f1, _ = await chain_append([cl[n] for n in NAMES], "r", b"all three", p1.epoch_id)
            only_c = b"c kept this"
            await cl["c"].write(f1, 5 * B, only_c, epoch_id=p1.epoch_id)
            p2 = await daemons.install(cl, ("a", "b"))
            placed = []
            for i in range(40):
                data = bytes([i]) * (1 + 997 * i)
                placed.append((await chain_append([cl["a"], cl["b"]], f"r{i % 3}", data,
                                                  p2.epoch_id), data))
            head_only = await cl["a"].append("h", b"only the head got it", epoch_id=p2.epoch_id)
            p3 = await daemons.install(cl, ("a", "b"), ("c",))
            res = await run_repair(p3, local_name="b", clients=cl, log=quiet_log(buf),
                                   progress_every_s=0.05, checksum_batch_size=3,
                                   max_in_flight=2)
            lists = {n: await everything(c) for n, c in cl.items()}
            assert lists["a"] == lists["b"] == lists["c"]
            for (file, off), data in placed:
                r = await cl["c"].read(file, off, len(data), epoch_id=p3.epoch_id)
                assert r.data() == data
            r = await cl["b"].read(head_only.file, head_only.offset, head_only.size,
                                   epoch_id=p3.epoch_id)
            assert r.data() == b"only the head got it"
            r = await cl["a"].read(f1, 5 * B, len(only_c), epoch_id=p3.epoch_id)
            assert r.data() == only_c
            again = await run_repair(p3, local_name="b", clients=cl, log=quiet_log(buf))
            assert again.ok and again.stats.chunks_copied == 0, again.detail
            return res

    res = anyio.run(go)
    assert res.ok, res.detail
    s = res.stats
    assert s.per_destination["c"]["chunks"] == 41  # 40 + the head-only chunk
    assert s.per_destination["b"]["chunks"] == 2  # the head-only and the c-only chunks
    assert s.per_destination["a"]["chunks"] == 1
    assert s.conflicts == s.bad_chunks == s.errors == 0
    lines = [json.loads(x) for x in buf.getvalue().splitlines()]
    final = [x for x in lines if x.get("msg") == "repair finished"]
    assert final and final[0]["fields"]["chunks_copied"] == 44
    assert final[0]["fields"]["bytes_out"] == s.bytes_out


async def inproc_clients(stack: AsyncExitStack, nodes: Nodes) -> dict[str, FluClient]:
    return {n: await stack.enter_async_context(FluClient("127.0.0.1", port))
            for n, (_, port) in nodes.items()}


def test_cp_repair_resets_unacknowledged_bytes_and_matches_the_tail(tmp_path: Path) -> None:
    """A chunk a failed write left only on c (never acknowledged, absent at the tail) is
    reset on c, the tail's chunks are copied, and c's lists then equal the tail's; the
    reset op is refused on a FLU that is not repairing."""
    buf = io.StringIO()

    async def go() -> None:
        async with inproc_chain(tmp_path, NAMES) as nodes, AsyncExitStack() as stack:
            cl = await inproc_clients(stack, nodes)
            p1 = await install(nodes, 1, ("c", "a", "b"), mode="cp")
            f, off = await chain_append([cl["c"], cl["a"], cl["b"]], "cp", b"acked", p1.epoch_id)
            partial = await cl["c"].append("cp", b"head only, never acked",
                                           epoch_id=p1.epoch_id)
            p2 = await install(nodes, 2, ("a", "b"), mode="cp", repairing=("c",))
            acked2 = await chain_append([cl["a"], cl["b"], cl["c"]], "cp", b"new", p2.epoch_id)
            missed = await cl["a"].append("cp", b"c missed this", epoch_id=p2.epoch_id)
            await cl["b"].write(missed.file, missed.offset, b"c missed this",
                                epoch_id=p2.epoch_id)
            with pytest.raises(BadArg, match="not repairing"):
                await cl["a"].repair_reset(partial.file, partial.offset, partial.size,
                                           epoch_id=p2.epoch_id)
            with pytest.raises(BadEpoch):  # epoch-checked like any data op
                await cl["c"].repair_reset(partial.file, partial.offset, partial.size,
                                           epoch_id=p1.epoch_id)
            res = await run_repair(p2, local_name="b", clients=cl, log=quiet_log(buf))
            assert res.ok, res.detail
            assert res.stats.chunks_reset == 1 and res.stats.per_destination == {
                "c": {"chunks": 1, "bytes": len(b"c missed this")}}
            assert await everything(cl["c"]) == await everything(cl["b"])
            with pytest.raises(NotWritten):
                await cl["c"].read(partial.file, partial.offset, partial.size,
                                   epoch_id=p2.epoch_id)
            for file, o, data in ((f, off, b"acked"), (*acked2, b"new"),
                                  (missed.file, missed.offset, b"c missed this")):
                assert (await cl["c"].read(file, o, len(data), epoch_id=p2.epoch_id)
                        ).data() == data

    anyio.run(go)


def test_cp_upi_sync_copies_a_head_only_chunk_forward(tmp_path: Path) -> None:
    """CP (the paper's step 3): a chunk an abandoned append left on the head alone is
    copied forward to the tail at the next epoch by ``run_upi_sync`` (never reset), and a
    CP repair runs the same pass first, so the repairing member gets it from the tail."""

    async def go() -> tuple[RepairResult, RepairResult]:
        async with inproc_chain(tmp_path, NAMES) as nodes, AsyncExitStack() as stack:
            cl = await inproc_clients(stack, nodes)
            p1 = await install(nodes, 1, NAMES, mode="cp")
            head_only = await cl["a"].append("cp", b"abandoned append", epoch_id=p1.epoch_id)
            middle = await cl["a"].append("cp", b"head and middle", epoch_id=p1.epoch_id)
            await cl["b"].write(middle.file, middle.offset, b"head and middle",
                                epoch_id=p1.epoch_id)
            p2 = await install(nodes, 2, ("a", "b", "c"), mode="cp")
            sync = await run_upi_sync(p2, local_name="c", clients=cl,
                                      log=quiet_log(io.StringIO()))
            for pos, data in ((head_only, b"abandoned append"), (middle, b"head and middle")):
                for n in NAMES:
                    r = await cl[n].read(pos.file, pos.offset, pos.size, epoch_id=p2.epoch_id)
                    assert r.data() == data
            late = await cl["a"].append("cp", b"late one", epoch_id=p2.epoch_id)
            p3 = await install(nodes, 3, ("a", "b"), mode="cp", repairing=("c",))
            rep = await run_repair(p3, local_name="b", clients=cl,
                                   log=quiet_log(io.StringIO()))
            for n in NAMES:
                r = await cl[n].read(late.file, late.offset, late.size, epoch_id=p3.epoch_id)
                assert r.data() == b"late one"
            assert await everything(cl["a"]) == await everything(cl["b"]) \
                == await everything(cl["c"])
            return sync, rep

    sync, rep = anyio.run(go)
    assert sync.ok and rep.ok, (sync.detail, rep.detail)
    assert sync.stats.chunks_reset == 0 and sync.stats.per_destination == {
        "c": {"chunks": 2, "bytes": len(b"abandoned append") + len(b"head and middle")},
        "b": {"chunks": 1, "bytes": len(b"abandoned append")}}
    assert rep.stats.chunks_reset == 0
    assert rep.stats.per_destination == {"b": {"chunks": 1, "bytes": len(b"late one")},
                                         "c": {"chunks": 1, "bytes": len(b"late one")}}


def test_conflict_fails_loudly_and_overwrites_nothing(tmp_path: Path) -> None:
    """Two replicas holding different bytes at one place: ok=False, the detail names the
    file, the offset and both members, an error line is logged, both copies survive, and
    nothing of that file is copied."""
    buf = io.StringIO()

    async def go() -> tuple[RepairResult, str]:
        async with inproc_chain(tmp_path, NAMES) as nodes, AsyncExitStack() as stack:
            cl = await inproc_clients(stack, nodes)
            p1 = await install(nodes, 1, NAMES)
            pos = await cl["a"].append("x", b"fine", epoch_id=p1.epoch_id)
            await cl["b"].write(pos.file, 2 * B, b"BBBB", epoch_id=p1.epoch_id)
            await cl["c"].write(pos.file, 2 * B, b"CCCC", epoch_id=p1.epoch_id)
            p2 = await install(nodes, 2, ("a", "b"), repairing=("c",))
            res = await run_repair(p2, local_name="b", clients=cl, log=quiet_log(buf))
            for n, want in (("b", b"BBBB"), ("c", b"CCCC")):
                r = await cl[n].read(pos.file, 2 * B, 4, epoch_id=p2.epoch_id)
                assert r.data() == want
            with pytest.raises(NotWritten):  # the file's good chunk was not copied either
                await cl["c"].read(pos.file, pos.offset, pos.size, epoch_id=p2.epoch_id)
            return res, pos.file

    res, file = anyio.run(go)
    assert not res.ok
    assert "conflicting checksums at one place" in res.detail
    assert f"{file} @{2 * B}+4 on b,c" in res.detail
    assert res.stats.conflicts == 1 and res.stats.files_skipped == 1
    assert res.stats.chunks_copied == 0
    lines = [json.loads(x) for x in buf.getvalue().splitlines()]
    assert any(x["level"] == "error" and file in x["fields"].get("problem", "")
               for x in lines)


def test_not_all_in_same_epoch_refuses_to_start(tmp_path: Path) -> None:
    """A repairing member at another epoch: the repair does nothing and says so."""

    async def go() -> RepairResult:
        async with inproc_chain(tmp_path, NAMES) as nodes, AsyncExitStack() as stack:
            cl = await inproc_clients(stack, nodes)
            await install(nodes, 1, NAMES)
            p2 = await install(nodes, 2, ("a", "b"), repairing=("c",), on=("a", "b"))
            return await run_repair(p2, local_name="b", clients=cl,
                                    log=quiet_log(io.StringIO()))

    res = anyio.run(go)
    assert not res.ok and res.detail.startswith("not all in same epoch: c")
    assert res.stats.chunks_copied == 0


def test_bad_source_chunk_is_read_elsewhere_healed_and_the_local_store_path_works(
    tmp_path: Path,
) -> None:
    """The tail reached through its own store (no client for it): a chunk whose bytes on
    the tail's disk are corrupt is read from the other UPI member instead, copied, and
    rewritten on the tail (healed); a chunk corrupt on every holder is a loud problem and
    is not copied; a zero deadline stops a repair before it does anything."""

    def corrupt(store: Any, file: str, offset: int) -> None:
        with open(store.data_dir / "data" / file, "r+b") as fh:
            fh.seek(offset)
            fh.write(b"X")

    async def go() -> tuple[RepairResult, RepairResult, RepairResult]:
        async with inproc_chain(tmp_path, NAMES) as nodes, AsyncExitStack() as stack:
            cl = await inproc_clients(stack, nodes)
            await install(nodes, 1, NAMES)
            p2 = await install(nodes, 2, ("a", "b"), on=("a", "b"))
            good = await chain_append([cl["a"], cl["b"]], "g", b"good chunk", p2.epoch_id)
            bad = await chain_append([cl["a"], cl["b"]], "k", b"soon corrupt", p2.epoch_id)
            lost = await chain_append([cl["a"], cl["b"]], "l", b"corrupt twice", p2.epoch_id)
            store = nodes["b"][0].store
            corrupt(store, *bad)
            corrupt(store, *lost)
            corrupt(nodes["a"][0].store, *lost)
            p3 = await install(nodes, 3, ("a", "b"), repairing=("c",))
            others = {n: cl[n] for n in ("a", "c")}
            late = await run_repair(p3, local_name="b", store=store, clients=others,
                                    log=quiet_log(io.StringIO()), deadline_s=0)
            buf = io.StringIO()
            res = await run_repair(p3, local_name="b", store=store, clients=others,
                                   log=quiet_log(buf))
            for pos, data in ((good, b"good chunk"), (bad, b"soon corrupt")):
                r = await cl["c"].read(*pos, len(data), epoch_id=p3.epoch_id)
                assert r.data() == data
            assert (await store.read(*bad, len(b"soon corrupt"))).chunks[0].data \
                == b"soon corrupt"  # healed on the tail
            with pytest.raises(NotWritten):
                await cl["c"].read(*lost, len(b"corrupt twice"), epoch_id=p3.epoch_id)
            assert any(json.loads(x)["msg"] == "repair: corrupt chunk on a source, "
                       "trying another" for x in buf.getvalue().splitlines())
            again = await run_repair(p3, local_name="b", store=store, clients=others,
                                     log=quiet_log(io.StringIO()))
            return late, res, again

    late, res, again = anyio.run(go)
    assert not late.ok and "deadline" in late.detail and late.stats.chunks_copied == 0
    assert not res.ok and "no good copy" in res.detail
    assert res.stats.bad_chunks == 3 and res.stats.chunks_healed == 1
    assert res.stats.conflicts == 0
    assert res.stats.per_destination == {"c": {"chunks": 2, "bytes": len(b"good chunk")
                                               + len(b"soon corrupt")}}
    assert not again.ok and again.stats.bad_chunks == 2  # only the twice-corrupt chunk


@pytest.mark.parametrize("mode", ["ap", "cp"])
def test_repair_rewrites_a_copy_its_flu_knows_is_corrupt(tmp_path: Path, mode: str) -> None:
    """A member coming back with a corrupt copy of an acknowledged chunk (a torn write
    found by its start-up check or a read) flags it in its checksum list; repair rewrites
    it from the tail before promotion (AP and CP), so it does not rejoin the UPI with
    bytes that can never be read (before: the chunk counted as present, nothing copied)."""

    async def go() -> RepairResult:
        async with inproc_chain(tmp_path, NAMES) as nodes, AsyncExitStack() as stack:
            cl = await inproc_clients(stack, nodes)
            p1 = await install(nodes, 1, NAMES, mode=mode)  # type: ignore[arg-type]
            pos = await chain_append([cl[n] for n in NAMES], "t", b"torn later", p1.epoch_id)
            store = nodes["c"][0].store
            with open(store.data_dir / "data" / pos[0], "r+b") as fh:
                fh.seek(pos[1])
                fh.write(b"X")
            with pytest.raises(BadChecksum):  # the read flags the copy
                await store.read(*pos, len(b"torn later"))
            flags = [e.corrupt async for b in store.checksum_list(pos[0]) for e in b]
            assert flags == [True]
            p2 = await install(nodes, 2, ("a", "b"), repairing=("c",),
                               mode=mode)  # type: ignore[arg-type]
            res = await run_repair(p2, local_name="b", store=nodes["b"][0].store,
                                   clients={n: cl[n] for n in ("a", "c")},
                                   log=quiet_log(io.StringIO()))
            assert (await store.read(*pos, len(b"torn later"))).chunks[0].data \
                == b"torn later"
            assert [e.corrupt async for b in store.checksum_list(pos[0]) for e in b] == [False]
            return res

    res = anyio.run(go)
    assert res.ok, res.detail
    assert res.stats.per_destination == {"c": {"chunks": 1, "bytes": len(b"torn later")}}


class RacingStore:
    """The tail's real store, with one fault point: right after the first range check
    that finds nothing, ``hook`` runs (a client write landing at that moment)."""

    def __init__(self, inner: object, hook: object) -> None:
        self._inner = inner
        self._hook = hook

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    async def read(self, *args: object, **kw: object) -> object:
        try:
            return await self._inner.read(*args, **kw)  # type: ignore[attr-defined]
        except NotWritten:
            hook, self._hook = self._hook, None
            if hook is not None and kw.get("needs_trimmed"):
                await hook()  # type: ignore[operator]
            raise


def test_cp_reset_racing_a_new_write_keeps_the_acknowledged_chunk(tmp_path: Path) -> None:
    """A write of the same place lands (tail, then the repairing member as a replay) just
    after the pre-reset check: the reset removes it on c, the post-reset check finds it at
    the tail and copies it back, so the acknowledged chunk is on c afterwards."""

    async def go() -> RepairResult:
        async with inproc_chain(tmp_path, NAMES) as nodes, AsyncExitStack() as stack:
            cl = await inproc_clients(stack, nodes)
            p1 = await install(nodes, 1, ("c", "a", "b"), mode="cp")
            x = await cl["c"].append("cp", b"retried later", epoch_id=p1.epoch_id)
            p2 = await install(nodes, 2, ("a", "b"), mode="cp", repairing=("c",))

            async def client_retry() -> None:
                for n in ("a", "b", "c"):  # chain order; c answers an exact replay with OK
                    await cl[n].write(x.file, x.offset, b"retried later", epoch_id=p2.epoch_id)

            tail = RacingStore(nodes["b"][0].store, client_retry)
            res = await run_repair(p2, local_name="b", store=tail,
                                   clients={n: cl[n] for n in ("a", "c")},
                                   log=quiet_log(io.StringIO()))
            r = await cl["c"].read(x.file, x.offset, x.size, epoch_id=p2.epoch_id)
            assert r.data() == b"retried later"
            assert await everything(cl["c"]) == await everything(cl["b"])
            return res

    res = anyio.run(go)
    assert res.ok, res.detail
    assert res.stats.chunks_reset == 1
    assert res.stats.per_destination == {"c": {"chunks": 1, "bytes": len(b"retried later")}}


def test_ap_repair_merges_trims_including_a_deleted_file(tmp_path: Path) -> None:
    """Trims made while c was out reach c: a partly trimmed file is trimmed the same way,
    and a file one member deleted once fully trimmed is trimmed (and so deleted) on c."""
    full = StoreConfig(sync="none", max_file_size=1024 + len(b"soon trimmed"))

    async def go() -> RepairResult:
        async with inproc_chain(tmp_path, NAMES, config=full) as nodes, \
                AsyncExitStack() as stack:
            cl = await inproc_clients(stack, nodes)
            p1 = await install(nodes, 1, NAMES)
            everyone = [cl[n] for n in NAMES]
            f, off = await chain_append(everyone, "f", b"soon trimmed", p1.epoch_id)
            g, y1 = await chain_append(everyone, "g", b"y1", p1.epoch_id)
            _, y2 = await chain_append(everyone, "g", b"y2", p1.epoch_id)
            p2 = await install(nodes, 2, ("a", "b"), on=("a", "b"))
            for n in ("a", "b"):
                await cl[n].trim(f, off, len(b"soon trimmed"), epoch_id=p2.epoch_id)
                await cl[n].trim(g, y1, 2, epoch_id=p2.epoch_id)
            assert f not in dict(await cl["b"].list_files())  # b deleted it (it is full)
            p3 = await install(nodes, 3, ("a", "b"), repairing=("c",))
            res = await run_repair(p3, local_name="b", clients=cl, log=quiet_log(io.StringIO()))
            with pytest.raises(Trimmed):
                await cl["c"].read(f, off, len(b"soon trimmed"), epoch_id=p3.epoch_id)
            with pytest.raises(Trimmed):
                await cl["c"].read(g, y1, 2, epoch_id=p3.epoch_id)
            assert (await cl["c"].read(g, y2, 2, epoch_id=p3.epoch_id)).data() == b"y2"
            assert await cl["c"].checksum_list(g) == await cl["a"].checksum_list(g)
            return res

    res = anyio.run(go)
    assert res.ok, res.detail
    assert res.stats.ranges_trimmed == 2 and res.stats.chunks_copied == 0


def test_ap_anti_entropy_merges_a_stable_chain_and_then_skips_unchanged_files(
        tmp_path: Path) -> None:
    """``run_anti_entropy`` on the tail of a stable AP chain (every member in the UPI):
    a head-only chunk in a shared file, a head-only file, a middle-only chunk and a
    head-only trim reach every member (all checksum lists equal); the next pass with the
    same ``ChangeMemory`` plans nothing (unchanged files are not even listed for their
    checksums), a new change brings back exactly its file, and a conflict is a problem
    (ok=False, both copies kept) reported again by every pass until someone resolves it."""
    from machi.core.repair_plan import ChangeMemory
    from machi.node.repair import run_anti_entropy

    buf = io.StringIO()

    async def go() -> list[RepairResult]:
        out: list[RepairResult] = []
        async with inproc_chain(tmp_path, NAMES) as nodes, AsyncExitStack() as stack:
            cl = await inproc_clients(stack, nodes)
            p = await install(nodes, 1, NAMES)
            e = p.epoch_id
            chain = [cl[n] for n in NAMES]
            for i in range(3):
                await chain_append(chain, "s", b"shared %d" % i, e)
                await chain_append(chain, "u", b"untouched %d" % i, e)
            orphan = await cl["a"].append("s", b"head only", epoch_id=e)
            own = await cl["a"].append("h", b"a file only the head has", epoch_id=e)
            mid = await cl["a"].append("s", b"head and middle", epoch_id=e)
            await cl["b"].write(mid.file, mid.offset, b"head and middle", epoch_id=e)
            tr = await chain_append(chain, "s", b"trimmed on a only", e)
            await cl["a"].trim(tr[0], tr[1], len(b"trimmed on a only"), epoch_id=e)
            mem = ChangeMemory()
            log = quiet_log(buf)
            out.append(await run_anti_entropy(p, local_name="c", clients=cl, log=log,
                                              memory=mem))
            lists = [await everything(cl[n]) for n in NAMES]
            assert lists[0] == lists[1] == lists[2]
            for pos, data in ((orphan, b"head only"), (own, b"a file only the head has"),
                              (mid, b"head and middle")):
                for n in NAMES:
                    assert (await cl[n].read(pos.file, pos.offset, pos.size, epoch_id=e)
                            ).data() == data
            out.append(await run_anti_entropy(p, local_name="c", clients=cl, log=log,
                                              memory=mem))  # re-plans what it changed
            out.append(await run_anti_entropy(p, local_name="c", clients=cl, log=log,
                                              memory=mem))  # now nothing changed
            late = await cl["a"].append("h", b"late", epoch_id=e)
            # past the EOF of the previous listing: younger than one pass, left for the
            # next one (it may still be on its way down the chain)
            for _ in range(2):
                out.append(await run_anti_entropy(p, local_name="c", clients=cl, log=log,
                                                  memory=mem))
            assert (await cl["c"].read(late.file, late.offset, late.size, epoch_id=e)
                    ).data() == b"late"
            await cl["b"].write(own.file, 40 * B, b"BBBB", epoch_id=e)
            await cl["c"].write(own.file, 40 * B, b"CCCC", epoch_id=e)
            for _ in range(3):
                out.append(await run_anti_entropy(p, local_name="c", clients=cl, log=log,
                                                  memory=mem))
            for n, want in (("b", b"BBBB"), ("c", b"CCCC")):
                assert (await cl[n].read(own.file, 40 * B, 4, epoch_id=e)).data() == want
            cp = await install(nodes, 2, NAMES, mode="cp")
            out.append(await run_anti_entropy(cp, local_name="c", clients=cl, log=log))
        return out

    first, again, quiet, young, late, _bad0, bad1, bad2, cp = anyio.run(go)
    assert first.ok, first.detail
    assert first.stats.files == 3 and first.stats.files_unchanged == 0
    assert first.stats.per_destination == {
        "b": {"chunks": 2, "bytes": len(b"head only") + len(b"a file only the head has")},
        "c": {"chunks": 3, "bytes": len(b"head only") + len(b"a file only the head has")
              + len(b"head and middle")}}
    assert first.stats.ranges_trimmed == 2
    assert again.ok and again.stats.chunks_copied == 0 and again.stats.ranges_trimmed == 0
    assert again.stats.files == 2 and again.stats.files_unchanged == 1  # "u" untouched
    assert quiet.ok and quiet.stats.files == 0 and quiet.stats.files_unchanged == 3
    assert young.ok and young.stats.chunks_copied == 0
    assert late.ok and late.stats.files == 1 and late.stats.chunks_copied == 2
    for bad in (bad1, bad2):
        assert not bad.ok and "conflicting checksums at one place" in bad.detail
        assert bad.stats.conflicts == 1 and bad.stats.chunks_copied == 0
    assert not cp.ok and "not a stable AP chain" in cp.detail
    lines = [json.loads(x) for x in buf.getvalue().splitlines()]
    finished = [x for x in lines if x["msg"] == "anti-entropy finished"]
    # info when it copied, error when it failed; a pass with nothing to do logs at debug
    # (not shown)
    assert [x["level"] for x in finished][:2] == ["info", "info"]
    assert [x["level"] for x in finished][-2:] == ["error", "error"]
    assert all((x["level"] == "error") == (not x["fields"]["ok"])
               and (x["level"] == "info") == bool(x["fields"]["chunks_copied"])
               for x in finished)


@pytest.mark.parametrize("batch", [1, 2, 3, 1024])
def test_equal_batches_are_skipped_and_the_first_difference_is_planned(
        tmp_path: Path, batch: int) -> None:
    """The runner drops batches every member lists identically and plans from the first
    one that differs (all members' streams resume after the same entry): with any batch
    size, a chunk c lacks after several equal ones, and a head-only one at the end, both
    reach every member (the local store path and the client path agree)."""
    from machi.node.repair import run_anti_entropy

    async def go() -> RepairResult:
        async with inproc_chain(tmp_path, NAMES) as nodes, AsyncExitStack() as stack:
            cl = await inproc_clients(stack, nodes)
            p = await install(nodes, 1, NAMES)
            e = p.epoch_id
            chain = [cl[n] for n in NAMES]
            for i in range(6):
                await chain_append(chain, "q", b"equal %d" % i, e)
            await chain_append(chain[:2], "q", b"c lacks this", e)
            await chain_append(chain, "q", b"equal again", e)
            await cl["a"].append("q", b"head only", epoch_id=e)
            clients = {n: c for n, c in cl.items() if n != "c"}
            res = await run_anti_entropy(p, local_name="c", store=nodes["c"][0].store,
                                         clients=clients, log=quiet_log(io.StringIO()),
                                         checksum_batch_size=batch)
            lists = [await everything(cl[n]) for n in NAMES]
            assert lists[0] == lists[1] == lists[2]
            return res

    res = anyio.run(go)
    assert res.ok, res.detail
    assert res.stats.per_destination == {
        "b": {"chunks": 1, "bytes": len(b"head only")},
        "c": {"chunks": 2, "bytes": len(b"c lacks this") + len(b"head only")}}
    assert res.stats.entries_equal >= 6 // batch * batch


def test_anti_entropy_equal_summaries_skip_the_listing_and_differences_are_found(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file whose planned part has the same summary on every member is not listed
    (``files_equal``); a file with a chunk missing on one member, an extra chunk on the
    head, a trim on one member only is listed and repaired as before, and the next pass
    finds all of them equal by summary; a conflict is still a problem; a member whose
    FLU refuses the summary (older: BAD_ARG) makes the pass list, and it still repairs."""
    from machi.core.repair_plan import ChangeMemory
    from machi.core.wire import Op
    from machi.node.repair import run_anti_entropy

    listed: list[str] = []
    real_list = FluClient.checksum_list_raw_batches
    real_sum = FluClient.checksum_summary
    old_flus: set[int] = set()
    refused: list[str] = []

    def spy_list(self: FluClient, file: str, **kw: Any) -> Any:
        listed.append(file.split("^")[0])
        return real_list(self, file, **kw)

    async def spy_sum(self: FluClient, file: str, **kw: Any) -> Any:
        if self.port in old_flus:
            refused.append(file.split("^")[0])
            raise BadArg("unknown field summary")  # as a FLU before the field answers
        return await real_sum(self, file, **kw)

    monkeypatch.setattr(FluClient, "checksum_list_raw_batches", spy_list)
    monkeypatch.setattr(FluClient, "checksum_summary", spy_sum)

    async def go() -> list[tuple[RepairResult, list[str]]]:
        out: list[tuple[RepairResult, list[str]]] = []
        async with inproc_chain(tmp_path, NAMES) as nodes, AsyncExitStack() as stack:
            cl = await inproc_clients(stack, nodes)
            p = await install(nodes, 1, NAMES)
            e = p.epoch_id
            chain = [cl[n] for n in NAMES]
            with pytest.raises(BadArg):  # to_offset only with summary
                async for _f in cl["a"]._stream(Op.CHECKSUM_LIST, {"file": "x^^0^u^1",
                                                                   "to_offset": B}):
                    pass
            names: dict[str, str] = {}
            for i in range(3):
                for f in ("e1", "e2", "m", "x", "d"):
                    names[f], _ = await chain_append(chain, f, b"%s equal %d" % (
                        f.encode(), i), e)
            await chain_append(chain[:2], "m", b"c lacks this", e)
            await chain_append(chain, "m", b"m equal again", e)
            await cl["a"].append("x", b"only the head has this", epoch_id=e)
            d = await chain_append(chain, "d", b"trimmed on b only", e)
            await cl["b"].trim(d[0], d[1], len(b"trimmed on b only"), epoch_id=e)
            mem = ChangeMemory()

            async def pass_() -> None:
                listed.clear()
                res = await run_anti_entropy(p, local_name="c", store=nodes["c"][0].store,
                                             clients={n: cl[n] for n in ("a", "b")},
                                             log=quiet_log(io.StringIO()), memory=mem)
                out.append((res, sorted(set(listed))))

            await pass_()  # first pass: every file whole
            lists = [await everything(cl[n]) for n in NAMES]
            assert lists[0] == lists[1] == lists[2]
            await pass_()  # re-plans what it changed: equal now
            old_flus.add(cl["b"].port)
            x = names["x"]
            await cl["b"].write(x, 60 * B, b"late, b only", epoch_id=e)
            await cl["a"].append("e1", b"late in e1, head only", epoch_id=e)
            for _ in range(2):
                await pass_()  # b cannot summarise: listed; copied by the second pass
            assert (await cl["c"].read(x, 60 * B, 12, epoch_id=e)).data() == b"late, b only"
            old_flus.clear()
            await cl["b"].write(d[0], 40 * B, b"BBBB", epoch_id=e)
            await cl["c"].write(d[0], 40 * B, b"CCCC", epoch_id=e)
            for _ in range(2):
                await pass_()  # past the last EOF, then a conflict: listed, a problem
            assert (await cl["c"].read(d[0], 40 * B, 4, epoch_id=e)).data() == b"CCCC"
        return out

    (first, l1), (second, l2), (old1, l4), (old2, l5), _young, (bad, l3) = anyio.run(go)
    assert first.ok, first.detail
    assert first.stats.files == 5 and first.stats.files_equal == 2
    assert l1 == ["d", "m", "x"]  # e1 and e2 equal by summary: never listed
    assert first.stats.per_destination == {
        "b": {"chunks": 1, "bytes": len(b"only the head has this")},
        "c": {"chunks": 2, "bytes": len(b"c lacks this") + len(b"only the head has this")}}
    assert first.stats.ranges_trimmed == 2
    assert second.ok and second.stats.files_equal == second.stats.files == 3
    assert l2 == [] and second.stats.chunks_copied == 0
    assert not bad.ok and "conflicting checksums at one place" in bad.detail
    assert l3 == ["d"] and bad.stats.files_equal == 0
    assert old1.ok and old2.ok, (old1.detail, old2.detail)
    assert old1.stats.files_equal == old2.stats.files_equal == 0
    assert l4 == [] and l5 == ["e1", "x"]  # younger than a pass, then listed
    # e1 differs on a already; x is equal on c and a, and b refuses: listed
    assert refused == ["x"]
    assert old2.stats.per_destination == {
        "a": {"chunks": 1, "bytes": len(b"late, b only")},
        "b": {"chunks": 1, "bytes": len(b"late in e1, head only")},
        "c": {"chunks": 2, "bytes": len(b"late, b only") + len(b"late in e1, head only")}}
