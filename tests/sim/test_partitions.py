"""Simulator scenario sweeps: one-way partitions end in safety and convergence."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from machi.sim.run import Phase, Result, repro_command, run

PHASE_TICKS = 3000


def _combos(nodes: list[str], max_pairs: int) -> list[tuple[tuple[str, str], ...]]:
    pairs = list(itertools.permutations(nodes, 2))
    out: list[tuple[tuple[str, str], ...]] = []
    for k in range(1, max_pairs + 1):
        out.extend(itertools.combinations(pairs, k))
    return out


def _check(nodes: list[str], mode: str, witnesses: list[str], seed: int,
           combo: tuple[tuple[str, str], ...]) -> None:
    phases = [Phase(frozenset(combo), PHASE_TICKS)]
    result: Result = run(nodes, mode=mode, seed=seed,  # type: ignore[arg-type]
                         witnesses=witnesses, phases=phases)
    scenario = json.dumps([{"partitions": [list(p) for p in combo], "ticks": PHASE_TICKS}])
    assert result.ok, (
        f"{result.final_json()}\nreproduce with: "
        f"{repro_command(nodes, mode, seed, witnesses, scenario)}"
    )


THREE = ["a", "b", "c"]
CASES_3 = _combos(THREE, 3)


@pytest.mark.parametrize("combo", CASES_3, ids=lambda c: "+".join(a + b for a, b in c))
@pytest.mark.parametrize("mode", ["ap", "cp"])
def test_three_nodes_every_one_two_three_pair_partition(
    mode: str, combo: tuple[tuple[str, str], ...]
) -> None:
    """Every 1-, 2- and 3-pair one-way partition of 3 nodes (AP; CP with witness a) keeps
    every invariant and converges to one full chain after healing."""
    seed = CASES_3.index(combo) + 1
    _check(THREE, mode, ["a"] if mode == "cp" else [], seed, combo)


def _sample(nodes: list[str], k: int, salt: int) -> list[tuple[tuple[str, str], ...]]:
    return random.Random(f"sample/{len(nodes)}/{salt}").sample(_combos(nodes, 3), k)


FOUR = ["a", "b", "c", "d"]
FIVE = ["a", "b", "c", "d", "e"]
SAMPLE = (
    [(FOUR, c) for c in _sample(FOUR, 20, 1)] + [(FIVE, c) for c in _sample(FIVE, 15, 2)]
)


@pytest.mark.parametrize(
    ("nodes", "combo"), SAMPLE,
    ids=[f"{len(n)}n-" + "+".join(a + b for a, b in c) for n, c in SAMPLE],
)
@pytest.mark.parametrize("mode", ["ap", "cp"])
def test_four_and_five_nodes_seeded_sample(
    mode: str, nodes: list[str], combo: tuple[tuple[str, str], ...]
) -> None:
    """A seeded sample of 1-3 pair one-way partitions for 4 and 5 nodes (CP: a minority
    of witnesses) is safe and converges."""
    witnesses = {4: ["a"], 5: ["a", "b"]}[len(nodes)] if mode == "cp" else []
    _check(nodes, mode, witnesses, 1000 + SAMPLE.index((nodes, combo)), combo)


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("mode", ["ap", "cp"])
def test_random_phases_from_seed(mode: str, seed: int) -> None:
    """Random multi-phase partitions drawn from the seed (the CLI default) are safe and
    converge."""
    result = run(THREE, mode=mode, seed=seed,  # type: ignore[arg-type]
                 witnesses=["a"] if mode == "cp" else [])
    assert result.ok, f"{result.final_json()}\nreproduce with: " + repro_command(
        THREE, mode, seed, ["a"] if mode == "cp" else [])


def test_same_seed_same_history() -> None:
    """One seed gives exactly the same adoption history (determinism)."""
    def history(seed: int) -> list[dict[str, object]]:
        recs: list[dict[str, object]] = []
        run(THREE, mode="ap", seed=seed, on_adopt=recs.append)
        return recs
    assert history(5) == history(5)
    assert history(5) != history(6)
