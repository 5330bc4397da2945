"""``machi-harness check``: output lines, JSON objects, exit codes, and the HTML report."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from harness.checker.lin_gen import generate, pathological
from harness.cli import main
from harness.edn import write_edn_history
from harness.history import Event, write_history


def _write(tmp_path: Path, name: str, evs: list[Event]) -> Path:
    path = tmp_path / name
    if name.endswith(".edn"):
        write_edn_history(path, evs)
    else:
        write_history(path, evs)
    return path


def _bad_register() -> list[Event]:
    return [
        Event(0, 0, 0, "invoke", "write", 1),
        Event(1, 10, 0, "ok", "write", 1),
        Event(2, 20, 1, "invoke", "write", 2),
        Event(3, 30, 1, "ok", "write", 2),
        Event(4, 40, 2, "invoke", "read", None),
        Event(5, 50, 2, "ok", "read", 1),
    ]


def _run(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(main, list(args))
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.stdout, res.stderr


def test_json_output_has_one_object_per_history_and_exit_reflects_the_worst(tmp_path: Path) -> None:
    """--json prints the documented fields per file; valid+invalid exits 1, valid alone 0."""
    good = _write(tmp_path, "good.jsonl", generate("register", seed=3, ops=200, processes=4))
    bad = _write(tmp_path, "bad.jsonl", _bad_register())
    code, out, _ = _run("check", "--model", "register", "--json", str(good), str(bad))
    assert code == 1
    objs = [json.loads(line) for line in out.splitlines()]
    assert [o["valid"] for o in objs] == [True, False]
    for o in objs:
        assert set(o) >= {"file", "valid", "model", "ops", "keys", "elapsed_s", "witness"}
        assert o["model"] == "register"
    assert objs[0]["witness"] is None and objs[0]["ops"] == 200 and objs[0]["keys"] == 1
    assert objs[1]["witness"]["op"]["result"] == 1
    assert "prefix_indices" not in objs[1]["witness"]
    code, _, _ = _run("check", "--model", "register", str(good))
    assert code == 0


def test_unknown_without_invalid_exits_2(tmp_path: Path) -> None:
    """A history past its time budget is unknown and the exit status is 2."""
    path = _write(tmp_path, "patho.jsonl", pathological(40))
    txn = [["write", "x", 1]]
    good = _write(
        tmp_path,
        "good.jsonl",
        [Event(0, 0, 0, "invoke", "txn", txn), Event(1, 1, 0, "ok", "txn", txn)],
    )
    code, out, _ = _run(
        "check", "--model", "multi-register", "--time-limit", "0.3", str(good), str(path)
    )
    assert code == 2
    assert "unknown" in out and "time limit" in out


def test_text_output_names_the_verdict_and_explains(tmp_path: Path) -> None:
    """Without --json each history gets a verdict line and, when not valid, a witness line."""
    bad = _write(tmp_path, "bad.edn", _bad_register())
    code, out, _ = _run("check", "--model", "register", "--format", "edn", str(bad))
    assert code == 1
    lines = out.splitlines()
    assert "INVALID" in lines[0] and "bad.edn" in lines[0]
    assert "the model state is 2" in lines[1]


@pytest.mark.parametrize(
    "args",
    [
        ["check", "--model"],
        ["check"],
        ["check", "--model", "nosuch", "x.jsonl"],
        ["check", "--model", "register"],
        ["check", "--model", "register", "/nonexistent/history.jsonl"],
        ["check", "--model", "register", "--time-limit", "-1", "README.md"],
        ["check", "--model", "register", "--bogus", "README.md"],
        ["check", "--model", "kv", "--initial", "3", "README.md"],
        ["check", "--model", "register", "--initial", "{bad", "README.md"],
    ],
)
def test_usage_errors_exit_254(args: list[str]) -> None:
    """Bad options, missing files and a missing model are usage errors with status 254."""
    code, _, _ = _run(*args)
    assert code == 254


def test_malformed_history_is_an_error_not_a_verdict(tmp_path: Path) -> None:
    """A history that cannot be paired reports the problem on stderr and exits 254."""
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"index":0,"type":"ok","f":"read","process":0,"value":1}\n'  # completion, no invoke
    )
    code, _, err = _run("check", "--model", "register", str(path))
    assert code == 254
    assert "without a pending invocation" in err


def test_initial_value_option(tmp_path: Path) -> None:
    """--initial sets the register's starting value (nil otherwise)."""
    evs = [Event(0, 0, 0, "invoke", "read", None), Event(1, 1, 0, "ok", "read", 5)]
    path = _write(tmp_path, "h.jsonl", evs)
    assert _run("check", "--model", "register", str(path))[0] == 1
    assert _run("check", "--model", "register", "--initial", "5", str(path))[0] == 0


def test_write_once_model_uses_the_write_once_checker(tmp_path: Path) -> None:
    """--model write-once checks JSON Lines write-once histories (valid here)."""
    pos = ["f", 0, 4]
    evs = [
        Event(0, 0, 0, "invoke", "append", {"v": "c0-1"}),
        Event(1, 1, 0, "ok", "append", {"v": "c0-1", "pos": pos}),
        Event(2, 2, 1, "invoke", "read", {"pos": pos}),
        Event(3, 3, 1, "ok", "read", {"pos": pos, "v": "c0-1"}),
    ]
    path = _write(tmp_path, "wo.jsonl", evs)
    code, out, _ = _run("check", "--model", "write-once", "--json", str(path))
    assert code == 0, out
    assert json.loads(out)["valid"] is True


def test_report_is_written_and_self_contained(tmp_path: Path) -> None:
    """--report writes one HTML page per failing history: no network references, the failing
    op highlighted, the prefix and the explanation included."""
    bad = _write(tmp_path, "bad.jsonl", _bad_register())
    good = _write(tmp_path, "good.jsonl", generate("register", seed=2, ops=30))
    rep = tmp_path / "report"
    code, out, _ = _run("check", "--model", "register", "--report", str(rep), str(bad), str(good))
    assert code == 1
    pages = sorted(rep.iterdir())
    assert [p.name for p in pages] == ["bad.jsonl.html"]
    html = pages[0].read_text()
    assert not re.search(r"https?:", html), "the page must not reference the network"
    assert not re.search(r"<(script|link|img)[^>]+src=", html)
    assert "<svg" in html and "fill='#e53935'" in html  # the failing op drawn in red
    assert "could not be linearized" in html and "the model state is 2" in html
    assert "#1 write 1" in html and "#2 write 2" in html  # the prefix, numbered in order
    assert "Longest linearizable prefix" in html
    assert str(pages[0]) in out


def test_console_script_runs(tmp_path: Path) -> None:
    """The installed entry point runs the command in a real process with the same exit code."""
    bad = _write(tmp_path, "bad.jsonl", _bad_register())
    exe = Path(sys.executable).with_name("machi-harness")
    proc = subprocess.run(
        [str(exe), "check", "--model", "register", "--json", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout)["valid"] is False


def test_write_once_report_shows_the_witness(tmp_path: Path) -> None:
    """An invalid write-once history gets a self-contained page with the checker's witness."""
    pos = ["f", 0, 4]
    evs = [
        Event(0, 0, 1, "invoke", "read", {"pos": pos}),
        Event(1, 1, 1, "ok", "read", {"pos": pos, "v": "ghost"}),
    ]
    path = _write(tmp_path, "wo.jsonl", evs)
    rep = tmp_path / "rep"
    code, out, _ = _run("check", "--model", "write-once", "--report", str(rep), str(path))
    assert code == 1, out
    (page,) = rep.iterdir()
    html = page.read_text()
    assert "ghost" in html and "write-once" in html
    assert not re.search(r"https?:", html)


def test_convert_roundtrips_between_jsonl_and_edn(tmp_path: Path) -> None:
    """convert writes EDN from JSON Lines and back, with the same events; never overwrites."""
    evs = _bad_register()
    src = _write(tmp_path, "h.jsonl", evs)
    edn = tmp_path / "h.edn"
    back = tmp_path / "back.jsonl"
    assert _run("convert", str(src), str(edn))[0] == 0
    assert ":type :invoke" in edn.read_text()
    assert _run("convert", str(edn), str(back))[0] == 0
    from harness.history import read_history

    assert [e.to_json() for e in read_history(back)] == [e.to_json() for e in evs]
    assert _run("convert", str(src), str(edn))[0] == 254


def _faulted_register(read_during_fault: bool) -> list[Event]:
    """A valid register history with one partition; the read runs inside it or after it."""
    evs = [
        Event(0, 0, 0, "invoke", "write", 1),
        Event(1, 10, 0, "ok", "write", 1),
        Event(2, 20, "nemesis", "invoke", "start-partition", None),
        Event(3, 30, "nemesis", "info", "start-partition", None),
        Event(4, 40, 0, "invoke", "write", 2),
        Event(5, 50, 0, "ok", "write", 2),
    ]
    read = [Event(0, 0, 1, "invoke", "read", None), Event(0, 0, 1, "ok", "read", 2)]
    stop = [
        Event(0, 0, "nemesis", "invoke", "stop-partition", None),
        Event(0, 0, "nemesis", "info", "stop-partition", None),
    ]
    tail = read + stop if read_during_fault else stop + read
    for i, ev in enumerate(tail, start=len(evs)):
        ev.index, ev.time = i, i * 10
    return evs + tail


@pytest.mark.parametrize("model", ["register", "cas-register", "write-once"])
def test_no_read_succeeded_during_a_fault_is_unknown_unless_no_coverage(
    tmp_path: Path, model: str
) -> None:
    """A valid history whose reads all ran outside the fault is unknown (exit 2) naming
    `read`; --no-coverage restores valid; the same reads inside the fault stay valid."""
    if model == "write-once":
        evs = [
            Event(0, 0, 0, "invoke", "append", {"v": "c0-1"}),
            Event(1, 10, "nemesis", "info", "start-kill", None),
            Event(2, 20, 0, "ok", "append", {"v": "c0-1", "pos": ["f", 0, 4]}),
            Event(3, 30, "nemesis", "invoke", "stop-kill", None),
            Event(4, 40, 1, "invoke", "read", {"pos": ["f", 0, 4]}),
            Event(5, 50, 1, "ok", "read", {"pos": ["f", 0, 4], "v": "c0-1"}),
        ]
    else:
        evs = _faulted_register(read_during_fault=False)
    path = _write(tmp_path, "uncovered.jsonl", evs)
    code, out, _ = _run("check", "--model", model, "--json", str(path))
    assert code == 2, out
    obj = json.loads(out)
    assert obj["valid"] == "unknown"
    assert obj["witness"]["uncovered"] == ["read"]
    assert "no read op succeeded while a fault was active" in obj["witness"]["explanation"]
    code, out, _ = _run("check", "--model", model, str(path))
    assert code == 2 and "unknown" in out and "no read op succeeded" in out
    code, out, _ = _run("check", "--model", model, "--no-coverage", "--json", str(path))
    assert code == 0 and json.loads(out)["valid"] is True
    if model != "write-once":
        covered = _write(tmp_path, "covered.jsonl", _faulted_register(read_during_fault=True))
        code, out, _ = _run("check", "--model", model, "--json", str(covered))
        assert code == 0 and json.loads(out)["valid"] is True


def test_history_without_faults_is_not_affected_by_coverage(tmp_path: Path) -> None:
    """With no nemesis events the verdict and witness are the same with and without the guard."""
    good = _write(tmp_path, "good.jsonl", generate("register", seed=5, ops=100, processes=3))
    outs = []
    for flag in ([], ["--no-coverage"]):
        code, out, _ = _run("check", "--model", "register", "--json", *flag, str(good))
        assert code == 0
        obj = json.loads(out)
        outs.append((obj["valid"], obj["witness"]))
    assert outs[0] == outs[1] == (True, None)
