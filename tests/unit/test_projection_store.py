"""Tests of the FLU projection store: write-once per epoch, private rewrite, reads, reopen."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from machi.core.epoch import DUMMY_EPOCH_ID
from machi.core.errors import BadArg, NotWritten, Written
from machi.core.projection import Projection, make_projection
from machi.storage.errors import StorageCorrupt
from machi.storage.flu_store import FluStore, StoreConfig

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def proj(epoch: int, upi: tuple[str, ...] = ("a", "b"), **kw: object) -> Projection:
    return make_projection(
        epoch_number=epoch, author_server="a", chain_name="c1", all_members=["a", "b", "c"],
        upi=upi, down=[m for m in "abc" if m not in upi], **kw,  # type: ignore[arg-type]
    )


async def test_empty_store(tmp_path: Path) -> None:
    """An empty half reports the dummy epoch, an empty list and NOT_WRITTEN reads."""
    async with await FluStore.open(tmp_path) as s:
        for kind in ("public", "private"):
            assert await s.projection_latest_epoch_id(kind) == DUMMY_EPOCH_ID  # type: ignore[arg-type]
            assert await s.projection_list(kind) == []  # type: ignore[arg-type]
            assert await s.projection_get_all(kind) == []  # type: ignore[arg-type]
            with pytest.raises(NotWritten):
                await s.projection_read_latest(kind)  # type: ignore[arg-type]
            with pytest.raises(NotWritten):
                await s.projection_read(kind, 1)  # type: ignore[arg-type]


async def test_public_is_strictly_write_once(tmp_path: Path) -> None:
    """A second public write at an epoch is WRITTEN, even with the identical projection."""
    async with await FluStore.open(tmp_path) as s:
        p = proj(3)
        await s.projection_write("public", p)
        with pytest.raises(Written):
            await s.projection_write("public", p)
        with pytest.raises(Written):
            await s.projection_write("public", proj(3, upi=("a",)))
        assert (await s.projection_read("public", 3)).epoch_id == p.epoch_id


async def test_private_same_checksum_rewrite_updates_dbg2(tmp_path: Path) -> None:
    """Private: same epoch id may be rewritten (new dbg2); a different projection is
    WRITTEN."""
    async with await FluStore.open(tmp_path) as s:
        p = proj(5)
        await s.projection_write("private", p)
        confirmed = p.with_dbg2({"confirmed": 1})
        await s.projection_write("private", confirmed)
        assert (await s.projection_read("private", 5)).dbg2 == {"confirmed": 1}
        with pytest.raises(Written):
            await s.projection_write("private", proj(5, upi=("b",)))


async def test_latest_list_get_all_and_halves_are_separate(tmp_path: Path) -> None:
    """Latest is the largest epoch; list and get-all ascend; halves don't mix."""
    async with await FluStore.open(tmp_path) as s:
        for n in (7, 2, 4):
            await s.projection_write("public", proj(n))
        await s.projection_write("private", proj(1))
        assert await s.projection_list("public") == [2, 4, 7]
        assert [p.epoch_number for p in await s.projection_get_all("public")] == [2, 4, 7]
        assert (await s.projection_read_latest("public")).epoch_number == 7
        assert await s.projection_latest_epoch_id("public") == proj(7).epoch_id
        assert await s.projection_list("private") == [1]


async def test_bad_checksum_and_bad_kind_are_bad_arg(tmp_path: Path) -> None:
    """A projection whose checksum doesn't verify, or an unknown half, is BAD_ARG."""
    async with await FluStore.open(tmp_path) as s:
        tampered = dataclasses.replace(proj(2), upi=("a",))
        with pytest.raises(BadArg):
            await s.projection_write("public", tampered)
        with pytest.raises(BadArg):
            await s.projection_write("secret", proj(2))  # type: ignore[arg-type]
        with pytest.raises(BadArg):
            await s.projection_read("public", "2")  # type: ignore[arg-type]
        assert await s.projection_list("public") == []


@pytest.mark.parametrize("sync", ["batch", "none"])
async def test_projections_persist_across_reopen(tmp_path: Path, sync: str) -> None:
    """Both halves, including a private dbg2 rewrite, survive close and reopen."""
    cfg = StoreConfig(sync=sync)  # type: ignore[arg-type]
    async with await FluStore.open(tmp_path, cfg) as s:
        await s.projection_write("public", proj(1))
        await s.projection_write("private", proj(1))
        await s.projection_write("private", proj(1).with_dbg2({"c": 2}))
    async with await FluStore.open(tmp_path, cfg) as s:
        assert await s.projection_list("public") == [1]
        p = await s.projection_read_latest("private")
        assert p.epoch_id == proj(1).epoch_id and p.dbg2 == {"c": 2}
        with pytest.raises(Written):
            await s.projection_write("public", proj(1))


async def test_tampered_stored_projection_refuses_start(tmp_path: Path) -> None:
    """A stored projection that no longer verifies stops the store from opening."""
    async with await FluStore.open(tmp_path) as s:
        await s.projection_write("public", proj(1))
        await s._db.conn.exec_driver_sql(
            "UPDATE projections SET body = replace(body, '\"c1\"', '\"c2\"')"
        )
        await s._db.conn.commit()
    with pytest.raises(StorageCorrupt, match="epoch 1"):
        await FluStore.open(tmp_path)


async def test_concurrent_public_writes_one_winner(tmp_path: Path) -> None:
    """Of several concurrent different public writes at one epoch exactly one succeeds, and
    the stored projection (also after reopen) is the winner's."""
    import anyio

    candidates = [proj(9, upi=upi) for upi in (("a",), ("b",), ("a", "b"), ("c",))]
    won: list[Projection] = []
    async with await FluStore.open(tmp_path) as s:

        async def write(p: Projection) -> None:
            try:
                await s.projection_write("public", p)
                won.append(p)
            except Written:
                pass

        async with anyio.create_task_group() as tg:
            for p in candidates:
                tg.start_soon(write, p)
        assert len(won) == 1
        assert (await s.projection_read("public", 9)).epoch_id == won[0].epoch_id
    async with await FluStore.open(tmp_path) as s:
        assert (await s.projection_read("public", 9)).epoch_id == won[0].epoch_id
