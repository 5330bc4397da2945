"""Goal: reference 2.3 step 6 -- an append that passed the node's epoch check but then
waited (for its key's lock, or for a new file to be created) while a projection write
moved the node on fails BAD_EPOCH or WEDGED with nothing written, instead of landing in
a file minted for the old epoch (in-process node on loopback, real store)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import pytest

from machi.client.flu_client import FluClient
from machi.core.checksum import NO_CSUM
from machi.core.epoch import DUMMY_EPOCH_ID, EpochId
from machi.core.errors import BadEpoch, MachiError, Wedged
from machi.storage.flu_store import FluStore
from tests.integration.inproc_flu import inproc_chain, install

pytestmark = pytest.mark.timeout(60)


async def race(
    tmp_path: Path, move_on: Callable[[dict], Awaitable[None]],
    after: Callable[[dict], Awaitable[None]] | None = None,
) -> tuple[type[MachiError] | None, list[tuple[str, int]], EpochId]:
    """Append at epoch 1 on a fresh prefix; while the store creates the new file, run
    ``move_on(nodes)``, then (the append done) ``after(nodes)``; return the append's
    error (None: it succeeded), the files, and the epoch of the first projection."""
    async with inproc_chain(tmp_path, ["a"]) as nodes:
        p1 = await install(nodes, 1, ("a",))
        store = nodes["a"][0].store
        entered, gate = anyio.Event(), anyio.Event()
        real_create = store._data.create

        async def gated_create(name: str) -> None:  # the real create, after the race
            entered.set()
            await gate.wait()
            await real_create(name)

        store._data.create = gated_create
        outcome: list[type[MachiError] | None] = []
        async with FluClient("127.0.0.1", nodes["a"][1]) as c:

            async def append() -> None:
                try:
                    await c.append("race", b"epoch one", epoch_id=p1.epoch_id)
                    outcome.append(None)
                except MachiError as e:
                    outcome.append(type(e))

            async with anyio.create_task_group() as tg:
                tg.start_soon(append)
                with anyio.fail_after(10):
                    await entered.wait()
                await move_on(nodes)
                store._data.create = real_create
                gate.set()
            if after is not None:
                await after(nodes)
            files = await c.list_files()
        return outcome[0], files, p1.epoch_id


def test_private_projection_racing_a_file_creation(tmp_path: Path) -> None:
    """The node adopts epoch 2 while an epoch-1 append creates its file: BAD_EPOCH, the
    file stays empty, and the next append (epoch 2) goes to a new file."""

    async def move_on(nodes: dict) -> None:
        await install(nodes, 2, ("a",))

    async def after(nodes: dict) -> None:
        async with FluClient("127.0.0.1", nodes["a"][1]) as c:
            eid = (await c.wedge_status()).epoch_id
            assert eid.number == 2
            pos = await c.append("race", b"epoch two", epoch_id=eid)
            assert pos.offset == 1024

    err, files, _e1 = anyio.run(race, tmp_path, move_on, after)
    assert err is BadEpoch
    assert sorted(eof for _n, eof in files) == [1024, 1024 + len(b"epoch two")]


def test_public_projection_racing_a_file_creation(tmp_path: Path) -> None:
    """A newer public projection (the node wedges) during the file creation: WEDGED and
    nothing written."""

    async def wedge_only(nodes: dict) -> None:
        p2 = await install(nodes, 2, ("a",), on=())  # only built
        async with FluClient("127.0.0.1", nodes["a"][1]) as c:
            await c.projection_write("public", p2)
        assert nodes["a"][0].state.wedged

    err, files, _e1 = anyio.run(race, tmp_path, wedge_only)
    assert err is Wedged
    assert [eof for _n, eof in files] == [1024]


async def _guarded_store(tmp_path: Path) -> None:
    async with await FluStore.open(tmp_path / "flu") as s:
        calls: list[EpochId] = []

        def guard(epoch_id: EpochId) -> None:
            calls.append(epoch_id)
            raise BadEpoch("the node moved on")

        s.epoch_guard = guard
        with pytest.raises(BadEpoch):
            await s.append("p", b"x", NO_CSUM, epoch_id=DUMMY_EPOCH_ID)
        assert calls == [DUMMY_EPOCH_ID] and await s.list_files() == []  # nothing minted
        s.epoch_guard = None
        pos, _ = await s.append("p", b"x", NO_CSUM, epoch_id=DUMMY_EPOCH_ID)
        s.epoch_guard = guard
        with pytest.raises(BadEpoch):  # also on the fast path (file already there)
            await s.append("p", b"y", NO_CSUM, epoch_id=DUMMY_EPOCH_ID)
        with pytest.raises(BadEpoch):
            await s.append_chunks("p", [(b"z", NO_CSUM, 0)], epoch_id=DUMMY_EPOCH_ID)
        assert await s.list_files() == [(pos.file, 1025)]


def test_store_guard_runs_before_mint_and_reservation(tmp_path: Path) -> None:
    """The store calls its epoch guard before minting a file and before reserving space;
    a guard that raises leaves nothing minted or written."""
    anyio.run(_guarded_store, tmp_path)
