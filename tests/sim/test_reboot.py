"""Goal: a node whose host rebooted (its monotonic clock starts again, lower) is judged
by its new fitness reports at once, not by the ones it made before the reboot.
Regression: reports of one observer were ordered by its clock alone, so after a reboot
its new reports lost to its old ones at every other node until those went stale
(``fitness_stale_ms``): a node that had been cut off from a peer before the reboot stayed
in conflict with it (and out of the chain) long after the network had healed.  Fix: each
report carries the observer's incarnation (a counter raised at every process start,
persisted in the node's SQLite), which orders reports before the clock does."""

from __future__ import annotations

import pytest

from machi.sim.cluster import Cluster, sim_config
from machi.sim.run import WARMUP_TICKS, repro_command

SEEDS = range(4)
#: c's monotonic clock before the reboot: 10 hours of uptime
UPTIME_MS = 36_000_000
#: converge well before the old report would have gone stale (sim fitness_stale_ms):
#: with incarnations 150-500 ms (seeds 0-7), without them 4-18 s
HEAL_BOUND_MS = sim_config("a", "c1", "ap").fitness_stale_ms // 10


def _cut_reboot_heal(mode: str, witnesses: tuple[str, ...], seed: int) -> tuple[Cluster, int]:
    """a and c cannot talk for a while (c reports a unreachable), then c's host reboots
    and the network heals at the same moment; returns the cluster and the ms it took to
    converge (-1: not within HEAL_BOUND_MS)."""
    c = Cluster(["a", "b", "c"], mode=mode, seed=seed,  # type: ignore[arg-type]
                witnesses=witnesses, client_interval_ms=20,
                clock_skew_ms={"c": UPTIME_MS})
    c.bootstrap()
    c.run_until(WARMUP_TICKS)
    c.set_partitions({("a", "c"), ("c", "a")})
    c.run_until(c.now + 3_000)
    held = c.flus["b"].fitness.get("c")
    assert held is not None and "a" in held.unreachable, f"setup: b holds {held}"
    c.crash("c")
    c.set_partitions(set())
    c.restart("c", clock_skew_ms=0)  # the reboot: c's clock restarts 10 h lower
    t0 = c.now
    while c.now - t0 < HEAL_BOUND_MS:
        c.run_until(c.now + 50)
        if c.converged():
            return c, c.now - t0
    return c, -1


@pytest.mark.parametrize(("mode", "witnesses"), [("ap", ()), ("cp", ("b",))])
def test_rebooted_node_rejoins_without_waiting_for_its_old_reports_to_fade(
    mode: str, witnesses: tuple[str, ...]
) -> None:
    for seed in SEEDS:
        c, took_ms = _cut_reboot_heal(mode, witnesses, seed)
        repro = f"seed {seed} ({repro_command(c.names, mode, seed, witnesses)})"
        assert took_ms >= 0, (
            f"{repro}: not converged {HEAL_BOUND_MS} ms after the reboot; b holds c's "
            f"report {c.flus['b'].fitness.get('c')}")
        assert not c.violations, f"{repro}: {c.violations}"
        held = c.flus["b"].fitness["c"]
        assert held.incarnation == 2 and not held.unreachable, f"{repro}: {held}"
