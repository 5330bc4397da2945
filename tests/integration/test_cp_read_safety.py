"""Goal: the chain client's read safety against real FLU servers on loopback: a CP tail
left behind at an old epoch cannot answer "not written" for a chunk acknowledged at a
newer epoch (quorum epoch check), and a tail holding corrupt bytes is read around and
healed.

The FLUs run in-process without chain managers; the test installs projections itself
(``tests.integration.inproc_flu.install``), which is how it can leave one member at an
older confirmed epoch for as long as it needs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from machi.client.chain_client import CallInfo, ChainClient, outcome_of
from machi.client.flu_client import FluClient
from machi.core.errors import BadChecksum, MachiError, NotWritten
from machi.core.outcome import OpKind, Outcome
from tests.integration.inproc_flu import Nodes, inproc_chain, install, seeds

pytestmark = pytest.mark.timeout(60)
NAMES = ("a", "b", "c")


def run(tmp_path: Path, body: Callable[[Nodes], Any]) -> None:
    async def go() -> None:
        async with inproc_chain(tmp_path, NAMES) as nodes:
            await body(nodes)

    anyio.run(go)


def only(nodes: Nodes, *names: str) -> dict[str, tuple[str, int]]:
    return {n: a for n, a in seeds(nodes).items() if n in names}


def test_stale_cp_tail_does_not_answer_not_written(tmp_path: Path) -> None:
    """c stays the serving tail of epoch 1 while a and b acknowledge a write at epoch 2;
    c itself answers NOT_WRITTEN, yet a client that only knows c reads the bytes (the
    check sees epoch 2 on a majority, refreshes and reads from b)."""

    async def body(nodes: Nodes) -> None:
        p1 = await install(nodes, 1, NAMES, mode="cp")
        p2 = await install(nodes, 2, ("a", "b"), mode="cp", on=("a", "b"))
        async with ChainClient(only(nodes, "a", "b")) as writer:
            pos = await writer.append("cp", b"acked at epoch 2")
            assert writer.last_epoch_id == p2.epoch_id
        async with FluClient("127.0.0.1", nodes["c"][1]) as c:
            with pytest.raises(NotWritten):  # the stale answer the client must not return
                await c.read(pos.file, pos.offset, pos.size, epoch_id=p1.epoch_id)
        async with ChainClient(only(nodes, "c")) as reader:
            info = CallInfo()
            got = await reader.read(pos.file, pos.offset, pos.size, info=info)
            assert got == b"acked at epoch 2"
            assert info.attempts >= 1 and info.node == "b"
            assert reader.last_epoch_id == p2.epoch_id

    run(tmp_path, body)


def test_cp_not_written_without_a_reachable_majority_is_no_answer(tmp_path: Path) -> None:
    """With a and b stopped, c alone cannot prove that nothing newer exists: the read
    gives up (outcome fail: no answer) instead of claiming "not written"."""

    async def body(nodes: Nodes) -> None:
        await install(nodes, 1, NAMES, mode="cp")
        async with ChainClient(seeds(nodes)) as cc:
            pos = await cc.append("cp", b"everywhere")
        for n in ("a", "b"):
            await nodes[n][0].stop()
        async with ChainClient(only(nodes, "c"), op_timeout_ms=1_500,
                               request_timeout_ms=300) as reader:
            assert await reader.read(pos.file, pos.offset, pos.size) == b"everywhere"
            with pytest.raises(MachiError) as ei:
                await reader.read(pos.file, pos.offset + pos.size, 10)
            assert not isinstance(ei.value, NotWritten)
            assert outcome_of(ei.value, OpKind.READ) is Outcome.FAIL

    run(tmp_path, body)


def test_cp_not_written_with_a_majority_costs_one_round(tmp_path: Path) -> None:
    """A place that was never written reads as an ok NOT_WRITTEN on a healthy CP chain,
    without any retry (the check is one parallel wedge_status round)."""

    async def body(nodes: Nodes) -> None:
        await install(nodes, 1, NAMES, mode="cp")
        async with ChainClient(seeds(nodes)) as cc:
            pos = await cc.append("cp", b"x")
            info = CallInfo()
            with pytest.raises(NotWritten) as ei:
                await cc.read(pos.file, pos.offset + 1, 5, info=info)
            assert outcome_of(ei.value, OpKind.READ) is Outcome.OK
            assert info.attempts == 0

    run(tmp_path, body)


@pytest.mark.parametrize("mode", ["cp", "ap"])
def test_corrupt_tail_chunk_is_read_around_and_healed(tmp_path: Path, mode: str) -> None:
    """A bit flip in the tail's copy of an acknowledged chunk: the client returns the good
    bytes from another UPI member and rewrites the tail's copy, which then reads fine."""

    async def body(nodes: Nodes) -> None:
        p = await install(nodes, 1, NAMES, mode=mode)  # type: ignore[arg-type]
        async with ChainClient(seeds(nodes)) as cc:
            pos = await cc.append("cp", b"precious bytes")
            tail = nodes["c"][0]
            path = tail.store._data.path(pos.file)
            fd = os.open(path, os.O_RDWR)
            try:
                os.pwrite(fd, b"\x00", pos.offset + 3)
            finally:
                os.close(fd)
            async with FluClient("127.0.0.1", nodes["c"][1]) as c:
                with pytest.raises(BadChecksum):
                    await c.read(pos.file, pos.offset, pos.size, epoch_id=p.epoch_id)
                info = CallInfo()
                assert await cc.read(pos.file, pos.offset, pos.size, info=info) \
                    == b"precious bytes"
                assert info.node == "b" and info.repaired == ["c"]
                rep = await c.read(pos.file, pos.offset, pos.size, epoch_id=p.epoch_id)
                assert rep.data() == b"precious bytes"
                assert tail.store.stats()["healed_chunks"] == 1

    run(tmp_path, body)
