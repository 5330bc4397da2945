"""Hypothesis stateful tests over the simulator: any interleaving of ticks, cut links,
heals, message loss, slow (reordered) messages, delivery of one chosen message in flight
ahead of the others, crashes, restarts, appends and reads
keeps every invariant, and after healing and restarting everything the chain converges
with no acknowledged write lost."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import machi.sim.cluster as cluster_mod
from machi.sim.cluster import AP_ANTI_ENTROPY_INTERVAL_MS, Cluster

NODES = ["a", "b", "c"]
node = st.sampled_from(NODES)
NODES5 = ["a", "b", "c", "d", "e"]
node5 = st.sampled_from(NODES5)
HEAL_TICKS_MAX = 20_000


class _SimMachine(RuleBasedStateMachine):
    mode = "ap"
    witnesses: tuple[str, ...] = ()
    nodes = NODES

    def __init__(self) -> None:
        super().__init__()
        self.cluster: Cluster | None = None

    @initialize(seed=st.integers(0, 2**16))
    def boot(self, seed: int) -> None:
        self.seed = seed
        self.cluster = Cluster(self.nodes, mode=self.mode,  # type: ignore[arg-type]
                               seed=seed, witnesses=self.witnesses)
        self.cluster.bootstrap()
        self.cluster.run_until(1000)

    @property
    def c(self) -> Cluster:
        assert self.cluster is not None
        return self.cluster

    @rule(ticks=st.integers(1, 800))
    def tick(self, ticks: int) -> None:
        self.c.run_until(self.c.now + ticks)

    @rule(src=node, dst=node)
    def cut_link(self, src: str, dst: str) -> None:
        if src != dst:
            self.c.set_partitions(self.c.cut | {(src, dst)})

    @rule(ppm=st.sampled_from([0, 0, 20_000, 100_000]))
    def message_loss(self, ppm: int) -> None:
        self.c.loss_ppm = ppm

    @rule(ppm=st.sampled_from([0, 0, 50_000, 200_000]))
    def slow_messages(self, ppm: int) -> None:
        self.c.slow_ppm = ppm

    @rule(pick=st.integers(0, 63))
    def deliver(self, pick: int) -> None:
        self.c.deliver(pick)

    @rule()
    def heal(self) -> None:
        self.c.set_partitions(set())

    @rule(n=node)
    def crash(self, n: str) -> None:
        self.c.crash(n)

    @rule(n=node)
    def restart(self, n: str) -> None:
        self.c.restart(n)

    @rule(loc=node)
    def append(self, loc: str) -> None:
        if self.c.alive(loc) and loc not in self.witnesses:
            self.c.client_append(loc)

    @rule(loc=node)
    def read(self, loc: str) -> None:
        if self.c.alive(loc) and (self.c.acked or self.c.maybe) and loc not in self.witnesses:
            self.c.client_read(loc)

    @invariant()
    def no_violations(self) -> None:
        if self.cluster is not None:
            assert not self.c.violations, (self.seed, self.c.violations)

    def teardown(self) -> None:
        if self.cluster is None:
            return
        c = self.c
        c.set_partitions(set())
        c.loss_ppm = c.slow_ppm = 0
        for n in self.nodes:
            c.restart(n)
        deadline = c.now + HEAL_TICKS_MAX
        while c.now < deadline and not c.converged():
            c.run_until(c.now + 20)
        assert c.converged(), f"seed {self.seed}: no convergence after healing"
        assert not c.violations, c.violations
        assert c.lost_acked_writes() == 0, f"seed {self.seed}: acknowledged writes lost"
        if self.mode == "ap":
            # AP repair merged everything any replica had (crashes and restarts
            # included), and anti-entropy in the stable chain what an append left on some
            # replicas only (its reply lost, no epoch change): bounded by two passes
            end = c.now + 2 * AP_ANTI_ENTROPY_INTERVAL_MS + 1_000
            while c.now < end and not (c.converged() and c.replica_divergence() == []):
                c.run_until(c.now + 20)
            assert c.converged() and c.replica_divergence() == [], (
                self.seed, c.replica_divergence())


class APMachine(_SimMachine):
    mode = "ap"


class CPMachine(_SimMachine):
    mode = "cp"
    witnesses = ("a",)


class CP5Machine(_SimMachine):
    """Five nodes, two witnesses; rules pick any of the five."""

    mode = "cp"
    witnesses = ("a", "b")
    nodes = NODES5

    @rule(n=node5)
    def crash5(self, n: str) -> None:
        self.c.crash(n)

    @rule(n=node5)
    def restart5(self, n: str) -> None:
        self.c.restart(n)

    @rule(src=node5, dst=node5)
    def cut_link5(self, src: str, dst: str) -> None:
        if src != dst:
            self.c.set_partitions(self.c.cut | {(src, dst)})

    @rule(loc=node5)
    def append5(self, loc: str) -> None:
        self.append(loc)


_settings = settings(max_examples=40, stateful_step_count=30, deadline=None)
APMachine.TestCase.settings = _settings
CPMachine.TestCase.settings = _settings
CP5Machine.TestCase.settings = settings(max_examples=15, stateful_step_count=30,
                                        deadline=None)
TestAPSimulator = APMachine.TestCase
TestCPSimulator = CPMachine.TestCase
TestCP5Simulator = CP5Machine.TestCase


def test_deliver_takes_the_chosen_message_first() -> None:
    """``Cluster.deliver`` runs exactly the chosen in-flight message now (not the first
    one due), leaves the others queued, and does nothing when no message is in flight."""
    c = Cluster(NODES, mode="ap", seed=5)
    c.bootstrap()
    while len(c.pending_messages()) < 2:
        c.run_until(c.now + 1)
    before = c.pending_messages()
    now = c.now
    kind = c.deliver(len(before) - 1)
    assert kind == before[-1][1] and c.now == now
    left = Counter(c.pending_messages())
    assert not Counter(before[:-1]) - left  # the others are still in flight
    c.run_until(c.now + 5_000)
    c.set_partitions({(a, b) for a in NODES for b in NODES if a != b})
    c.run_until(c.now + 1_000)  # every message in flight is delivered or lost
    while c.pending_messages():
        c.run_until(c.now + 1)
    assert c.deliver(3) is None


def _orphan_case() -> None:
    """The case the AP machine found (session 5): cut a -> b, append from b (the head a
    writes, its reply is lost, the client re-appends: orphan chunks on a), teardown."""
    state = APMachine()
    state.boot(seed=0)
    state.cut_link(src="a", dst="b")
    state.append(loc="b")
    state.teardown()


def test_the_found_orphan_case_passes_with_anti_entropy() -> None:
    _orphan_case()


def test_the_found_orphan_case_fails_without_anti_entropy(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cluster_mod, "AP_ANTI_ENTROPY_INTERVAL_MS", 0)
    with pytest.raises(AssertionError, match="ap replicas differ"):
        _orphan_case()
