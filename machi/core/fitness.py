"""Fitness: who cannot reach whom, and the one set of servers everybody calls "up".

Owns the reachability reports (one per observer: the members whose projection store it
could not read lately, plus an optional self-declared admin-down time), the rule that
turns missed reads into "unreachable" (:func:`observe`), their merge (last writer wins
per observer, by the observer's incarnation, then its own clock), their ages
(:func:`born_of`), and the decision :func:`choose_up`.

Clocks: a report's ``time_ms`` and ``admin_down_until_ms`` are on the observer's clock
(a host's monotonic clock: its origin is unrelated to any other host's, and it starts
again lower after a reboot), so they are only compared with each other, and only within
one *incarnation* of the observer: a counter the node persists and raises at every
process start (``Report.incarnation``), so a restarted observer's reports beat the ones
it made before, whatever its clock says.  How old a report is, is judged on the receiver's own
clock: each holder keeps a *birth time* per report on its clock, and passes reports on
with their *age* (``age_ms`` on the wire), from which the next holder computes its own
birth time.  Ages only grow as a report travels (the largest age any holder gives it
wins), so a report nobody renews goes stale everywhere and dies out.  Must
not: do I/O (the chain manager publishes its merged map through an effect; peers read
it together with the projection stores).

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
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, replace

from .projection import JSON

EXACT_MAX = 12


@dataclass(frozen=True, slots=True)
class Report:
    """One observer's latest reachability report."""

    observer: str
    time_ms: int
    unreachable: frozenset[str]
    admin_down_until_ms: int = 0
    #: (member, strikes) for members the observer dropped lately (LivenessRule), sorted
    strikes: tuple[tuple[str, int], ...] = ()
    #: the observer's process start counter (persisted, raised at every start): orders
    #: its reports before ``time_ms`` does (0: a node that sends none)
    incarnation: int = 0

    def key(self) -> tuple[int, int, tuple[str, ...], int, tuple[tuple[str, int], ...]]:
        """Newer report of one observer = larger key: incarnation, then its clock."""
        return (self.incarnation, self.time_ms, tuple(sorted(self.unreachable)),
                self.admin_down_until_ms, self.strikes)

    def to_json(self) -> dict[str, JSON]:
        return {
            "observer": self.observer, "time_ms": self.time_ms,
            "unreachable": sorted(self.unreachable),
            "admin_down_until_ms": self.admin_down_until_ms,
            "strikes": {m: n for m, n in self.strikes},
            "incarnation": self.incarnation,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, JSON]) -> Report:
        raw = d.get("strikes") or {}
        strikes = tuple(sorted((str(m), int(n)) for m, n in raw.items())) if isinstance(
            raw, dict) else ()
        return cls(
            str(d["observer"]), int(d["time_ms"]), frozenset(d["unreachable"]),
            int(d.get("admin_down_until_ms", 0)), strikes, int(d.get("incarnation", 0)),
        )


FitnessMap = Mapping[str, Report]


def merge(*maps: FitnessMap) -> dict[str, Report]:
    """Per observer keep the newest report: the higher incarnation, then the later time
    on its clock (ties: a fixed order, so merge commutes)."""
    out: dict[str, Report] = {}
    for m in maps:
        for obs, rep in m.items():
            old = out.get(obs)
            if old is None or rep.key() > old.key():
                out[obs] = rep
    return out


BornMap = Mapping[str, int]


def born_of(
    merged: FitnessMap, sources: Iterable[tuple[FitnessMap, Mapping[str, int]]], *,
    now_ms: int,
) -> dict[str, int]:
    """Birth time on my clock (``now_ms``) of each merged report: ``now_ms`` minus the
    largest age that a source holding that very report (same ``key``) gave it; a report
    no source gave an age (new, or from a peer that sends none) is born now.
    ``sources`` are (reports, ages in ms) pairs: my previous map with its ages, and
    every member's published map."""
    oldest: dict[str, int] = {}
    for reports, ages in sources:
        for obs, rep in reports.items():
            m = merged.get(obs)
            if m is not None and rep.key() == m.key():
                oldest[obs] = max(oldest.get(obs, 0), max(0, ages.get(obs, 0)))
    return {obs: now_ms - oldest.get(obs, 0) for obs in merged}


def _age_ms(rep: Report, born_ms: BornMap | None, now_ms: int) -> int:
    """How old ``rep`` is: on my clock when I know its birth time (``born_ms``); without
    ``born_ms`` (every observer on one clock, as in unit tests) from its own time."""
    if born_ms is None:
        return now_ms - rep.time_ms
    return now_ms - born_ms.get(rep.observer, now_ms)


def conflicts(
    members: Iterable[str], reports: FitnessMap, *, now_ms: int, stale_ms: int,
    born_ms: BornMap | None = None,
) -> set[frozenset[str]]:
    """Undirected conflict edges among ``members`` from the fresh reports."""
    ms = set(members)
    edges: set[frozenset[str]] = set()
    for obs, rep in reports.items():
        if obs not in ms or _age_ms(rep, born_ms, now_ms) > stale_ms:
            continue
        for other in rep.unreachable:
            if other in ms and other != obs:
                edges.add(frozenset((obs, other)))
    return edges


def strikes_against(
    members: Iterable[str], reports: FitnessMap, *, now_ms: int, stale_ms: int,
    born_ms: BornMap | None = None,
) -> dict[str, int]:
    """Per member, the strikes the fresh reports of the other members give it."""
    out = {m: 0 for m in members}
    for obs, rep in reports.items():
        if obs not in out or _age_ms(rep, born_ms, now_ms) > stale_ms:
            continue
        for m, n in rep.strikes:
            if m in out and m != obs:
                out[m] += n
    return out


def admin_down(
    members: Iterable[str], reports: FitnessMap, *, now_ms: int, born_ms: BornMap | None = None
) -> set[str]:
    """Members that declared themselves down for a time that has not passed yet: the
    hold left when the report was made (its own clock) is longer than the report's age
    (mine)."""
    ms = set(members)
    return {o for o, r in reports.items() if o in ms
            and r.admin_down_until_ms - r.time_ms > _age_ms(r, born_ms, now_ms)}


def choose_up(
    members: Iterable[str], reports: FitnessMap, *, now_ms: int, stale_ms: int,
    born_ms: BornMap | None = None,
) -> frozenset[str]:
    """The up set everybody with the same reports agrees on (module docstring)."""
    cands = sorted(set(members) - admin_down(members, reports, now_ms=now_ms,
                                             born_ms=born_ms))
    edges = conflicts(cands, reports, now_ms=now_ms, stale_ms=stale_ms, born_ms=born_ms)
    if not edges:
        return frozenset(cands)

    def independent(s: tuple[str, ...]) -> bool:
        return not any(frozenset(pair) in edges for pair in itertools.combinations(s, 2))

    flaky = strikes_against(cands, reports, now_ms=now_ms, stale_ms=stale_ms,
                            born_ms=born_ms)
    if len(cands) <= EXACT_MAX:
        for k in range(len(cands), 0, -1):
            best: tuple[str, ...] | None = None
            for s in itertools.combinations(cands, k):  # lexicographic order
                # among the largest sets, keep the members dropped least often lately
                # (a slow member's reports must not exclude a healthy one)
                if independent(s) and (best is None or sum(flaky[m] for m in s) < sum(
                        flaky[m] for m in best)):
                    best = s
            if best is not None:
                return frozenset(best)
        return frozenset()
    degree = {m: sum(1 for e in edges if m in e) for m in cands}
    chosen: list[str] = []
    for m in sorted(cands, key=lambda m: (degree[m], m)):
        if independent((*chosen, m)):
            chosen.append(m)
    return frozenset(chosen)


# ---------------------------------------------------------------------------- liveness


@dataclass(frozen=True, slots=True)
class LivenessRule:
    """When missed reads make a member unreachable.

    A member is reported unreachable once it missed ``misses_min`` rounds in a row *and*
    has not answered for ``after_ms`` (the daemon: twice its read timeout), so neither a
    burst of quick rounds (kicks) nor one slow read under load drops it.  Every time it
    is dropped it earns a *strike*; with s strikes both thresholds are multiplied by
    2**min(s, strikes_max).  A slow-but-alive member that keeps being dropped and coming
    back therefore gets harder to drop each time: churn is bounded (at most
    strikes_max + 1 drops, then about one per decay period), while a dead member is still
    dropped, only later.  One strike is forgotten per ``strike_decay_ms`` without a new
    one.  A member that answers is reachable again at once (a heal is never slowed
    down)."""

    misses_min: int = 3
    after_ms: int = 2_000
    strikes_max: int = 3
    strike_decay_ms: int = 600_000


@dataclass(frozen=True, slots=True)
class Liveness:
    """What my read rounds say about one member."""

    misses: int = 0  # consecutive rounds without an answer
    last_ok_ms: int = 0  # last answer (or when I first asked it)
    strikes: int = 0  # times it was dropped recently
    strike_ms: int = 0  # when the last strike was added
    down: bool = False  # reported unreachable


def observe(
    prev: Mapping[str, Liveness], asked: Iterable[str], answered: Set[str], *,
    now_ms: int, rule: LivenessRule,
) -> dict[str, Liveness]:
    """The liveness of every member asked in one round (members not asked are dropped)."""
    out: dict[str, Liveness] = {}
    for m in asked:
        lv = prev.get(m) or Liveness(last_ok_ms=now_ms)
        if lv.strikes and not lv.down and now_ms - lv.strike_ms >= rule.strike_decay_ms:
            lv = replace(lv, strikes=lv.strikes - 1, strike_ms=now_ms)  # one per period
        if m in answered:
            out[m] = replace(lv, misses=0, last_ok_ms=now_ms, down=False)
            continue
        lv = replace(lv, misses=lv.misses + 1)
        scale = 1 << min(lv.strikes, rule.strikes_max)
        if not lv.down and lv.misses >= rule.misses_min * scale and (
            now_ms - lv.last_ok_ms >= rule.after_ms * scale
        ):
            lv = replace(lv, down=True, strikes=lv.strikes + 1, strike_ms=now_ms)
        out[m] = lv
    return out


def unreachable_of(live: Mapping[str, Liveness]) -> frozenset[str]:
    return frozenset(m for m, lv in live.items() if lv.down)


def strikes_of(live: Mapping[str, Liveness]) -> tuple[tuple[str, int], ...]:
    return tuple(sorted((m, lv.strikes) for m, lv in live.items() if lv.strikes))
