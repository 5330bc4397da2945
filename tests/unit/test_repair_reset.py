"""Tests of FluStore.repair_reset: the narrow CP-repair way back to unwritten."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from machi.core.checksum import NO_CSUM, client_csum
from machi.core.epoch import DUMMY_EPOCH_ID
from machi.core.errors import BadArg, NotWritten, Trimmed
from machi.storage.flu_store import ChecksumEntry, FluStore, StoreConfig

pytestmark = pytest.mark.anyio
B = 1024
UUID = "b144ef13-db4d-4c9f-96e7-caff02dc754f"
FILE = f"repair^^00000000^{UUID}^1"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[FluStore]:
    s = await FluStore.open(tmp_path / "flu", StoreConfig(sync="batch"))
    try:
        yield s
    finally:
        await s.close()


async def entries(s: FluStore, file: str) -> list[ChecksumEntry]:
    out: list[ChecksumEntry] = []
    async for batch in s.checksum_list(file):
        out.extend(batch)
    return out


async def test_reset_forgets_whole_chunks_only_and_the_place_is_writable(
    store: FluStore,
) -> None:
    """Chunks inside the extent become unwritten (then writable with other bytes); a
    neighbour outside stays; trimmed ranges stay trimmed."""
    await store.write(FILE, B, b"a" * 10, client_csum(b"a" * 10))
    await store.write(FILE, B + 10, b"b" * 10, client_csum(b"b" * 10))
    await store.write(FILE, B + 30, b"c" * 10, NO_CSUM)
    await store.trim(FILE, B + 30, 10)
    assert await store.repair_reset(FILE, B + 10, 30) == 1  # b; c is trimmed
    with pytest.raises(NotWritten):
        await store.read(FILE, B + 10, 10)
    assert (await store.read(FILE, B, 10)).chunks[0].data == b"a" * 10
    with pytest.raises(Trimmed):
        await store.read(FILE, B + 30, 10)
    await store.write(FILE, B + 10, b"x" * 10, client_csum(b"x" * 10))
    assert (await store.read(FILE, B + 10, 10)).chunks[0].data == b"x" * 10
    assert [e.offset for e in await entries(store, FILE)] == [B, B + 10, B + 30]


async def test_reset_refuses_a_chunk_crossing_the_edge_and_ignores_unknown(
    store: FluStore,
) -> None:
    """A chunk crossing the extent's edge is BAD_ARG and nothing changes; an unknown file
    or an empty extent is a no-op; bad ranges are BAD_ARG."""
    await store.write(FILE, B, b"a" * 10, NO_CSUM)
    with pytest.raises(BadArg, match="crosses"):
        await store.repair_reset(FILE, B + 5, 10)
    assert (await store.read(FILE, B, 10)).chunks[0].data == b"a" * 10
    assert await store.repair_reset(f"repair^^00000000^{UUID}^2", B, 10) == 0
    assert await store.repair_reset(FILE, B + 100, 10) == 0
    with pytest.raises(BadArg):
        await store.repair_reset(FILE, 0, 10)
    with pytest.raises(BadArg):
        await store.repair_reset("no-such-name", B, 10)


async def test_reset_survives_restart(tmp_path: Path) -> None:
    """The reset is committed: after a reopen the chunk is still unwritten."""
    d = tmp_path / "flu"
    async with await FluStore.open(d) as s:
        pos, _ = await s.append("p", b"zz", NO_CSUM, epoch_id=DUMMY_EPOCH_ID)
        assert await s.repair_reset(pos.file, pos.offset, pos.size) == 1
    async with await FluStore.open(d) as s:
        assert await entries(s, pos.file) == []
        with pytest.raises(NotWritten):
            await s.read(pos.file, pos.offset, pos.size)
