"""Pure nemesis computations: grudges of every partition kind, iptables text, schedules."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.nemesis import partition as p
from harness.nemesis import schedule as s

NODES5 = ["n1", "n2", "n3", "n4", "n5"]


def _symmetric(g: p.Grudge) -> bool:
    return all(a in g.get(b, frozenset()) for a, srcs in g.items() for b in srcs)


def test_one_way_cuts_only_one_direction() -> None:
    """One-way a -> b: b drops a, a still hears b."""
    g = p.one_way("n1", "n2")
    assert g == {"n2": frozenset({"n1"})}
    assert not p.can_hear(g, "n2", "n1")
    assert p.can_hear(g, "n1", "n2")
    with pytest.raises(p.PartitionError):
        p.one_way("n1", "n1")


def test_isolate_cuts_target_from_everyone_both_ways() -> None:
    """Isolating n3 leaves {n3} and the rest as the two components."""
    g = p.isolate(NODES5, "n3")
    assert g["n3"] == frozenset({"n1", "n2", "n4", "n5"})
    assert all(g[n] == {"n3"} for n in NODES5 if n != "n3")
    assert p.components(NODES5, g) == [{"n1", "n2", "n4", "n5"}, {"n3"}]
    with pytest.raises(p.PartitionError):
        p.isolate(NODES5, "n9")


def test_halves_and_majority_minority_sizes() -> None:
    """Halves give floor/ceil halves; majority/minority gives n//2+1 against the rest."""
    for seed in range(20):
        h = p.components(NODES5, p.halves(NODES5, random.Random(seed)))
        assert sorted(len(c) for c in h) == [2, 3]
        m = p.components(NODES5, p.majority_minority(NODES5, random.Random(seed)))
        assert sorted(len(c) for c in m) == [2, 3]
        four = ["a", "b", "c", "d"]
        assert sorted(len(c) for c in p.components(four, p.halves(four, random.Random(seed)))) \
            == [2, 2]
        assert sorted(
            len(c) for c in p.components(four, p.majority_minority(four, random.Random(seed)))
        ) == [1, 3]


def test_majorities_ring_each_node_sees_a_distinct_majority() -> None:
    """Every node hears a majority, and no two nodes hear the same set (Jepsen's ring)."""
    for n in (3, 5, 7):
        nodes = [f"n{i}" for i in range(1, n + 1)]
        g = p.majorities_ring(nodes, random.Random(n))
        heard = {x: frozenset(nodes) - g.get(x, frozenset()) for x in nodes}
        assert all(len(v) == n // 2 + 1 and x in v for x, v in heard.items())
        if n > 3:
            assert len(set(heard.values())) == n
        if (n // 2 + 1) % 2 == 1:  # odd windows are centred, so the ring is symmetric
            assert _symmetric(g)


def test_bridge_has_one_node_hearing_everyone() -> None:
    """The bridge node has no grudge and everyone hears it; the two sides cut each other."""
    g = p.bridge(NODES5, random.Random(7))
    free = [n for n in NODES5 if n not in g]
    assert len(free) == 1
    bridge_node = free[0]
    assert all(bridge_node not in srcs for srcs in g.values())
    assert len(p.components(NODES5, g)) == 1  # connected through the bridge
    assert _symmetric(g)


@given(st.integers(min_value=2, max_value=9), st.integers(min_value=0, max_value=2**32))
def test_random_partitions_are_complete_and_reproducible(n: int, seed: int) -> None:
    """Random partitions are symmetric, split the nodes, and depend only on the seed."""
    nodes = [f"n{i}" for i in range(1, n + 1)]
    g1 = p.random_partition(nodes, random.Random(seed))
    g2 = p.random_partition(nodes, random.Random(seed))
    assert g1 == g2
    assert _symmetric(g1)
    comps = p.components(nodes, g1)
    assert 2 <= len(comps) <= 3
    assert sorted(itertools.chain.from_iterable(comps)) == sorted(nodes)


def test_isolate_role_picks_from_the_projection() -> None:
    """Head/tail/middle/repairing isolation targets the right member of the chain."""
    upi, rep = ["n2", "n4", "n1"], ["n5"]
    rng = random.Random(1)
    assert p.isolate_role(upi, rep, "head", NODES5, rng)["n2"] == set(NODES5) - {"n2"}
    assert p.isolate_role(upi, rep, "tail", NODES5, rng)["n1"] == set(NODES5) - {"n1"}
    assert p.isolate_role(upi, rep, "middle", NODES5, rng)["n4"] == set(NODES5) - {"n4"}
    assert p.isolate_role(upi, rep, "repairing", NODES5, rng)["n5"] == set(NODES5) - {"n5"}
    with pytest.raises(p.PartitionError):
        p.isolate_role(["n1", "n2"], [], "middle", NODES5, rng)


def test_iptables_script_drops_from_grudge_addresses_in_own_chain() -> None:
    """Rules go to the MACHI-NEMESIS chain only; loss uses -m statistic."""
    text = p.iptables_script(["10.77.0.12", "10.77.0.11"])
    rules = [ln for ln in text.splitlines() if " -A " in ln]
    assert rules == [
        "iptables -w -A MACHI-NEMESIS -s 10.77.0.11 -j DROP",
        "iptables -w -A MACHI-NEMESIS -s 10.77.0.12 -j DROP",
    ]
    assert "iptables -w -F MACHI-NEMESIS" in text
    lossy = p.iptables_script(["10.77.0.11"], 0.25)
    assert "-m statistic --mode random --probability 0.250000 -j DROP" in lossy
    assert all("MACHI-NEMESIS" in ln for ln in text.splitlines() if "iptables" in ln)
    with pytest.raises(p.PartitionError):
        p.iptables_script(["10.77.0.11"], 0.0)


def test_partition_by_name_rejects_unknown_kinds() -> None:
    """A typo in a partition name is a clear error, not a silent no-op."""
    with pytest.raises(p.PartitionError, match="unknown partition"):
        p.partition_by_name("halfs", NODES5, random.Random(0))


def test_same_seed_same_schedule_and_different_seed_differs() -> None:
    """The schedule is a pure function of the seed (and nodes and options)."""
    opts = s.ScheduleOptions(time_limit_s=120, faults=("partition", "kill", "pause",
                                                       "torn-write", "loss"))
    a = s.make_schedule(42, NODES5, opts)
    b = s.make_schedule(42, NODES5, opts)
    c = s.make_schedule(43, NODES5, opts)
    assert a == b
    assert s.schedule_json(42, a) == s.schedule_json(42, b)
    assert a != c
    assert len(a) >= 6


@given(st.integers(min_value=0, max_value=2**63), st.integers(min_value=2, max_value=7))
def test_schedule_is_well_formed(seed: int, n: int) -> None:
    """Events are time-ordered, within the limit, one fault at a time, and end healed."""
    nodes = [f"n{i}" for i in range(1, n + 1)]
    opts = s.ScheduleOptions(time_limit_s=60, faults=s.FAULTS)
    events = s.make_schedule(seed, nodes, opts)
    times = [e.time_s for e in events]
    assert times == sorted(times)
    assert all(0 < t < 60 for t in times)
    active: str | None = None
    ends = {"partition": "heal", "loss": "heal", "kill": "restart", "pause": "resume"}
    for e in events:
        assert set(e.targets) <= set(nodes) and e.targets
        if e.fault in ends:
            assert active is None, f"{e} while {active} is active"
            active = ends[e.fault]
        elif e.fault == "torn-write":
            assert active == "restart"
        else:
            assert e.fault == active
            active = None
        if e.fault == "partition" and not e.param("kind").startswith("isolate-"):
            assert set(s.grudge_of(e)) <= set(nodes)
    assert active is None


def test_schedule_options_reject_unknown_faults() -> None:
    """Unknown fault names fail when the options are built."""
    with pytest.raises(ValueError):
        s.ScheduleOptions(faults=("partition", "meteor"))


@pytest.mark.parametrize("seed", range(40))
def test_short_schedule_has_an_early_fault_that_ends_before_the_limit(seed: int) -> None:
    """A 12 s schedule (any seed) starts a fault within 3 s, ends every fault at least
    1.2 s before the limit, and starts with the required faults (a crash for a canary)."""
    opts = s.ScheduleOptions(time_limit_s=12, faults=("partition", "kill", "crash"),
                             required=("crash",), kill_roles=s.KILL_ROLES)
    events = s.make_schedule(seed, NODES5, opts)
    assert events and events[0].time_s <= 3.0
    assert events[0].fault == "kill" and events[0].param("crash") is True
    assert max(e.time_s for e in events) <= 12 - 1.2
    plain = s.make_schedule(seed, NODES5, s.ScheduleOptions(time_limit_s=12))
    assert plain and plain[0].time_s <= 3.0


def test_role_kills_name_a_role_and_restart_everyone() -> None:
    """With kill roles, a kill carries the role (resolved at run time) and a node count,
    and its restart names every node (only the dead ones are restarted)."""
    opts = s.ScheduleOptions(time_limit_s=120, faults=("kill",), kill_roles=("head", "tail"))
    events = s.make_schedule(3, NODES5, opts)
    kills = [e for e in events if e.fault == "kill"]
    assert kills and all(e.param("role") in ("head", "tail") for e in kills)
    assert all(1 <= e.param("count") <= 2 for e in kills)
    assert all(e.targets == tuple(NODES5) for e in events if e.fault == "restart")
    with pytest.raises(ValueError):
        s.ScheduleOptions(kill_roles=("witness",))
    with pytest.raises(ValueError):
        s.ScheduleOptions(faults=("kill",), required=("crash",))


def test_role_kill_hits_the_node_in_that_role_now() -> None:
    """The executor resolves a role kill from the chain's current UPI: the head, the tail,
    a middle node, plus count-1 others; a role nobody holds falls back to a UPI member."""
    from types import SimpleNamespace

    from harness.nemesis.executor import NemesisExecutor

    net: Any = SimpleNamespace(hosts=SimpleNamespace(names=NODES5))
    ex = NemesisExecutor(net, chain_view=lambda: (["n2", "n3", "n1"], []))

    def kill(role: str, count: int) -> tuple[list[str], dict[str, Any]]:
        ev = s.FaultEvent(1.0, "kill", tuple(NODES5),
                          (("role", role), ("count", count), ("rng_seed", 7)))
        return ex._role_targets(ev)

    t, info = kill("head", 2)
    assert info["role_node"] == "n2" and "n2" in t and len(t) == 2
    assert kill("tail", 1) == (["n1"], {"role": "tail", "role_node": "n1"})
    assert kill("middle", 1)[0] == ["n3"]
    ex2 = NemesisExecutor(net, chain_view=lambda: (["n4"], []))
    ev = s.FaultEvent(1.0, "kill", tuple(NODES5), (("role", "middle"), ("rng_seed", 1)))
    t, info = ex2._role_targets(ev)
    assert t == ["n4"] and "role_fallback" in info
