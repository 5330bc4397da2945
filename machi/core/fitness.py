"""Fitness: who cannot reach whom, and the one set of servers everybody calls "up".

Owns the reachability reports (one per observer: the members whose projection store it
could not read in its last iteration, plus an optional self-declared admin-down time),
their merge (last writer wins per observer, by the observer's own clock), and the
decision :func:`choose_up`.  Must not: do I/O (the chain manager publishes its merged
map through an effect; peers read it together with the projection stores).

Design (replaces the unfit graph of reference 5.11; see docs/chain-manager.md):
a read needs both directions of a link, so "x cannot read y" means x and y cannot work
in one chain.  Every fresh report gives an undirected *conflict* edge x--y.  The up set
is the largest set of members with no conflict edge inside it (a maximum independent
set of the conflict graph = a maximum clique of mutual reachability), ties broken by
the sorted member names, minus admin-down members.  It is a pure function of the merged
reports, so servers that have gossiped the same reports compute the same up set and
propose the same chain; a one-way partition then ends with one side excluded (it is
"hosed") instead of each side flapping the chain.  Exact for up to ``EXACT_MAX``
members, greedy (deterministic) beyond.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .projection import JSON

EXACT_MAX = 12


@dataclass(frozen=True, slots=True)
class Report:
    """One observer's latest reachability report."""

    observer: str
    time_ms: int
    unreachable: frozenset[str]
    admin_down_until_ms: int = 0

    def key(self) -> tuple[int, tuple[str, ...], int]:
        return (self.time_ms, tuple(sorted(self.unreachable)), self.admin_down_until_ms)

    def to_json(self) -> dict[str, JSON]:
        return {
            "observer": self.observer, "time_ms": self.time_ms,
            "unreachable": sorted(self.unreachable),
            "admin_down_until_ms": self.admin_down_until_ms,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, JSON]) -> Report:
        return cls(
            str(d["observer"]), int(d["time_ms"]), frozenset(d["unreachable"]),
            int(d.get("admin_down_until_ms", 0)),
        )


FitnessMap = Mapping[str, Report]


def merge(*maps: FitnessMap) -> dict[str, Report]:
    """Per observer keep the newest report (ties: a fixed order, so merge commutes)."""
    out: dict[str, Report] = {}
    for m in maps:
        for obs, rep in m.items():
            old = out.get(obs)
            if old is None or rep.key() > old.key():
                out[obs] = rep
    return out


def conflicts(
    members: Iterable[str], reports: FitnessMap, *, now_ms: int, stale_ms: int
) -> set[frozenset[str]]:
    """Undirected conflict edges among ``members`` from the fresh reports."""
    ms = set(members)
    edges: set[frozenset[str]] = set()
    for obs, rep in reports.items():
        if obs not in ms or now_ms - rep.time_ms > stale_ms:
            continue
        for other in rep.unreachable:
            if other in ms and other != obs:
                edges.add(frozenset((obs, other)))
    return edges


def admin_down(members: Iterable[str], reports: FitnessMap, *, now_ms: int) -> set[str]:
    """Members that declared themselves down until a time still in the future."""
    ms = set(members)
    return {o for o, r in reports.items() if o in ms and r.admin_down_until_ms > now_ms}


def choose_up(
    members: Iterable[str], reports: FitnessMap, *, now_ms: int, stale_ms: int
) -> frozenset[str]:
    """The up set everybody with the same reports agrees on (module docstring)."""
    cands = sorted(set(members) - admin_down(members, reports, now_ms=now_ms))
    edges = conflicts(cands, reports, now_ms=now_ms, stale_ms=stale_ms)
    if not edges:
        return frozenset(cands)

    def independent(s: tuple[str, ...]) -> bool:
        return not any(frozenset(pair) in edges for pair in itertools.combinations(s, 2))

    if len(cands) <= EXACT_MAX:
        for k in range(len(cands), 0, -1):
            for s in itertools.combinations(cands, k):  # lexicographic order
                if independent(s):
                    return frozenset(s)
        return frozenset()
    degree = {m: sum(1 for e in edges if m in e) for m in cands}
    chosen: list[str] = []
    for m in sorted(cands, key=lambda m: (degree[m], m)):
        if independent((*chosen, m)):
            chosen.append(m)
    return frozenset(chosen)
