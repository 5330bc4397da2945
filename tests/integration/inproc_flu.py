"""In-process FLU servers for client tests: real ``FluNode``s over real ``FluStore``s on
127.0.0.1, in the test's own event loop, so a test can reach the wedge state the way the
(not yet landed) chain-manager driver will (``after_confirm``, ``wedge``).

Owns only starting and stopping them; every node is stopped and every store closed on
exit, even when the body fails.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc

from machi.client.flu_client import FluClient
from machi.core.projection import MemberSpec, Mode, Projection, make_projection
from machi.core.wedge import after_confirm
from machi.node.log import JsonLog
from machi.node.server import FluNode
from machi.storage.flu_store import FluStore, StoreConfig

Nodes = dict[str, tuple[FluNode, int]]


@asynccontextmanager
async def inproc_chain(
    base: Path, names: Iterable[str], witnesses: Iterable[str] = (),
    config: StoreConfig | None = None,
) -> AsyncIterator[Nodes]:
    """FluNodes named ``names`` (``witnesses`` among them) serving on 127.0.0.1, their
    stores opened with ``config`` (default: sync "none")."""
    wits = set(witnesses)
    nodes: Nodes = {}
    stores: list[FluStore] = []
    async with anyio.create_task_group() as tg:
        try:
            for n in names:
                store = await FluStore.open(base / n, config or StoreConfig(sync="none"))
                stores.append(store)
                node = FluNode(n, store, log=JsonLog(n, "warning", stream=io.StringIO()),
                               witness=n in wits)
                await node.load_state()
                listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
                port = listener.extra(anyio.abc.SocketAttribute.local_port)
                tg.start_soon(node.serve, listener)
                nodes[n] = (node, port)
            yield nodes
        finally:
            with anyio.CancelScope(shield=True):
                for node, _ in nodes.values():
                    await node.stop()
                for s in stores:
                    await s.close()


def seeds(nodes: Nodes) -> dict[str, tuple[str, int]]:
    return {n: ("127.0.0.1", port) for n, (_, port) in nodes.items()}


async def install(
    nodes: Nodes, epoch: int, upi: tuple[str, ...], *, mode: Mode = "ap",
    witnesses: tuple[str, ...] = (), repairing: tuple[str, ...] = (),
    on: Iterable[str] | None = None, confirm: bool = True,
) -> Projection:
    """Write a projection (public, then private) to ``on`` (default: every node); in CP,
    with ``confirm``, unwedge them as the chain manager does after UPI unanimity."""
    names = tuple(nodes)
    p = make_projection(
        epoch_number=epoch, author_server=upi[-1], chain_name="c1", all_members=names,
        mode=mode, witnesses=witnesses, upi=upi, repairing=repairing,
        down=tuple(m for m in names if m not in upi + repairing),
        members_dict={n: MemberSpec(n, "127.0.0.1", port) for n, (_, port) in nodes.items()},
    )
    for n in on if on is not None else names:
        async with FluClient("127.0.0.1", nodes[n][1]) as c:
            await c.projection_write("public", p)
            await c.projection_write("private", p)
        node = nodes[n][0]
        if confirm and mode == "cp":
            node._set_state(after_confirm(node.state, p.epoch_id), "test confirms")
    return p
