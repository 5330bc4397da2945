"""Goal: in a CP chain of three real daemons, a chunk an abandoned append left on the
head alone (it never reached the tail) does not stay there alone: at the next epoch
change the new UPI tail copies it forward (the design paper's CP repair step 3), so every
UPI member - and, after repair, the returning member - answers the same for that place.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import anyio.to_thread
import pytest

from machi.client.chain_client import ChainClient
from machi.client.flu_client import ChunkPos, FluClient
from machi.core.epoch import EpochId
from machi.core.errors import MachiError, NotWritten
from tests.integration.test_chain_daemons import (  # noqa: F401 - cluster_factory: fixture
    NAMES,
    Cluster,
    bootstrap,
    cluster_factory,
)

pytestmark = pytest.mark.timeout(150)
AGREE_TIMEOUT_S = 30.0
DATA = b"only the head got this"


async def answers(cluster: Cluster, st: dict[str, Any], pos: ChunkPos) -> dict[str, bytes | None]:
    """What every real UPI member of ``st`` holds at ``pos`` (None: not written)."""
    eid = EpochId(st["epoch"], bytes.fromhex(st["epoch_csum"]))
    out: dict[str, bytes | None] = {}
    for name in st["upi"]:
        x = cluster.nodes[name]
        async with FluClient(x.host, x.port, timeout_ms=5_000) as c:
            try:
                out[name] = (await c.read(pos.file, pos.offset, pos.size, epoch_id=eid)).data()
            except NotWritten:
                out[name] = None
    return out


async def wait_agree(cluster: Cluster, want: set[str], up: tuple[str, ...],
                     pos: ChunkPos) -> dict[str, bytes | None]:
    t0 = time.monotonic()
    got: dict[str, bytes | None] = {}
    while time.monotonic() - t0 < AGREE_TIMEOUT_S:
        st, _ = await cluster.wait_converged(want, up)
        try:
            got = await answers(cluster, st, pos)
        except MachiError:
            got = {}
        if got and set(got.values()) == {DATA} and set(got) == want:
            return got
        await anyio.sleep(0.2)
    raise AssertionError(f"UPI members still disagree after {AGREE_TIMEOUT_S}s: {got}\n"
                         f"{cluster.logs()}")


def test_cp_chunk_left_on_the_head_is_copied_forward_at_an_epoch_change(
    cluster_factory: Any,  # noqa: F811
) -> None:
    """Append on the head only, kill the tail: the new tail (the old middle) gets the
    chunk from the head; after the old tail returns (repaired) all three agree, and the
    chain client reads the bytes."""
    cluster = cluster_factory()
    bootstrap(cluster, "cp")

    async def go() -> None:
        st, _ = await cluster.wait_converged(set(NAMES), NAMES)
        head, tail = st["upi"][0], st["upi"][-1]
        eid = EpochId(st["epoch"], bytes.fromhex(st["epoch_csum"]))
        h = cluster.nodes[head]
        async with FluClient(h.host, h.port, timeout_ms=5_000) as c:
            pos = await c.append("abandoned", DATA, epoch_id=eid)
        before = await answers(cluster, st, pos)
        assert before[head] == DATA and before[tail] is None  # the divergence to fix
        cluster.nodes[tail].kill()
        rest = tuple(n for n in NAMES if n != tail)
        await wait_agree(cluster, set(rest), rest, pos)
        await anyio.to_thread.run_sync(cluster.nodes[tail].start)
        await wait_agree(cluster, set(NAMES), NAMES, pos)
        async with ChainClient(cluster.seeds, op_timeout_ms=10_000) as cc:
            assert await cc.read(pos.file, pos.offset, pos.size) == DATA

    anyio.run(go)
