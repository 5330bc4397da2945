"""The report pages open in headless Chromium: screenshot saved, no console errors, no
uncaught exceptions, no network requests, the verdict on the page.

Pages: a checker failure page (`machi-harness check --report` on a bad Knossos history) and
a run's `index.html` (`machi-harness analyze` on a small synthetic stored run). A page made
to misbehave proves the browser check can fail. Screenshots are kept under the test's tmp
dir and, when ``MACHI_SCREENSHOT_DIR`` is set, copied there. Skipped only when Chromium is
not installed (`scripts/install-system-deps`, run by `scripts/test` as root, installs it).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from harness.cli import main
from harness.report.browser import BrowserError, PageCheck, check_page, find_chromium

REPO = Path(__file__).resolve().parents[2]
BAD_CAS = "knossos/cas-register/bad/cas-failure.edn"


@pytest.fixture(scope="module")
def chromium() -> str:
    exe = find_chromium()
    if exe is None:
        pytest.skip("chromium is not installed (as root: scripts/install-system-deps)")
    return exe


def _conformance_dir() -> Path:
    env = os.environ.get("MACHI_CONFORMANCE_DIR")
    return Path(env) if env else REPO.parent / "shared" / "conformance"


def _live_in_group(pgid: int) -> list[int]:
    """Pids of the live (not zombie) processes of process group ``pgid``."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


def _assert_browser_gone(started: list[int]) -> None:
    assert len(started) == 1
    deadline = time.monotonic() + 5.0
    while (left := _live_in_group(started[0])) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"chromium processes left behind: {left}"


def _open(chromium: str, page: Path, shot: Path) -> PageCheck:
    started: list[int] = []
    try:
        check = check_page(page, shot, chromium=chromium, started=started)
    except BrowserError as e:
        if not e.answered:
            pytest.skip(f"chromium does not start here: {e}")
        raise
    finally:
        if started:
            _assert_browser_gone(started)
    out = os.environ.get("MACHI_SCREENSHOT_DIR")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(out) / shot.name)
    return check


def _assert_clean(check: PageCheck) -> None:
    assert check.screenshot.stat().st_size > 10_000, "an empty screenshot"
    assert check.screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not check.console_errors, check.summary()
    assert not check.exceptions, check.summary()
    assert not check.requests, check.summary()


def _run(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(main, list(args))
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.stdout


def test_checker_failure_page_renders_cleanly(chromium: str, tmp_path: Path) -> None:
    """The page `check --report` writes for a bad cas-register history loads without console
    errors, exceptions or requests, and shows the invalid verdict and the failing op."""
    bad = _conformance_dir() / BAD_CAS
    assert bad.is_file(), f"conformance history missing: {bad}"
    rep = tmp_path / "report"
    code, out = _run("check", "--model", "cas-register", "--report", str(rep), str(bad))
    assert code == 1, out
    (page,) = rep.glob("*.html")
    check = _open(chromium, page, tmp_path / "checker-report.png")
    _assert_clean(check)
    assert check.title.endswith(": not linearizable")
    lines = check.text.splitlines()
    assert lines[1].startswith("invalid model cas-register"), lines[:3]
    assert "could not be linearized" in check.text


def _event(i: int, t_ms: float, process: Any, type_: str, f: str, value: Any,
           **extra: Any) -> dict[str, Any]:
    return {"index": i, "time": int(t_ms * 1_000_000), "process": process, "type": type_,
            "f": f, "value": value, **extra}


def _synthetic_run(run_dir: Path) -> None:
    """A 3-node CP run with the read-non-tail canary: 4 clients append and read back, a
    partition and its heal, a value of an unfinished append read from a non-tail (n2) and
    then found unwritten at the tail (n3), then a final read that finds an acknowledged
    position holding another client's value."""
    nodes = ["n1", "n2", "n3"]
    t0_ms = 5_000_000.0
    evs: list[dict[str, Any]] = []

    def add(t: float, p: Any, type_: str, f: str, value: Any, **extra: Any) -> None:
        evs.append(_event(len(evs), t0_ms + t, p, type_, f, value, **extra))

    fname = "h^^00000000^synthetic^1"
    pos: list[tuple[str, list[Any]]] = []
    for k in range(40):
        p = k % 4
        t = 50.0 * k
        v = f"c{p}-{k // 4 + 1}"
        at = [fname, 1024 + 96 * k, 96]
        add(t, p, "invoke", "append", {"v": v, "prefix": "h"})
        add(t + 12 + k % 7, p, "ok", "append", {"v": v, "pos": at}, node="n1", epoch=1)
        add(t + 20, p, "invoke", "read", {"pos": at})
        add(t + 26, p, "ok", "read", {"pos": at, "v": v}, node="n3", epoch=1)
        pos.append((v, at))
        if k == 10:
            add(t + 30, "nemesis", "info", "partition", {"targets": nodes, "phase": "start"})
            add(t + 31, "nemesis", "info", "partition",
                {"targets": nodes, "kind": "isolate", "phase": "done"})
        if k == 25:
            add(t + 30, "nemesis", "info", "heal", {"targets": nodes, "phase": "start"})
            add(t + 31, "nemesis", "info", "heal", {"targets": nodes, "phase": "done"})
    # the canary's signature: seen at a non-tail before the tail has it, then unwritten
    probe = [fname, 1024 + 96 * 40, 96]
    add(1990, 0, "invoke", "append", {"v": "c0-99", "prefix": "h"})
    add(2000, 1, "invoke", "read", {"pos": probe})
    add(2004, 1, "ok", "read", {"pos": probe, "v": "c0-99"}, node="n2", epoch=1)
    add(2010, 2, "invoke", "read", {"pos": probe})
    add(2014, 2, "ok", "read", {"pos": probe, "v": None}, node="n3", epoch=1)
    add(2050, 0, "info", "append", {"v": "c0-99", "prefix": "h"}, error="TIMEOUT")
    add(2100, "nemesis", "info", "heal-all", {"phase": "start"})
    add(2101, "nemesis", "info", "heal-all", {"phase": "done", "heal_time_ms": 5_002_101})
    for k, (v, at) in enumerate(pos):
        got = "c9-9" if k == 17 else v  # the anomaly
        add(2200 + 5 * k, 10000, "invoke", "read", {"pos": at}, final=True, node="n1")
        add(2202 + 5 * k, 10000, "ok", "read", {"pos": at, "v": got}, final=True, node="n1",
            epoch=2)
    run_dir.mkdir(parents=True)
    (run_dir / "history.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evs))
    options = {"name": "chunks-cp", "provider": "netns", "nodes": 3, "mode": "cp",
               "witnesses": 0, "nemesis": ["partition"], "time_limit_s": 2.0,
               "concurrency": 4, "seed": 7, "canary": "read-non-tail"}
    (run_dir / "run.json").write_text(json.dumps({
        "options": options, "seed": 7, "nodes": nodes, "heal_time_ms": 5_002_101,
        "faults": [{"t_s": 0.53, "fault": "partition", "kind": "isolate"}]}))
    (run_dir / "final.json").write_text(json.dumps({
        "stable": True, "wait_stable_ms": 80, "positions": len(pos), "heal_time_ms": 5_002_101}))
    # a safe chain history: n3 is cut off (epoch 2 without it, n3 adopts nothing while
    # isolated), then repaired (epoch 3) and back in the UPI (epoch 4)
    for n in nodes:
        d = run_dir / "nodes" / n
        d.mkdir(parents=True)
        recs = [_projection(n, 1, nodes, [], 5_000_000 - 500)]
        if n != "n3":
            recs.append(_projection(n, 2, ["n1", "n2"], [], 5_000_600))
        recs += [_projection(n, 3, ["n1", "n2"], ["n3"], 5_001_400 + 10 * len(n)),
                 _projection(n, 4, nodes, [], 5_002_150)]
        (d / "projection-log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    # the harness's status polls: n3 wedged while cut off (0.6-1.4 s), n2 silent once
    polls = []
    for k in range(5):
        t = int(t0_ms) + 200 + 400 * k
        per: dict[str, Any] = {n: {"wedged": n == "n3" and 1 <= k <= 2, "epoch": 1}
                               for n in nodes}
        if k == 3:
            per["n2"] = {"error": "TimeoutError()"}
        polls.append({"time_ms": t, "time_unix_ms": 1_700_000_000_000 + t, "nodes": per})
    (run_dir / "status.jsonl").write_text("".join(json.dumps(p) + "\n" for p in polls))


def _projection(node: str, epoch: int, upi: list[str], repairing: list[str],
                time_ms: int) -> dict[str, Any]:
    members = ["n1", "n2", "n3"]
    author = "n2" if epoch == 4 else "n1"  # a promotion is authored by the old UPI's tail
    return {"all_members": members, "author": author, "chain": "c1", "confirmed": True,
            "down": [m for m in members if m not in upi and m not in repairing],
            "epoch": epoch, "epoch_csum": f"{epoch:064x}", "mode": "cp", "node": node,
            "repairing": repairing, "time_ms": time_ms, "upi": upi, "witnesses": []}


def test_run_report_renders_cleanly(chromium: str, tmp_path: Path) -> None:
    """A run's index.html (written by `analyze` on a stored run with one anomaly) loads
    without console errors, exceptions or requests and shows the INVALID verdict, the
    plots and the anomaly."""
    run_dir = tmp_path / "store" / "chunks-cp" / "20260101T000000-1"
    _synthetic_run(run_dir)
    code, out = _run("analyze", str(run_dir))
    assert code == 1, out
    results = json.loads((run_dir / "results.json").read_text())
    verdicts = {name: c["valid"] for name, c in results["checks"].items()}
    assert verdicts.pop("write_once") is False, verdicts  # the one anomaly
    assert verdicts.pop("final_reads") is False, verdicts  # ... read back on node n1
    assert verdicts and all(v is True for v in verdicts.values()), verdicts
    check = _open(chromium, run_dir / "index.html", tmp_path / "run-report.png")
    _assert_clean(check)
    assert check.title == "machi harness: INVALID"
    assert check.text.lstrip().startswith("INVALID")
    for heading in ("Timeline", "Latency", "Throughput", "Chain per node", "Anomalies"):
        assert heading in check.text
    assert "c9-9" in check.text  # the anomaly's example
    # the canary is named, and its anomaly is shown with the failing ops and explanation
    assert "CANARY read-non-tail" in check.text
    assert "unwritten-after-read" in check.text and "c0-99" in check.text
    assert "a read found the position unwritten after another read" in check.text
    assert "Warnings" in check.text
    # wedged and silent periods from the status polls are drawn and listed
    assert "n3 wedged 0.6-1.4 s" in check.text and "n2 no answer 1.4-1.8 s" in check.text
    assert (run_dir / "index.html").read_text().count("(status polls)</title>") == 2


def test_a_misbehaving_page_is_reported(chromium: str, tmp_path: Path) -> None:
    """A page with a console error, an uncaught exception and loopback requests has all
    three reported (the checks above can fail); its requests reach no server."""
    page = tmp_path / "bad.html"
    page.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>bad</title></head><body>"
        "<h1>bad page</h1><img src='http://127.0.0.1:9/pixel.png'>"
        "<script>console.error('boom', 42); console.warn('careful');"
        "fetch('http://127.0.0.1:9/data.json').catch(function () {});"
        "undefinedFunction();</script></body></html>")
    check = _open(chromium, page, tmp_path / "bad.png")
    assert check.title == "bad" and "bad page" in check.text
    assert not check.clean
    assert any(m.text == "boom 42" for m in check.console_errors), check.summary()
    assert any(m.level == "warning" and m.text == "careful" for m in check.console)
    assert any("undefinedFunction" in e for e in check.exceptions), check.summary()
    assert "http://127.0.0.1:9/pixel.png" in check.requests, check.summary()
    assert "http://127.0.0.1:9/data.json" in check.requests, check.summary()


def test_a_hung_page_times_out_and_the_browser_is_killed(chromium: str, tmp_path: Path) -> None:
    """A page whose script never ends gives a clear BrowserError within the timeout, and no
    process of the browser is left behind."""
    page = tmp_path / "hang.html"
    page.write_text("<!doctype html><title>hang</title><script>for (;;) {}</script>")
    started: list[int] = []
    with pytest.raises(BrowserError) as info:
        check_page(page, tmp_path / "hang.png", timeout_s=4.0, chromium=chromium,
                   started=started)
    _assert_browser_gone(started)
    if not info.value.answered:
        pytest.skip(f"chromium does not start here: {info.value}")
    assert "did not answer in time" in str(info.value)
