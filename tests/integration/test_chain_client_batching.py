"""Goal: natural batching of ChainClient appends (docs/client.md, "Batching") is
invisible to callers except in speed: concurrent appends through a real 3-node loopback
chain coalesce into multi-chunk requests, every chunk reads back from every member with
its own checksum, and every chunk ends with the outcome it would have had alone, also when
a request of the batch is lost, corrupted, or hits a node that is killed mid-batch, and
when one caller of a batch is cancelled."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import anyio
import pytest

from machi.client.chain_client import CallInfo, ChainClient, outcome_of
from machi.client.flu_client import FluClient
from machi.core.checksum import digest, verify
from machi.core.errors import MachiError, Partition
from machi.core.outcome import OpKind, Outcome
from machi.core.wire import Op
from tests.integration.inproc_flu import Nodes, inproc_chain, install, seeds

pytestmark = pytest.mark.timeout(120)
NAMES = ("a", "b", "c")


async def stored(nodes: Nodes, names: tuple[str, ...] = NAMES) -> dict[str, set[bytes]]:
    out: dict[str, set[bytes]] = {}
    for n in names:
        async with FluClient("127.0.0.1", nodes[n][1]) as c:
            out[n] = {e.csum.digest for f, _ in await c.list_files()
                      for e in await c.checksum_list(f) if e.csum is not None}
    return out


async def appenders(cc: ChainClient, workers: int, per_worker: int, *, seed: int = 0,
                    prefix: str = "p") -> list[tuple[bytes, Outcome, Any, CallInfo]]:
    """``workers`` concurrent callers, each appending ``per_worker`` chunks."""
    rng = random.Random(seed)
    results: list[tuple[bytes, Outcome, Any, CallInfo]] = []

    async def worker(w: int) -> None:
        for i in range(per_worker):
            data = f"{w}/{i}|".encode() + os.urandom(rng.choice([10, 4096, 20_000]))
            info = CallInfo()
            try:
                pos = await cc.append(prefix, data, info=info)
                results.append((data, Outcome.OK, pos, info))
            except MachiError as e:
                results.append((data, outcome_of(e, OpKind.APPEND), e, info))

    async with anyio.create_task_group() as tg:
        for w in range(workers):
            tg.start_soon(worker, w)
    return results


def test_concurrent_appends_batch_and_read_back_everywhere(tmp_path: Path) -> None:
    """32 concurrent callers: far fewer head requests than chunks, every chunk at its own
    place on every member with a verifying checksum; batching off: one request each."""

    async def go() -> None:
        async with inproc_chain(tmp_path, NAMES) as nodes:
            p = await install(nodes, 1, NAMES)
            async with ChainClient(seeds(nodes)) as cc:
                results = await appenders(cc, 32, 6)
                stats = dict(cc.stats)
            assert all(oc is Outcome.OK for _d, oc, _p, _i in results)
            assert stats["head_chunks"] == len(results) == 192
            assert stats["head_requests"] < len(results) / 2, stats
            places = {(pos.file, pos.offset) for _d, _oc, pos, _i in results}
            assert len(places) == len(results)
            for n in NAMES:
                async with FluClient("127.0.0.1", nodes[n][1]) as c:
                    for data, _oc, pos, info in results:
                        assert info.outcome == "ok" and info.acked == list(NAMES)
                        r = await c.read(pos.file, pos.offset, pos.size, epoch_id=p.epoch_id)
                        assert len(r.chunks) == 1 and r.chunks[0].data == data
                        assert verify(data, r.chunks[0].csum)
            async with ChainClient(seeds(nodes), batch_max_chunks=1) as off:
                results = await appenders(off, 8, 3, seed=1)
                assert off.stats["head_requests"] == off.stats["head_chunks"] == 24
            assert all(oc is Outcome.OK for _d, oc, _p, _i in results)

    anyio.run(go)


class FaultyMulti(FluClient):
    """A real FluClient with seeded fault points on data ops, multi-chunk ones included:
    the request is lost (never sent), or the reply is lost (the node applied it)."""

    rng: random.Random = random.Random(0)
    ops = {Op.APPEND, Op.WRITE, Op.READ, Op.APPEND_CHUNKS, Op.WRITE_CHUNKS}

    async def _call(self, op: Op, meta: Any = None, payload: Any = b"", **kw: Any) -> Any:
        if op in self.ops and self.rng.random() < 0.08:
            raise Partition("fault point: request lost")
        frame = await super()._call(op, meta, payload, **kw)
        if op in self.ops and self.rng.random() < 0.08:
            raise Partition("fault point: reply lost")
        return frame


def test_batched_outcomes_are_sound_under_lost_requests_and_replies(tmp_path: Path) -> None:
    """With lost requests and replies: ok => the chunk is on every member, fail =>
    nowhere; batches did form."""
    FaultyMulti.rng = random.Random(3)

    async def go() -> None:
        async with inproc_chain(tmp_path, NAMES) as nodes:
            await install(nodes, 1, NAMES)
            async with ChainClient(seeds(nodes), flu_factory=FaultyMulti, op_timeout_ms=2_000,
                                   request_timeout_ms=500, seed=3) as cc:
                results = await appenders(cc, 16, 6, seed=3)
                assert cc.stats["head_chunks"] > cc.stats["head_requests"]
            have = await stored(nodes)
        counts = {oc: 0 for oc in Outcome}
        for data, oc, _res, _info in results:
            counts[oc] += 1
            where = {n for n, ds in have.items() if digest(data) in ds}
            if oc is Outcome.OK:
                assert where == set(NAMES)
            elif oc is Outcome.FAIL:
                assert not where
        assert counts[Outcome.OK] > 0, counts

    anyio.run(go)


class CorruptOnce(FluClient):
    """Corrupts chunk 1 of the first multi-chunk request of ``op`` (bytes changed after
    the checksum was computed: what a bad NIC would do)."""

    target: Op = Op.APPEND_CHUNKS
    armed = False

    async def _call(self, op: Op, meta: Any = None, payload: Any = b"", **kw: Any) -> Any:
        if op is CorruptOnce.target and CorruptOnce.armed and isinstance(payload, list) \
                and len(payload) > 1:
            CorruptOnce.armed = False
            payload = list(payload)
            payload[1] = bytes(payload[1])[:-1] + b"\x00"
        return await super()._call(op, meta, payload, **kw)


@pytest.mark.parametrize("target", [Op.APPEND_CHUNKS, Op.WRITE_CHUNKS])
def test_a_rejected_chunk_splits_its_batch(tmp_path: Path, target: Op) -> None:
    """A batch refused whole because of one chunk (BAD_CHECKSUM at the head, or at a
    downstream member) continues chunk by chunk: each chunk gets what it would have got
    alone (here: ok, since alone nothing is corrupted)."""
    CorruptOnce.target = target
    CorruptOnce.armed = False

    async def go() -> None:
        async with inproc_chain(tmp_path, NAMES) as nodes:
            await install(nodes, 1, NAMES)
            async with ChainClient(seeds(nodes), flu_factory=CorruptOnce) as cc:
                await cc.append("p", b"warm-up")
                CorruptOnce.armed = True
                results = await appenders(cc, 16, 2)
                assert not CorruptOnce.armed  # the fault fired
                assert cc.stats["batch_splits"] == 1
            have = await stored(nodes)
        for data, oc, _pos, _info in results:
            assert oc is Outcome.OK
            assert all(digest(data) in have[n] for n in NAMES)

    anyio.run(go)


class KillOnMultiWrite(FluClient):
    """Before the first multi-chunk write to the node at ``port``, runs ``hook`` (the test
    kills that node and installs a chain without it)."""

    port = 0
    hook: Any = None

    async def write_chunks(self, file: str, chunks: Any, **kw: Any) -> Any:
        hook = KillOnMultiWrite.hook
        if hook is not None and self.port == KillOnMultiWrite.port:
            KillOnMultiWrite.hook = None
            await hook()
        return await super().write_chunks(file, chunks, **kw)


def test_node_killed_mid_batch(tmp_path: Path) -> None:
    """The middle node dies while a batch is on its way down the chain; the chain becomes
    [a, c]: every chunk of the interrupted batch ends ok on a and c (or, if the deadline
    ran out, with an outcome consistent with where its bytes are)."""

    async def go() -> None:
        async with inproc_chain(tmp_path, NAMES) as nodes:
            await install(nodes, 1, NAMES)
            KillOnMultiWrite.port = nodes["b"][1]

            async def kill_b() -> None:
                await nodes["b"][0].stop()
                await install(nodes, 2, ("a", "c"), on=("a", "c"))

            async with ChainClient(seeds(nodes), flu_factory=KillOnMultiWrite,
                                   request_timeout_ms=1_000) as cc:
                await cc.append("p", b"warm-up")
                KillOnMultiWrite.hook = kill_b
                results = await appenders(cc, 16, 3)
                assert KillOnMultiWrite.hook is None  # b was killed mid-batch
                assert cc.last_epoch_id is not None and cc.last_epoch_id.number == 2
            have = await stored(nodes, ("a", "c"))
        for data, oc, _pos, info in results:
            where = {n for n, ds in have.items() if digest(data) in ds}
            if oc is Outcome.OK:
                assert where == {"a", "c"} and set(info.acked) >= {"a", "c"}
            elif oc is Outcome.FAIL:
                assert not where
        assert sum(oc is Outcome.OK for _d, oc, _p, _i in results) == len(results)

    anyio.run(go)


class SlowHead(FluClient):
    """Appends wait ``delay_s`` before they are sent (so a batch is in flight long enough
    for a test to cancel one of its callers)."""

    delay_s = 0.3

    async def append(self, *a: Any, **kw: Any) -> Any:
        await anyio.sleep(SlowHead.delay_s)
        return await super().append(*a, **kw)

    async def append_chunks(self, *a: Any, **kw: Any) -> Any:
        await anyio.sleep(SlowHead.delay_s)
        return await super().append_chunks(*a, **kw)


def test_cancelled_caller_does_not_break_its_batch(tmp_path: Path) -> None:
    """Cancelling callers (one whose chunk rides in a batch, one still queued) leaves the
    other callers' appends ok and on every member."""

    async def go() -> None:
        async with inproc_chain(tmp_path, NAMES) as nodes:
            p = await install(nodes, 1, NAMES)
            async with ChainClient(seeds(nodes), flu_factory=SlowHead,
                                   batches_in_flight=1) as cc:
                await cc.append("p", b"warm-up")  # discovery and connections done
                done: dict[int, Any] = {}

                async def caller(i: int, scope: anyio.CancelScope) -> None:
                    with scope:
                        done[i] = await cc.append("p", b"chunk %d" % i)

                scopes = [anyio.CancelScope() for _ in range(12)]
                async with anyio.create_task_group() as tg:
                    for i in range(6):  # batch 1: i = 0 alone, then 1..5 queue
                        tg.start_soon(caller, i, scopes[i])
                    await anyio.sleep(0.1)
                    scopes[0].cancel()  # in flight (alone in the first batch)
                    scopes[3].cancel()  # still queued behind it
                    for i in range(6, 12):
                        tg.start_soon(caller, i, scopes[i])
                    await anyio.sleep(0.35)
                    scopes[7].cancel()  # riding in the second batch (1, 2, 4..11)
                assert set(done) == set(range(12)) - {0, 3, 7}
                assert cc.stats["head_chunks"] > cc.stats["head_requests"]
                for i, pos in done.items():
                    for n in NAMES:
                        async with FluClient("127.0.0.1", nodes[n][1]) as c:
                            r = await c.read(pos.file, pos.offset, pos.size,
                                             epoch_id=p.epoch_id)
                            assert r.data() == b"chunk %d" % i

    anyio.run(go)



def test_cp_batches_skip_the_witness_and_wait_for_its_epoch(tmp_path: Path) -> None:
    """CP with a witness: batched appends reach a and b only (the witness refuses data),
    and while the witness is wedged no chunk of a batch is acknowledged; once it reports
    our epoch again every chunk ends ok."""
    from machi.core.wedge import after_confirm, wedge

    names = ("w", "a", "b")

    async def go() -> None:
        async with inproc_chain(tmp_path, names, ("w",)) as nodes:
            p = await install(nodes, 1, names, mode="cp", witnesses=("w",))
            async with ChainClient(seeds(nodes)) as cc:
                await cc.append("cp", b"warm-up")
                w = nodes["w"][0]
                w._set_state(wedge(w.state), "test wedges the witness")

                async def unwedge_later() -> None:
                    await anyio.sleep(0.4)
                    w._set_state(after_confirm(w.state, p.epoch_id), "test confirms")

                async with anyio.create_task_group() as tg:
                    tg.start_soon(unwedge_later)
                    results = await appenders(cc, 16, 2, prefix="cp")
                assert cc.stats["head_chunks"] > cc.stats["head_requests"]
            have = await stored(nodes, ("a", "b"))
            async with FluClient("127.0.0.1", nodes["w"][1]) as wc:
                assert await wc.list_files() == []
        for data, oc, _pos, info in results:
            assert oc is Outcome.OK and info.acked == ["a", "b"]
            assert all(digest(data) in have[n] for n in ("a", "b"))
        # the first round of chunks waited (retried) until the witness was back
        assert sum(info.attempts > 0 for *_x, info in results) >= 16

    anyio.run(go)
