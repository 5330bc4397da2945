"""Goal: a repair run by the daemon's chain driver shows on the node's Prometheus endpoint
(runs by result, chunks and bytes copied, in progress, last duration), scraped over HTTP
from in-process FluNodes with real chain drivers on 127.0.0.1."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import pytest

from machi.client.flu_client import FluClient
from machi.core.wire import Op
from machi.node.chain_driver import ChainDriver, DriverSettings
from machi.node.log import JsonLog
from machi.node.metrics import RepairMetrics, serve_metrics
from machi.node.repair import RepairStats
from machi.node.server import FluNode
from machi.storage.flu_store import FluStore, StoreConfig

pytestmark = pytest.mark.timeout(60)
FAST = DriverSettings(tick_base_ms=30, tick_spread_ms=30, tick_jitter_ms=5, reread_ms=5,
                      kick_wait_ms=20, read_timeout_ms=300, round_timeout_ms=500,
                      stability_time_ms=100, loop_hold_ms=500, auto_join=True)
CHUNKS = 5
CHUNK = b"r" * 3000


@asynccontextmanager
async def two_nodes(
    base: Path,
) -> AsyncIterator[dict[str, tuple[FluNode, ChainDriver, int, int]]]:
    """Nodes ``a`` and ``b``: FluNode, chain driver, data port, metrics port."""
    out: dict[str, tuple[FluNode, ChainDriver, int, int]] = {}
    stores: list[FluStore] = []
    listeners: list[anyio.abc.SocketListener] = []
    try:
        async with anyio.create_task_group() as tg:
            for name in ("a", "b"):
                store = await FluStore.open(base / name, StoreConfig(sync="none"))
                stores.append(store)
                log = JsonLog(name, "warning", stream=io.StringIO())
                node = FluNode(name, store, log=log)
                await node.load_state()
                driver = ChainDriver(node, settings=FAST, log=log, data_dir=base / name)
                driver.attach()
                lis = await anyio.create_tcp_listener(local_host="127.0.0.1")
                mlis = await anyio.create_tcp_listener(local_host="127.0.0.1")
                listeners += [lis, mlis]
                tg.start_soon(node.serve, lis)
                tg.start_soon(serve_metrics, node.metrics, mlis)
                tg.start_soon(driver.run)
                out[name] = (node, driver,
                             lis.extra(anyio.abc.SocketAttribute.local_port),
                             mlis.extra(anyio.abc.SocketAttribute.local_port))
            yield out
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            for node, *_ in out.values():
                await node.stop()
            for lis in listeners:
                await lis.aclose()
            for s in stores:
                await s.close()


async def scrape(port: int) -> dict[str, float]:
    """``GET /metrics`` -> {series with labels: value}."""
    async with await anyio.connect_tcp("127.0.0.1", port) as s:
        await s.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        buf = b""
        with anyio.fail_after(5):
            while True:
                try:
                    buf += await s.receive()
                except anyio.EndOfStream:
                    break
    head, body = buf.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200")
    out: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def test_repair_progress_reaches_the_metrics_endpoint(tmp_path: Path) -> None:
    """``a`` alone takes appends; adding ``b`` makes ``a`` (UPI tail) repair ``b``, and
    ``a``'s /metrics then counts one ok repair run with every chunk and byte copied."""

    async def wait_for(pred: object, timeout_s: float = 20.0) -> None:
        with anyio.fail_after(timeout_s):
            while not pred():  # type: ignore[operator]
                await anyio.sleep(0.02)

    async def go() -> None:
        async with two_nodes(tmp_path) as nodes:
            a_node, a_drv, a_port, a_mport = nodes["a"]
            _, b_drv, b_port, _ = nodes["b"]
            before = await scrape(a_mport)
            lab = 'node="a",kind="repair"'
            assert before[f'machi_repair_runs_total{{{lab},result="ok"}}'] == 0
            assert before[f"machi_repair_in_progress{{{lab}}}"] == 0
            assert before[f"machi_repair_chunks_copied_total{{{lab}}}"] == 0
            async with FluClient("127.0.0.1", a_port, timeout_ms=2_000) as c:
                await c.chain_admin(Op.CHAIN_BOOTSTRAP, {
                    "chain": "c1", "mode": "ap", "members": {"a": f"127.0.0.1:{a_port}"}})
                await wait_for(lambda: a_drv.state is not None and a_drv.state.confirmed
                               and not a_node.state.wedged)
                for _ in range(CHUNKS):
                    await c.append("p", CHUNK, epoch_id=a_node.state.epoch_id)
                await c.chain_admin(Op.CHAIN_SET_MEMBERS, {"members": {
                    "a": f"127.0.0.1:{a_port}", "b": f"127.0.0.1:{b_port}"}})

            def b_in_upi() -> bool:
                st = a_drv.state
                return (st is not None and st.confirmed and st.current.upi == ("a", "b")
                        and b_drv.state is not None and b_drv.state.confirmed)

            await wait_for(b_in_upi)
            after = await scrape(a_mport)
        assert after[f'machi_repair_runs_total{{{lab},result="ok"}}'] >= 1
        assert after[f'machi_repair_runs_total{{{lab},result="failed"}}'] == 0
        assert after[f"machi_repair_chunks_copied_total{{{lab}}}"] == CHUNKS
        assert after[f"machi_repair_bytes_out_total{{{lab}}}"] == CHUNKS * len(CHUNK)
        assert after[f"machi_repair_bad_chunks_total{{{lab}}}"] == 0
        assert after[f"machi_repair_in_progress{{{lab}}}"] == 0
        assert after[f"machi_repair_last_ok{{{lab}}}"] == 1
        assert after[f"machi_repair_last_duration_seconds{{{lab}}}"] > 0
        assert after[f"machi_repair_files{{{lab}}}"] == 1

    anyio.run(go)


def test_running_repair_counts_live_and_bounds_its_runs() -> None:
    """A running repair's counters show in the totals before it ends, a finished run
    moves them to the totals once, and an unknown kind is refused."""
    rm = RepairMetrics()
    stats = RepairStats(files=2, chunks_copied=3, bytes_out=30)
    token = rm.started("upi_sync", stats)
    lines = rm.render('node="x"')
    assert 'machi_repair_in_progress{node="x",kind="upi_sync"} 1' in lines
    assert 'machi_repair_chunks_copied_total{node="x",kind="upi_sync"} 3' in lines
    assert 'machi_repair_files{node="x",kind="upi_sync"} 2' in lines
    stats.chunks_copied = 4
    rm.finished(token, False)
    rm.finished(token, False)  # a second finish is ignored
    lines = rm.render('node="x"')
    assert 'machi_repair_in_progress{node="x",kind="upi_sync"} 0' in lines
    assert 'machi_repair_chunks_copied_total{node="x",kind="upi_sync"} 4' in lines
    assert 'machi_repair_runs_total{node="x",kind="upi_sync",result="failed"} 1' in lines
    assert 'machi_repair_last_ok{node="x",kind="upi_sync"} 0' in lines
    with pytest.raises(ValueError, match="unknown repair kind"):
        rm.started("nope", stats)
