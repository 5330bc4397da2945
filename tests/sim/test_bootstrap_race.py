"""Two concurrent bootstraps (two admins, or a bootstrap racing another) end in one chain.

Regression for issue 3, known problem 3: two different epoch-1 proposals written at once
left some public stores with one and some with the other; managers at epoch 0 never
propose, so nothing was ever unanimous and the chain never started.
"""

from __future__ import annotations

import pytest

from machi.core.chain_manager import AdminBootstrap
from machi.sim.cluster import Cluster

ORDERS = [("a", "b", "c"), ("c", "b", "a")]


def _settle(c: Cluster, limit_ms: int = 10_000) -> bool:
    """Run until the cluster has been converged for 500 ticks (False: not within limit)."""
    start, since = c.now, None
    while c.now < start + limit_ms:
        c.run_until(c.now + 10)
        if not c.converged():
            since = None
        elif since is None:
            since = c.now
        elif c.now - since >= 500:
            return True
    return False


@pytest.mark.parametrize("mode", ["ap", "cp"])
@pytest.mark.parametrize("seed", range(8))
def test_two_concurrent_bootstraps_end_in_one_chain(mode: str, seed: int) -> None:
    """Bootstraps of the same members in two different orders, sent to two different
    nodes at the same instant or a few milliseconds apart, converge on one confirmed
    chain with no violation."""
    names = ["a", "b", "c"]
    wit = ("a",) if mode == "cp" else ()
    c = Cluster(names, mode=mode, seed=seed, witnesses=wit,  # type: ignore[arg-type]
                client_interval_ms=20)
    first, second = ("a", "c") if seed % 2 else ("c", "b")
    c.admin(first, AdminBootstrap(ORDERS[0], wit))
    c.run_until(seed * 2)  # the second one 0-14 ms later: racing the first's spreading
    c.admin(second, AdminBootstrap(ORDERS[1], wit))
    assert _settle(c), f"seed {seed} {mode}: no single confirmed chain within 10 s"
    assert not c.violations
    assert c.lost_acked_writes() == 0


@pytest.mark.parametrize("seed", range(4))
def test_three_bootstraps_of_five_nodes_under_message_loss(seed: int) -> None:
    """Three admins bootstrap a 5-node AP chain at once (three member orders) while 2% of
    messages are lost: still one chain."""
    names = ["a", "b", "c", "d", "e"]
    c = Cluster(names, mode="ap", seed=seed, loss_ppm=20_000)
    for via, order in (("a", names), ("e", names[::-1]), ("c", ["c", "a", "b", "d", "e"])):
        c.admin(via, AdminBootstrap(tuple(order)))
    assert _settle(c, 20_000), f"seed {seed}: no single confirmed chain within 20 s"
    assert not c.violations
