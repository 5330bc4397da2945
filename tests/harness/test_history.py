"""History format: JSON Lines reading/writing, crash safety, pairing rules, EDN import/export."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.edn import dumps_edn_history, parse_edn_history, read_edn_history, write_edn_history
from harness.history import (
    Event,
    HistoryError,
    HistoryWriter,
    events_from_dicts,
    pair_ops,
    read_history,
    write_history,
)


def _ev(i: int, p: int | str, typ: str, f: str, value: object = None, **kw: object) -> Event:
    return Event(i, i * 10, p, typ, f, value, **kw)  # type: ignore[arg-type]


def test_jsonl_roundtrip_keeps_every_field(tmp_path: Path) -> None:
    """Events written by HistoryWriter read back equal, extras and key/error included."""
    evs = [
        _ev(0, 1, "invoke", "write", 3, key="k", extra={"node": "a", "epoch": 7}),
        _ev(1, 1, "fail", "write", 3, key="k", error="timeout"),
        _ev(2, "nemesis", "info", "start", {"cut": [["a"], ["b", "c"]]}),
    ]
    path = tmp_path / "h.jsonl"
    assert write_history(path, evs) == 3
    back = list(read_history(path))
    assert [e.to_json() for e in back] == [e.to_json() for e in evs]
    assert back[0].extra == {"node": "a", "epoch": 7}


def test_writer_flushes_each_line_and_refuses_to_overwrite(tmp_path: Path) -> None:
    """Each write is on disk before close (crash-safe) and an existing file is never clobbered."""
    path = tmp_path / "h.jsonl"
    w = HistoryWriter(path, fsync_every=2)
    w.write(_ev(0, 0, "invoke", "read"))
    assert json.loads(path.read_text())["f"] == "read"
    w.write(_ev(1, 0, "ok", "read", 5))
    w.close()
    w.close()  # idempotent
    with pytest.raises(HistoryError):
        w.write(_ev(2, 0, "invoke", "read"))
    with pytest.raises(FileExistsError):
        HistoryWriter(path)
    with HistoryWriter(path, append=True) as w2:
        w2.write(_ev(2, 0, "invoke", "read"))
    assert len(list(read_history(path))) == 3


def test_torn_last_line_is_skipped_but_bad_middle_line_raises(tmp_path: Path) -> None:
    """A crashed writer's partial last line is dropped; corruption elsewhere names its line."""
    path = tmp_path / "h.jsonl"
    good = json.dumps(_ev(0, 0, "invoke", "read").to_json())
    path.write_text(good + "\n" + '{"index": 1, "ti')
    assert len(list(read_history(path))) == 1
    path.write_text(good + "\n" + "{oops\n" + good + "\n")
    with pytest.raises(HistoryError, match=":2:"):
        list(read_history(path))
    path.write_text('{"index": 0, "type": "invoke", "f": "read", "process": true}\n')
    with pytest.raises(HistoryError, match="process"):
        list(read_history(path))
    path.write_text('{"type": "begin", "f": "read", "process": 1}\n')
    with pytest.raises(HistoryError, match="type"):
        list(read_history(path))


def test_missing_index_and_time_are_filled(tmp_path: Path) -> None:
    """Events without index are numbered by position; missing time becomes 0."""
    path = tmp_path / "h.jsonl"
    path.write_text(
        '{"type": "invoke", "f": "read", "process": 0}\n'
        '{"type": "ok", "f": "read", "process": 0, "value": 1}\n'
    )
    evs = list(read_history(path))
    assert [e.index for e in evs] == [0, 1]
    assert evs[0].time == 0


def test_pair_ops_pairs_and_marks_missing_completions_info() -> None:
    """Invocations pair with their process's next completion; a missing one becomes info."""
    evs = [
        _ev(0, 0, "invoke", "write", 1),
        _ev(1, 1, "invoke", "read"),
        _ev(2, 0, "ok", "write", 1),
        _ev(3, 1, "ok", "read", 1),
        _ev(4, 2, "invoke", "cas", [1, 2]),
        _ev(5, "nemesis", "info", "start"),
        _ev(6, "nemesis", "info", "start", "cut"),
    ]
    ops = pair_ops(evs)
    assert [(o.process, o.f, o.type, o.result) for o in ops] == [
        (0, "write", "ok", 1),
        (1, "read", "ok", 1),
        (2, "cas", "info", None),
    ]
    assert ops[2].complete_index is None
    with_nemesis = pair_ops(evs, include_nemesis=True)
    assert with_nemesis[-1].process == "nemesis" and with_nemesis[-1].result == "cut"


@pytest.mark.parametrize(
    ("evs", "match"),
    [
        ([_ev(0, 0, "invoke", "read"), _ev(1, 0, "invoke", "read")], "still pending"),
        ([_ev(0, 0, "ok", "read", 1)], "without a pending"),
        ([_ev(0, 0, "invoke", "read"), _ev(1, 0, "ok", "write", 1)], "completes"),
        ([_ev(1, 0, "invoke", "read"), _ev(1, 0, "ok", "read", 1)], "indexes must increase"),
    ],
)
def test_pair_ops_rejects_malformed_histories(evs: list[Event], match: str) -> None:
    """Double invocations, orphan completions, mismatched f and unordered indexes raise."""
    with pytest.raises(HistoryError, match=match):
        pair_ops(evs)


def test_edn_import_converts_keywords_and_nil() -> None:
    """EDN keywords become strings, nil None, vectors lists; comments are ignored."""
    text = """; a comment
    [{:process 0, :type :invoke, :f :cas, :value [1 2]}
     {:process 0, :type :fail, :f :cas, :value [1 2], :error [:timeout nil]}
     {:process :nemesis, :type :info, :f :start, :value nil}
     {:process 1, :type :invoke, :f :txn, :value [[:read :x nil] [:write :y 2]]}]"""
    evs = list(events_from_dicts(parse_edn_history(text)))
    assert evs[0].value == [1, 2] and evs[0].type == "invoke" and evs[0].f == "cas"
    assert evs[1].error == ["timeout", None]
    assert evs[2].process == "nemesis"
    assert evs[3].value == [["read", "x", None], ["write", "y", 2]]
    assert [e.index for e in evs] == [0, 1, 2, 3]


def test_edn_export_roundtrips(tmp_path: Path) -> None:
    """Exported EDN reads back to the same events (keywords for type, f, process, txn ops)."""
    evs = [
        _ev(0, 0, "invoke", "txn", [["read", "x", None]]),
        _ev(1, 0, "ok", "txn", [["read", "x", 3]], extra={"node": "n1"}),
        _ev(2, "nemesis", "info", "start", "partition"),
        _ev(3, 2, "fail", "write", 4, error="not-held"),
    ]
    text = dumps_edn_history(evs)
    assert ":type :invoke" in text and ":process :nemesis" in text and "[:read :x nil]" in text
    path = tmp_path / "h.edn"
    write_edn_history(path, evs)
    back = list(read_edn_history(path))
    assert [e.to_json() for e in back] == [e.to_json() for e in evs]
    assert [e.to_json() for e in read_history(path)] == [e.to_json() for e in evs]


def test_edn_rejects_garbage(tmp_path: Path) -> None:
    """Non-map elements and unparsable EDN give HistoryError, not a library exception."""
    with pytest.raises(HistoryError):
        parse_edn_history("[1 2 3]")
    path = tmp_path / "bad.edn"
    path.write_text("[{:process 0 :type")
    with pytest.raises(HistoryError):
        list(read_history(path))
    assert os.path.exists(path)


@pytest.mark.parametrize(
    "text",
    [
        '[:a/b "x\\"y\\n" 1.5 -3 2e3 #{1 2} {[1 2] nil} true false (1 2) {:k [:read :x nil]}]',
        "[1N]",
        "[\\a]",
        '[#inst "2020-01-01T00:00:00Z"]',
        "[foo]",
        '["\\u0041"]',
    ],
)
def test_fast_edn_reader_agrees_with_edn_format(text: str) -> None:
    """The fast EDN reader gives what edn_format gives, or hands the text to edn_format."""
    import edn_format

    from harness.edn import _fast_forms, _Unsupported, from_edn

    expected = [from_edn(f) for f in edn_format.loads_all(text)]
    with contextlib.suppress(_Unsupported):  # else parse_edn_history uses edn_format
        assert _fast_forms(text) == expected
    if isinstance(expected[0], list) and all(isinstance(x, dict) for x in expected[0]):
        assert parse_edn_history(text) == expected[0]


def test_fast_edn_reader_matches_edn_format_on_knossos_histories() -> None:
    """On real Knossos histories the fast reader and edn_format produce identical data."""
    import edn_format

    from harness.edn import _fast_forms, from_edn

    root = Path(
        os.environ.get("MACHI_CONFORMANCE_DIR")
        or Path(__file__).resolve().parents[2].parent / "shared" / "conformance"
    )
    files = sorted(root.rglob("*.edn"))
    assert files, f"conformance histories missing under {root}"
    small = [f for f in files if f.stat().st_size < 2000][:5]
    picks = [*small, max(files, key=lambda f: f.stat().st_size)]
    for f in picks:
        text = f.read_text()
        assert _fast_forms(text) == [from_edn(x) for x in edn_format.loads_all(text)], f


@settings(max_examples=60)
@given(data=st.data())
def test_a_history_cut_anywhere_reads_back_as_a_prefix(tmp_path_factory: Any, data: Any) -> None:
    """Cutting a written history at any byte (a crash) reads back as a prefix of its events."""
    values = st.one_of(
        st.none(), st.integers(), st.text(max_size=8), st.lists(st.integers(), max_size=3)
    )
    n = data.draw(st.integers(1, 8))
    evs = [
        _ev(i, i % 3, "invoke" if i % 2 == 0 else "ok", "write", data.draw(values))
        for i in range(n)
    ]
    path = tmp_path_factory.mktemp("cut") / "h.jsonl"
    # Raw UTF-8 (not \u escapes, as other writers may produce): cuts can split a character.
    text = "".join(json.dumps(e.to_json(), ensure_ascii=False) + "\n" for e in evs)
    raw = text.encode("utf-8")
    cut = data.draw(st.integers(0, len(raw)))
    path.write_bytes(raw[:cut])
    back = list(read_history(path))
    assert [e.to_json() for e in back] == [e.to_json() for e in evs[: len(back)]]
    # Every complete line is read; a last line missing only its newline is complete too.
    assert raw[:cut].count(b"\n") <= len(back) <= raw[:cut].count(b"\n") + 1
