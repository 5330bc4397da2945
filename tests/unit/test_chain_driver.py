"""Goal: the daemon's chain driver performs the manager's effects on a real in-process
FluNode (store writes, wedge, projection log, fitness served by CHAIN_VIEW, admin ops
and their refusals), and its small helpers (projection log rotation, admin argument
parsing) behave as documented."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import anyio
import anyio.abc
import pytest

from machi.client.flu_client import FluClient
from machi.core import chain_manager as cm
from machi.core.epoch import EpochId
from machi.core.errors import BadArg, Wedged
from machi.core.fitness import Report
from machi.core.projection import make_projection
from machi.core.wire import Op
from machi.node.chain_driver import (
    ChainDriver,
    DriverSettings,
    ProjectionLog,
    parse_members_meta,
)
from machi.node.log import JsonLog
from machi.node.server import FluNode
from machi.storage.flu_store import FluStore, StoreConfig

pytestmark = pytest.mark.timeout(60)
FAST = DriverSettings(tick_base_ms=30, tick_spread_ms=30, tick_jitter_ms=5, reread_ms=5,
                      kick_wait_ms=20, read_timeout_ms=200, round_timeout_ms=500,
                      stability_time_ms=100, loop_hold_ms=500)


@asynccontextmanager
async def one_node(
    base: Path, settings: DriverSettings = FAST
) -> AsyncIterator[tuple[FluNode, ChainDriver, FluClient]]:
    """One FluNode named ``a`` on 127.0.0.1 with a running chain driver and a client."""
    store = await FluStore.open(base / "a", StoreConfig(sync="none"))
    log = JsonLog("a", "debug", stream=io.StringIO())
    node = FluNode("a", store, log=log)
    try:
        await node.load_state()
        driver = ChainDriver(node, settings=settings, log=log, data_dir=base / "a")
        driver.attach()
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with anyio.create_task_group() as tg:
            tg.start_soon(node.serve, listener)
            async with anyio.create_task_group() as dtg:
                dtg.start_soon(driver.run)
                async with FluClient("127.0.0.1", port, timeout_ms=2_000) as c:
                    yield node, driver, c
                dtg.cancel_scope.cancel()
            await node.stop()  # serve returns once the listener is closed
    finally:
        with anyio.CancelScope(shield=True):
            await store.close()


async def wait_for(pred: object, timeout_s: float = 10.0) -> None:
    with anyio.fail_after(timeout_s):
        while not pred():  # type: ignore[operator]
            await anyio.sleep(0.02)


def confirmed(node: FluNode, driver: ChainDriver) -> bool:
    """The manager confirmed its epoch and the driver has unwedged the FLU."""
    return driver.state is not None and driver.state.confirmed and not node.state.wedged


def test_projection_log_rotates_at_its_size_limit(tmp_path: Path) -> None:
    """The log never holds more than the limit; the previous part survives as ``.1``."""
    log = ProjectionLog(tmp_path / "projection-log.jsonl", max_bytes=4096)
    for i in range(200):
        log.append({"node": "a", "epoch": i, "pad": "x" * 50})
    cur = (tmp_path / "projection-log.jsonl").read_text().splitlines()
    old = (tmp_path / "projection-log.jsonl.1").read_text().splitlines()
    assert (tmp_path / "projection-log.jsonl").stat().st_size <= 4096
    assert json.loads(cur[-1])["epoch"] == 199
    assert json.loads(old[-1])["epoch"] + 1 == json.loads(cur[0])["epoch"]


@pytest.mark.parametrize("raw", [None, {}, {"a": 5}, {"bad name": "h:1"}, {"a": "nohost"}])
def test_bad_members_are_refused_by_name(raw: object) -> None:
    """Admin member maps that are not {name: "HOST:PORT"} are BAD_ARG."""
    with pytest.raises(BadArg):
        parse_members_meta(raw)


def test_single_node_bootstrap_confirms_and_logs(tmp_path: Path) -> None:
    """A bootstrap over the wire starts the manager, which adopts, confirms and unwedges;
    the adoption and the confirmation are both in the projection log."""

    async def go() -> None:
        async with one_node(tmp_path) as (node, driver, c):
            st = await c.chain_admin(Op.CHAIN_STATUS, {})
            assert st["running"] is False and st["wedged"] is True
            members = {"a": "127.0.0.1:1"}
            with pytest.raises(BadArg, match="not among the members"):
                await c.chain_admin(Op.CHAIN_BOOTSTRAP, {"chain": "c1", "mode": "ap",
                                                         "members": {"b": "127.0.0.1:1"}})
            with pytest.raises(BadArg, match="mode"):
                await c.chain_admin(Op.CHAIN_BOOTSTRAP, {"chain": "c1", "mode": "xx",
                                                         "members": members})
            await c.chain_admin(Op.CHAIN_BOOTSTRAP, {"chain": "c1", "mode": "ap",
                                                     "members": members})
            await wait_for(lambda: confirmed(node, driver))
            assert not node.state.wedged
            with pytest.raises(BadArg, match="already configured"):
                await c.chain_admin(Op.CHAIN_BOOTSTRAP, {"chain": "c1", "mode": "ap",
                                                         "members": members})
            st = await c.chain_admin(Op.CHAIN_STATUS, {})
            assert st["confirmed"] and st["upi"] == ["a"] and st["epoch"] >= 1
            view = await c.chain_view(want_confirmed=True)
            assert view.private is not None and view.private.epoch_id == node.state.epoch_id
            assert view.private_confirmed is not None and "a" in view.fitness
        recs = [json.loads(x) for x in
                (tmp_path / "a" / "projection-log.jsonl").read_text().splitlines()]
        assert [r["confirmed"] for r in recs][-2:] == [False, True]
        assert recs[-1]["epoch"] == recs[-2]["epoch"] and recs[-1]["upi"] == ["a"]
        assert (tmp_path / "a" / "chain-manager.json").exists()

    anyio.run(go)


def test_effects_on_the_local_flu(tmp_path: Path) -> None:
    """SetWedge wedges, PublishFitness is served by CHAIN_VIEW (with report ages), a kick
    starts a round, and the manager restarts from the store (enabled) after the node
    restarts."""

    async def go() -> None:
        async with one_node(tmp_path) as (node, driver, c):
            await c.chain_admin(Op.CHAIN_BOOTSTRAP, {"chain": "c1", "mode": "cp",
                                                     "members": {"a": "127.0.0.1:1"}})
            await wait_for(lambda: confirmed(node, driver))
            assert not node.state.wedged  # CP: unwedged only by the confirmation
            async with driver._lock:
                await driver._perform(cm.SetWedge(True, node.state.epoch_id))
                rep = Report("zz", 5, frozenset({"q"}))
                born = driver._now_ms() - 5_000
                await driver._perform(cm.PublishFitness({"zz": rep}, {"zz": born}))
            assert node.state.wedged
            view = await c.chain_view()
            assert view.fitness == {"zz": rep}
            # served with its age on the node's clock, never the birth time
            assert 5_000 <= view.fitness_age_ms["zz"] < 60_000
            rounds = driver.rounds
            await c.kick()
            await wait_for(lambda: driver.rounds > rounds)
            epoch = node.state.epoch_id
        async with one_node(tmp_path) as (node, driver, c):
            await wait_for(lambda: confirmed(node, driver))
            assert driver.state is not None and driver.state.current.epoch_number >= (
                epoch.number)
            assert not node.state.wedged

    anyio.run(go)


def test_hand_installed_projection_does_not_start_the_manager(tmp_path: Path) -> None:
    """Without an admin op (or chain_auto_join) a projection written by hand stays the
    operator's: the manager does not start and take the node over."""

    async def go() -> None:
        async with one_node(tmp_path) as (node, driver, c):
            p = make_projection(epoch_number=1, author_server="a", chain_name="c1",
                                all_members=["a"], upi=["a"])
            await c.projection_write("public", p)
            await c.projection_write("private", p)
            await c.kick()
            await anyio.sleep(0.2)
            assert driver.state is None and node.state.epoch_id == p.epoch_id
            assert not (await c.chain_admin(Op.CHAIN_STATUS, {}))["running"]

    anyio.run(go)


@asynccontextmanager
async def three_nodes(
    base: Path, settings: DriverSettings = FAST
) -> AsyncIterator[dict[str, tuple[FluNode, ChainDriver, FluClient, int]]]:
    """Three FluNodes ``a b c`` on 127.0.0.1, each with a chain driver and a client."""
    out: dict[str, tuple[FluNode, ChainDriver, FluClient, int]] = {}
    stores: list[FluStore] = []
    try:
        async with anyio.create_task_group() as tg:
            try:
                async with contextlib.AsyncExitStack() as stack:
                    for n in "abc":
                        store = await FluStore.open(base / n, StoreConfig(sync="none"))
                        stores.append(store)
                        log = JsonLog(n, "debug", stream=io.StringIO())
                        node = FluNode(n, store, log=log)
                        await node.load_state()
                        driver = ChainDriver(node, settings=settings, log=log,
                                             data_dir=base / n)
                        driver.attach()
                        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
                        port = listener.extra(anyio.abc.SocketAttribute.local_port)
                        tg.start_soon(node.serve, listener)
                        tg.start_soon(driver.run)
                        c = await stack.enter_async_context(
                            FluClient("127.0.0.1", port, timeout_ms=2_000))
                        out[n] = (node, driver, c, port)
                    yield out
            finally:
                with anyio.CancelScope(shield=True):
                    for x in out.values():
                        await x[0].stop()  # closes the listener; serve returns
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            for s in stores:
                await s.close()


def test_stray_newer_epoch_request_unwedges_at_the_same_epoch(tmp_path: Path) -> None:
    """A data request naming a newer epoch wedges one FLU of a converged 3-node AP chain;
    with no projection change following, its manager unwedges it again at the same epoch
    and it serves appends (before the fix it stayed wedged until the next epoch)."""

    async def go() -> None:
        async with three_nodes(tmp_path, replace(FAST, auto_join=True)) as nodes:
            members = {n: f"127.0.0.1:{x[3]}" for n, x in nodes.items()}
            await nodes["a"][2].chain_admin(Op.CHAIN_BOOTSTRAP, {
                "chain": "c1", "mode": "ap", "members": members})

            def converged() -> bool:
                ids = {x[0].state.epoch_id for x in nodes.values()}
                return len(ids) == 1 and all(
                    confirmed(x[0], x[1]) and x[1].state is not None
                    and len(x[1].state.current.upi) == 3 for x in nodes.values())

            await wait_for(converged, 20.0)
            node, _, c, _ = nodes["b"]
            epoch = node.state.epoch_id
            # a newer number, then the same number with another checksum
            for stray in (EpochId(epoch.number + 1, b"\x07" * 32),
                          EpochId(epoch.number, b"\x08" * 32)):
                # the WEDGED reply is the proof that the stray epoch wedged the FLU; its
                # manager may already have unwedged it by the time the reply arrives here
                with pytest.raises(Wedged):
                    await c.append("p", b"x", epoch_id=stray)
                await wait_for(lambda: not node.state.wedged, 10.0)
                assert node.state.epoch_id == epoch
                pos = await c.append("p", b"after", epoch_id=epoch)
                assert pos.size == 5

    anyio.run(go)
