"""The linear-time write-once checker: hand-made cases for every anomaly kind, the
landing report, budgets, input forms, and generated histories with and without one
injected anomaly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.checker.gen import (
    EXPECTED_KINDS,
    WRITE_ONCE_ANOMALIES,
    write_once_bench_lines,
    write_once_history,
)
from harness.checker.write_once import (
    WriteOnceChecker,
    check_write_once,
    check_write_once_lines,
)
from harness.history import HistoryError, events_from_dicts, pair_ops

F = "pre^^00000000^u^1"
P1 = [F, 1024, 100]
P2 = [F, 1124, 50]


class H:
    """A tiny history builder: ``inv``/``ok``/``fail``/``info`` append events in order."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def _ev(self, proc: int, typ: str, f: str, value: Any, **extra: Any) -> H:
        i = len(self.events)
        self.events.append(
            {
                "index": i,
                "time": i * 10,
                "process": proc,
                "type": typ,
                "f": f,
                "value": value,
                **extra,
            }
        )
        return self

    def inv(self, proc: int, f: str, value: Any, **extra: Any) -> H:
        return self._ev(proc, "invoke", f, value, **extra)

    def ok(self, proc: int, f: str, value: Any, **extra: Any) -> H:
        return self._ev(proc, "ok", f, value, **extra)

    def fail(self, proc: int, f: str, value: Any) -> H:
        return self._ev(proc, "fail", f, value)

    def info(self, proc: int, f: str, value: Any) -> H:
        return self._ev(proc, "info", f, value)

    def append(self, proc: int, v: str, pos: list[Any]) -> H:
        return self.inv(proc, "append", {"v": v}).ok(proc, "append", {"v": v, "pos": pos})

    def read(self, proc: int, pos: list[Any], v: str | None, **extra: Any) -> H:
        return self.inv(proc, "read", {"pos": pos}, **extra).ok(
            proc, "read", {"pos": pos, "v": v}, **extra
        )


def kinds(history: list[dict[str, Any]]) -> dict[str, int]:
    r = check_write_once(history)
    assert r.model == "write-once"
    anomalies = (r.witness or {}).get("anomalies", {})
    assert (r.valid is True) == (not anomalies)
    return {k: a["count"] for k, a in anomalies.items()}


def test_documented_example_is_valid() -> None:
    """The example history in docs/history-write-once.md checks valid."""
    text = (Path(__file__).parents[2] / "docs" / "history-write-once.md").read_text("utf-8")
    block = text.split("```json\n", 1)[1].split("```", 1)[0]
    r = check_write_once_lines(block.splitlines(keepends=True))
    assert r.valid is True, r.witness
    assert r.ops == 3


def test_concurrent_null_read_and_append_is_valid() -> None:
    """A null read overlapping the write, and value reads after it, are linearizable."""
    h = H().inv(1, "read", {"pos": P1}).inv(0, "write", {"pos": P1, "v": "a"})
    h.ok(1, "read", {"pos": P1, "v": None}).ok(0, "write", {"pos": P1, "v": "a"})
    h.read(1, P1, "a").read(2, P2, None)
    assert kinds(h.events) == {}


def test_conflict_two_acknowledged_values() -> None:
    """Two ok writes of different values at one position are a conflict."""
    h = H().append(0, "a", P1)
    h.inv(1, "write", {"pos": P1, "v": "b"}).ok(1, "write", {"pos": P1, "v": "b"})
    assert kinds(h.events) == {"conflict": 1}


def test_conflict_between_reads() -> None:
    """Two reads returning different values at one position are a conflict."""
    h = H().inv(0, "write", {"pos": P1, "v": "a"}).inv(1, "write", {"pos": P1, "v": "b"})
    h.read(2, P1, "a").read(3, P1, "b")
    h.info(0, "write", {"pos": P1, "v": "a"}).info(1, "write", {"pos": P1, "v": "b"})
    assert kinds(h.events)["conflict"] == 1


def test_unwritten_after_ack() -> None:
    """A null read that began after the append was acknowledged is a stale read."""
    h = H().append(0, "a", P1).read(1, P1, None)
    assert kinds(h.events) == {"unwritten-after-ack": 1}


def test_unwritten_after_read_with_unknown_writer() -> None:
    """Null after a read saw the value is invalid even if the writer never returned."""
    h = H().inv(0, "write", {"pos": P1, "v": "a"}).read(1, P1, "a").read(2, P1, None)
    assert kinds(h.events) == {"unwritten-after-read": 1}


def test_read_before_write() -> None:
    """A value read that completed before its writer was invoked is impossible."""
    h = H().inv(0, "write", {"pos": P1, "v": "x"})
    h.read(1, P2, "a").append(2, "a", P2)
    h.info(0, "write", {"pos": P1, "v": "x"})
    assert kinds(h.events) == {"read-before-write": 1}


def test_from_nowhere_and_wrong_position() -> None:
    """A value nobody wrote, or a write's value read at another position, is from nowhere."""
    h = H().read(0, P1, "ghost")
    h.inv(1, "write", {"pos": P2, "v": "w"}).ok(1, "write", {"pos": P2, "v": "w"})
    h.read(2, [F, 9000, 1], "w")
    assert kinds(h.events) == {"from-nowhere": 2}


def test_read_of_failed_write() -> None:
    """fail means certainly not written: reading its value is an anomaly."""
    h = H().inv(0, "write", {"pos": P1, "v": "a"}).fail(0, "write", {"pos": P1, "v": "a"})
    h.read(1, P1, "a")
    assert kinds(h.events) == {"read-of-failed": 1}


def test_overlapping_acknowledged_appends() -> None:
    """Two acknowledged chunks sharing bytes in one file overlap; touching ones do not."""
    h = H().append(0, "a", [F, 1024, 100]).append(1, "b", [F, 1100, 10])
    h.append(2, "c", [F, 1124, 10]).append(3, "d", ["other", 1024, 100])
    assert kinds(h.events) == {"overlap": 1}


def test_lost_in_final_reads() -> None:
    """Acknowledged chunks must be read back with their value in the final phase."""
    h = H().append(0, "a", P1).append(0, "b", P2).append(0, "c", [F, 2000, 5])
    h.read(9, P1, "a", final=True, node="n1").read(9, P1, "a", final=True, node="n2")
    h.read(9, P2, "b", final=True, node="n1").read(9, P2, None, final=True, node="n2")
    r = check_write_once(h.events)
    assert r.valid is False
    lost = r.witness["anomalies"]["lost"]  # type: ignore[index]
    assert lost["count"] == 2  # P2 null on n2; [F, 2000, 5] never read
    assert {tuple(e["pos"]) for e in lost["examples"]} == {tuple(P2), (F, 2000, 5)}
    assert any(e.get("node") == "n2" for e in lost["examples"])


def test_no_final_reads_means_no_lost_check() -> None:
    """Without a final phase nothing is declared lost."""
    assert kinds(H().append(0, "a", P1).events) == {}


def test_unknown_appends_landing_report() -> None:
    """info and never-completed appends are reported landed or not, and are not errors."""
    h = H().inv(0, "append", {"v": "a"}).info(0, "append", {"v": "a"})
    h.inv(1, "append", {"v": "b"}).inv(2, "append", {"v": "c"}).info(2, "append", {"v": "c"})
    h.read(3, P1, "a").read(3, P2, None)
    r = check_write_once(h.events)
    assert r.valid is True
    rep = r.witness["unknown_appends"]  # type: ignore[index]
    assert (rep["count"], rep["landed"], rep["not_landed"]) == (3, 1, 2)
    assert rep["examples_landed"] == [{"v": "a", "pos": P1}]
    assert sorted(rep["examples_not_landed"]) == ["b", "c"]


def test_append_seen_at_an_abandoned_second_position_is_allowed() -> None:
    """An append retried after a downstream failure may leave a copy elsewhere."""
    h = H().inv(0, "append", {"v": "a"}).read(1, P2, "a").ok(0, "append", {"v": "a", "pos": P1})
    assert kinds(h.events) == {}


def test_malformed_positions_raise_history_error() -> None:
    """Bad positions get a clear HistoryError naming the problem."""
    for pos in ([F, -1, 10], [F, 1024, 0], [F, "1024", 10], [F, 1024], "x"):
        with pytest.raises(HistoryError, match="position"):
            check_write_once(H().append(0, "a", pos).events)  # type: ignore[arg-type]
    with pytest.raises(HistoryError, match="position"):
        check_write_once(H().read(0, [F, 1.5, 3], None).events)
    with pytest.raises(HistoryError, match="pending"):
        check_write_once(H().inv(0, "read", {"pos": P1}).inv(0, "read", {"pos": P1}).events)
    with pytest.raises(HistoryError, match="without a pending"):
        check_write_once(H().ok(0, "read", {"pos": P1, "v": None}).events)


def test_memory_budget_gives_unknown() -> None:
    """Past its memory budget the checker answers unknown, saying why."""
    events = list(write_once_history(seed=3, ops=40_000, final_reads=False))  # > 1 batch
    r = check_write_once(events, memory_limit_mb=0.5)
    assert r.valid == "unknown"
    assert "memory budget" in r.witness["explanation"]  # type: ignore[index]
    assert check_write_once(events, memory_limit_mb=512).valid is True


def test_deadline_gives_unknown() -> None:
    """A deadline callback that says time is up stops the checker with unknown."""
    events = list(write_once_history(seed=3, ops=1000, final_reads=False))
    r = check_write_once(events, deadline=lambda: True)
    assert r.valid == "unknown"


@pytest.mark.parametrize("anomaly", [None, *WRITE_ONCE_ANOMALIES])
def test_ops_events_and_lines_agree(anomaly: str | None) -> None:
    """Raw dicts, Event objects, paired Ops and JSONL lines give the same verdict."""
    events = list(write_once_history(seed=5, ops=600, crash_p=0.1, fail_p=0.05, anomaly=anomaly))
    events += list(H().read(999, ["ghost", 1024, 1], "nope").events)
    for i, e in enumerate(events):
        e["index"] = i
    want = check_write_once(events)
    assert want.valid is False
    as_events = check_write_once(events_from_dicts(events))
    as_ops = check_write_once(pair_ops(events_from_dicts(events)))
    lines = [json.dumps(e).encode() + b"\n" for e in events]
    torn = [*lines, b'{"index": 99999, "ty']
    as_lines = check_write_once_lines(torn)
    for r in (as_events, as_ops, as_lines):
        assert r.valid == want.valid
        assert r.ops == want.ops
        assert r.witness == want.witness


def test_streaming_checker_accepts_batches() -> None:
    """Feeding a history in several pieces equals feeding it at once."""
    events = list(write_once_history(seed=7, ops=3000, crash_p=0.05))
    c = WriteOnceChecker()
    c.feed_events(events[:1000])
    c.feed_events(events[1000:])
    assert c.result().to_json() == check_write_once(events).to_json()


@settings(max_examples=25)
@given(
    seed=st.integers(0, 2**32),
    processes=st.integers(1, 12),
    crash_p=st.sampled_from([0.0, 0.05, 0.3]),
    fail_p=st.sampled_from([0.0, 0.1]),
)
def test_generated_histories_are_valid(
    seed: int, processes: int, crash_p: float, fail_p: float
) -> None:
    """Histories of the simulated store, with crashes and failures, check valid."""
    events = write_once_history(
        seed=seed, ops=400, processes=processes, crash_p=crash_p, fail_p=fail_p, window=16
    )
    r = check_write_once(events)
    assert r.valid is True, (seed, r.witness)


@settings(max_examples=15)
@given(
    seed=st.integers(0, 2**32),
    anomaly=st.sampled_from(WRITE_ONCE_ANOMALIES),
    processes=st.integers(1, 10),
    crash_p=st.sampled_from([0.0, 0.1]),
)
def test_each_injected_anomaly_is_caught(
    seed: int, anomaly: str, processes: int, crash_p: float
) -> None:
    """One injected anomaly makes the history invalid, reported under its kind."""
    events = write_once_history(
        seed=seed, ops=300, processes=processes, crash_p=crash_p, anomaly=anomaly, window=16
    )
    r = check_write_once(events)
    assert r.valid is False, (seed, anomaly)
    found = set(r.witness["anomalies"])  # type: ignore[index]
    assert found & set(EXPECTED_KINDS[anomaly]), (seed, anomaly, found)


def test_jsonl_decoding_paths_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batch (msgspec) and per-line (stdlib json) decoding agree; bad lines are named."""
    import harness.checker.write_once as wo

    events = list(write_once_history(seed=11, ops=300, crash_p=0.1))
    lines = [
        json.dumps({k: v for k, v in e.items() if k != "index"}).encode() + b"\n" for e in events
    ]
    fast = check_write_once_lines(lines)
    monkeypatch.setattr(wo, "msgspec", None)  # as without the "fast" extra: stdlib json
    slow = check_write_once_lines(lines)
    assert fast.to_json() == slow.to_json()
    assert fast.valid is True
    monkeypatch.undo()
    bad = [*lines[:5], b"{not json\n", *lines[5:]]
    with pytest.raises(HistoryError, match=r"history:6: invalid JSON"):
        check_write_once_lines(bad)
    with pytest.raises(HistoryError, match=r"history:2: event must be a JSON object"):
        check_write_once_lines([lines[0], b"[1, 2]\n"])
    blank = [lines[0], b"\n", *lines[1:]]
    assert check_write_once_lines(blank).to_json() == fast.to_json()


def test_bench_generator_histories_are_valid_and_sensitive() -> None:
    """The fast benchmark generator writes valid histories; one changed value is caught."""
    lines = list(write_once_bench_lines(seed=4, ops=3000, processes=20, crash_p=0.1))
    r = check_write_once_lines(lines)
    assert r.valid is True, r.witness
    assert r.witness["unknown_appends"]["count"] > 0  # type: ignore[index]
    i = next(
        i for i, ln in enumerate(lines) if b'"f":"read"' in ln and b'"ok"' in ln and b'"v":"' in ln
    )
    bad = [*lines[:i], lines[i].replace(b'"v":"', b'"v":"x'), *lines[i + 1 :]]
    assert check_write_once_lines(bad).valid is False


def test_nemesis_and_other_ops_are_ignored() -> None:
    """Nemesis events and unknown op kinds neither count as chunk ops nor break pairing."""
    h = H().append(0, "a", P1)
    h._ev("nemesis", "invoke", "start-partition", None)
    h._ev("nemesis", "info", "start-partition", {"grudge": {"a": ["b"]}})
    h.inv(1, "trim", {"pos": P1}).ok(1, "trim", {"pos": P1})
    h._ev("nemesis", "info", "stop-partition", "healed")
    h.read(2, P1, "a")
    events = h.events
    lines = [json.dumps(e).encode() + b"\n" for e in events]
    for r in (check_write_once(events), check_write_once_lines(lines)):
        assert r.valid is True
        assert r.ops == 2
        assert r.stats["ignored_ops"] == 2
