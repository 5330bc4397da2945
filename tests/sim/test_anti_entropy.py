"""AP anti-entropy in the simulator: a chunk the head wrote for an append whose reply was
lost (an orphan: no client knows its place, so nothing propagates it) reaches every
replica in a chain that never changes epoch, and stays on the head alone when
anti-entropy is off (``ap_anti_entropy_interval_ms = 0``)."""

from __future__ import annotations

import pytest

from machi.sim.cluster import AP_ANTI_ENTROPY_INTERVAL_MS, Cluster

NODES = ["a", "b", "c"]


def _stable(c: Cluster, limit_ms: int = 20_000) -> None:
    end = c.now + limit_ms
    while c.now < end and not c.converged():
        c.run_until(c.now + 20)
    assert c.converged()


def _orphan(c: Cluster) -> tuple[int, str]:
    """Cut head -> client, append from the client (every attempt's reply is lost), heal
    at once.  Returns the epoch and the head."""
    p = c.flus["a"].latest("private")
    assert p is not None
    head, loc = p.mutation_chain[0], p.mutation_chain[-1]
    c.set_partitions({(head, loc)})
    assert c.client_append(loc) == "info"
    c.set_partitions(set())
    held = {n: sum(len(v) for v in c.flus[n].chunks.values()) for n in NODES}
    assert held[head] > held[loc], held  # the orphans are on the head only
    return p.epoch_number, head


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_orphan_chunks_reach_every_replica_without_an_epoch_change(seed: int) -> None:
    c = Cluster(NODES, mode="ap", seed=seed)
    c.bootstrap()
    _stable(c)
    epoch, _head = _orphan(c)
    assert c.replica_divergence() != []
    c.run_until(c.now + 3 * AP_ANTI_ENTROPY_INTERVAL_MS)
    _stable(c)
    assert c.replica_divergence() == []
    assert all(c.flus[n].latest("private").epoch_number == epoch  # type: ignore[union-attr]
               for n in NODES), "the chain changed epoch: the test proves nothing"
    assert c.stats.anti_entropy_copies >= 2
    # the pass after the copies plans their places again: equal summaries, not planned
    assert c.stats.anti_entropy_equal >= 1
    assert not c.violations


def test_without_anti_entropy_the_orphans_stay_on_the_head() -> None:
    c = Cluster(NODES, mode="ap", seed=1, timers={"ap_anti_entropy_interval_ms": 0})
    c.bootstrap()
    _stable(c)
    epoch, _head = _orphan(c)
    c.run_until(c.now + 10 * AP_ANTI_ENTROPY_INTERVAL_MS)
    _stable(c)
    assert all(c.flus[n].latest("private").epoch_number == epoch  # type: ignore[union-attr]
               for n in NODES)
    assert c.replica_divergence() != []
    assert c.stats.anti_entropy_ok == c.stats.anti_entropy_failed == 0


def test_quiet_passes_plan_nothing() -> None:
    """A stable chain without changes: after the first pass, every pass skips every file
    (``ChangeMemory``), and a change brings only that file back."""
    c = Cluster(NODES, mode="ap", seed=4)
    c.bootstrap()
    _stable(c)
    for _ in range(5):
        c.client_append("a")
    c.run_until(c.now + 3 * AP_ANTI_ENTROPY_INTERVAL_MS)
    files = len({f for n in NODES for f in c.flus[n].chunks})
    assert files >= 1 and c.replica_divergence() == []
    ok, unchanged, copies = (c.stats.anti_entropy_ok, c.stats.anti_entropy_unchanged,
                             c.stats.anti_entropy_copies)
    c.run_until(c.now + 4 * AP_ANTI_ENTROPY_INTERVAL_MS)
    passes = c.stats.anti_entropy_ok - ok
    assert passes >= 2
    assert c.stats.anti_entropy_unchanged - unchanged == passes * files
    assert c.stats.anti_entropy_copies == copies


def test_never_in_cp() -> None:
    c = Cluster(NODES, mode="cp", seed=1, witnesses=("a",))
    c.bootstrap()
    _stable(c)
    c.run_until(c.now + 5 * AP_ANTI_ENTROPY_INTERVAL_MS)
    assert c.stats.anti_entropy_ok == c.stats.anti_entropy_failed == 0
