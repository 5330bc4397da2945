"""The metadata plane works without aiosqlite's private API: the public SQLAlchemy path
commits the same rows (one-hop fast path and fallback agree), and a store whose
aiosqlite lacks the private API still appends, trims, deletes and recovers."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from machi.core.checksum import NO_CSUM
from machi.core.epoch import DUMMY_EPOCH_ID
from machi.core.errors import Trimmed
from machi.storage import metadata
from machi.storage.flu_store import FluStore, StoreConfig
from machi.storage.metadata import Batch, MetadataDb

pytestmark = pytest.mark.anyio
NAME = "p^^00000000^b144ef13-db4d-4c9f-96e7-caff02dc754f^1"
GONE = "p^^00000000^b144ef13-db4d-4c9f-96e7-caff02dc754f^2"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _batches() -> list[Batch]:
    one = Batch()
    one.seqs[("", 0, "p")] = 3
    one.file_eof(NAME, "p", "", 0, 1, 2048)
    one.file_eof(GONE, "p", "", 0, 2, 1100)
    one.chunk_put(NAME, 1024, 10, b"c1")
    one.chunk_put(NAME, 1034, 10, b"c2")
    one.chunk_put(GONE, 1024, 76, b"g")
    one.projections.append(("public", 1, b"e" * 32, b"{}"))
    two = Batch()
    two.chunk_del(NAME, 1034)
    two.trim_put(NAME, 1034, 10)
    two.file_eof(NAME, "p", "", 0, 1, 4096)
    two.deleted_files.append(GONE)
    return [one, two]


async def _apply_and_load(d: Path, *, private_api: bool) -> tuple[bool, metadata.Loaded]:
    d.mkdir()
    db = await MetadataDb.open(d, "none", private_api=private_api)
    try:
        one_hop = db.one_hop_apply
        for i, b in enumerate(_batches()):
            await db.apply(b, durable=i == 0)
    finally:
        await db.close()
    db = await MetadataDb.open(d, "always")
    try:
        return one_hop, await db.load()
    finally:
        await db.close()


async def test_public_path_commits_the_same_rows(tmp_path: Path) -> None:
    """The same batches give the same database through the fast path and the fallback."""
    fast_hop, fast = await _apply_and_load(tmp_path / "fast", private_api=True)
    slow_hop, slow = await _apply_and_load(tmp_path / "slow", private_api=False)
    assert (fast_hop, slow_hop) == (True, False)  # the installed aiosqlite has the API
    assert fast == slow
    assert fast.trimmed_files == {GONE} and fast.seqs == {("", 0, "p"): 3}
    assert fast.chunks == [(NAME, 1024, 10, b"c1")] and fast.trims == [(NAME, 1034, 10)]
    assert fast.files == [(NAME, "p", "", 0, 1, 4096)]


def test_private_api_detection() -> None:
    """Only an object with a callable ``_execute`` and a sqlite3 ``_conn`` qualifies."""

    class Raising:
        _execute = staticmethod(lambda: None)

        @property
        def _conn(self) -> Any:
            raise ValueError("no active connection")

    class Plain:
        _execute = staticmethod(lambda: None)
        _conn = sqlite3.connect(":memory:")

    assert metadata._private_api(object()) is None
    assert metadata._private_api(Raising()) is None
    ok = Plain()
    assert metadata._private_api(ok) is ok
    ok._conn.close()


async def test_store_without_private_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """With an aiosqlite lacking the private API (detection says so) a store warns once,
    and appends, trims, whole-file deletion and a restart work as usual."""
    monkeypatch.setattr(metadata, "_private_api", lambda driver: None)
    cfg = StoreConfig(sync="batch", max_file_size=1024 + 100)
    with caplog.at_level(logging.WARNING, logger="machi.storage"):
        s = await FluStore.open(tmp_path / "flu", cfg)
    assert any("public SQLAlchemy path" in r.getMessage() for r in caplog.records)
    async with s:
        p1, _ = await s.append("p", b"a" * 100, NO_CSUM, epoch_id=DUMMY_EPOCH_ID)  # full
        p2, _ = await s.append("p", b"b" * 50, NO_CSUM, epoch_id=DUMMY_EPOCH_ID)
        await s.trim(p1.file, p1.offset, 100)
    async with await FluStore.open(tmp_path / "flu", cfg) as s:
        assert [n for n, _ in await s.list_files()] == [p2.file]
        assert (await s.read(p2.file, p2.offset, 50)).chunks[0].data == b"b" * 50
        with pytest.raises(Trimmed):
            await s.read(p1.file, p1.offset, 1)
