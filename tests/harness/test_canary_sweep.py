"""The canary sweep's bookkeeping (no cluster): outcome per run and the catch table."""

from __future__ import annotations

from typing import Any

from harness.canary import SIGNATURES, signatures_found
from harness.canary_sweep import main, table


def _res(mode: str, checks: dict[str, Any], anomalies: dict[str, Any]) -> dict[str, Any]:
    checks = {"write_once": {"valid": not anomalies, "witness": {"anomalies": anomalies}},
              **checks}
    return {"checks": checks, "options": {"mode": mode}}


def test_signatures_found_reads_failed_checks_and_counted_anomalies() -> None:
    res = _res("cp", {"epoch_unique": {"valid": False}, "final_reads": {"valid": True}},
               {"lost": {"count": 3}, "unwritten-after-ack": {"count": 0}})
    assert signatures_found(res) == {"epoch_unique", "write_once", "lost"}


def test_ap_counts_only_judged_stale_reads() -> None:
    res = _res("ap", {}, {"unwritten-after-read": {"count": 5}})
    res["checks"]["write_once"]["ap_calm_stale_reads"] = {"kinds": {}}
    assert "unwritten-after-read" not in signatures_found(res)
    res["checks"]["write_once"]["ap_served_stale_reads"] = {
        "kinds": {"unwritten-in-one-projection": 2}}
    assert "unwritten-in-one-projection" in signatures_found(res)


def test_table_counts_catches_and_names_misses() -> None:
    lines = [
        {"canary": "skip-repair", "mode": "cp", "seed": 1, "outcome": "caught",
         "signatures": ["lost"], "acks": 900, "first_fault": "kill head", "wall_s": 30.0},
        {"canary": "skip-repair", "mode": "cp", "seed": 2, "outcome": "MISSED",
         "signatures": [], "acks": 80, "first_fault": "partition isolate-head",
         "wall_s": 40.0, "exit": 0, "failed_checks": []},
        {"canary": "clean", "mode": "ap", "seed": 1, "outcome": "valid", "acks": 700,
         "first_fault": "kill head", "wall_s": 31.0},
    ]
    t = table(lines)
    assert "| `skip-repair` | CP | 2 | 1 / 2 | `lost` 1 | 80-900 |" in t
    assert "| `clean` | AP | 1 | 1 / 1 |" in t
    assert "Not caught / not valid: skip-repair cp seed 2: MISSED" in t
    assert set(SIGNATURES) == {"read-non-tail", "ack-before-tail", "epoch-reuse",
                               "skip-repair", "ack-before-sync"}


def test_usage_errors() -> None:
    import pytest

    with pytest.raises(SystemExit) as e:
        main(["--canaries", "no-such-canary", "--seeds", "1"])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        main([])  # no seeds
