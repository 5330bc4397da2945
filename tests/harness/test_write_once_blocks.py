"""The write-once checker reads a history file in blocks (``_byte_blocks``): every way of
cutting the file, a torn or blank line, another event shape in a block and a bad line give
the same verdict, or the same named error, as the given list of lines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import harness.checker.write_once as wo
from harness.checker.gen import write_once_bench_lines, write_once_history
from harness.checker.write_once import check_write_once_lines, iter_jsonl_batches
from harness.history import HistoryError


def _file(tmp_path: Path, lines: list[bytes], name: str = "h.jsonl") -> Path:
    path = tmp_path / name
    path.write_bytes(b"".join(lines))
    return path


def _check_file(path: Path) -> dict[str, Any]:
    with path.open("rb") as fh:
        return check_write_once_lines(fh, name="history").to_json()


def _mixed_lines(seed: int) -> list[bytes]:
    """A history with anomalies, crashed and failed ops, final reads, a nemesis event."""
    events = list(
        write_once_history(
            seed=seed, ops=400, crash_p=0.1, fail_p=0.05, anomaly="duplicate-position"
        )
    )
    lines = [json.dumps(e).encode() + b"\n" for e in events]
    nemesis = {"process": "nemesis", "type": "info", "f": "start-partition", "value": "x"}
    lines.insert(len(lines) // 2, json.dumps({"index": -1, **nemesis}).encode() + b"\n")
    return lines


@settings(max_examples=25, deadline=None)
@given(block_bytes=st.integers(min_value=1, max_value=5000), seed=st.integers(0, 50))
def test_any_block_size_gives_the_same_verdict(
    tmp_path_factory: pytest.TempPathFactory, block_bytes: int, seed: int
) -> None:
    """Whatever the block size (lines longer than a block included), a file checks exactly
    like its list of lines."""
    tmp_path = tmp_path_factory.mktemp("blocks")
    lines = _mixed_lines(seed)
    want = check_write_once_lines(lines).to_json()
    path = _file(tmp_path, lines)
    old = wo._BLOCK_BYTES
    wo._BLOCK_BYTES = block_bytes
    try:
        got = _check_file(path)
    finally:
        wo._BLOCK_BYTES = old
    assert got == want


def test_bench_history_file_equals_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A generated benchmark history gives the same result from its file in many blocks."""
    lines = list(write_once_bench_lines(seed=2, ops=3000, processes=12, crash_p=0.05))
    want = check_write_once_lines(lines).to_json()
    assert want["valid"] is True
    monkeypatch.setattr(wo, "_BLOCK_BYTES", 4096)
    assert _check_file(_file(tmp_path, lines)) == want


def test_torn_blank_and_bad_lines_in_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A torn last line is dropped, blank lines are skipped, and a bad line is named by its
    line number, in any block."""
    monkeypatch.setattr(wo, "_BLOCK_BYTES", 512)
    lines = [json.dumps(e).encode() + b"\n" for e in write_once_history(seed=3, ops=200)]
    want = check_write_once_lines(lines).to_json()
    torn = _file(tmp_path, [*lines, b'{"index": 99999, "ty'], "torn.jsonl")
    assert _check_file(torn) == want
    blank = _file(tmp_path, [lines[0], b"\n", b"   \n", *lines[1:]], "blank.jsonl")
    assert _check_file(blank) == want
    bad = _file(tmp_path, [*lines[:150], b"{not json\n", *lines[150:]], "bad.jsonl")
    with pytest.raises(HistoryError, match=r"history:151: invalid JSON"):
        _check_file(bad)
    two = _file(tmp_path, [*lines[:40], lines[40][:-1] + b" " + lines[41], *lines[42:]], "2.jsonl")
    with pytest.raises(HistoryError, match=r"history:41: invalid JSON"):
        _check_file(two)


def test_events_without_index_are_numbered_across_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lines without ``index`` get their position, counted over all blocks."""
    monkeypatch.setattr(wo, "_BLOCK_BYTES", 300)
    events = list(write_once_history(seed=4, ops=100))
    lines = [
        json.dumps({k: v for k, v in e.items() if k != "index"}).encode() + b"\n" for e in events
    ]
    with _file(tmp_path, lines).open("rb") as fh:
        got = [ev.index for batch in iter_jsonl_batches(fh, structs=True) for ev in batch]
    assert got == list(range(len(events)))


def test_file_without_msgspec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without msgspec (stdlib json per line) a file in blocks checks like with it."""
    lines = _mixed_lines(7)
    path = _file(tmp_path, lines)
    want = _check_file(path)
    monkeypatch.setattr(wo, "msgspec", None)
    monkeypatch.setattr(wo, "_BLOCK_BYTES", 1000)
    assert _check_file(path) == want
