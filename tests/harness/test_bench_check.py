"""``machi-harness bench-check`` runs end to end on tiny sizes and prints one JSON object
per history plus a summary (numbers only: no speed is asserted)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from harness.checker.bench import Point, plan, run_point
from harness.cli import main


def test_plan_respects_max_ops_and_models() -> None:
    """Sizes grow, are capped by --max-ops, and only the asked models appear."""
    pts = plan(max_ops=1_000_000, quick=False, models=["write-once"])
    assert {p.model for p in pts} == {"write-once"}
    assert max(p.ops for p in pts) == 1_000_000
    full = plan(max_ops=10**8, quick=False, models=["register", "kv", "write-once"])
    assert max(p.ops for p in full) == 10_000_000
    assert any(p.crash_p > 0 for p in full if p.model == "register")
    assert any(p.crash_p == 0 for p in full if p.model == "register")


def test_bench_check_quick_run() -> None:
    """A capped quick run reports every history with timing, throughput and peak RSS."""
    result = CliRunner().invoke(
        main, ["bench-check", "--quick", "--max-ops", "200", "--model", "register"]
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    summary = rows.pop()
    assert summary["summary"] is True
    assert summary["histories"] == len(rows) == 4
    for r in rows:
        _check_row(r)


def test_write_once_point(tmp_path: Path) -> None:
    """A write-once point is generated to a file, checked in a subprocess, and removed."""
    r = run_point(
        Point("write-once", 2000, 5, 0.05),
        seed=3,
        tmp_dir=tmp_path,
        memory_limit_mb=512,
        time_limit_s=60,
        keep=False,
    )
    _check_row(r)
    assert r["checked_ops"] > 2000  # final reads come on top
    assert r["history_mb"] > 0
    assert list(tmp_path.iterdir()) == []


def _check_row(r: dict[str, Any]) -> None:
    assert "error" not in r, r
    assert r["valid"] is True
    assert r["elapsed_s"] >= 0 and r["cpu_s"] >= 0 and r["ops_per_s"] > 0
    assert r["peak_rss_mb"] > 0 and r["calib_s"] > 0
    assert 0 <= r["crashed_fraction"] < 1
