"""``machi-harness bench-check`` runs end to end on tiny sizes and prints one JSON object
per history plus a summary (numbers only: no speed is asserted)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from harness.checker.bench import plan
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
        main,
        [
            "bench-check",
            "--quick",
            "--max-ops",
            "10000",
            "--model",
            "register",
            "--model",
            "write-once",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    summary = rows.pop()
    assert summary["summary"] is True
    assert summary["histories"] == len(rows) > 0
    assert {r["model"] for r in rows} == {"register", "write-once"}
    for r in rows:
        assert "error" not in r, r
        assert r["valid"] is True
        assert r["elapsed_s"] >= 0 and r["ops_per_s"] > 0 and r["peak_rss_mb"] > 0
        assert 0 <= r["crashed_fraction"] < 1
