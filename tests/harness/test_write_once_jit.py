"""The compiled fast path of the write-once checker (numba) gives exactly the Python
checker's result: on valid histories it answers itself, with the same stats and landing
report; on anomalous or oddly shaped ones it hands over and the Python checker's verdict
and witness (or its HistoryError) come out unchanged."""

from __future__ import annotations

import json
import random
import tempfile
from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import harness.checker.write_once_jit as woj
from harness.checker.gen import WRITE_ONCE_ANOMALIES, write_once_bench_lines, write_once_history
from harness.checker.write_once import check_write_once_lines, try_fast_paths
from harness.history import HistoryError
from tests.harness.test_write_once_agreement import (
    abandoned_copy_histories,
    valid_abandoned_copy_histories,
)

pytestmark = pytest.mark.skipif(not woj.available(), reason="numba not installed")


def _lines(events: Iterable[dict[str, Any]], **dumps: Any) -> bytes:
    return b"".join(json.dumps(e, **dumps).encode() + b"\n" for e in events)


def _python(data: bytes) -> Any:
    with tempfile.TemporaryFile() as fh:
        fh.write(data)
        fh.seek(0)
        try:
            return check_write_once_lines(fh, fast=False).to_json()
        except HistoryError as exc:
            return ("HistoryError", str(exc))


def _fast(data: bytes, **kw: Any) -> tuple[Any, list[str]]:
    why: list[str] = []
    with tempfile.TemporaryFile() as fh:
        fh.write(data)
        fh.seek(0)
        res = woj.try_check_file(fh, why=why, **kw)
        assert fh.tell() == 0  # the caller's offset is untouched: Python can read from 0
    return res, why


def _same(data: bytes) -> Any:
    """The fast answer (None when it handed over); a fast answer equals Python's."""
    res, _ = _fast(data)
    if res is not None:
        python = _python(data)
        assert res.to_json() == python
        assert python["valid"] is True
    return res


def _hands_over(data: bytes, reason: str | None = None) -> None:
    res, why = _fast(data)
    assert res is None
    if reason is not None:
        assert why == [reason]


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    processes=st.integers(1, 6),
    crash_p=st.sampled_from([0.0, 0.1, 0.3]),
    fail_p=st.sampled_from([0.0, 0.1]),
    final_reads=st.booleans(),
    anomaly=st.sampled_from([None, *WRITE_ONCE_ANOMALIES]),
)
def test_agrees_on_generated_histories(
    seed: int,
    processes: int,
    crash_p: float,
    fail_p: float,
    final_reads: bool,
    anomaly: str | None,
) -> None:
    """Whole results agree on simulated histories (crashes, failures, final reads, at most
    one injected anomaly); a valid one is proven by the fast path itself, an invalid one
    is handed over."""
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
    fast = _same(_lines(events, separators=(",", ":")))
    assert (fast is not None) == (anomaly is None)


@settings(max_examples=30, deadline=None)
@given(abandoned_copy_histories())
def test_agrees_with_abandoned_copies(events: list[dict[str, Any]]) -> None:
    """Small histories where appends' ids may be read anywhere, failed and pending attempts
    included (valid and invalid ones): a fast answer is the Python checker's."""
    _same(_lines(events))


@settings(max_examples=15, deadline=None)
@given(valid_abandoned_copy_histories())
def test_proves_correct_stores_with_abandoned_copies(events: list[dict[str, Any]]) -> None:
    """Histories of a correct store with abandoned copies are proven valid, landing report
    included."""
    assert _same(_lines(events)) is not None


def test_bench_history_in_small_blocks_is_proven_with_the_same_report(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The benchmark generator's history (crashed appends that landed or not, probes of
    unwritten positions, final reads) is proven with identical stats and report, also when
    read in blocks smaller than a line (carry-over, block and table growth)."""
    data = b"".join(write_once_bench_lines(seed=3, ops=3000, crash_p=0.05))
    fast = _same(data)
    assert fast is not None
    report = fast.witness["unknown_appends"]
    assert report["landed"] and report["not_landed"]
    monkeypatch.setattr(woj, "BLOCK_BYTES", 64)
    small, _ = _fast(data)
    assert small is not None and small.to_json() == fast.to_json()


def _disguised(rnd: random.Random, e: dict[str, Any], utf8: bool) -> bytes:
    """One event as a writer other than ours might spell it: keys in any order, JSON
    whitespace, extra fields of any type (escapes, nesting, non-ASCII text as escapes, or
    as UTF-8 with ``utf8``), numbers spelled with exponents in skipped fields."""
    e = dict(e)
    roll = rnd.random()
    if roll < 0.3:
        e["node"] = rnd.choice(['n\\"1', "n\u00e9", "\u00fc", "\t"])
    if rnd.random() < 0.3:
        e["extra"] = {"k": [1, -2.5e3, True, None, {"x": "\n"}], "e": [], "o": {}}
    if rnd.random() < 0.1:
        e["time"] = 1.5e9
    items = list(e.items())
    if rnd.random() < 0.5:
        rnd.shuffle(items)
    seps = rnd.choice([(",", ":"), (", ", ": "), (" , ", " : ")])
    text = json.dumps(dict(items), separators=seps, ensure_ascii=not utf8)
    if rnd.random() < 0.1:
        text = " \t" + text + " "
    return text.encode() + (b"\r\n" if rnd.random() < 0.1 else b"\n")


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    crash_p=st.sampled_from([0.0, 0.2]),
    anomaly=st.sampled_from([None, *WRITE_ONCE_ANOMALIES]),
    disguise=st.booleans(),
    utf8=st.booleans(),
    block_bytes=st.sampled_from([64, 700, 4096, 1 << 20]),
)
def test_agrees_when_blocks_are_parsed_in_halves_on_two_threads(
    seed: int,
    crash_p: float,
    anomaly: str | None,
    disguise: bool,
    utf8: bool,
    block_bytes: int,
) -> None:
    """With every block parsed in two halves on two threads (the path of big files), in
    blocks of any size, over histories in our writer's spelling or disguised (key order,
    whitespace, extra and escaped fields, UTF-8): whenever the fast path answers, its
    result is exactly the Python checker's, and a history in our spelling is answered
    exactly when it has no anomaly, and so is a disguised one in ASCII (UTF-8 text, even
    in a skipped field, is left to the Python checker)."""
    events = write_once_history(
        seed=seed, ops=80, processes=4, crash_p=crash_p, fail_p=0.1, anomaly=anomaly,
        final_reads=True, window=8, nodes=("a", "b"),
    )
    rnd = random.Random(seed)
    data = (
        b"".join(_disguised(rnd, e, utf8) for e in events)
        if disguise
        else _lines(events, separators=(",", ":"))
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(woj, "SPLIT_MIN_BYTES", 1)
        mp.setattr(woj, "BLOCK_BYTES", block_bytes)
        fast = _same(data)
    if not (disguise and utf8):
        assert (fast is not None) == (anomaly is None)


def test_split_parse_of_the_bench_history_gives_the_same_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A benchmark history parsed in halves (blocks of 1 KiB and 64 KiB) gives the result
    of the one-thread parse."""
    data = b"".join(write_once_bench_lines(seed=5, ops=4000, crash_p=0.05))
    whole = _same(data)
    assert whole is not None
    monkeypatch.setattr(woj, "SPLIT_MIN_BYTES", 1)
    for block in (1024, 65536):
        monkeypatch.setattr(woj, "BLOCK_BYTES", block)
        halves, _ = _fast(data)
        assert halves is not None and halves.to_json() == whole.to_json()


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
    "process as a string": ((1, "process"), "0"),
    "read value as a number": ((3, "value", "v"), 1),
    "id with an escape": ((3, "value", "v"), "\\u0061"),
    "offset as a string": ((1, "value", "pos"), ["f", "0", 10]),
    "offset as a float": ((1, "value", "pos"), ["f", 0.0, 10]),
    "size zero": ((1, "value", "pos"), ["f", 0, 0]),
    "negative offset": ((1, "value", "pos"), ["f", -1, 10]),
    "position of two": ((1, "value", "pos"), ["f", 0]),
    "file as a number": ((1, "value", "pos"), [7, 0, 10]),
    "position as a number": ((1, "value", "pos"), 7),
    "final as a string": ((3, "final"), "yes"),
    "unknown type": ((3, "type"), "done"),
    "completion of another op": ((3, "f"), "append"),
    "value of a read as a string": ((3, "value"), "a"),
}


@pytest.mark.parametrize("case", sorted(ODD_SHAPES))
def test_odd_shapes_are_left_to_the_python_checker(case: str) -> None:
    """A line of a shape the fast path does not handle makes it hand over (the caller's
    result, or HistoryError, is then the Python checker's)."""
    path, value = ODD_SHAPES[case]
    _hands_over(_mutated(path, value))


RAW_ODD = {
    "duplicate key": (b'"index": 3,', b'"index": 3, "index": 3,'),
    "duplicate v": (b'"v": "a"}}', b'"v": "a", "v": "a"}}'),
    "bad number in a skipped field": (b'"index": 3,', b'"index": 3, "time": 12x,'),
    "bad literal in a skipped field": (b'"index": 3,', b'"index": 3, "node": nul,'),
    "trailing garbage": (b'"a"}}\n', b'"a"}} x\n'),
    "escaped key": (b'"index": 3,', b'"ind\\u0065x": 3,'),
    "unclosed nested value": (b'"index": 3,', b'"index": 3, "extra": [1, {"k": 2},'),
    "blank line": (b"\n{", b"\n\n{"),
    "non-ASCII id": (b'"v": "a"}}', '"v": "\u00e9"}}'.encode()),
    "non-ASCII byte in a skipped field": (b'"index": 3,', '"index": 3, "n": "\u00e9",'.encode()),
}


@pytest.mark.parametrize("case", sorted(RAW_ODD))
def test_odd_json_text_is_left_to_the_python_checker(case: str) -> None:
    """Text this scanner does not accept as the common shape (duplicate keys, invalid JSON
    in a field it skips, an escaped key, a blank line) makes it hand over."""
    old, new = RAW_ODD[case]
    data = _lines(_base())
    assert old in data
    _hands_over(data.replace(old, new, 1))


def test_other_key_orders_spacing_and_skipped_fields_are_proven() -> None:
    """Any key order, JSON whitespace, and extra fields of any JSON type (escapes,
    nesting) around the common ones are parsed; the result is the Python checker's."""
    events = _base()
    for e in events:
        e["node"] = 'n\\"1'
        e["extra"] = {"k": [1, -2.5e3, True, None, {"x": "\\u00e9"}], "e": []}
    reordered = [dict(reversed(list(e.items()))) for e in events]
    for data in (
        _lines(events, indent=None, separators=(" , ", " : ")),
        _lines(reordered),
        _lines(events).replace(b"\n", b"\r\n"),
    ):
        assert _same(data) is not None


def test_nemesis_lines_and_other_ops_are_proven() -> None:
    """Nemesis events and other op kinds around the base history are ignored as the Python
    checker ignores them (counted in ignored_ops)."""
    events = _base()
    events[2:2] = [
        {"index": 0, "process": "nemesis", "type": "invoke", "f": "start-partition"},
        {
            "index": 0,
            "process": "nemesis",
            "type": "info",
            "f": "start-partition",
            "value": {"grudge": {"a": ["b"]}},
        },
        {"index": 0, "process": "nemesis", "type": "info", "f": "stop-partition", "value": "x"},
        {"index": 0, "process": 5, "type": "invoke", "f": "trim", "value": [1, 2]},
    ]
    for i, e in enumerate(events):
        e["index"] = i
    fast = _same(_lines(events))
    assert fast is not None
    assert fast.stats["ignored_ops"] == 2


def test_pairing_errors_and_anomalies_name_their_reason() -> None:
    """A pairing error, a conflict and a repeated payload id hand over with their reason;
    the Python checker then raises or reports."""
    events = _base()
    events[3]["process"] = 7  # a completion without an invocation
    _hands_over(_lines(events), "pairing")
    events = _base()
    events[3]["value"]["v"] = "b"
    _hands_over(_lines(events), "conflict")
    assert _python(_lines(events))["valid"] is False
    events = [
        *_base(),
        {"index": 4, "process": 2, "type": "invoke", "f": "append", "value": {"v": "a"}},
        {"index": 5, "process": 2, "type": "fail", "f": "append", "value": {"v": "a"}},
    ]
    _hands_over(_lines(events), "repeated payload id")


def test_torn_and_unterminated_last_lines_and_pending_invocation() -> None:
    """A torn last line (a crashed writer) is the Python checker's business; a complete
    last line without its newline is an event on both paths; a pending invocation is
    unknown on both."""
    data = _lines(_base())
    _hands_over(data + b'{"index": 4, "proc', "line shape")
    pending = _lines(
        [{"index": 4, "process": 2, "type": "invoke", "f": "append", "value": {"v": "b"}}]
    )
    fast = _same(data + pending.rstrip(b"\n"))
    assert fast is not None
    assert fast.witness["unknown_appends"]["examples_not_landed"] == ["b"]
    assert fast.stats["events"] == 5


def test_hands_over_without_numba_budget_deadline_or_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No fast answer without numba, past the memory budget, after the deadline, for lines
    that are not a regular file from its start, or when reading, allocating or compiling
    fails."""
    data = _lines(_base())
    assert _same(data) is not None
    _hands_over_with = _fast(data, memory_limit_mb=1e-6)
    assert _hands_over_with == (None, ["memory budget"])
    assert _fast(data, deadline=lambda: True) == (None, ["deadline"])
    assert woj.try_check_file(data.splitlines(keepends=True)) is None
    with tempfile.TemporaryFile() as fh:
        fh.write(data)
        fh.seek(1)
        assert woj.try_check_file(fh) is None
    assert _fast(data, min_bytes=len(data) + 1)[0] is None
    def no_memory(*_args: Any) -> int:
        raise MemoryError("test")

    monkeypatch.setattr(woj, "parse_block", no_memory)
    assert _fast(data) == (None, ["error: MemoryError: test"])

    def no_compile(*_args: Any) -> int:
        raise woj.numba.core.errors.TypingError("test")

    monkeypatch.setattr(woj, "parse_block", no_compile)
    res, why = _fast(data)
    assert res is None and why[0].startswith("error: TypingError: test")
    monkeypatch.setattr(woj, "numba", None)
    assert _fast(data) == (None, ["numba not installed"])


def test_check_write_once_lines_uses_the_compiled_path() -> None:
    """The checker's entry point tries the compiled path first (above its threshold) and
    gives the Python checker's result either way."""
    data = _lines(_base())
    with tempfile.TemporaryFile() as fh:
        fh.write(data)
        fh.seek(0)
        res, path = try_fast_paths(fh, min_bytes=0)
        assert path == "jit" and res is not None
        assert try_fast_paths(fh, min_bytes=len(data) + 1) == (None, "")
        assert check_write_once_lines(fh, fast_min_bytes=0).to_json() == _python(data)


def test_tables_start_small_enough_for_the_budget() -> None:
    """However big the file, the tables start within 1 GB (a 10 M-op history
    must fit the default 4 GiB budget after its growth)."""
    assert woj._Tables(10**10).nbytes() < 1024 * 1048576
    assert woj._Tables(1000).nbytes() < 1048576


def test_thresholds_agree() -> None:
    """The checker's copy of the fast paths' thresholds (read without importing them)
    equals their own."""
    import harness.checker.write_once_fast as wof
    from harness.checker.write_once import FAST_MIN_BYTES

    assert FAST_MIN_BYTES == {"jit": woj.FAST_MIN_BYTES, "duckdb": wof.FAST_MIN_BYTES}
