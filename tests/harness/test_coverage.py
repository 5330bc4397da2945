"""The coverage guard: valid runs where an op kind never succeeded during a fault become
unknown; covered runs, fault-free runs and invalid verdicts are left alone."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.checker.coverage import Fault, faults_from_events, guard, measure
from harness.checker.result import CheckResult
from harness.history import Op


def op(f: str, lo: int, hi: int | None, typ: str = "ok") -> Op:
    return Op(
        process=1,
        f=f,
        key=None,
        value=None,
        result=None,
        type=typ,
        invoke_index=lo,
        complete_index=hi,
        invoke_time=lo * 10,
        complete_time=None if hi is None else hi * 10,
    )


VALID = CheckResult(valid=True, model="write-once", ops=3, keys=1, witness={}, stats={})


def test_kind_without_success_during_fault_is_unknown() -> None:
    """Reads succeeded during the fault, appends only outside it: unknown."""
    ops = [op("append", 0, 1), op("read", 4, 6), op("append", 5, 7, "info"), op("append", 9, 10)]
    cov = measure(ops, [Fault(50, 80)])
    assert cov.ok == {"append": 2, "read": 1}
    assert cov.ok_during_fault == {"read": 1}
    assert cov.uncovered == ["append"]
    r = guard(VALID, cov)
    assert r.valid == "unknown"
    assert r.witness["uncovered"] == ["append"]  # type: ignore[index]
    assert "append" in r.witness["explanation"]  # type: ignore[index]


def test_kind_that_never_succeeded_at_all_is_unknown() -> None:
    """Every read failed (during the fault and outside it): reads are uncovered too."""
    ops = [op("append", 4, 6), op("read", 5, 7, "fail"), op("read", 9, 10, "fail")]
    cov = measure(ops, [Fault(50, 80)])
    assert cov.ok == {"append": 1} and cov.attempted == {"append": 1, "read": 2}
    assert cov.uncovered == ["read"]
    assert guard(VALID, cov).valid == "unknown"


def test_covered_run_stays_valid() -> None:
    """Every kind has an ok op overlapping a fault: the verdict stands."""
    ops = [op("append", 4, 5), op("read", 7, 9), op("read", 20, 21)]
    r = guard(VALID, measure(ops, [Fault(45, 60), Fault(85, None)]))
    assert r.valid is True
    assert r.stats["coverage"]["uncovered"] == []


def test_no_faults_means_nothing_to_guard() -> None:
    """A run without faults is not downgraded (the guard is about fault coverage)."""
    r = guard(VALID, measure([op("append", 0, 1)], []))
    assert r.valid is True


def test_invalid_verdict_is_never_changed() -> None:
    """An anomaly found stays invalid whatever the coverage."""
    bad = CheckResult(valid=False, model="kv", ops=1, keys=1, witness={"x": 1}, stats={})
    r = guard(bad, measure([op("read", 0, 1)], [Fault(100, 200)]))
    assert r.valid is False
    assert r.witness == {"x": 1}


def test_index_unit() -> None:
    """Intervals can be given in event indices instead of nanoseconds."""
    ops = [op("read", 4, 6)]
    assert measure(ops, [Fault(5, 5)], unit="index").uncovered == []
    assert measure(ops, [Fault(7, 9)], unit="index").uncovered == ["read"]


def test_faults_from_nemesis_events() -> None:
    """start/stop nemesis events become fault intervals; a start never stopped stays open."""
    events: list[dict[str, Any]] = [
        {"process": "nemesis", "type": "invoke", "f": "start-partition", "time": 10},
        {"process": "nemesis", "type": "info", "f": "start-partition", "time": 12},
        {"process": 0, "type": "invoke", "f": "read", "time": 13},
        {"process": "nemesis", "type": "invoke", "f": "stop-partition", "time": 20},
        {"process": "nemesis", "type": "info", "f": "stop-partition", "time": 21},
        {"process": "nemesis", "type": "info", "f": "start-kill", "time": 30},
        {"process": "nemesis", "type": "info", "f": "start", "time": 31},
        {"process": "nemesis", "type": "invoke", "f": "stop", "time": 40},
    ]
    faults = faults_from_events(events)
    assert faults == [Fault(12, 20, "partition"), Fault(30, 40, "kill"), Fault(31, None, "fault")]
    with pytest.raises(ValueError, match="ends"):
        Fault(5, 4)


@given(
    st.lists(st.tuples(st.integers(0, 100), st.integers(0, 20)), max_size=6),
    st.lists(st.tuples(st.integers(0, 100), st.integers(0, 20)), min_size=1, max_size=20),
)
def test_measure_matches_pairwise_overlap(
    faults: list[tuple[int, int]], spans: list[tuple[int, int]]
) -> None:
    """The bisect-based count equals the obvious pairwise overlap count."""
    fs = [Fault(s, s + d) for s, d in faults]
    ops = [op("x", s, s + d) for s, d in spans]
    want = sum(
        1
        for o in ops
        if any(
            f.start <= o.complete_time and f.end >= o.invoke_time  # type: ignore[operator]
            for f in fs
        )
    )
    assert measure(ops, fs).ok_during_fault.get("x", 0) == want


@st.composite
def histories_with_nemesis(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Random interleavings of client ops and nemesis start/stop events."""
    events: list[dict[str, Any]] = []
    busy: set[int] = set()
    for t in range(draw(st.integers(1, 40))):
        kind = draw(st.sampled_from(["op", "op", "op", "start", "stop"]))
        if kind == "op":
            proc = draw(st.integers(0, 3))
            if proc in busy:
                typ = draw(st.sampled_from(["ok", "ok", "fail", "info"]))
                events.append({"process": proc, "type": typ, "f": f"f{proc % 2}", "time": t})
                busy.discard(proc)
            else:
                events.append({"process": proc, "type": "invoke", "f": f"f{proc % 2}", "time": t})
                busy.add(proc)
        else:
            name = draw(st.sampled_from(["", "-partition", "-kill"]))
            typ = "info" if kind == "start" else "invoke"
            events.append({"process": "nemesis", "type": typ, "f": kind + name, "time": t})
    return events


@given(histories_with_nemesis())
def test_streaming_measure_equals_paired_measure(events: list[dict[str, Any]]) -> None:
    """measure_events (one pass) == measure(pair_ops(...), faults_from_events(...))."""
    from harness.checker.coverage import measure_events
    from harness.history import events_from_dicts, pair_ops

    for i, e in enumerate(events):
        e["index"] = i
    want = measure(pair_ops(events_from_dicts(events)), faults_from_events(events))
    got = measure_events(events)
    assert got.to_json() == want.to_json()
