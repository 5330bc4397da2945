"""The durable commit path of a FLU store costs a bounded number of thread hops, and the
group-commit leader does not wait for company when it is alone (no timing asserts: the
numbers are counted)."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

import aiosqlite.core
import anyio.to_thread
import pytest

from machi.core.checksum import client_csum
from machi.core.epoch import DUMMY_EPOCH_ID
from machi.storage.data_file import DataFiles
from machi.storage.flu_store import FluStore, StoreConfig

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_durable_append_is_one_database_hop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With sync "batch", each sequential append reaches aiosqlite's worker thread once
    (data fdatasync, statements and commit together) and no other thread; the first path
    made 7 database round trips per append, each a thread wake-up, the second one hop for
    the fdatasync (anyio's worker) and one for the transaction."""
    hops: Counter[str] = Counter()
    real_execute = aiosqlite.core.Connection._execute
    real_run_sync = anyio.to_thread.run_sync
    real_fdatasync = DataFiles.fdatasync_fds

    async def counting_execute(self: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
        hops["db"] += 1
        return await real_execute(self, fn, *args, **kwargs)

    async def counting_run_sync(fn: Any, *args: Any, **kwargs: Any) -> Any:
        hops["worker"] += 1
        return await real_run_sync(fn, *args, **kwargs)

    def counting_fdatasync(fds: Any) -> None:
        fds = list(fds)
        hops["fdatasync_on_db_thread"] += threading.current_thread() is not main
        hops["files_synced"] += len(fds)
        real_fdatasync(fds)

    main = threading.current_thread()
    async with await FluStore.open(tmp_path / "flu", StoreConfig(sync="batch")) as s:
        data = b"x" * 4096
        csum = client_csum(data)
        pos, _ = await s.append("p", data, csum, epoch_id=DUMMY_EPOCH_ID)  # mints the file
        monkeypatch.setattr(aiosqlite.core.Connection, "_execute", counting_execute)
        monkeypatch.setattr(anyio.to_thread, "run_sync", counting_run_sync)
        monkeypatch.setattr(DataFiles, "fdatasync_fds", staticmethod(counting_fdatasync))
        before = s.stats()
        for _ in range(10):
            await s.append("p", data, csum, epoch_id=DUMMY_EPOCH_ID)
        after = s.stats()
        monkeypatch.undo()
        assert after["commits"] - before["commits"] == 10
        assert hops == {"db": 10, "fdatasync_on_db_thread": 10, "files_synced": 10}
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


async def test_batch_queued_behind_a_failed_commit_is_never_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a batch's fdatasync is failing on the database thread, the next batch waits
    for the commit lock; once the first fails, the next one fails too without being
    committed (an fdatasync that 'succeeds' after a failed one proves nothing), and after
    a restart neither chunk is there."""
    from machi.core.errors import NotWritten
    from machi.storage.errors import StoreFailed

    real = DataFiles.fdatasync_fds
    entered, release = threading.Event(), threading.Event()
    calls = 0

    def failing_once(fds: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            entered.set()
            release.wait(10)
            raise OSError(5, "Input/output error")
        real(fds)

    data = b"z" * 100
    csum = client_csum(data)
    async with await FluStore.open(tmp_path / "flu", StoreConfig(sync="batch")) as s:
        first, _ = await s.append("p", data, csum, epoch_id=DUMMY_EPOCH_ID)
        monkeypatch.setattr(DataFiles, "fdatasync_fds", staticmethod(failing_once))
        errors: list[BaseException] = []

        async def one() -> None:
            try:
                await s.append("p", data, csum, epoch_id=DUMMY_EPOCH_ID)
            except StoreFailed as e:
                errors.append(e)

        async with anyio.create_task_group() as tg:
            tg.start_soon(one)
            await anyio.to_thread.run_sync(entered.wait, 10)  # batch 1 is in fdatasync
            tg.start_soon(one)  # batch 2: queued behind it
            await anyio.sleep(0.05)
            release.set()
        assert len(errors) == 2 and calls == 1
        monkeypatch.undo()
    async with await FluStore.open(tmp_path / "flu", StoreConfig(sync="batch")) as s:
        assert (await s.read(first.file, first.offset, 100)).chunks[0].data == data
        with pytest.raises(NotWritten):
            await s.read(first.file, first.offset + 100, 1)


async def test_always_commits_each_operation_alone(tmp_path: Path) -> None:
    """sync "always": concurrent appends each get their own fdatasync + commit."""
    async with await FluStore.open(tmp_path / "flu", StoreConfig(sync="always")) as s:
        data = b"a" * 64
        csum = client_csum(data)
        await s.append("p", data, csum, epoch_id=DUMMY_EPOCH_ID)
        before = s.stats()["commits"]

        async def one() -> None:
            await s.append("p", data, csum, epoch_id=DUMMY_EPOCH_ID)

        async with anyio.create_task_group() as tg:
            for _ in range(12):
                tg.start_soon(one)
        st = s.stats()
        assert st["commits"] - before == 12


async def test_data_file_pins_keep_descriptors_open_until_released(tmp_path: Path) -> None:
    """``take_dirty`` pins what a commit must fdatasync: a file forgotten (unlinked)
    meanwhile keeps its descriptor until the last pin goes; pinned and dirty files are
    never evicted; a big threaded pwrite leaves its file dirty even if a sync took the
    mark while it ran."""
    import os

    from machi.storage import data_file

    d = data_file.DataFiles(tmp_path)
    await d.create("a")
    await d.pwrite("a", b"x" * 10, 1024)
    fds: dict[str, int] = {}
    d.take_dirty(fds)
    assert list(fds) == ["a"] and not d._dirty
    d.take_dirty(fds)  # nothing new: no second pin
    assert d._pinned == {"a": 1}
    d.unlink("a")
    os.fstat(fds["a"])  # still open: a sync may be using it
    d.release(fds)
    with pytest.raises(OSError):
        os.fstat(fds["a"])
    assert d._pinned == {} and d._zombies == {}

    await d.create("b")
    big = b"y" * data_file.INLINE_WRITE_MAX
    taken: dict[str, int] = {}
    real = anyio.to_thread.run_sync

    async def write_while_a_sync_takes_the_mark(fn: Any, *args: Any) -> Any:
        d.take_dirty(taken)  # what a commit starting now would do
        return await real(fn, *args)

    anyio.to_thread.run_sync = write_while_a_sync_takes_the_mark  # type: ignore[assignment]
    try:
        await d.pwrite("b", big, 1024)
    finally:
        anyio.to_thread.run_sync = real  # type: ignore[assignment]
    assert "b" in taken and "b" in d._dirty  # the next commit syncs it again
    d.release(taken)
    d.close()


async def test_flush_ahead_of_a_queued_leader_commits_its_batch_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flush that gets the commit lock before the leader of the open batch commits that
    batch; the leader, when its turn comes, finds it done and does not commit it again
    (a second commit of an old batch could undo what a later one changed)."""
    real = DataFiles.fdatasync_fds
    entered, release = threading.Event(), threading.Event()
    calls = 0

    def blocking_first(fds: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            entered.set()
            release.wait(10)
        real(fds)

    data = b"f" * 100
    csum = client_csum(data)
    async with await FluStore.open(tmp_path / "flu", StoreConfig(sync="batch")) as s:
        await s.append("p", data, csum, epoch_id=DUMMY_EPOCH_ID)
        monkeypatch.setattr(DataFiles, "fdatasync_fds", staticmethod(blocking_first))
        before = s.stats()["commits"]

        async def one() -> None:
            await s.append("p", data, csum, epoch_id=DUMMY_EPOCH_ID)

        async with anyio.create_task_group() as tg:
            tg.start_soon(one)  # batch 1: its leader is in fdatasync
            await anyio.to_thread.run_sync(entered.wait, 10)
            tg.start_soon(s.flush)  # queues for the lock
            await anyio.sleep(0.05)
            tg.start_soon(one)  # batch 2: its leader queues behind the flush
            await anyio.sleep(0.05)
            release.set()
        assert s.stats()["commits"] - before == 2
        monkeypatch.undo()
