"""Scenarios: phases of one-way partitions, healing, convergence and the final verdict.

Owns the scenario format (``[{"partitions": [["a","b"], ...], "ticks": T}, ...]``,
``["a","b"]`` = messages from a to b are lost), the random phases drawn from the seed,
and :func:`run`, which ``machi sim`` and the tests call.  Must not: print (callers get
records through callbacks) or decide anything the cluster or the managers decide.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from machi.core.projection import Mode

from .cluster import AP_ANTI_ENTROPY_INTERVAL_MS, Cluster

WARMUP_TICKS = 2_000
HEAL_TICKS_MAX = 30_000
SETTLE_TICKS = 500


@dataclass(frozen=True)
class Phase:
    partitions: frozenset[tuple[str, str]]
    ticks: int


@dataclass
class Result:
    converged: bool
    ticks_to_converge: int
    violations: list[str]
    lost_acked_writes: int
    adoptions: int = 0
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.converged and not self.violations and self.lost_acked_writes == 0

    def final_json(self) -> dict[str, Any]:
        return {
            "converged": self.converged, "ticks_to_converge": self.ticks_to_converge,
            "violations": self.violations, "lost_acked_writes": self.lost_acked_writes,
        }


def parse_scenario(raw: Any, nodes: Sequence[str]) -> list[Phase]:
    """Validate a scenario (parsed JSON); raises ``ValueError`` with a clear message."""
    if not isinstance(raw, list):
        raise ValueError("scenario: want a JSON list of phases")
    phases = []
    for i, ph in enumerate(raw):
        if not isinstance(ph, dict) or set(ph) - {"partitions", "ticks"}:
            raise ValueError(f"scenario phase {i}: want {{'partitions': [...], 'ticks': T}}")
        ticks = ph.get("ticks")
        if not isinstance(ticks, int) or isinstance(ticks, bool) or not 0 < ticks <= 10**7:
            raise ValueError(f"scenario phase {i}: ticks must be an integer in 1..10^7")
        pairs = set()
        for pair in ph.get("partitions", []):
            if (
                not isinstance(pair, list) or len(pair) != 2 or pair[0] == pair[1]
                or any(x not in nodes for x in pair)
            ):
                raise ValueError(f"scenario phase {i}: bad partition {pair!r}")
            pairs.add((pair[0], pair[1]))
        phases.append(Phase(frozenset(pairs), ticks))
    return phases


def load_scenario(path: str, nodes: Sequence[str]) -> list[Phase]:
    with open(path, encoding="utf-8") as f:
        try:
            raw = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"scenario {path}: not JSON ({exc})") from None
    return parse_scenario(raw, nodes)


def random_phases(nodes: Sequence[str], seed: int) -> list[Phase]:
    """1-4 phases of 0-3 random one-way cuts, 1000-5000 ticks each, from the seed."""
    rng = random.Random(f"phases/{seed}")
    pairs = list(itertools.permutations(nodes, 2))
    out = []
    for _ in range(rng.randint(1, 4)):
        k = rng.randint(0, min(3, len(pairs)))
        out.append(Phase(frozenset(rng.sample(pairs, k)), rng.randint(1000, 5000)))
    return out


def run(
    nodes: Sequence[str],
    *,
    mode: Mode,
    seed: int,
    witnesses: Sequence[str] = (),
    phases: Sequence[Phase] | None = None,
    clients: bool = True,
    on_adopt: Callable[[dict[str, Any]], None] | None = None,
    on_change: Callable[[str], None] | None = None,
    on_trace: Callable[[Any], None] | None = None,
    heal_ticks_max: int = HEAL_TICKS_MAX,
    clock_skew_ms: Mapping[str, int] | None = None,
) -> Result:
    """Bootstrap, warm up, play the phases, heal, wait for convergence, check data."""
    cluster = Cluster(
        list(nodes), mode=mode, seed=seed, witnesses=tuple(witnesses),
        client_interval_ms=20 if clients else 0, on_adopt=on_adopt, on_change=on_change,
        on_trace=on_trace, clock_skew_ms=clock_skew_ms,
    )
    cluster.bootstrap()
    cluster.run_until(WARMUP_TICKS)
    for ph in random_phases(nodes, seed) if phases is None else phases:
        cluster.set_partitions(set(ph.partitions))
        cluster.run_until(cluster.now + ph.ticks)
    cluster.set_partitions(set())
    healed_at = cluster.now
    converged = False
    since: int | None = None
    while cluster.now < healed_at + heal_ticks_max:
        cluster.run_until(cluster.now + 10)
        if not cluster.converged():
            since = None
        elif since is None:
            since = cluster.now
        elif cluster.now - since >= SETTLE_TICKS:
            converged = True
            break
    ticks = (since or cluster.now) - healed_at
    lost = cluster.lost_acked_writes() if converged else 0
    divergence = cluster.replica_divergence() if converged else []
    if divergence:
        # AP: chunks an append left on some replicas while the chain kept its epoch (a
        # lost reply) wait for the tail's next anti-entropy pass: at most two periods
        end = cluster.now + 2 * AP_ANTI_ENTROPY_INTERVAL_MS + 1_000
        while divergence and cluster.now < end:
            cluster.run_until(cluster.now + 10)
            divergence = cluster.replica_divergence() if cluster.converged() else divergence
    st = cluster.stats
    return Result(
        converged=converged, ticks_to_converge=ticks if converged else -1,
        violations=[*cluster.violations, *divergence], lost_acked_writes=lost,
        adoptions=len(cluster.adoptions),
        stats={k: getattr(st, k) for k in st.__dataclass_fields__},
    )


def repro_command(
    nodes: Sequence[str], mode: str, seed: int, witnesses: Sequence[str] = (),
    scenario_json: str | None = None,
) -> str:
    """The ``machi sim`` command line that reproduces a run."""
    cmd = f"machi sim --nodes {','.join(nodes)} --mode {mode} --seed {seed}"
    if witnesses:
        cmd += f" --witnesses {','.join(witnesses)}"
    if scenario_json is not None:
        cmd = f"echo '{scenario_json}' > /tmp/scenario.json && {cmd} --scenario /tmp/scenario.json"
    return cmd
