"""Goal: the chain client's CP paths against real FLU servers (in-process, on loopback)
with one witness: data never reaches the witness, an ack waits until the witness reports
our epoch unwedged, and CP read repair never takes bytes from outside the UPI tail.

The test confirms CP epochs itself (the manager's job: ``after_confirm`` once every UPI
member stored the epoch) to control exactly which member is at which epoch; the client
against daemons whose managers confirm epochs is tests/integration/test_chain_daemons.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from machi.client.chain_client import CallInfo, ChainClient, outcome_of
from machi.client.flu_client import FluClient
from machi.core.errors import BadArg, MachiError, NotWritten
from machi.core.outcome import OpKind, Outcome
from machi.core.projection import Projection
from machi.core.wedge import after_confirm, wedge
from tests.integration.inproc_flu import Nodes, inproc_chain, install, seeds

pytestmark = pytest.mark.timeout(60)
NAMES = ("w", "a", "b")  # w is the witness


async def install_cp(
    nodes: Nodes, epoch: int, *, on: tuple[str, ...] = NAMES, confirm: bool = True,
) -> Projection:
    """A CP projection (UPI = w, a, b; w the witness), confirmed on ``on``."""
    p = await install(nodes, epoch, NAMES, mode="cp", witnesses=("w",), on=on,
                      confirm=confirm)
    for n in on:
        async with FluClient("127.0.0.1", nodes[n][1]) as c:
            assert (await c.wedge_status()).wedged != confirm
    return p


def run(tmp_path: Path, body: Callable[[Nodes], Any]) -> None:
    async def go() -> None:
        async with inproc_chain(tmp_path, NAMES, ("w",)) as nodes:
            await body(nodes)

    anyio.run(go)


def test_cp_append_skips_the_witness_and_waits_for_its_epoch(tmp_path: Path) -> None:
    """Appends reach a and b only (the witness answers BAD_ARG to data, so any data sent
    to it would fail the call); a wedged witness holds the ack back until it recovers."""

    async def body(nodes: Nodes) -> None:
        p = await install_cp(nodes, 1)
        async with ChainClient(seeds(nodes)) as cc:
            info = CallInfo()
            pos = await cc.append("cp", b"quorum", info=info)
            assert info.acked == ["a", "b"] and info.node == "a" and info.attempts == 0
            assert await cc.read(pos.file, pos.offset, pos.size) == b"quorum"
            async with FluClient("127.0.0.1", nodes["w"][1]) as wc:
                with pytest.raises(BadArg):
                    await wc.read(pos.file, pos.offset, pos.size, epoch_id=p.epoch_id)
            w = nodes["w"][0]
            w._set_state(wedge(w.state), "test wedges the witness")

            async def unwedge_later() -> None:
                await anyio.sleep(0.3)
                w._set_state(after_confirm(w.state, p.epoch_id), "test confirms")

            async with anyio.create_task_group() as tg:
                tg.start_soon(unwedge_later)
                info = CallInfo()
                pos2 = await cc.append("cp", b"after witness", info=info)
            assert info.attempts > 0 and info.outcome == "ok"
            assert await cc.read(pos2.file, pos2.offset, pos2.size) == b"after witness"

    run(tmp_path, body)


def test_cp_witness_at_another_epoch_blocks_acks(tmp_path: Path) -> None:
    """A chain whose witness never reached our epoch acknowledges nothing: reads fail,
    appends end as info (the data members wrote, the quorum was not proven)."""

    async def body(nodes: Nodes) -> None:
        await install_cp(nodes, 1)
        await install_cp(nodes, 2, on=("a", "b"))  # the witness stays at epoch 1
        async with ChainClient(seeds(nodes), op_timeout_ms=2_000) as cc:
            info = CallInfo()
            with pytest.raises(MachiError) as ei:
                await cc.append("cp", b"no quorum", info=info)
            assert outcome_of(ei.value, OpKind.APPEND) is Outcome.INFO
            assert info.acked == ["a", "b"]
            with pytest.raises(MachiError) as ei:
                await cc.list_files()
            assert outcome_of(ei.value, OpKind.LIST_FILES) is Outcome.FAIL

    run(tmp_path, body)


def test_cp_read_repair_uses_only_the_upi_tail(tmp_path: Path) -> None:
    """Bytes only the head has (an unacknowledged write) are not served in CP: the read is
    an ok NOT_WRITTEN and nothing is copied; bytes at the tail are served from it."""

    async def body(nodes: Nodes) -> None:
        p = await install_cp(nodes, 1)
        async with ChainClient(seeds(nodes)) as cc, \
                FluClient("127.0.0.1", nodes["a"][1]) as head, \
                FluClient("127.0.0.1", nodes["b"][1]) as tail:
            pos = await head.append("cp", b"head only", epoch_id=p.epoch_id)
            info = CallInfo()
            with pytest.raises(NotWritten) as ei:
                await cc.read(pos.file, pos.offset, pos.size, info=info)
            assert outcome_of(ei.value, OpKind.READ) is Outcome.OK
            assert info.repaired == []
            with pytest.raises(NotWritten):
                await tail.read(pos.file, pos.offset, pos.size, epoch_id=p.epoch_id)
            pos2 = await tail.append("cp2", b"tail only", epoch_id=p.epoch_id)
            info = CallInfo()
            assert await cc.read(pos2.file, pos2.offset, pos2.size, info=info) == b"tail only"
            assert info.node == "b" and info.repaired == []

    run(tmp_path, body)
