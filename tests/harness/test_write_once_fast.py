"""The columnar fast path of the write-once checker (DuckDB) gives exactly the Python
checker's result: on valid histories it answers itself, with the same stats and landing
report; on anomalous or oddly shaped ones it hands over and the Python checker's verdict
and witness come out unchanged."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import harness.checker.write_once_fast as wof
from harness.checker.gen import WRITE_ONCE_ANOMALIES, write_once_bench_lines, write_once_history
from harness.checker.write_once import check_write_once_lines
from harness.history import HistoryError
from tests.harness.test_write_once_agreement import (
    abandoned_copy_histories,
    valid_abandoned_copy_histories,
)

pytestmark = pytest.mark.skipif(not wof.available(), reason="duckdb not installed")


def _lines(events: Iterable[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(e).encode() + b"\n" for e in events)


def _run(data: bytes, *, both: bool = False, **kw: Any) -> tuple[Any, Any, Any]:
    """(fast path's own answer, result with the fast path, result without), or the
    HistoryError message they raise; with ``both=False`` the result with the fast path
    is derived (the fast answer, else the Python checker's: what the caller does)."""
    with tempfile.TemporaryFile() as fh:
        fh.write(data)
        fh.seek(0)
        fast_only = wof.try_check_file(fh, **kw)
        out = []
        for fast in (True, False) if both else (False,):
            fh.seek(0)
            try:
                res = check_write_once_lines(fh, fast=fast, fast_min_bytes=0, **kw)
                out.append(res.to_json())
            except HistoryError as exc:
                out.append(("HistoryError", str(exc)))
    if not both:
        out.insert(0, out[0] if fast_only is None else fast_only.to_json())
    return fast_only, out[0], out[1]


def _same(data: bytes, *, both: bool = False) -> Any:
    fast_only, with_fast, python = _run(data, both=both)
    assert with_fast == python
    if fast_only is not None:
        assert fast_only.to_json() == python
        assert python["valid"] is True
    return fast_only


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    processes=st.integers(1, 6),
    crash_p=st.sampled_from([0.0, 0.1, 0.3]),
    fail_p=st.sampled_from([0.0, 0.1]),
    final_reads=st.booleans(),
    anomaly=st.sampled_from([None, *WRITE_ONCE_ANOMALIES]),
)
def test_fast_path_agrees_on_generated_histories(
    seed: int,
    processes: int,
    crash_p: float,
    fail_p: float,
    final_reads: bool,
    anomaly: str | None,
) -> None:
    """Whole results agree on simulated histories (crashes, failures, final reads, at most
    one injected anomaly); a valid one is proven by the fast path itself."""
    final_reads = final_reads or anomaly == "lost-write"
    events = write_once_history(
        seed=seed,
        ops=60,
        processes=processes,
        crash_p=crash_p,
        fail_p=fail_p,
        final_reads=final_reads,
        anomaly=anomaly,
        window=8,
        nodes=("a", "b"),
    )
    fast_only = _same(_lines(events))
    if anomaly is None:
        assert fast_only is not None
    else:
        assert fast_only is None


@settings(max_examples=25, deadline=None)
@given(abandoned_copy_histories())
def test_fast_path_agrees_with_abandoned_copies(events: list[dict[str, Any]]) -> None:
    """Whole results agree on small histories where appends' ids may be read anywhere,
    failed and pending attempts included (valid and invalid ones)."""
    _same(_lines(events))


@settings(max_examples=15, deadline=None)
@given(valid_abandoned_copy_histories())
def test_fast_path_proves_correct_stores_with_abandoned_copies(
    events: list[dict[str, Any]],
) -> None:
    """Histories of a correct store with abandoned copies are proven valid by the fast path,
    landing report included."""
    assert _same(_lines(events)) is not None


def test_bench_histories_are_proven_with_the_same_landing_report() -> None:
    """The benchmark generator's history (crashed appends that landed or not, probes of
    unwritten positions, final reads) is proven valid with identical stats and report."""
    data = b"".join(write_once_bench_lines(seed=3, ops=3000, crash_p=0.05))
    fast_only = _same(data)
    assert fast_only is not None
    report = fast_only.witness["unknown_appends"]
    assert report["landed"] and report["not_landed"]


def _base() -> list[dict[str, Any]]:
    pos = ["f", 0, 10]
    return [
        {"index": 0, "process": 0, "type": "invoke", "f": "append", "value": {"v": "a"}},
        {"index": 1, "process": 0, "type": "ok", "f": "append", "value": {"v": "a", "pos": pos}},
        {"index": 2, "process": 1, "type": "invoke", "f": "read", "value": {"pos": pos}},
        {"index": 3, "process": 1, "type": "ok", "f": "read", "value": {"pos": pos, "v": "a"}},
    ]


def _mutated(path: tuple[Any, ...], value: Any) -> bytes:
    events = _base()
    target: Any = events
    for k in path[:-1]:
        target = target[k]
    target[path[-1]] = value
    return _lines(events)


ODD_SHAPES = {
    "index as a string": ((3, "index"), "3"),
    "index as a float": ((3, "index"), 3.0),
    "index out of order": ((3, "index"), 1),
    "process as a string": ((1, "process"), "0"),
    "read value as a number": ((3, "value", "v"), 1),
    "id with an escape": ((3, "value", "v"), "\\u0061"),
    "offset as a string": ((1, "value", "pos"), ["f", "0", 10]),
    "offset as a float": ((1, "value", "pos"), ["f", 0.0, 10]),
    "size zero": ((1, "value", "pos"), ["f", 0, 0]),
    "negative offset": ((1, "value", "pos"), ["f", -1, 10]),
    "position of two": ((1, "value", "pos"), ["f", 0]),
    "file as a number": ((1, "value", "pos"), [7, 0, 10]),
    "final as a string": ((3, "final"), "yes"),
    "unknown type": ((3, "type"), "done"),
    "completion of another op": ((3, "f"), "append"),
}


@pytest.mark.parametrize("case", sorted(ODD_SHAPES))
def test_odd_shapes_are_left_to_the_python_checker(case: str) -> None:
    """A line of a shape the fast path does not handle makes it hand over; the result (or
    the HistoryError) is the Python checker's."""
    path, value = ODD_SHAPES[case]
    assert _same(_mutated(path, value), both=True) is None


def test_valid_base_history_and_nemesis_lines_are_proven() -> None:
    """The base history is proven; with nemesis events and other op kinds around it too
    (ignored ops counted as the Python checker counts them)."""
    assert _same(_lines(_base())) is not None
    events = _base()
    events[2:2] = [
        {"index": 1.1, "process": "nemesis", "type": "invoke", "f": "start-partition"},
        {
            "index": 1.2,
            "process": "nemesis",
            "type": "info",
            "f": "start-partition",
            "value": {"grudge": {"a": ["b"]}},
        },
        {
            "index": 1.3,
            "process": "nemesis",
            "type": "info",
            "f": "stop-partition",
            "value": "healed",
        },
        {"index": 1.4, "process": 5, "type": "invoke", "f": "trim", "value": [1, 2]},
    ]
    for i, e in enumerate(events):
        e["index"] = i
    fast_only = _same(_lines(events))
    assert fast_only is not None
    assert fast_only.stats["ignored_ops"] == 2


def test_torn_last_line_and_pending_invocation() -> None:
    """A torn last line (a crashed writer) is the Python checker's business; a pending
    invocation is unknown on both paths."""
    data = _lines(_base())
    assert _same(data + b'{"index": 4, "proc') is None
    pending = {"index": 4, "process": 2, "type": "invoke", "f": "append", "value": {"v": "b"}}
    fast_only = _same(data + _lines([pending]))
    assert fast_only is not None
    assert fast_only.witness["unknown_appends"]["examples_not_landed"] == ["b"]


def test_hands_over_without_duckdb_budget_or_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """No fast answer without DuckDB, past the memory budget, after the deadline, or for
    lines that are not a regular file; the verdict is the same."""
    data = _lines(_base())
    assert _same(data, both=True) is not None
    fast_only, with_fast, python = _run(data, both=True, memory_limit_mb=1e-6)
    assert fast_only is None and with_fast == python
    fast_only, _, _ = _run(data, deadline=lambda: True)
    assert fast_only is None
    assert wof.try_check_file(data.splitlines(keepends=True)) is None
    assert check_write_once_lines(data.splitlines(keepends=True)).valid is True
    with tempfile.TemporaryFile() as fh:
        fh.write(data)
        fh.seek(0)
        assert wof.try_check_file(fh, min_bytes=len(data) + 1) is None
        assert wof.try_check_file(fh, min_bytes=len(data)) is not None
    monkeypatch.setattr(wof, "duckdb", None)
    fast_only, with_fast, python = _run(data, both=True)
    assert fast_only is None and with_fast == python and python["valid"] is True
