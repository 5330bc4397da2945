"""Tests of crash recovery: uncommitted bytes, truncated files, repair_metadata, kill -9."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from machi.core.checksum import NO_CSUM, verify
from machi.core.epoch import DUMMY_EPOCH_ID
from machi.core.errors import BadChecksum, NotWritten
from machi.storage.errors import StorageCorrupt
from machi.storage.flu_store import FluStore, StoreConfig
from machi.storage.metadata import DB_NAME
from machi.storage.recovery import repair_metadata

pytestmark = pytest.mark.anyio
E0 = DUMMY_EPOCH_ID
B = 1024
UUID = "b144ef13-db4d-4c9f-96e7-caff02dc754f"
NAME = f"r^^00000000^{UUID}^1"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_bytes_without_metadata_are_unreadable_and_overwritable(tmp_path: Path) -> None:
    """Bytes on disk past the committed metadata are NOT_WRITTEN and a later write wins."""
    async with await FluStore.open(tmp_path) as s:
        pos, _ = await s.append("p", b"committed", NO_CSUM, epoch_id=E0)
    # simulate a crash between pwrite and commit: bytes on disk, no metadata
    fd = os.open(tmp_path / "data" / pos.file, os.O_RDWR)
    os.pwrite(fd, b"ghost-bytes", B + 9)
    os.pwrite(fd, b"ghost-2", B + 100)
    os.close(fd)
    async with await FluStore.open(tmp_path) as s:
        with pytest.raises(NotWritten):
            await s.read(pos.file, B + 9, 11)
        with pytest.raises(NotWritten):
            await s.read(pos.file, B + 100, 7)
        await s.write(pos.file, B + 9, b"real", NO_CSUM)
        await s.write(pos.file, B + 100, b"also-real", NO_CSUM)
        res = await s.read(pos.file, B, 13)
        assert b"".join(c.data for c in res.chunks) == b"committedreal"
        assert (await s.read(pos.file, B + 100, 9)).chunks[0].data == b"also-real"


async def test_truncated_file_refuses_start_then_repair(tmp_path: Path) -> None:
    """A truncated data file is StorageCorrupt naming file, range and the repair command;
    repair_metadata records the loss and the store opens with the range unwritten."""
    async with await FluStore.open(tmp_path) as s:
        await s.write(NAME, B, b"a" * 100, NO_CSUM)
        await s.write(NAME, B + 100, b"b" * 100, NO_CSUM)
        await s.write(NAME, B + 200, b"c" * 100, NO_CSUM)
    os.truncate(tmp_path / "data" / NAME, B + 150)
    with pytest.raises(StorageCorrupt) as info:
        await FluStore.open(tmp_path)
    msg = str(info.value)
    assert NAME in msg and f"[{B + 100}, +100)" in msg and f"[{B + 200}, +100)" in msg
    assert "machi node repair" in msg and str(tmp_path) in msg
    report = await repair_metadata(tmp_path)
    assert sorted(report.lost) == [(NAME, B + 100, 100), (NAME, B + 200, 100)]
    with sqlite3.connect(tmp_path / DB_NAME) as db:
        lost = db.execute("SELECT file, offset, size, reason FROM lost_chunks").fetchall()
    assert len(lost) == 2 and all("past end" in r[3] for r in lost)
    async with await FluStore.open(tmp_path) as s:
        assert (await s.read(NAME, B, 100)).chunks[0].data == b"a" * 100
        with pytest.raises(NotWritten):
            await s.read(NAME, B + 100, 200)
        await s.write(NAME, B + 100, b"B" * 100, NO_CSUM)  # chain repair can re-fill
        assert dict(await s.list_files())[NAME] == B + 300  # EOF never shrinks


async def test_missing_data_file_is_corrupt_and_repairable(tmp_path: Path) -> None:
    """A deleted data file with committed chunks is StorageCorrupt; repair recreates it."""
    async with await FluStore.open(tmp_path) as s:
        await s.write(NAME, B, b"x" * 10, NO_CSUM)
    (tmp_path / "data" / NAME).unlink()
    with pytest.raises(StorageCorrupt, match="missing"):
        await FluStore.open(tmp_path)
    report = await repair_metadata(tmp_path)
    assert report.lost == [(NAME, B, 10)] and report.recreated_files == [NAME]
    async with await FluStore.open(tmp_path) as s:
        with pytest.raises(NotWritten):
            await s.read(NAME, B, 10)


async def test_repair_of_healthy_store_changes_nothing(tmp_path: Path) -> None:
    """repair_metadata on a consistent store drops nothing."""
    async with await FluStore.open(tmp_path) as s:
        pos, _ = await s.append("p", b"fine", NO_CSUM, epoch_id=E0)
    report = await repair_metadata(tmp_path)
    assert report.lost == [] and report.files_examined == 1
    async with await FluStore.open(tmp_path) as s:
        assert (await s.read(pos.file, B, 4)).chunks[0].data == b"fine"


_WRITER = textwrap.dedent("""
    import sys, anyio
    from pathlib import Path
    from machi.core.checksum import NO_CSUM
    from machi.core.epoch import DUMMY_EPOCH_ID
    from machi.storage.flu_store import FluStore, StoreConfig

    async def main():
        s = await FluStore.open(Path(sys.argv[1]), StoreConfig(sync=sys.argv[2]))
        async def worker(w):
            for i in range(100000):
                data = f"w{w}-{i}-".encode() * 20
                pos, _ = await s.append(f"p{w % 3}", data, NO_CSUM, epoch_id=DUMMY_EPOCH_ID)
                print(pos.file, pos.offset, pos.size, data.hex(), flush=True)
        async with anyio.create_task_group() as tg:
            for w in range(8):
                tg.start_soon(worker, w)
    anyio.run(main)
""")


@pytest.mark.parametrize("sync", ["always", "batch"])
async def test_sigkill_loses_no_acknowledged_chunk(tmp_path: Path, sync: str) -> None:
    """A store process killed with SIGKILL under concurrent appends keeps every chunk it
    acknowledged (printed), each with a valid checksum."""
    out = tmp_path / "acks.txt"
    with out.open("wb") as f:
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path / "flu"), sync],
                                stdout=f, stderr=subprocess.PIPE)
        try:
            for _ in range(200):  # wait (at most 20 s) for ~100 acks
                if out.stat().st_size > 35_000 or proc.poll() is not None:
                    break
                await _sleep(0.1)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            assert proc.stderr is not None
            err = proc.stderr.read().decode()
            proc.stderr.close()
    lines = out.read_text().splitlines()
    acked = [ln.split() for ln in lines if len(ln.split()) == 4]
    assert len(acked) >= 20, f"too few acknowledgements: {len(acked)}; stderr: {err[-2000:]}"
    async with await FluStore.open(tmp_path / "flu") as s:
        for file, off, size, hexdata in acked:
            res = await s.read(file, int(off), int(size))
            assert len(res.chunks) == 1 and not res.partial
            chunk = res.chunks[0]
            assert chunk.data == bytes.fromhex(hexdata) and verify(chunk.data, chunk.csum)
        # the store keeps working after the crash
        pos, _ = await s.append("p0", b"after", NO_CSUM, epoch_id=E0)
        assert (await s.read(pos.file, pos.offset, 5)).chunks[0].data == b"after"


async def _sleep(seconds: float) -> None:
    import anyio

    await anyio.sleep(seconds)


async def test_none_mode_recovers_to_a_consistent_prefix(tmp_path: Path) -> None:
    """With sync "none" a crash may lose acknowledged chunks (documented), but the store
    reopens and whatever it returns is exactly what was appended."""
    out = tmp_path / "acks.txt"
    with out.open("wb") as f:
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path / "flu"), "none"],
                                stdout=f, stderr=subprocess.DEVNULL)
        try:
            for _ in range(100):
                if out.stat().st_size > 100_000 or proc.poll() is not None:
                    break
                await _sleep(0.1)
            await _sleep(0.3)  # several NONE_FLUSH_INTERVAL_MS windows
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    acked = [ln.split() for ln in out.read_text().splitlines() if len(ln.split()) == 4]
    async with await FluStore.open(tmp_path / "flu", StoreConfig(sync="none")) as s:
        kept = 0
        for file, off, size, hexdata in acked:
            try:
                res = await s.read(file, int(off), int(size))
            except NotWritten:
                continue  # allowed with sync "none"
            assert res.chunks[0].data == bytes.fromhex(hexdata)
            kept += 1
    print(f"sync=none: {kept} of {len(acked)} acknowledged chunks survived SIGKILL")
    # metadata is committed at least every NONE_FLUSH_INTERVAL_MS: most acks survive
    assert kept > 0


async def test_repair_and_open_refuse_bad_directories(tmp_path: Path) -> None:
    """repair_metadata on a directory without a database, and open on a path that is a
    file, are ConfigError (nothing is created)."""
    from machi.core.errors import ConfigError

    with pytest.raises(ConfigError, match="no Machi metadata"):
        await repair_metadata(tmp_path / "nothing-here")
    assert not (tmp_path / "nothing-here").exists()
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ConfigError):
        await FluStore.open(tmp_path / "a-file")


async def test_start_up_check_reports_a_torn_chunk_and_an_exact_rewrite_heals_it(
    tmp_path: Path,
) -> None:
    """A bit flipped in the last chunk of a file while the FLU was down is reported at
    start-up (metric), reads BAD_CHECKSUM, and an exact rewrite heals it; chunks older
    than the scanned tail are not checked (documented)."""
    async with await FluStore.open(tmp_path) as s:
        old, _ = await s.append("p", b"old" * 100, NO_CSUM, epoch_id=E0)
        last, _ = await s.append("p", b"last chunk", NO_CSUM, epoch_id=E0)
    fd = os.open(tmp_path / "data" / last.file, os.O_RDWR)
    os.pwrite(fd, b"\xff", last.offset + 4)
    os.pwrite(fd, b"\xff", old.offset)  # also corrupt, but before the scanned tail below
    os.close(fd)
    from machi.storage import recovery
    saved = recovery.TAIL_SCAN_BYTES
    recovery.TAIL_SCAN_BYTES = 8  # only (part of) the last chunk is in the tail
    try:
        s2 = await FluStore.open(tmp_path)
    finally:
        recovery.TAIL_SCAN_BYTES = saved
    async with s2 as s:
        assert s.corrupt_at_start == [(last.file, last.offset, last.size)]
        assert s.stats()["corrupt_chunks_at_start"] == 1
        flags = {e.offset: e.corrupt async for b in s.checksum_list(last.file) for e in b}
        assert flags == {old.offset: False, last.offset: True}  # repair rewrites flagged ones
        with pytest.raises(BadChecksum):
            await s.read(last.file, last.offset, last.size)
        await s.write(last.file, last.offset, b"last chunk", NO_CSUM)
        flags = {e.offset: e.corrupt async for b in s.checksum_list(last.file) for e in b}
        assert flags == {old.offset: False, last.offset: False}
        assert (await s.read(last.file, last.offset, last.size)).chunks[0].data == b"last chunk"
        assert s.stats()["healed_chunks"] == 1
    async with await FluStore.open(tmp_path) as s:  # default tail: both found
        assert {c[1] for c in s.corrupt_at_start} == {old.offset}
        with pytest.raises(BadChecksum):
            await s.read(old.file, old.offset, old.size)  # a read flags it, too
        flags = {e.offset: e.corrupt async for b in s.checksum_list(old.file) for e in b}
        assert flags[old.offset]
