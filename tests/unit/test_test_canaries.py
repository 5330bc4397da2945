"""Goal: the daemon's TEST ONLY fault switches (node key ``test_canary``) are off by default,
refuse unknown names, and when on break exactly their one guarantee: ack-before-sync
(appends acknowledged without fdatasync), skip-repair (RepairDone ok without copying),
epoch-reuse (a second, different projection at a used epoch number is produced and
stored)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import anyio
import pytest

from machi.core import chain_manager as cm
from machi.core.checksum import client_csum
from machi.core.epoch import DUMMY_EPOCH_ID
from machi.core.errors import ConfigError, Written
from machi.core.projection import make_projection
from machi.node.chain_driver import ChainDriver, DriverSettings
from machi.node.config import TEST_CANARIES, build_config
from machi.node.log import JsonLog
from machi.node.run import store_config
from machi.node.server import FluNode
from machi.storage.data_file import DataFiles
from machi.storage.flu_store import FluStore, StoreConfig

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _cfg(tmp_path: Path, **kw: Any) -> Any:
    return build_config({"name": "a", "data_dir": str(tmp_path), **kw}, {})


def test_config_key_defaults_off_and_validates(tmp_path: Path) -> None:
    """``test_canary`` defaults to "", accepts the three names and refuses anything else."""
    cfg = _cfg(tmp_path)
    assert cfg.test_canary == ""
    sc = store_config(cfg)
    assert not sc.test_ack_before_sync and not sc.test_epoch_reuse
    assert DriverSettings.from_node_config(cfg).test_canary == ""
    for name in TEST_CANARIES:
        assert _cfg(tmp_path, test_canary=name).test_canary == name
    assert store_config(_cfg(tmp_path, test_canary="ack-before-sync")).test_ack_before_sync
    assert store_config(_cfg(tmp_path, test_canary="epoch-reuse")).test_epoch_reuse
    with pytest.raises(ConfigError, match="test_canary"):
        _cfg(tmp_path, test_canary="read-non-tail")  # a client-side canary, not a daemon one
    with pytest.raises(ConfigError, match="test_canary"):
        _cfg(tmp_path, test_canary=1)


async def _appends_with_fdatasyncs(tmp_path: Path, canary: bool) -> tuple[int, int, str]:
    """(fdatasync calls seen while 3 appends returned, after a flush, reported sync)."""
    store = await FluStore.open(tmp_path, StoreConfig(sync="batch",
                                                      test_ack_before_sync=canary))
    syncs = 0
    real = DataFiles.fdatasync_fds

    def counting(fds: Any) -> None:  # (runs on the database thread)
        nonlocal syncs
        syncs += 1
        real(fds)

    DataFiles.fdatasync_fds = staticmethod(counting)  # type: ignore[method-assign,assignment]
    try:
        for i in range(3):
            data = b"chunk-%d" % i
            await store.append("pre", data, client_csum(data), epoch_id=DUMMY_EPOCH_ID)
        during = syncs
        await store.flush()
        return during, syncs, store.config.sync
    finally:
        DataFiles.fdatasync_fds = staticmethod(real)  # type: ignore[method-assign]
        await store.close()


async def test_ack_before_sync_acknowledges_without_fdatasync(tmp_path: Path) -> None:
    """Off: an append returns only after its data was fdatasynced.  On: appends (and even
    a flush) return with no fdatasync at all, while the store still claims sync "batch"."""
    during, _, sync = await _appends_with_fdatasyncs(tmp_path / "off", canary=False)
    assert during >= 1 and sync == "batch"
    during, after, sync = await _appends_with_fdatasyncs(tmp_path / "on", canary=True)
    assert during == 0 and after == 0 and sync == "batch"


async def test_ack_before_sync_writes_metadata_back_late(tmp_path: Path) -> None:
    """On: acknowledged appends stay out of the metadata database until the canary's
    write-back interval (5 s) passed, so a SIGKILL in between loses them; a plain
    sync "none" store commits every 50 ms."""
    from machi.storage.group_commit import CANARY_WRITEBACK_INTERVAL_MS, NONE_FLUSH_INTERVAL_MS

    for canary, want in ((True, CANARY_WRITEBACK_INTERVAL_MS), (False, NONE_FLUSH_INTERVAL_MS)):
        store = await FluStore.open(tmp_path / str(canary), StoreConfig(
            sync="none" if not canary else "batch", test_ack_before_sync=canary))
        try:
            assert store._committer.none_flush_interval_ms == want
            data = b"first"  # creates the file (committed) and starts the interval
            await store.append("pre", data, client_csum(data), epoch_id=DUMMY_EPOCH_ID)
            before = store._committer.commits
            for i in range(3):
                data = b"chunk-%d" % i
                await store.append("pre", data, client_csum(data), epoch_id=DUMMY_EPOCH_ID)
                await anyio.sleep(0.06)  # longer than the plain sync "none" interval
            if canary:
                assert store._committer.commits == before  # nothing committed yet
            else:
                assert store._committer.commits > before
        finally:
            await store.close()
    assert CANARY_WRITEBACK_INTERVAL_MS >= 1000 > NONE_FLUSH_INTERVAL_MS


async def _repair_answer(tmp_path: Path, canary: str) -> cm.RepairDone:
    store = await FluStore.open(tmp_path, StoreConfig(sync="none"))
    log = JsonLog("a", "debug", stream=io.StringIO())
    data = b"only on a"
    # before the node exists: a node (wedged at epoch 0 here) re-checks appends' epochs
    await store.append("pre", data, client_csum(data), epoch_id=DUMMY_EPOCH_ID)
    node = FluNode("a", store, log=log)
    try:
        await node.load_state()
        driver = ChainDriver(node, settings=DriverSettings(test_canary=canary), log=log,
                             data_dir=tmp_path)
        fed: list[cm.Event] = []

        async def record(event: cm.Event) -> list[cm.Effect]:
            fed.append(event)
            return []

        driver.feed = record  # type: ignore[method-assign]
        # a is the UPI tail, b is repairing and unreachable (no address known)
        p = make_projection(epoch_number=3, author_server="a", chain_name="c1",
                            all_members=("a", "b"), mode="cp", upi=("a",),
                            repairing=("b",))
        await driver._repair(p)
        assert len(fed) == 1 and isinstance(fed[0], cm.RepairDone)
        return fed[0]
    finally:
        await store.close()


async def test_skip_repair_answers_ok_without_copying(tmp_path: Path) -> None:
    """Off: a repair that cannot reach its repairing member answers not ok.  On: the
    driver answers RepairDone(ok) at once, nothing copied."""
    off = await _repair_answer(tmp_path / "off", "")
    assert off.ok is False
    on = await _repair_answer(tmp_path / "on", "skip-repair")
    assert on.ok is True and "skip-repair" in on.detail


async def test_epoch_reuse_produces_two_projections_at_one_epoch(tmp_path: Path) -> None:
    """Off: a proposal keeps its higher epoch and the store refuses a second projection at
    a written epoch.  On: the proposal is rewritten to the current epoch number (a
    different, valid projection) and the canary store accepts it."""
    cur = make_projection(epoch_number=4, author_server="a", chain_name="c1",
                          all_members=("a", "b"), mode="cp", upi=("a", "b"))
    prop = make_projection(epoch_number=5, author_server="a", chain_name="c1",
                           all_members=("a", "b"), mode="cp", upi=("a",), down=("b",))
    for canary in ("", "epoch-reuse"):
        store = await FluStore.open(tmp_path / (canary or "off"),
                                    StoreConfig(sync="none",
                                                test_epoch_reuse=canary == "epoch-reuse"))
        log = JsonLog("a", "debug", stream=io.StringIO())
        try:
            node = FluNode("a", store, log=log)
            await node.load_state()
            driver = ChainDriver(node, settings=DriverSettings(test_canary=canary), log=log,
                                 data_dir=tmp_path / (canary or "off"))
            driver.state, _ = cm.initial_state(
                DriverSettings().manager_config("a", "c1", "cp"), cur, now_ms=0)
            await store.projection_write("public", cur)
            out = driver._canary_epoch_reuse(cm.WritePublic(1, prop, ("a", "b"))).projection
            if not canary:
                assert out == prop
                with pytest.raises(Written):
                    await store.projection_write("public", cur.evolve(upi=("a",),
                                                                      down=("b",)))
            else:
                assert out.epoch_number == cur.epoch_number == 4
                assert out.csum_is_valid() and out.epoch_csum != cur.epoch_csum
                assert out.upi == ("a",)
                await store.projection_write("public", out)
                assert (await store.projection_read("public", 4)).epoch_csum == out.epoch_csum
        finally:
            await store.close()
