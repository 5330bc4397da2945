"""Goal: hosts' clocks have unrelated origins (monotonic clocks), so fitness report ages
must be judged on each receiver's own clock.  Regression: ages were the receiver's clock
minus the observer's ``time_ms``; a node whose clock ran far ahead had its reports look
fresh forever to the others (its "a unreachable" outlived the heal) while theirs looked
stale at once to it: even a single one-way cut never converged after healing."""

from __future__ import annotations

import itertools
import json

import pytest

from machi.sim.run import Phase, run

THREE = ["a", "b", "c"]
PAIRS = list(itertools.permutations(THREE, 2))
CASES = [c for k in (1, 2) for c in itertools.combinations(PAIRS, k)]
#: days and hours apart, as the monotonic clocks of different hosts are
SKEWS = ({"a": 0, "b": 500_000_000, "c": 3_000_000},
         {"a": 3_000_000, "b": 0, "c": 500_000_000})


@pytest.mark.parametrize("mode", ["ap", "cp"])
def test_one_and_two_pair_partitions_converge_with_skewed_clocks(mode: str) -> None:
    """Every 1- and 2-pair one-way partition of 3 nodes, with per-node clock offsets,
    keeps every invariant and converges after healing."""
    failures = []
    for i, combo in enumerate(CASES):
        skew = SKEWS[i % len(SKEWS)]
        res = run(THREE, mode=mode, seed=i + 1,  # type: ignore[arg-type]
                  witnesses=["a"] if mode == "cp" else [],
                  phases=[Phase(frozenset(combo), 3000)], clock_skew_ms=skew,
                  heal_ticks_max=10_000)
        if not res.ok:
            scenario = json.dumps([{"partitions": [list(p) for p in combo], "ticks": 3000}])
            failures.append(f"seed {i + 1} skew {skew} scenario {scenario}: "
                            f"{res.final_json()}")
    assert not failures, "\n".join(failures)
