"""Goal: when a member dies, exactly one manager authors the replacement chain at exactly
one new epoch.  Regression: CP a,b + witness c, kill b: c (head of the new UPI [c, a])
waited for a (author of the current projection) while a waited for c (the head), both
gave up after max_waits at the same moment and both proposed the same chain at the same
epoch (19/20 seeds in the simulator; real daemons split epochs 2-5 and confirmed only at
epoch 6, ~0.85 s lost)."""

from __future__ import annotations

from typing import Any

import pytest

from machi.sim.cluster import Cluster
from machi.sim.run import WARMUP_TICKS, repro_command

SEEDS = range(10)


def _kill_and_watch(
    mode: str, witnesses: tuple[str, ...], victim: str, seed: int
) -> tuple[Cluster, int, list[dict[str, Any]]]:
    traces: list[dict[str, Any]] = []
    c = Cluster(["a", "b", "c"], mode=mode, seed=seed,  # type: ignore[arg-type]
                witnesses=witnesses, client_interval_ms=20,
                on_trace=lambda f: traces.append(dict(f)))
    c.bootstrap()
    c.run_until(WARMUP_TICKS)
    epochs = {c.manager(n).current.epoch_number for n in c.names}  # type: ignore[union-attr]
    assert len(epochs) == 1, f"not settled before the kill: {repro_command(c.names, mode, seed)}"
    traces.clear()
    c.crash(victim)
    c.run_until(c.now + 3_000)
    return c, epochs.pop(), traces


@pytest.mark.parametrize(("mode", "witnesses", "victim"), [
    ("cp", ("c",), "b"),  # the reported case: the new head is the witness
    ("cp", ("c",), "a"),
    ("ap", (), "b"),
    ("ap", (), "c"),
])
def test_one_author_one_epoch_after_a_kill(
    mode: str, witnesses: tuple[str, ...], victim: str
) -> None:
    """After killing one member, the survivors adopt and confirm the new chain at the
    next epoch, proposed by one member only."""
    for seed in SEEDS:
        c, epoch0, traces = _kill_and_watch(mode, witnesses, victim, seed)
        repro = f"seed {seed} ({repro_command(c.names, mode, seed, witnesses)}, kill {victim})"
        proposals = [(t["node"], t["epoch"]) for t in traces if t["event"] == "propose"]
        assert len(proposals) == 1, f"{repro}: proposals {proposals}"
        survivors = [n for n in c.names if n != victim]
        final = {(c.manager(n).current.epoch_number,  # type: ignore[union-attr]
                  c.manager(n).confirmed) for n in survivors}  # type: ignore[union-attr]
        assert final == {(epoch0 + 1, True)}, f"{repro}: {final}"
        assert not c.violations, f"{repro}: {c.violations}"
