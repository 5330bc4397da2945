"""The durable commit path of a FLU store costs a bounded number of thread hops, and the
group-commit leader does not wait for company when it is alone (no timing asserts: the
numbers are counted)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import aiosqlite.core
import anyio.to_thread
import pytest

from machi.core.checksum import client_csum
from machi.core.epoch import DUMMY_EPOCH_ID
from machi.storage.flu_store import FluStore, StoreConfig

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_durable_append_is_one_database_hop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With sync "batch", each sequential append reaches aiosqlite's worker thread once (one
    transaction: statements and commit together) and anyio's worker once (fdatasync); the
    old path made 7 database round trips per append, each a thread wake-up."""
    hops: Counter[str] = Counter()
    real_execute = aiosqlite.core.Connection._execute
    real_run_sync = anyio.to_thread.run_sync

    async def counting_execute(self: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
        hops["db"] += 1
        return await real_execute(self, fn, *args, **kwargs)

    async def counting_run_sync(fn: Any, *args: Any, **kwargs: Any) -> Any:
        hops["worker"] += 1
        return await real_run_sync(fn, *args, **kwargs)

    async with await FluStore.open(tmp_path / "flu", StoreConfig(sync="batch")) as s:
        data = b"x" * 4096
        csum = client_csum(data)
        pos, _ = await s.append("p", data, csum, epoch_id=DUMMY_EPOCH_ID)  # mints the file
        monkeypatch.setattr(aiosqlite.core.Connection, "_execute", counting_execute)
        monkeypatch.setattr(anyio.to_thread, "run_sync", counting_run_sync)
        before = s.stats()
        for _ in range(10):
            await s.append("p", data, csum, epoch_id=DUMMY_EPOCH_ID)
        after = s.stats()
        monkeypatch.undo()
        assert after["commits"] - before["commits"] == 10
        assert hops == {"db": 10, "worker": 10}
        # and the data is durable and readable
        got = await s.read(pos.file, pos.offset + 4096 * 10, 4096)
        assert got.chunks[0].data == data


async def test_lone_leader_does_not_wait(tmp_path: Path) -> None:
    """A single stream of durable appends never makes the group-commit leader wait for a
    batch to fill; concurrent appends still share commits."""
    async with await FluStore.open(tmp_path / "flu", StoreConfig(sync="batch")) as s:
        data = b"y" * 512
        csum = client_csum(data)
        for _ in range(5):
            await s.append("p", data, csum, epoch_id=DUMMY_EPOCH_ID)
        assert s.stats()["leader_waits"] == 0

        async def one() -> None:
            await s.append("p", data, csum, epoch_id=DUMMY_EPOCH_ID)

        before = s.stats()["commits"]
        async with anyio.create_task_group() as tg:
            for _ in range(16):
                tg.start_soon(one)
        assert s.stats()["commits"] - before < 16
