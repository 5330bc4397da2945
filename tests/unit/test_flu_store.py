"""Tests of FluStore semantics on a real data dir: append, write, read, trim, listing."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from machi.core.checksum import NO_CSUM, CsumTag, TaggedCsum, client_csum, digest
from machi.core.epoch import DUMMY_EPOCH_ID, EpochId
from machi.core.errors import (
    BadArg,
    BadChecksum,
    ConfigError,
    NoSuchFile,
    NotWritten,
    Trimmed,
    Written,
)
from machi.core.filename import parse_filename
from machi.storage.flu_store import ChecksumEntry, FluStore, StoreConfig

pytestmark = pytest.mark.anyio
E0 = DUMMY_EPOCH_ID
E1 = EpochId(1, b"\x01" * 32)
B = 1024
UUID = "b144ef13-db4d-4c9f-96e7-caff02dc754f"
OTHER = f"repair^^00000000^{UUID}^9"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[FluStore]:
    s = await FluStore.open(tmp_path / "flu", StoreConfig(max_file_size=B + 100))
    try:
        yield s
    finally:
        await s.close()


async def test_first_append_lands_after_header_and_reads_back(store: FluStore) -> None:
    """The first append of a prefix lands at 1024 and reads back with a SERVER checksum."""
    pos, cs = await store.append("pre", b"hello", client_csum(b"hello"), epoch_id=E0)
    assert pos.offset == B and pos.size == 5
    fn = parse_filename(pos.file)
    assert (fn.prefix, fn.namespace, fn.locator, fn.seq) == ("pre", "", 0, 1)
    assert cs == TaggedCsum(CsumTag.SERVER, digest(b"hello"))
    res = await store.read(pos.file, B, 5)
    assert [c.data for c in res.chunks] == [b"hello"] and not res.partial
    assert res.chunks[0].csum == cs


async def test_appends_are_contiguous_and_extra_reserves(store: FluStore) -> None:
    """Appends follow each other; chunk_extra leaves a reserved gap a write may fill."""
    p1, _ = await store.append("p", b"a" * 10, NO_CSUM, epoch_id=E0, chunk_extra=5)
    p2, _ = await store.append("p", b"b" * 10, NO_CSUM, epoch_id=E0)
    assert p2.file == p1.file and p2.offset == B + 15
    await store.write(p1.file, B + 10, b"c" * 5, NO_CSUM)
    res = await store.read(p1.file, B, 25)
    assert b"".join(c.data for c in res.chunks) == b"a" * 10 + b"c" * 5 + b"b" * 10


async def test_rollover_at_append_time_and_too_big_chunk(store: FluStore) -> None:
    """A chunk that would pass max_file_size goes to a new file; one that never fits is
    BAD_ARG."""
    p1, _ = await store.append("p", b"x" * 60, NO_CSUM, epoch_id=E0)
    p2, _ = await store.append("p", b"y" * 60, NO_CSUM, epoch_id=E0)
    assert p2.file != p1.file and p2.offset == B
    assert parse_filename(p2.file).seq == parse_filename(p1.file).seq + 1
    with pytest.raises(BadArg):
        await store.append("p", b"z" * 101, NO_CSUM, epoch_id=E0)
    with pytest.raises(BadArg):
        await store.append("p", b"z" * 90, NO_CSUM, epoch_id=E0, chunk_extra=20)


async def test_epoch_change_rolls_every_prefix(store: FluStore) -> None:
    """After an epoch change each prefix (not only the first one used) gets a new file."""
    a0, _ = await store.append("a", b"1", NO_CSUM, epoch_id=E0)
    b0, _ = await store.append("b", b"1", NO_CSUM, epoch_id=E0)
    a1, _ = await store.append("a", b"2", NO_CSUM, epoch_id=E1)
    b1, _ = await store.append("b", b"2", NO_CSUM, epoch_id=E1)
    assert a1.file != a0.file and b1.file != b0.file
    c0, _ = await store.append("c", b"1", NO_CSUM, epoch_id=E1, locator=0xAB)
    assert parse_filename(c0.file).locator == 0xAB


@pytest.mark.parametrize("prefix", ["", "a/b", "..", "a\x00", "x" * 200, "a^b", 7])
async def test_bad_prefix_is_bad_arg(store: FluStore, prefix: object) -> None:
    """Path-like, empty, over-long or non-string prefixes are BAD_ARG and create nothing."""
    with pytest.raises(BadArg):
        await store.append(prefix, b"x", NO_CSUM, epoch_id=E0)  # type: ignore[arg-type]
    assert await store.list_files() == []


async def test_bad_input_is_bad_arg(store: FluStore) -> None:
    """Empty chunks, bad offsets, sizes, names and extras are BAD_ARG."""
    pos, _ = await store.append("p", b"abc", NO_CSUM, epoch_id=E0)
    cases = [
        store.append("p", b"", NO_CSUM, epoch_id=E0),
        store.append("p", b"x", NO_CSUM, epoch_id=E0, chunk_extra=-1),
        store.append("p", b"x", NO_CSUM, epoch_id=E0, locator=2**32),
        store.write(pos.file, 100, b"x", NO_CSUM),
        store.write("../etc/passwd", B, b"x", NO_CSUM),
        store.write(pos.file, 2**60, b"x", NO_CSUM),
        store.read(pos.file, B, 0),
        store.read(pos.file, B, -1),
        store.read(pos.file, B, 2**40),
        store.read(pos.file, 0, 10),
        store.read("no-such-name", B, 1),
        store.trim(pos.file, 10, 10),
        store.trim(pos.file, B, -3),
    ]
    for coro in cases:
        with pytest.raises(BadArg):
            await coro
    res = await store.read(pos.file, B, 3)
    assert res.chunks[0].data == b"abc"


async def test_bad_checksum_writes_nothing(store: FluStore) -> None:
    """A checksum that does not match the bytes is BAD_CHECKSUM and nothing is written."""
    with pytest.raises(BadChecksum):
        await store.append("p", b"abc", client_csum(b"abd"), epoch_id=E0)
    pos, _ = await store.append("p", b"abc", NO_CSUM, epoch_id=E0)
    assert pos.offset == B
    with pytest.raises(BadChecksum):
        await store.write(pos.file, B + 50, b"q", client_csum(b"r"))
    with pytest.raises(NotWritten):
        await store.read(pos.file, B + 50, 1)


async def test_write_once_replay_and_overlaps(store: FluStore) -> None:
    """Exact replays succeed; different bytes or overlaps are WRITTEN; trimmed is TRIMMED."""
    await store.write(OTHER, B, b"abcd", NO_CSUM)
    assert (await store.write(OTHER, B, b"abcd", client_csum(b"abcd"))).tag is CsumTag.SERVER
    for off, data in [(B, b"abce"), (B, b"abc"), (B + 2, b"zz"), (B - 0 + 3, b"zzzz")]:
        with pytest.raises(Written):
            await store.write(OTHER, off, data, NO_CSUM)
    await store.trim(OTHER, B + 10, 5)
    with pytest.raises(Trimmed):
        await store.write(OTHER, B + 8, b"zzzz", NO_CSUM)


async def test_read_rules(store: FluStore) -> None:
    """Past EOF and holes are NOT_WRITTEN; mixes are partial; all trimmed is TRIMMED."""
    await store.write(OTHER, B, b"aaaa", NO_CSUM)
    await store.write(OTHER, B + 8, b"bbbb", NO_CSUM)
    with pytest.raises(NotWritten):
        await store.read(OTHER, B + 100, 1)
    with pytest.raises(NotWritten):
        await store.read(OTHER, B + 4, 4)
    res = await store.read(OTHER, B + 2, 8)
    assert [(c.offset, c.data) for c in res.chunks] == [(B + 2, b"aa"), (B + 8, b"bb")]
    assert res.partial
    assert all(c.csum.tag is CsumTag.SERVER_REGEN and c.csum.digest == digest(c.data)
               for c in res.chunks)
    await store.trim(OTHER, B + 4, 4)
    res = await store.read(OTHER, B, 12, needs_trimmed=True)
    assert res.trimmed == [(B + 4, 4)] and res.partial
    assert (await store.read(OTHER, B, 12)).trimmed == []
    with pytest.raises(Trimmed):
        await store.read(OTHER, B + 4, 4)
    with pytest.raises(NotWritten):
        await store.read(f"p^^00000000^{UUID}^1", B, 4)


async def test_corrupt_bytes_on_disk_are_bad_checksum(store: FluStore) -> None:
    """Bit rot in a data file gives BAD_CHECKSUM, never the corrupt bytes."""
    pos, _ = await store.append("p", b"precious", NO_CSUM, epoch_id=E0)
    path = store.data_dir / "data" / pos.file
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, b"X", B + 3)
    finally:
        os.close(fd)
    with pytest.raises(BadChecksum):
        await store.read(pos.file, B, 8)
    with pytest.raises(BadChecksum):
        await store.read(pos.file, B + 1, 2)
    with pytest.raises(Written):
        await store.write(pos.file, B, b"precioux", NO_CSUM)  # other bytes: never
    assert store.stats()["healed_chunks"] == 0


async def test_exact_rewrite_heals_corrupt_bytes(store: FluStore) -> None:
    """A rewrite whose bytes match the stored checksum over corrupt stored bytes heals
    them (write-once holds: the place keeps its value); the heal is counted."""
    pos, stored = await store.append("p", b"precious", NO_CSUM, epoch_id=E0)
    path = store.data_dir / "data" / pos.file
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, b"X", B + 3)
    finally:
        os.close(fd)
    with pytest.raises(BadChecksum):
        await store.read(pos.file, B, 8)
    assert await store.write(pos.file, B, b"precious", NO_CSUM) == stored
    res = await store.read(pos.file, B, 8)
    assert res.chunks[0].data == b"precious"
    stats = store.stats()
    assert stats["healed_chunks"] == 1 and stats["bad_checksum_reads"] == 1
    assert await store.write(pos.file, B, b"precious", NO_CSUM) == stored  # plain replay
    assert store.stats()["healed_chunks"] == 1


async def test_trim_splits_neighbours(store: FluStore) -> None:
    """Trimming the middle of a chunk keeps both ends readable with regenerated checksums."""
    await store.write(OTHER, B, b"0123456789", NO_CSUM)
    await store.trim(OTHER, B + 3, 4)
    await store.trim(OTHER, B + 3, 2)  # already trimmed: ok
    res = await store.read(OTHER, B, 10, needs_trimmed=True)
    assert [(c.offset, c.data) for c in res.chunks] == [(B, b"012"), (B + 7, b"789")]
    entries = [e async for batch in store.checksum_list(OTHER) for e in batch]
    assert [(e.offset, e.size, e.csum is None) for e in entries] == [
        (B, 3, False), (B + 3, 4, True), (B + 7, 3, False)
    ]
    assert entries[0].csum == TaggedCsum(CsumTag.SERVER_REGEN, digest(b"012"))


async def test_fully_trimmed_retired_file_is_deleted(store: FluStore) -> None:
    """A rolled-over file trimmed from 1024 to EOF is deleted; its name stays TRIMMED."""
    p1, _ = await store.append("p", b"x" * 60, NO_CSUM, epoch_id=E0)
    await store.trim(p1.file, B, 60)
    assert (store.data_dir / "data" / p1.file).exists()  # still the append target
    p2, _ = await store.append("p", b"y" * 60, NO_CSUM, epoch_id=E0)  # rolls over
    assert p2.file != p1.file
    await store.trim(p1.file, B, 60)
    assert not (store.data_dir / "data" / p1.file).exists()
    assert [n for n, _ in await store.list_files()] == [p2.file]
    for coro in [store.read(p1.file, B, 1), store.write(p1.file, B + 100, b"z", NO_CSUM),
                 store.trim(p1.file, B, 1)]:
        with pytest.raises(Trimmed):
            await coro
    with pytest.raises(Trimmed):
        async for _ in store.checksum_list(p1.file):
            pass
    with pytest.raises(Trimmed):  # not an empty list's summary: anti-entropy lists it
        await store.checksum_summary(p1.file)


async def test_fully_trimmed_replica_file_stays_writable(tmp_path: Path) -> None:
    """A file that reached a FLU only through writes (a replica of the head's current
    file) is kept when fully trimmed: the head's next chunk still lands there."""
    async with await FluStore.open(tmp_path / "head") as head, \
            await FluStore.open(tmp_path / "rep") as rep:
        p1, _ = await head.append("q", b"a" * 100, NO_CSUM, epoch_id=E0)
        await rep.write(p1.file, p1.offset, b"a" * 100, NO_CSUM)
        for s in (head, rep):
            await s.trim(p1.file, p1.offset, 100)
        assert [n for n, _ in await rep.list_files()] == [p1.file]
        p2, _ = await head.append("q", b"b" * 100, NO_CSUM, epoch_id=E0)
        assert p2.file == p1.file
        await rep.write(p2.file, p2.offset, b"b" * 100, NO_CSUM)
        assert (await rep.read(p2.file, p2.offset, 100)).chunks[0].data == b"b" * 100


async def test_fully_trimmed_full_written_file_is_deleted(store: FluStore) -> None:
    """A file known only through writes is deleted once it is full (EOF reached
    max_file_size) and fully trimmed; a non-full one is kept."""
    await store.write(OTHER, B, b"x" * 60, NO_CSUM)
    await store.trim(OTHER, B, 60)
    assert [n for n, _ in await store.list_files()] == [OTHER]  # not full: kept
    await store.write(OTHER, B + 60, b"y" * 40, NO_CSUM)  # EOF = max_file_size
    await store.trim(OTHER, B + 60, 40)
    assert await store.list_files() == []
    with pytest.raises(Trimmed):
        await store.write(OTHER, B + 100, b"z", NO_CSUM)


async def test_memoryview_chunks_reach_pwrite_without_copy(
    store: FluStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A byte memoryview (the node's view into a request frame) goes down to pwrite as
    it is; a bytearray and a view of wider items are copied, sized in bytes."""
    import array

    seen: list[object] = []
    real_pwrite = store._data.pwrite

    async def spying_pwrite(name: str, data: bytes | memoryview, offset: int) -> None:
        seen.append(data)
        await real_pwrite(name, data, offset)

    monkeypatch.setattr(store._data, "pwrite", spying_pwrite)
    frame = bytearray(b"head" + b"v" * 20)
    view = memoryview(frame)[4:]
    p1, _ = await store.append("mv", view, NO_CSUM, epoch_id=E0)
    assert isinstance(seen[-1], memoryview) and seen[-1].obj is frame  # no copy
    ba = bytearray(b"w" * 10)
    p2, _ = await store.append("mv", ba, NO_CSUM, epoch_id=E0)
    assert isinstance(seen[-1], bytes)
    ba[:] = b"X" * 10  # the caller reuses its buffer: the stored chunk is unchanged
    wide = memoryview(array.array("I", [1, 2]))
    p3, _ = await store.append("mv", wide, NO_CSUM, epoch_id=E0)
    assert p3.size == 8 and isinstance(seen[-1], bytes)
    res = await store.read(p1.file, B, 38)
    assert b"".join(c.data for c in res.chunks) == (
        b"v" * 20 + b"w" * 10 + array.array("I", [1, 2]).tobytes())
    assert p2.offset == B + 20


async def test_checksum_list_streams_in_batches(store: FluStore) -> None:
    """checksum_list yields bounded batches covering every entry in offset order."""
    for i in range(10):
        await store.write(OTHER, B + 10 * i, bytes([i]) * 10, NO_CSUM)
    batches = [b async for b in store.checksum_list(OTHER, batch_size=3)]
    assert [len(b) for b in batches] == [3, 3, 3, 1]
    flat = [e for b in batches for e in b]
    assert flat[0] == ChecksumEntry(B, 10, TaggedCsum(CsumTag.SERVER, digest(bytes(10))))
    assert [e.offset for e in flat] == [B + 10 * i for i in range(10)]
    with pytest.raises(NoSuchFile):
        async for _ in store.checksum_list(f"q^^00000000^{UUID}^1"):
            pass


async def test_list_files_and_persistence(tmp_path: Path) -> None:
    """Files, EOFs, chunks and sequence numbers survive close and reopen."""
    d = tmp_path / "flu"
    async with await FluStore.open(d) as s:
        p1, _ = await s.append("p", b"abc", NO_CSUM, epoch_id=E0, chunk_extra=7)
        files = await s.list_files()
    assert files == [(p1.file, B + 10)]
    async with await FluStore.open(d) as s:
        assert await s.list_files() == files
        assert (await s.read(p1.file, B, 3)).chunks[0].data == b"abc"
        p2, _ = await s.append("p", b"d", NO_CSUM, epoch_id=E0)
    assert p2.file != p1.file  # after a restart a new file is minted...
    assert parse_filename(p2.file).seq == 2  # ...with the persisted sequence number


async def test_concurrent_appends_share_commits(tmp_path: Path) -> None:
    """Many concurrent appends all succeed at distinct places with fewer commits than ops."""
    async with await FluStore.open(tmp_path / "flu") as s:
        results = []

        async def one(i: int) -> None:
            results.append((await s.append("p", bytes([i]) * 100, NO_CSUM, epoch_id=E0), i))

        async with anyio.create_task_group() as tg:
            for i in range(64):
                tg.start_soon(one, i)
        offsets = sorted(pos.offset for (pos, _), _ in results)
        assert offsets == [B + 100 * i for i in range(64)]
        for (pos, _), i in results:
            assert (await s.read(pos.file, pos.offset, 100)).chunks[0].data == bytes([i]) * 100
        assert s.stats()["commits"] < 64


async def test_concurrent_replays_of_one_write(tmp_path: Path) -> None:
    """Two concurrent identical writes both succeed (the replay waits for the first)."""
    async with await FluStore.open(tmp_path / "flu") as s:
        out = []

        async def w() -> None:
            out.append(await s.write(OTHER, B, b"same", NO_CSUM))

        async with anyio.create_task_group() as tg:
            tg.start_soon(w)
            tg.start_soon(w)
        assert len(out) == 2 and out[0] == out[1]


@pytest.mark.parametrize("sync", ["always", "batch", "none"])
async def test_every_sync_mode_round_trips(tmp_path: Path, sync: str) -> None:
    """Each sync mode stores and, after close and reopen, returns the same chunks."""
    d = tmp_path / sync
    async with await FluStore.open(d, StoreConfig(sync=sync)) as s:  # type: ignore[arg-type]
        pos = [(await s.append("p", bytes([i]) * 7, NO_CSUM, epoch_id=E0))[0] for i in range(5)]
    async with await FluStore.open(d) as s:
        for i, p in enumerate(pos):
            assert (await s.read(p.file, p.offset, 7)).chunks[0].data == bytes([i]) * 7


async def test_data_dir_lock_and_bad_config(tmp_path: Path) -> None:
    """A second open of the same dir and invalid settings are ConfigError."""
    async with await FluStore.open(tmp_path / "flu"):
        with pytest.raises(ConfigError):
            await FluStore.open(tmp_path / "flu")
    for kw in [{"sync": "sometimes"}, {"max_file_size": 10}, {"group_commit_max_chunks": 0},
               {"namespace": "a/b"}]:
        with pytest.raises(ConfigError):
            StoreConfig(**kw)  # type: ignore[arg-type]


async def test_cancelled_append_is_not_visible_before_durable(tmp_path: Path) -> None:
    """A chunk of an append cancelled mid-commit reads the same before and after a
    restart (never visible first and lost later)."""
    d = tmp_path / "flu"

    async def visible(s: FluStore, file: str) -> bytes | None:
        try:
            return b"".join(c.data for c in (await s.read(file, B + 5, 9)).chunks)
        except NotWritten:
            return None

    async with await FluStore.open(d, StoreConfig(sync="always")) as s:
        pos, _ = await s.append("p", b"first", NO_CSUM, epoch_id=E0)
        with anyio.move_on_after(0):
            await s.append("p", b"cancel-me", NO_CSUM, epoch_id=E0)
        before = await visible(s, pos.file)
        assert s.stats()["pending_chunks"] == 0
    async with await FluStore.open(d) as s:
        assert await visible(s, pos.file) == before


async def test_fd_cache_eviction_keeps_every_file_usable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a tiny descriptor cache, writes and reads over many files still work and the
    number of open descriptors stays bounded."""
    import machi.storage.data_file as data_file

    monkeypatch.setattr(data_file, "FD_CACHE_MAX", 3)
    async with await FluStore.open(tmp_path / "flu") as s:
        names = [f"f{i}^^00000000^{UUID}^1" for i in range(10)]
        for i, name in enumerate(names):
            await s.write(name, B, bytes([i]) * 10, NO_CSUM)
            assert len(s._data._fds) <= 3 + 1
        for i, name in enumerate(names):
            assert (await s.read(name, B, 10)).chunks[0].data == bytes([i]) * 10


async def test_failed_fsync_fails_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If making data durable fails, the operation fails and the store refuses all later
    work (its index would be ahead of the disk), and closing still works."""
    from machi.storage.data_file import DataFiles
    from machi.storage.errors import StoreFailed

    async with await FluStore.open(tmp_path / "flu") as s:
        pos, _ = await s.append("p", b"ok", NO_CSUM, epoch_id=E0)

        def broken_sync(fds: object) -> None:
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(DataFiles, "fdatasync_fds", staticmethod(broken_sync))
        with pytest.raises(StoreFailed):
            await s.append("p", b"lost", NO_CSUM, epoch_id=E0)
        with pytest.raises(StoreFailed):
            await s.read(pos.file, B, 2)
        with pytest.raises(StoreFailed):
            await s.projection_list("public")
    monkeypatch.undo()
    async with await FluStore.open(tmp_path / "flu") as s:
        assert (await s.read(pos.file, B, 2)).chunks[0].data == b"ok"
        with pytest.raises(NotWritten):
            await s.read(pos.file, B + 2, 4)


async def test_group_commit_batches_are_bounded(tmp_path: Path) -> None:
    """With group_commit_max_chunks=4, 40 concurrent appends commit in batches of at most 4
    operations, and all of them read back."""
    cfg = StoreConfig(group_commit_max_chunks=4)
    async with await FluStore.open(tmp_path / "flu", cfg) as s:
        out = []

        async def one(i: int) -> None:
            out.append((await s.append("p", bytes([i]) * 8, NO_CSUM, epoch_id=E0))[0])

        async with anyio.create_task_group() as tg:
            for i in range(40):
                tg.start_soon(one, i)
        stats = s.stats()
        assert 1 < stats["max_batch_ops"] <= 4
        assert stats["commits"] >= 10
        for pos in out:
            assert len((await s.read(pos.file, pos.offset, 8)).chunks) == 1


@pytest.mark.parametrize("sync", ["batch", "none"])
async def test_incarnation_rises_at_every_open(tmp_path: Path, sync: str) -> None:
    """Each open of a data dir is a new incarnation (1, 2, 3), persisted in its SQLite:
    the chain manager orders a restarted node's fitness reports by it."""
    seen = []
    for _ in range(3):
        s = await FluStore.open(tmp_path / "flu", StoreConfig(sync=sync))  # type: ignore[arg-type]
        seen.append(s.incarnation)
        await s.close()
    assert seen == [1, 2, 3]
    other = await FluStore.open(tmp_path / "other")
    assert other.incarnation == 1
    await other.close()


async def test_list_file_changes_reports_the_lowest_change_since_a_token(
        tmp_path: Path) -> None:
    """``list_file_changes(since)``: per file the lowest offset whose checksum-list entry
    changed since the token (append, write, trim, a pending chunk becoming durable; not
    reads or exact replays), None when unchanged; an unknown or expired token, or one of
    the store's previous open, gives 1024 for every file.  ``checksum_list`` with
    ``from_offset`` lists the entries ending after it."""
    s = await FluStore.open(tmp_path / "flu", StoreConfig())
    try:
        pos, _ = await s.append("p", b"one", client_csum(b"one"), epoch_id=E0)
        t0, rows = await s.list_file_changes()
        assert [(n, eof, low) for n, eof, low in rows] == [(pos.file, B + 3, B)]
        await s.read(pos.file, pos.offset, pos.size)
        await s.write(pos.file, pos.offset, b"one", client_csum(b"one"))  # exact replay
        t1, rows = await s.list_file_changes(t0)
        assert rows == [(pos.file, B + 3, None)]
        await s.write(pos.file, 8 * B, b"two", client_csum(b"two"))
        await s.write(pos.file, 4 * B, b"three", client_csum(b"three"))
        other, _ = await s.append("q", b"new file", client_csum(b"new file"), epoch_id=E0)
        t2, rows = await s.list_file_changes(t1)
        assert dict((n, low) for n, _e, low in rows) == {pos.file: 4 * B, other.file: B}
        await s.trim(pos.file, 8 * B, 3)
        t3, rows = await s.list_file_changes(t2)
        assert dict((n, low) for n, _e, low in rows) == {pos.file: 8 * B, other.file: None}
        # t1 is still live: everything since t1
        _, rows = await s.list_file_changes(t1)
        assert dict((n, low) for n, _e, low in rows)[pos.file] == 4 * B
        for _ in range(4):  # expire t3 (at most 4 live tokens)
            await s.list_file_changes()
        _, rows = await s.list_file_changes(t3)
        assert {low for _n, _e, low in rows} == {B}
        got = [e.offset async for batch in s.checksum_list(pos.file, from_offset=4 * B + 2)
               for e in batch]
        assert got == [4 * B, 8 * B]  # the chunk at 4K ends after 4K + 2
        with pytest.raises(BadArg):
            async for _b in s.checksum_list(pos.file, from_offset=-1):
                pass
    finally:
        await s.close()
    s = await FluStore.open(tmp_path / "flu", StoreConfig())
    try:
        _, rows = await s.list_file_changes(t2)  # a token of the previous open
        assert {low for _n, _e, low in rows} == {B}
    finally:
        await s.close()


async def _listed(s: FluStore, file: str, lo: int, hi: int | None) -> tuple[int, str]:
    from machi.core.list_summary import summarize
    got = [e async for batch in s.checksum_list(file, from_offset=lo) for e in batch]
    return summarize(e for e in got if hi is None or e.offset < hi)


async def test_checksum_summary_is_the_summary_of_the_checksum_list(tmp_path: Path) -> None:
    """``checksum_summary(file, from_offset, to_offset)`` summarises exactly the entries
    ``checksum_list(from_offset)`` lists that start below ``to_offset``, after appends,
    writes, trims (a chunk split by a partial trim, merged trims) and a restart; a copy
    known corrupt in the range gives None until healed; a missing file is NO_SUCH_FILE."""
    ranges = [(B, None), (B, 3 * B), (B + 2, None), (2 * B, 2 * B + 1), (5 * B, None),
              (9 * B, 10 * B), (B, B)]

    async def check(s: FluStore, file: str) -> list[tuple[int, str] | None]:
        out = []
        for lo, hi in ranges:
            got = await s.checksum_summary(file, from_offset=lo, to_offset=hi)
            assert got == await _listed(s, file, lo, hi), (lo, hi)
            out.append(got)
        return out

    s = await FluStore.open(tmp_path / "flu", StoreConfig())
    try:
        pos, _ = await s.append("p", b"0123456789", client_csum(b"0123456789"), epoch_id=E0)
        f = pos.file
        empty = await check(s, f)
        for i in range(5):
            await s.append("p", b"chunk %d" % i, client_csum(b"chunk %d" % i), epoch_id=E0)
        await s.write(f, 5 * B, b"written", client_csum(b"written"))
        await s.write(f, 9 * B, b"late", client_csum(b"late"))
        grown = await check(s, f)
        assert grown != empty
        await s.trim(f, B + 2, 3)  # splits the first chunk: two SERVER_REGEN pieces
        await s.trim(f, B + 5, 2)  # merges with the first trim
        trimmed = await check(s, f)
        assert trimmed[0] != grown[0] and trimmed[-3] == grown[-3]  # 5K.. untouched
        assert await s.checksum_summary(f, from_offset=B, to_offset=B) == (
            0, (await _listed(s, f, B, B))[1])
        with pytest.raises(NoSuchFile):
            await s.checksum_summary(OTHER)
        for bad in ({"from_offset": -1}, {"to_offset": -1}, {"to_offset": True}):
            with pytest.raises(BadArg):
                await s.checksum_summary(f, **bad)  # type: ignore[arg-type]
    finally:
        await s.close()
    s = await FluStore.open(tmp_path / "flu", StoreConfig())
    try:
        assert await check(s, f) == trimmed  # rebuilt from the stored metadata: the same
        fd = os.open(s.data_dir / "data" / f, os.O_RDWR)
        try:
            os.pwrite(fd, b"X", 5 * B + 1)
        finally:
            os.close(fd)
        with pytest.raises(BadChecksum):
            await s.read(f, 5 * B, 7)  # now known corrupt: flagged in the list
        assert await s.checksum_summary(f) is None
        assert await s.checksum_summary(f, from_offset=5 * B + 7) is not None
        assert await s.checksum_summary(f, to_offset=5 * B) is not None
        await s.write(f, 5 * B, b"written", client_csum(b"written"))  # heals it
        assert await s.checksum_summary(f) == trimmed[0]
    finally:
        await s.close()
