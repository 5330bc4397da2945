"""``machi-harness bench-check`` runs end to end on tiny sizes and prints one JSON object
per history plus a summary (numbers only: no speed is asserted)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
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


def test_repeated_points_report_medians() -> None:
    """--repeat N measures each register/kv history N times and reports the medians (each
    run's CPU seconds kept beside them); the verdict is the runs' common one."""
    result = CliRunner().invoke(
        main, ["bench-check", "--quick", "--max-ops", "200", "--model", "register", "--repeat", "3"]
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    rows.pop()
    for r in rows:
        _check_row(r)
        assert r["repeats"] == 3 and len(r["cpu_s_runs"]) == 3
        assert r["cpu_s"] == sorted(r["cpu_s_runs"])[1]


def test_medians_of_runs_and_the_ratios_of_medians() -> None:
    """``_medians``: medians of our times and porcupine's, ratios of the medians."""
    from harness.checker.bench import _medians

    def run(cpu: float, wall: float, pc_cpu: float, pc_wall: float) -> dict[str, Any]:
        return {
            "cpu_s": cpu,
            "elapsed_s": wall,
            "partition_cpu_s": cpu / 4,
            "search_cpu_s": cpu / 2,
            "valid": True,
            "porcupine": {"result": "Ok", "check_cpu_s": pc_cpu, "check_wall_s": pc_wall},
            "cpu_ratio_vs_porcupine": round(cpu / pc_cpu, 3),
        }

    out = _medians([run(0.3, 0.5, 0.1, 0.2), run(0.1, 0.2, 0.2, 0.2), run(0.2, 0.3, 0.4, 0.1)])
    assert out["cpu_s"] == 0.2 and out["elapsed_s"] == 0.3 and out["search_cpu_s"] == 0.1
    assert out["porcupine"]["check_cpu_s"] == 0.2 and out["porcupine"]["check_wall_s"] == 0.2
    assert out["cpu_ratio_vs_porcupine"] == 1.0 and out["wall_ratio_vs_porcupine"] == 1.5
    assert out["search_ratio_vs_porcupine"] == 0.5
    assert out["cpu_ratios"] == [3.0, 0.5, 0.5] and out["valid"] is True
    assert out["cpu_ratio_paired_median"] == 0.5
    assert (
        _medians([run(0.1, 0.1, 0.1, 0.1), {**run(0.1, 0.1, 0.1, 0.1), "valid": False}])["valid"]
        == "differs"
    )


def test_write_once_point(tmp_path: Path) -> None:
    """A write-once point is generated to a file, checked in a subprocess (by the fast
    path, with the Python checker's baseline beside it), and removed."""
    r = run_point(
        Point("write-once", 2000, 5, 0.05),
        seed=3,
        tmp_dir=tmp_path,
        memory_limit_mb=512,
        time_limit_s=60,
        keep=False,
        baseline=True,
    )
    _check_row(r)
    assert r["checked_ops"] > 2000  # final reads come on top
    assert r["history_mb"] > 0
    assert r["path"] == "python"  # below FAST_MIN_BYTES: what the CLI does too
    assert r["python_baseline"]["valid"] is True and r["python_baseline"]["cpu_s"] >= 0
    assert list(tmp_path.iterdir()) == []


def _check_row(r: dict[str, Any]) -> None:
    assert "error" not in r, r
    assert r["valid"] is True
    assert r["elapsed_s"] >= 0 and r["cpu_s"] >= 0 and r["ops_per_s"] > 0
    assert r["peak_rss_mb"] > 0 and r["calib_s"] > 0
    assert 0 <= r["crashed_fraction"] < 1


def test_porcupine_comparison_on_one_history() -> None:
    """With go and porcupine's source present, a register and a kv point are checked by both
    checkers, which agree on the verdict, and the row carries the CPU ratio, and the same
    check timed in two phases (partition, then the per-key checks) with the same verdict."""
    from harness.checker.bench import porcupine_binary

    binary, why = porcupine_binary()
    if binary is None:
        pytest.skip(f"porcupine comparison unavailable: {why}")
    for point in (Point("register", 300, 5, 0.05), Point("kv", 300, 5, 0.05, keys=3)):
        r = run_point(
            point,
            seed=5,
            tmp_dir=Path("."),
            memory_limit_mb=512,
            time_limit_s=30,
            keep=False,
            porcupine=binary,
        )
        _check_row(r)
        assert r["porcupine"]["result"] == "Ok", r
        assert r["cpu_ratio_vs_porcupine"] >= 0
        assert r["search_valid"] is True and r["valid"] is True, r
        assert r["search_ratio_vs_porcupine"] >= 0 and r["partition_cpu_s"] >= 0, r


def test_porcupine_driver_finds_an_injected_anomaly(tmp_path: Path) -> None:
    """The porcupine driver is no rubber stamp: a history with an injected stale read is
    Illegal for it too (the same verdict as ours)."""
    from harness.checker.bench import porcupine_binary, run_porcupine
    from harness.checker.lin_gen import generate, inject
    from harness.checker.run import check_history
    from harness.history import pair_ops, write_history

    binary, why = porcupine_binary()
    if binary is None:
        pytest.skip(f"porcupine comparison unavailable: {why}")
    for model in ("register", "cas-register", "kv"):
        events = inject(
            generate(model, seed=2, ops=200, processes=4, keys=2),
            "stale-read",
            seed=2,
            model=model,
        )
        path = tmp_path / f"{model}.jsonl"
        write_history(path, events)
        assert check_history(pair_ops(events), model, 30).valid is False
        assert run_porcupine(binary, model, path, 30)["result"] == "Illegal", model


def test_write_once_child_names_the_fast_path_that_answered(tmp_path: Path) -> None:
    """The measuring child says which path answered (the compiled one when numba is
    installed, else DuckDB's) and, when one handed over, why."""
    from harness.checker.bench import _child_write_once, write_write_once_history
    from harness.checker.write_once import fast_path_name

    path = tmp_path / "wo.jsonl"
    write_write_once_history(path, Point("write-once", 500, 3, 0.05), seed=1)
    row = _child_write_once(path, 512, 60, min_bytes=0)
    assert row["valid"] is True
    assert row["path"] == (fast_path_name() or "python")
    with path.open("ab") as fh:
        fh.write(b'{"index": "torn')
    row = _child_write_once(path, 512, 60, min_bytes=0)
    assert row["valid"] is True  # the torn line is dropped by the Python checker
    if fast_path_name():
        assert row["path"] == f"python-after-{fast_path_name()}"
    if fast_path_name() == "jit":
        assert row["handover"] == "line shape"
