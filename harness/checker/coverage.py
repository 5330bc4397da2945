"""The coverage guard: a run in which some op kind never succeeded while a fault was
active proves little about that kind, so its verdict is "unknown", not "valid".

Owns: fault intervals (explicit, or read from the nemesis events of a history), the
per-kind count of ok ops that overlapped a fault, and the downgrade of a valid verdict.
Must not: change an invalid verdict (a found anomaly stands), do I/O or read a clock.

An op "succeeded while a fault was active" when it completed ``ok`` and its execution
interval [invoke, complete] overlaps a fault interval [start, end] (``end`` None = the
fault was never healed). Times are in the history's units (``time`` ns by default, or
event ``index`` with ``unit="index"``); intervals must use the same units.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from harness.checker.result import UNKNOWN, CheckResult
from harness.history import NEMESIS, Op

_INF = float("inf")


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault that was active from ``start`` to ``end`` (None: never healed)."""

    start: int
    end: int | None = None
    kind: str = "fault"

    def __post_init__(self) -> None:
        if self.end is not None and self.end < self.start:
            raise ValueError(f"fault {self.kind!r} ends ({self.end}) before it starts")


@dataclass(slots=True)
class Coverage:
    """Per op kind: how many ok ops, and how many of them overlapped a fault."""

    faults: int
    ok: dict[str, int] = field(default_factory=dict)
    ok_during_fault: dict[str, int] = field(default_factory=dict)
    #: client ops per kind whatever their outcome (a kind that never succeeded at all,
    #: e.g. every read failed, is uncovered too)
    attempted: dict[str, int] = field(default_factory=dict)

    @property
    def uncovered(self) -> list[str]:
        """Kinds that never succeeded while a fault was active (empty if no faults)."""
        if not self.faults:
            return []
        kinds = set(self.ok) | set(self.attempted)
        return sorted(k for k in kinds if not self.ok_during_fault.get(k))

    def to_json(self) -> dict[str, Any]:
        return {
            "faults": self.faults,
            "ok": dict(sorted(self.ok.items())),
            "ok_during_fault": dict(sorted(self.ok_during_fault.items())),
            "attempted": dict(sorted(self.attempted.items())),
            "uncovered": self.uncovered,
        }


def faults_from_events(events: Iterable[Mapping[str, Any]], *, unit: str = "time") -> list[Fault]:
    """Fault intervals from the nemesis events of a history (Jepsen style).

    A nemesis ``f`` starting with ``start`` opens a fault (``start-partition`` is closed
    by ``stop-partition``; a bare ``stop`` closes the oldest open fault). Only the
    completion (``info``/``ok``) of a start counts as the moment the fault began, and the
    invocation of a stop as the moment it ended (conservative both ways). A start never
    stopped lasts to the end of the history.
    """
    open_: dict[str, list[int]] = {}
    out: list[Fault] = []
    for ev in events:
        if ev.get("process") != NEMESIS:
            continue
        f = str(ev.get("f", ""))
        t = ev.get(unit)
        if not isinstance(t, int):
            raise ValueError(f"nemesis event without an integer {unit!r}: {dict(ev)!r}")
        typ = ev.get("type")
        if f.startswith("start") and typ in ("info", "ok"):
            open_.setdefault(f[len("start") :].lstrip("-_"), []).append(t)
        elif f.startswith("stop") and typ == "invoke":
            kind = f[len("stop") :].lstrip("-_")
            starts = open_.get(kind) if kind else None
            if not starts:
                oldest = min(
                    ((k, s) for k, s in open_.items() if s), key=lambda ks: ks[1][0], default=None
                )
                if oldest is None:
                    continue
                kind, starts = oldest
            out.append(Fault(starts.pop(0), t, kind or "fault"))
    for kind, starts in open_.items():
        out.extend(Fault(s, None, kind or "fault") for s in starts)
    return sorted(out, key=lambda f: f.start)


def measure(ops: Iterable[Op], faults: Sequence[Fault], *, unit: str = "time") -> Coverage:
    """Count, per op kind, ok ops and ok ops that overlapped a fault interval."""
    spans = sorted((f.start, _INF if f.end is None else f.end) for f in faults)
    starts = [s for s, _ in spans]
    # Running max of the ends: the fault intervals starting at or before t reach this far.
    reach: list[float] = []
    m = -_INF
    for _, e in spans:
        m = max(m, e)
        reach.append(m)
    cov = Coverage(faults=len(spans))
    for op in ops:
        if op.process == NEMESIS:
            continue
        cov.attempted[op.f] = cov.attempted.get(op.f, 0) + 1
        if op.type != "ok":
            continue
        cov.ok[op.f] = cov.ok.get(op.f, 0) + 1
        if not spans:
            continue
        if unit == "index":
            lo, hi = op.invoke_index, op.complete_index
        else:
            lo, hi = op.invoke_time, op.complete_time
        if hi is None:
            continue
        i = bisect.bisect_right(starts, hi) - 1  # last fault starting no later than hi
        if i >= 0 and reach[i] >= lo:
            cov.ok_during_fault[op.f] = cov.ok_during_fault.get(op.f, 0) + 1
    return cov


def guard(result: CheckResult, coverage: Coverage) -> CheckResult:
    """``result`` with a valid verdict downgraded to unknown when coverage is lacking.

    The coverage report is always added to ``stats["coverage"]``; an invalid or unknown
    verdict is returned as it was.
    """
    stats = {**result.stats, "coverage": coverage.to_json()}
    uncovered = coverage.uncovered
    if result.valid is not True or not uncovered:
        return replace(result, stats=stats)
    witness = dict(result.witness or {})
    witness["explanation"] = (
        f"no {', '.join(uncovered)} op succeeded while a fault was active "
        f"({coverage.faults} fault intervals): the run does not show these kinds stay "
        "correct under faults"
    )
    witness["uncovered"] = uncovered
    return replace(result, valid=UNKNOWN, witness=witness, stats=stats)


def measure_events(events: Iterable[Mapping[str, Any]], *, unit: str = "time") -> Coverage:
    """``measure(pair_ops(events), faults_from_events(events))`` in one streaming pass.

    Memory is O(processes + open faults): an op completing at ``hi`` can only overlap
    faults that started before its completion event, i.e. faults already seen; it overlaps
    one iff a fault is still open, or some closed fault ended at or after its invocation.
    For histories too large to pair in memory (the write-once runs).
    """
    pending: dict[Any, tuple[str, int]] = {}
    open_: dict[str, list[int]] = {}
    n_open = 0
    n_faults = 0
    max_closed_end = -_INF
    cov = Coverage(faults=0)
    for ev in events:
        proc = ev.get("process")
        typ = ev.get("type")
        f = str(ev.get("f", ""))
        t = ev.get(unit)
        if not isinstance(t, int):
            raise ValueError(f"event without an integer {unit!r}: {dict(ev)!r}")
        if proc == NEMESIS:
            if f.startswith("start") and typ in ("info", "ok"):
                open_.setdefault(f[len("start") :].lstrip("-_"), []).append(t)
                n_open += 1
                n_faults += 1
            elif f.startswith("stop") and typ == "invoke":
                kind = f[len("stop") :].lstrip("-_")
                starts = open_.get(kind) if kind else None
                if not starts:
                    starts = min((s for s in open_.values() if s), key=lambda s: s[0], default=None)
                if starts:
                    starts.pop(0)
                    n_open -= 1
                    max_closed_end = max(max_closed_end, t)
            continue
        if typ == "invoke":
            pending[proc] = (f, t)
            cov.attempted[f] = cov.attempted.get(f, 0) + 1
            continue
        inv = pending.pop(proc, None)
        if typ != "ok" or inv is None:
            continue
        cov.ok[f] = cov.ok.get(f, 0) + 1
        if n_open > 0 or max_closed_end >= inv[1]:
            cov.ok_during_fault[f] = cov.ok_during_fault.get(f, 0) + 1
    cov.faults = n_faults
    return cov
