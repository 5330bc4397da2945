"""The write-once checkers agree with an exhaustive linearizability search
(per position, a write-once register with unique values) on small random histories,
valid or not, with failed and unknown operations."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from harness.checker.run import check_history
from harness.checker.write_once import check_write_once
from harness.history import events_from_dicts, pair_ops

POSITIONS = [["f", 1024, 10], ["f", 2048, 10]]


def _linearizable(ops: list[dict[str, Any]]) -> bool:
    """Brute force over every order of every subset of unknown ops, one position."""
    must = [o for o in ops if o["type"] == "ok"]
    maybe = [o for o in ops if o["type"] == "info" and o["f"] == "write"]
    for k in range(len(maybe) + 1):
        for extra in itertools.combinations(maybe, k):
            chosen = must + list(extra)
            for order in itertools.permutations(chosen):
                if _legal(order):
                    return True
    return False


def _legal(order: tuple[dict[str, Any], ...]) -> bool:
    # Real time: an op may not come after an op that was invoked after it completed.
    for i, a in enumerate(order):
        for b in order[i + 1 :]:
            if b["resp"] < a["inv"]:
                return False
    state = None
    for o in order:
        if o["f"] == "write":
            if state is not None:
                return False  # an effective write to a written position is impossible
            state = o["v"]
        elif o["v"] != state:
            return False
    return True


@st.composite
def histories(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Up to 7 ops by 3 processes on 2 positions; values unique per write attempt."""
    n_ops = draw(st.integers(1, 7))
    events: list[dict[str, Any]] = []
    ids = [0, 1, 2]  # process id per client slot; a client whose op is unknown gets a new id
    busy: dict[int, dict[str, Any]] = {}
    started = 0
    writes = 0
    while started < n_ops or busy:
        slot = draw(st.integers(0, 2))
        proc = ids[slot]
        if proc not in busy:
            if started >= n_ops:
                continue
            started += 1
            pos = draw(st.sampled_from(POSITIONS))
            if draw(st.booleans()):
                writes += 1
                value = {"pos": pos, "v": f"w{writes}"}
                f = "write"
            else:
                value = {"pos": pos}
                f = "read"
            busy[proc] = {"f": f, "value": value}
            events.append({"process": proc, "type": "invoke", "f": f, "value": value})
            continue
        op = busy.pop(proc)
        outcome = draw(st.sampled_from(["ok", "ok", "ok", "fail", "info", "pending"]))
        if outcome != "ok":
            ids[slot] += 3
        if outcome == "pending":
            continue  # never completes: unknown, like info
        value = op["value"]
        if op["f"] == "read" and outcome == "ok":
            seen = draw(st.sampled_from([None, *[f"w{i}" for i in range(1, writes + 1)]]))
            value = {"pos": value["pos"], "v": seen}
        events.append({"process": proc, "type": outcome, "f": op["f"], "value": value})
    for i, e in enumerate(events):
        e["index"] = i
    return events


def _brute_force_valid(events: list[dict[str, Any]]) -> bool:
    ops = pair_ops(events_from_dicts(events))
    by_pos: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    values_written = {}
    for o in ops:
        pos = tuple(o.value["pos"])
        v = o.value.get("v") if o.f == "write" else (o.result or {}).get("v")
        if o.f == "write":
            values_written[v] = (pos, o.type)
        inv = o.invoke_index
        resp = o.complete_index if o.type == "ok" else 10**9
        by_pos.setdefault(pos, []).append(
            {"f": o.f, "type": o.type, "v": v, "inv": inv, "resp": resp}
        )
    return all(_linearizable(ops_at) for ops_at in by_pos.values())


@settings(max_examples=120, deadline=None)
@given(histories())
def test_agrees_with_exhaustive_search(events: list[dict[str, Any]]) -> None:
    """Both checkers (linear-time, and the general search with the write-once model) give
    the verdict of brute-force linearization."""
    expected = _brute_force_valid(events)
    got = check_write_once([dict(e) for e in events])
    assert got.valid is expected, (events, got.witness)
    ops = pair_ops(events_from_dicts([dict(e) for e in events]))
    general = check_history(ops, "write-once", time_limit_s=20, memory_limit_mb=1024, general=True)
    assert general.valid is expected, (events, general.witness)
