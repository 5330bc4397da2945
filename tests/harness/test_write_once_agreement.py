"""The linear-time write-once checker and the general linearizability checker (with its
write-once model) give the same verdict on small write-once histories, valid or with one
injected anomaly, with crashed and failed operations."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from harness.checker.gen import WRITE_ONCE_ANOMALIES, write_once_history
from harness.checker.run import check_history
from harness.checker.write_once import check_write_once
from harness.history import events_from_dicts, pair_ops


def _both(events: list[dict[str, Any]]) -> tuple[Any, Any]:
    ops = pair_ops(events_from_dicts(events))
    general = check_history(ops, "write-once", time_limit_s=20, memory_limit_mb=1024, general=True)
    return check_write_once(events).valid, general.valid


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    processes=st.integers(1, 5),
    crash_p=st.sampled_from([0.0, 0.1, 0.3]),
    fail_p=st.sampled_from([0.0, 0.1]),
    anomaly=st.sampled_from([None, *WRITE_ONCE_ANOMALIES]),
)
def test_checkers_agree_on_generated_histories(
    seed: int, processes: int, crash_p: float, fail_p: float, anomaly: str | None
) -> None:
    """Same verdict from both checkers on simulated histories (+ at most one anomaly)."""
    events = list(
        write_once_history(
            seed=seed,
            ops=40,
            processes=processes,
            crash_p=crash_p,
            fail_p=fail_p,
            anomaly=anomaly,
            window=8,
            nodes=("a", "b"),
        )
    )
    mine, general = _both(events)
    assert general != "unknown"
    assert mine == general, (seed, anomaly)
    if anomaly is None:
        assert mine is True


# --- appends that leave abandoned copies (reference 4.3) ------------------------------

POSITIONS = [["f", 1024, 10], ["f", 2048, 10]]  # never overlapping: no `overlap` anomaly


def _ev(index: int, proc: int, typ: str, f: str, value: Any) -> dict[str, Any]:
    return {"index": index, "process": proc, "type": typ, "f": f, "value": value}


def test_append_copy_at_abandoned_position_four_events() -> None:
    """The 4-event history that split the checkers: an ok append acknowledged at P1 whose
    id a concurrent read saw at P2 (an abandoned copy) is valid for both."""
    p1, p2 = POSITIONS
    events = [
        _ev(0, 0, "invoke", "append", {"v": "a"}),
        _ev(1, 1, "invoke", "read", {"pos": p2}),
        _ev(2, 1, "ok", "read", {"pos": p2, "v": "a"}),
        _ev(3, 0, "ok", "append", {"v": "a", "pos": p1}),
    ]
    assert _both(events) == (True, True)


def test_abandoned_copy_rules_agree_on_hand_made_cases() -> None:
    """Abandoned copies are crashed writes: read before the append's invocation, a null
    read after a value read, a failed append's id, and two ids acknowledged at one
    position stay invalid for both checkers; an info append seen at two positions is
    valid for both."""
    p1, p2 = POSITIONS
    read_before_invoke = [
        _ev(0, 1, "invoke", "read", {"pos": p2}),
        _ev(1, 1, "ok", "read", {"pos": p2, "v": "a"}),
        _ev(2, 0, "invoke", "append", {"v": "a"}),
        _ev(3, 0, "ok", "append", {"v": "a", "pos": p1}),
    ]
    null_after_value = [
        _ev(0, 0, "invoke", "append", {"v": "a"}),
        _ev(1, 0, "ok", "append", {"v": "a", "pos": p1}),
        _ev(2, 1, "invoke", "read", {"pos": p2}),
        _ev(3, 1, "ok", "read", {"pos": p2, "v": "a"}),
        _ev(4, 1, "invoke", "read", {"pos": p2}),
        _ev(5, 1, "ok", "read", {"pos": p2, "v": None}),
    ]
    failed_append_seen = [
        _ev(0, 0, "invoke", "append", {"v": "a"}),
        _ev(1, 0, "fail", "append", {"v": "a"}),
        _ev(2, 1, "invoke", "read", {"pos": p2}),
        _ev(3, 1, "ok", "read", {"pos": p2, "v": "a"}),
    ]
    two_acked_ids = [
        _ev(0, 0, "invoke", "append", {"v": "a"}),
        _ev(1, 0, "ok", "append", {"v": "a", "pos": p1}),
        _ev(2, 1, "invoke", "write", {"pos": p1, "v": "b"}),
        _ev(3, 1, "ok", "write", {"pos": p1, "v": "b"}),
    ]
    info_seen_twice = [
        _ev(0, 0, "invoke", "append", {"v": "a"}),
        _ev(1, 0, "info", "append", {"v": "a"}),
        _ev(2, 1, "invoke", "read", {"pos": p1}),
        _ev(3, 1, "ok", "read", {"pos": p1, "v": "a"}),
        _ev(4, 1, "invoke", "read", {"pos": p2}),
        _ev(5, 1, "ok", "read", {"pos": p2, "v": "a"}),
    ]
    for events in (read_before_invoke, null_after_value, failed_append_seen, two_acked_ids):
        assert _both(events) == (False, False), events
    assert _both(info_seen_twice) == (True, True)


@st.composite
def abandoned_copy_histories(draw: st.DrawFn) -> list[dict[str, Any]]:
    """2 to 8 appends, writes and reads by 3 processes on 2 positions; an ok read returns
    null or any id attempted so far, appends' ids more often (so they show up at positions
    other than the acknowledged one, and failed or misplaced ids now and then)."""
    n_ops = draw(st.integers(2, 8))
    events: list[dict[str, Any]] = []
    ids = [0, 1, 2]  # process id per client slot; a client whose op is unknown gets a new id
    busy: dict[int, dict[str, Any]] = {}
    attempted: list[str] = []
    started = 0
    while started < n_ops or busy:
        slot = draw(st.integers(0, 2))
        proc = ids[slot]
        if proc not in busy:
            if started >= n_ops:
                continue
            started += 1
            f = draw(st.sampled_from(["append", "append", "write", "read", "read", "read", "read"]))
            if f == "read":
                value: dict[str, Any] = {"pos": draw(st.sampled_from(POSITIONS))}
            else:
                vid = f"{f[0]}{started}"
                attempted.append(vid)
                value = {"v": vid}
                if f == "write":
                    value["pos"] = draw(st.sampled_from(POSITIONS))
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
        if outcome == "ok" and op["f"] == "read":
            appended = [v for v in attempted if v[0] == "a"]  # weighted: seen more often
            seen = draw(st.sampled_from([None, *attempted, *appended, *appended]))
            value = {"pos": value["pos"], "v": seen}
        elif outcome == "ok" and op["f"] == "append":
            value = {"v": value["v"], "pos": draw(st.sampled_from(POSITIONS))}
        events.append({"process": proc, "type": outcome, "f": op["f"], "value": value})
    for i, e in enumerate(events):
        e["index"] = i
    return events


@settings(max_examples=300, deadline=None)
@given(abandoned_copy_histories())
def test_checkers_agree_with_abandoned_copies(events: list[dict[str, Any]]) -> None:
    """Same verdict from both checkers on small histories where appends' ids may be read
    at any position (valid and invalid ones)."""
    mine, general = _both([dict(e) for e in events])
    assert general != "unknown"
    assert mine == general, events


@st.composite
def valid_abandoned_copy_histories(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Histories of a correct store (2 to 8 ops by 3 processes on 4 positions): each op
    takes effect at one step between its invocation and completion; an append may first
    leave an abandoned copy at one free position, then land at another (or end info)."""
    slots = [["f", 1024 * (k + 1), 10] for k in range(4)]
    store: dict[int, str] = {}
    n_ops = draw(st.integers(2, 8))
    events: list[dict[str, Any]] = []
    busy: dict[int, dict[str, Any]] = {}  # process -> op state
    started = 0
    while started < n_ops or busy:
        proc = draw(st.integers(0, 2))
        op = busy.get(proc)
        if op is None:
            if started >= n_ops:
                continue
            started += 1
            f = draw(st.sampled_from(["append", "append", "read", "read", "read"]))
            written = [slots[k] for k in sorted(store)]  # read written positions more often
            value: dict[str, Any] = (
                {"v": f"a{started}"}
                if f == "append"
                else {"pos": draw(st.sampled_from(slots + written + written))}
            )
            busy[proc] = {"f": f, "value": value, "phase": 0}
            events.append({"process": proc, "type": "invoke", "f": f, "value": value})
            continue
        free = [k for k in range(len(slots)) if k not in store]
        if op["f"] == "read" and op["phase"] == 0:
            k = slots.index(op["value"]["pos"])
            op["result"] = {"pos": op["value"]["pos"], "v": store.get(k)}
            op["phase"] = 1
        elif op["f"] == "append" and op["phase"] == 0:  # maybe an abandoned copy first
            if free and draw(st.sampled_from([True, True, False])):
                store[draw(st.sampled_from(free))] = op["value"]["v"]
                op["copied"] = True
            op["phase"] = 1
        elif op["f"] == "append" and op["phase"] == 1:  # land, or stay unknown
            if free and draw(st.sampled_from([True, True, False])):
                k = draw(st.sampled_from(free))
                store[k] = op["value"]["v"]
                op["result"] = {"v": op["value"]["v"], "pos": slots[k]}
            op["phase"] = 2
        else:
            del busy[proc]
            if "result" in op:
                typ, value = "ok", op["result"]
            else:  # an attempt that may have left a copy is unknown, never fail
                typ, value = ("info" if op.get("copied") else "fail"), op["value"]
            events.append({"process": proc, "type": typ, "f": op["f"], "value": value})
    for i, e in enumerate(events):
        e["index"] = i
    return events


@settings(max_examples=200, deadline=None)
@given(valid_abandoned_copy_histories())
def test_both_checkers_accept_correct_stores_with_abandoned_copies(
    events: list[dict[str, Any]],
) -> None:
    """Histories of a correct store whose appends leave abandoned copies are valid for
    both checkers."""
    assert _both([dict(e) for e in events]) == (True, True), events
