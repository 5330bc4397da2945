"""Named simulator scenarios: admin removal and re-add, AP writability on both sides,
CP minorities fenced by the none projection, CP restart after a total crash."""

from __future__ import annotations

import pytest

from machi.core.chain_manager import AdminSetMembers
from machi.core.projection import Projection
from machi.sim import cluster as sim_cluster
from machi.sim.cluster import Cluster

NODES = ["a", "b", "c"]


def _settle(c: Cluster, ok: object, limit_ms: int = 20_000) -> bool:
    deadline = c.now + limit_ms
    while c.now < deadline:
        c.run_until(c.now + 20)
        if ok():  # type: ignore[operator]
            return True
    return False


def _private(c: Cluster, n: str) -> Projection:
    p = c.flus[n].latest("private")
    assert p is not None
    return p


def _isolate(n: str) -> set[tuple[str, str]]:
    return {(n, m) for m in NODES if m != n} | {(m, n) for m in NODES if m != n}


def test_removed_member_wedges_and_rejoins_via_its_own_store() -> None:
    """set_members without c: c wedges on the none projection, a and b keep a chain;
    set_members with c again: c rejoins through repairing and everyone converges."""
    c = Cluster(NODES, mode="ap", seed=11, client_interval_ms=20)
    c.bootstrap()
    assert _settle(c, c.converged)
    c.admin("a", AdminSetMembers(("a", "b")))

    def two() -> bool:
        pa, pb = _private(c, "a"), _private(c, "b")
        st = c.manager("c")
        return (pa == pb and set(pa.upi) == {"a", "b"} and not pa.repairing
                and st is not None and st.removed)

    assert _settle(c, two)
    assert c.flus["c"].state.wedged and _private(c, "c").is_none()
    c.admin("a", AdminSetMembers(("a", "b", "c")))
    assert _settle(c, c.converged)
    assert not c.violations and c.lost_acked_writes() == 0


def test_ap_both_sides_of_a_partition_stay_writable() -> None:
    """AP: with a cut off from b and c, appends succeed at a and at b."""
    c = Cluster(NODES, mode="ap", seed=12)
    c.bootstrap()
    assert _settle(c, c.converged)
    c.set_partitions(_isolate("a"))
    c.run_until(c.now + 3000)
    assert _private(c, "a").upi == ("a",)
    assert c.client_append("a") == "ok"
    assert c.client_append("b") == "ok"
    c.set_partitions(set())
    assert _settle(c, c.converged)
    assert not c.violations and c.lost_acked_writes() == 0


def test_cp_minority_falls_to_none_and_majority_serves() -> None:
    """CP (witness a): an isolated c adopts the none projection and cannot be written;
    a and b keep serving with the witness in the UPI."""
    c = Cluster(NODES, mode="cp", seed=13, witnesses=("a",))
    c.bootstrap()
    assert _settle(c, c.converged)
    c.set_partitions(_isolate("c"))
    c.run_until(c.now + 3000)
    assert _private(c, "c").is_none() and c.flus["c"].state.wedged
    assert _private(c, "b").upi == ("a", "b")
    assert c.client_append("b") == "ok"
    assert c.client_append("c") != "ok"
    c.set_partitions(set())
    assert _settle(c, c.converged)
    assert not c.violations and c.lost_acked_writes() == 0


def test_cp_restart_after_every_node_crashed() -> None:
    """CP: after all nodes crash (FLUs restart wedged) and restart one by one, the chain
    comes back from the confirmed history with every acknowledged write."""
    c = Cluster(NODES, mode="cp", seed=14, witnesses=("a",), client_interval_ms=20)
    c.bootstrap()
    assert _settle(c, c.converged)
    c.run_until(c.now + 1000)
    acked = len(c.acked)
    assert acked > 0
    for n in NODES:
        c.crash(n)
    c.run_until(c.now + 500)
    for n in ("c", "a", "b"):
        c.restart(n)
        assert c.flus[n].state.wedged
        c.run_until(c.now + 700)
    assert _settle(c, c.converged)
    assert not c.violations and c.lost_acked_writes() == 0


def _in_flight_on_head_only(c: Cluster) -> list[tuple[str, int]]:
    """An append that reached the head a but not b (b is down for it): outcome info,
    its chunks (one per client attempt) on a only; the chain has not noticed (same epoch
    everywhere)."""
    epochs = {_private(c, n).epoch_id for n in NODES}
    assert len(epochs) == 1 and _private(c, "a").upi == ("a", "b", "c")
    c.crash("b")
    assert c.client_append("a") == "info"
    keys = sorted(c.maybe)
    assert keys
    for f, off in keys:
        assert off in c.flus["a"].chunks[f] and off not in c.flus["c"].chunks.get(f, {})
    return keys


def _everywhere(c: Cluster, keys: list[tuple[str, int]]) -> bool:
    return all(off in c.flus[n].chunks.get(f, {}) for n in NODES for f, off in keys)


def _settled_equal(c: Cluster) -> None:
    """Converged (all three in the UPI, nothing repairing) for a while, then the AP
    replica invariant: every replica holds the same chunks."""
    assert _settle(c, c.converged)
    c.run_until(c.now + 500)
    assert c.converged()
    assert c.replica_divergence() == []
    assert not c.violations and c.lost_acked_writes() == 0


@pytest.fixture
def impatient_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client gives up an append at its first failure (as a real client whose time
    budget ran out while the nodes were down): nothing but the chain repairs its chunk."""
    monkeypatch.setattr(sim_cluster, "CONTINUE_TRIES", 0)


@pytest.mark.usefixtures("impatient_client")
def test_ap_restart_after_every_node_crashed_repairs_in_flight_chunks() -> None:
    """AP: an append in flight when the whole chain is killed (on the head only, never
    acknowledged) is on every replica after all nodes restart: the restarted FLUs stay
    wedged, the chain moves to a new epoch with a sole UPI member and the others
    repairing, and AP repair merges every replica before they re-enter the UPI.  Before
    the restart rule the chain resumed its old epoch and the chunk stayed on a only."""
    c = Cluster(NODES, mode="ap", seed=15, client_interval_ms=0)
    c.bootstrap()
    assert _settle(c, c.converged)
    for _ in range(5):
        assert c.client_append("a") == "ok"
    before = _private(c, "a").epoch_number
    keys = _in_flight_on_head_only(c)
    for n in ("a", "c"):
        c.crash(n)
    c.run_until(c.now + 2000)
    for n in NODES:
        c.restart(n)
        assert c.flus[n].state.wedged and c.flus[n].restarted
    _settled_equal(c)
    assert _private(c, "a").epoch_number > before
    assert _everywhere(c, keys)


@pytest.mark.usefixtures("impatient_client")
def test_ap_quick_restart_of_one_member_repairs_it_first() -> None:
    """AP: b restarts before anybody noticed it was gone (same epoch): it must come back
    as repairing in a new epoch, so the chunk that missed it reaches every replica."""
    c = Cluster(NODES, mode="ap", seed=16, client_interval_ms=0)
    c.bootstrap()
    assert _settle(c, c.converged)
    keys = _in_flight_on_head_only(c)
    c.restart("b")
    assert c.flus["b"].state.wedged
    _settled_equal(c)
    assert _everywhere(c, keys)
    assert any(a["node"] == "b" and a["repairing"] == ["b"] for a in c.adoptions)


@pytest.mark.parametrize("seed", range(12))
def test_set_members_sticks_whenever_it_lands_in_a_round(seed: int) -> None:
    """An admin removal issued at any point of the managers' rounds is the membership the
    chain ends with: a round that read the stores before the admin projection was written
    must not author a higher epoch with the old members (CI, session 6: c, just cut off,
    was removed, and a's next proposal, from a read made before, brought it back)."""
    c = Cluster(NODES, mode="ap", seed=100 + seed, client_interval_ms=20)
    c.bootstrap()
    assert _settle(c, c.converged)
    for k in range(3):  # each at another point of a's rounds
        c.set_partitions(_isolate("c"))  # a and b will propose a chain without c...
        c.run_until(c.now + 150 + 61 * k + seed * 37 % 450)
        c.admin("a", AdminSetMembers(("a", "b")))  # ...while the admin removes c
        c.run_until(c.now + 3000)
        c.set_partitions(set())
        c.run_until(c.now + 3000)
        pa = _private(c, "a")
        assert pa.all_members == ("a", "b") and set(pa.upi) == {"a", "b"}, (k, pa)
        c.admin("a", AdminSetMembers(("a", "b", "c")))
        assert _settle(c, c.converged)
    assert not c.violations and c.lost_acked_writes() == 0


def test_ap_sole_upi_member_restarting_moves_the_chain_to_a_new_epoch() -> None:
    """AP: c, the sole UPI member (a and b repairing), crashes right after adopting that
    projection and restarts: it must not serve it again, and a calculation from it keeps
    its shape -- c proposes the same shape at a new epoch, and the chain repairs and
    converges (found by the Hypothesis AP machine, seed 862: nobody proposed, forever)."""
    c = Cluster(NODES, mode="ap", seed=862)
    c.bootstrap()
    c.run_until(1000)
    c.set_partitions({("a", "b")})
    c.run_until(c.now + 643)
    c.set_partitions(set())
    c.run_until(c.now + 49)
    assert _private(c, "c").upi == ("c",) and set(_private(c, "c").repairing) == {"a", "b"}
    c.crash("c")
    c.restart("c")
    assert _settle(c, c.converged)
    assert not c.violations and c.lost_acked_writes() == 0
