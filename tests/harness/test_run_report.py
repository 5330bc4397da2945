"""`harness.run.analyze` and the run report on a stored run built by hand (no cluster): the
verdict, counts and anomalies land in results.json and index.html, and the page renders in
headless Chromium without console errors (screenshot saved) when Chromium is installed."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from harness.run import analyze

POS = ["h^^00000000^u^1", 1024, 96]
POS2 = ["h^^00000000^u^1", 1120, 96]


def _ev(i: int, t_ms: int, proc: Any, typ: str, f: str, value: Any, **extra: Any) -> str:
    return json.dumps({"index": i, "time": t_ms * 1_000_000, "process": proc, "type": typ,
                       "f": f, "value": value, **extra})


def _run_dir(tmp: Path, *, lose: bool, read: str = "fail", final_error: str | None = None,
             final: dict[str, Any] | None = None) -> Path:
    """A stored run; ``read``: the workload read fails, or succeeds "during" the partition,
    or "after" it was healed; ``final_error``: node b's final read of the first chunk fails
    with that error (node a reads it back fine); ``final``: extra final.json fields."""
    d = tmp / "run"
    (d / "nodes" / "a").mkdir(parents=True)
    (d / "nodes" / "b").mkdir(parents=True)
    final_b = None if lose else "c0-2"
    mid = [
        _ev(5, 1800, 1, "invoke", "read", {"pos": POS}),
        _ev(6, 1900, 1, "fail", "read", {"pos": POS}, error="PARTITION"),
        _ev(7, 2500, "nemesis", "info", "heal", {"phase": "done"}),
    ]
    if read == "during":
        mid[1] = _ev(6, 1900, 1, "ok", "read", {"pos": POS, "v": "c0-1"})
    elif read == "after":
        mid = [
            _ev(5, 1800, "nemesis", "info", "heal", {"phase": "done"}),
            _ev(6, 1900, 1, "invoke", "read", {"pos": POS}),
            _ev(7, 2500, 1, "ok", "read", {"pos": POS, "v": "c0-1"}),
        ]
    lines = [
        _ev(0, 1000, 0, "invoke", "append", {"v": "c0-1", "prefix": "h"}),
        _ev(1, 1010, 0, "ok", "append", {"v": "c0-1", "pos": POS}, node="a", epoch=1),
        _ev(2, 1500, "nemesis", "info", "partition", {"phase": "done", "kind": "halves"}),
        _ev(3, 1600, 0, "invoke", "append", {"v": "c0-2", "prefix": "h"}),
        _ev(4, 1700, 0, "ok", "append", {"v": "c0-2", "pos": POS2}, node="a", epoch=1),
        *mid,
        _ev(8, 3000, 10000, "invoke", "read", {"pos": POS}, final=True, node="b"),
        _ev(9, 3001, 10000, "ok", "read", {"pos": POS, "v": "c0-1"}, final=True, node="b"),
        _ev(10, 3002, 10000, "invoke", "read", {"pos": POS2}, final=True, node="b"),
        _ev(11, 3003, 10000, "ok", "read", {"pos": POS2, "v": final_b}, final=True, node="b"),
    ]
    if final_error is not None:
        lines[9] = _ev(9, 3001, 10000, "fail", "read", {"pos": POS}, final=True, node="b",
                       error=final_error)
        lines += [_ev(12, 3004, 10001, "invoke", "read", {"pos": POS}, final=True, node="a"),
                  _ev(13, 3005, 10001, "ok", "read", {"pos": POS, "v": "c0-1"}, final=True,
                      node="a")]
    (d / "history.jsonl").write_text("\n".join(lines) + "\n")
    run = {"options": {"name": "chunks-cp", "mode": "cp", "nodes": 2, "provider": "netns",
                       "nemesis": ["partition"], "time_limit_s": 2, "concurrency": 2,
                       "canary": None},
           "seed": 9, "nodes": ["a", "b"], "heal_time_ms": 2500, "faults": []}
    (d / "run.json").write_text(json.dumps(run))
    fin = {"stable": True, "positions": 2, "heal_time_ms": 2500, "end_time_ms": 4000,
             "checksum_lists": {"a": {}, "b": {}}, "divergent": {"count": 0}}
    (d / "final.json").write_text(json.dumps({**fin, **(final or {})}))
    for i, n in enumerate(("a", "b")):
        rec = {"node": n, "epoch": 1, "epoch_csum": "ab" * 32, "author": "a", "chain": "c1",
               "mode": "cp", "upi": ["a", "b"], "repairing": [], "down": [], "witnesses": [],
               "all_members": ["a", "b"], "confirmed": True, "time_ms": 900 + i}
        (d / "nodes" / n / "projection-log.jsonl").write_text(json.dumps(rec) + "\n")
    return d


def test_a_lost_acknowledged_append_makes_the_run_invalid_and_the_page_says_why(
    tmp_path: Path,
) -> None:
    """A final read that misses an acked chunk -> invalid, 'lost' shown with its op."""
    d = _run_dir(tmp_path, lose=True)
    res = analyze(d)
    assert res["valid"] is False
    assert res["checks"]["write_once"]["witness"]["anomalies"]["lost"]["count"] == 1
    assert res["counts"]["append"] == {"ok": 2} and res["counts"]["read"] == {"fail": 1}
    assert json.loads((d / "results.json").read_text())["valid"] is False
    page = (d / "index.html").read_text()
    assert "INVALID" in page and "lost" in page and "c0-2" in page and "<svg" in page


def test_a_clean_run_is_valid_and_converged(tmp_path: Path) -> None:
    """The same run with the chunk read back everywhere is valid; convergence is reported.
    If its only workload read failed, reads never succeeded under the fault: unknown."""
    res = analyze(_run_dir(tmp_path / "during", lose=False, read="during"))
    assert res["valid"] is True
    assert res["convergence"]["converged"] is True
    res = analyze(_run_dir(tmp_path / "fail", lose=False))
    assert res["valid"] == "unknown" and res["checks"]["coverage"]["uncovered"] == ["read"]


def test_no_read_succeeding_during_a_fault_makes_a_valid_run_unknown(tmp_path: Path) -> None:
    """Coverage guard: the run's only workload read succeeds after the heal -> unknown, with
    `read` named; the same read inside the partition keeps the run valid."""
    res = analyze(_run_dir(tmp_path / "after", lose=False, read="after"))
    assert res["valid"] == "unknown"
    cov = res["checks"]["coverage"]
    assert cov["valid"] == "unknown" and cov["uncovered"] == ["read"] and cov["faults"] == 1
    assert "no read op succeeded while a fault was active" in cov["witness"]["explanation"]
    res = analyze(_run_dir(tmp_path / "during", lose=False, read="during"))
    assert res["valid"] is True and res["checks"]["coverage"]["uncovered"] == []
    assert res["checks"]["coverage"]["ok_during_fault"] == {"append": 1, "read": 1}


def test_a_corrupt_acknowledged_chunk_on_one_replica_makes_the_run_invalid(
    tmp_path: Path,
) -> None:
    """BAD_CHECKSUM for an acknowledged chunk on one replica is invalid although another
    replica returns it intact; results.json and the page name node, position and error."""
    d = _run_dir(tmp_path, lose=False, read="during", final_error="BAD_CHECKSUM")
    res = analyze(d)
    fr = res["checks"]["final_reads"]
    assert res["valid"] is False and fr["valid"] is False and fr["bad"] == 1
    assert res["checks"]["write_once"]["valid"] is True  # one good replica satisfies it
    why = fr["witness"]["explanation"]
    assert "node b" in why and str(POS) in why and "BAD_CHECKSUM" in why
    assert fr["witness"]["examples"][0]["node"] == "b"
    page = (d / "index.html").read_text()
    assert "INVALID" in page and "final_reads" in page and "BAD_CHECKSUM" in page


def test_a_failed_final_read_of_an_acknowledged_chunk_makes_the_run_unknown(
    tmp_path: Path,
) -> None:
    """Any other error on such a final read proves nothing: the run is unknown, not valid."""
    res = analyze(_run_dir(tmp_path, lose=False, read="during", final_error="PARTITION"))
    fr = res["checks"]["final_reads"]
    assert res["valid"] == "unknown" and fr["valid"] == "unknown" and fr["inconclusive"] == 1
    assert "node b" in fr["witness"]["explanation"]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_report_renders_in_headless_chromium_without_console_errors(tmp_path: Path) -> None:
    """The page loads in headless Chromium with no console error; a screenshot is saved."""
    d = _run_dir(tmp_path, lose=True)
    analyze(d)
    shot = d / "screenshot.png"
    base = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}"]
    p = subprocess.run([*base, "--enable-logging=stderr", "--v=0", "--window-size=1100,2000",
                        f"--screenshot={shot}", (d / "index.html").as_uri()],
                       capture_output=True, text=True, timeout=90)
    console = [ln for ln in p.stderr.splitlines() if ":CONSOLE" in ln]
    assert console == [], console
    assert shot.stat().st_size > 10_000


def test_run_faults_pairs_each_fault_with_what_ends_it() -> None:
    """A kill lasts until that node's restart, a partition until heal, a failed fault is no
    fault, and heal-all ends whatever is still open."""
    from harness.checker.coverage import Fault
    from harness.run import run_faults

    def nem(i: int, f: str, phase: str, targets: list[str], **v: Any) -> dict[str, Any]:
        return {"index": i, "process": "nemesis", "type": "info", "f": f,
                "value": {"phase": phase, "targets": targets, **v}}

    evs = [
        nem(0, "kill", "done", ["a"]),
        nem(1, "partition", "start", ["a", "b", "c"]),
        nem(2, "partition", "done", ["a", "b", "c"]),
        nem(3, "pause", "done", ["b"], error="boom"),
        nem(4, "restart", "start", ["c"]),
        nem(5, "heal", "start", ["a", "b", "c"]),
        nem(6, "heal", "done", ["a", "b", "c"]),
        nem(7, "kill", "done", ["c"]),
        nem(8, "restart", "start", ["a"]),
        nem(9, "heal-all", "start", []),
    ]
    assert run_faults(evs) == [Fault(0, 8, "kill"), Fault(2, 5, "partition"),
                               Fault(7, 9, "kill")]
    assert run_faults(evs[:8]) == [Fault(0, None, "kill"), Fault(2, 5, "partition"),
                                   Fault(7, None, "kill")]
    # a crash (every node killed at once) is no coverage interval: nothing can succeed
    crash = [nem(0, "kill", "done", ["a", "b", "c"], crash=True),
             nem(1, "restart", "start", ["a", "b", "c"])]
    assert run_faults(crash) == []


def test_a_skipped_role_partition_is_no_fault_band_and_no_fault_interval() -> None:
    """A partition the executor skipped (no node holds the role) is drawn as no band and
    counted as no fault interval; an applied one is both."""
    from harness.report.run_report import _fault_bands
    from harness.run import run_faults

    def nem(i: int, t_ms: int, f: str, **v: Any) -> dict[str, Any]:
        return {"index": i, "time": t_ms * 1_000_000, "process": "nemesis", "type": "info",
                "f": f, "value": {"phase": "done", "targets": ["a", "b"], **v}}

    skipped = [nem(0, 0, "partition", kind="isolate-repairing", skipped="no repairing node"),
               nem(1, 2000, "heal")]
    assert _fault_bands(skipped, 0) == [] and run_faults(skipped) == []
    applied = [nem(0, 0, "partition", kind="isolate-middle"), nem(1, 2000, "heal")]
    assert _fault_bands(applied, 0) == [(0.0, 2.0, "partition")]
    assert len(run_faults(applied)) == 1


def test_ap_replicas_equal_compares_chunks_not_empty_files(tmp_path: Path) -> None:
    """AP: a chunk-less data file on one replica (minted for an append that failed at an
    epoch change; nothing to repair) leaves the replicas equal and is listed; a chunk on
    one replica only does not."""
    entry = [[1024, 4096, "ab" * 33]]

    def ap(lists: dict[str, Any], name: str) -> dict[str, Any]:
        d = _run_dir(tmp_path / name, lose=False, read="during",
                     final={"checksum_lists": lists})
        run = json.loads((d / "run.json").read_text())
        run["options"]["mode"] = "ap"
        (d / "run.json").write_text(json.dumps(run))
        return analyze(d)["checks"]["replicas_equal"]

    eq = ap({"a": {"f1": entry, "f2": []}, "b": {"f1": entry}}, "empty")
    assert eq["valid"] is True and eq["differ"] == [] and eq["empty_files"] == ["f2"]
    ne = ap({"a": {"f1": entry, "f2": entry}, "b": {"f1": entry}}, "chunk")
    assert ne["valid"] is False and ne["differ"] == ["b"]
