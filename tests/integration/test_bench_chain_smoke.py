"""Goal: `machi bench chain --quick --json` runs its cells on its own 3-node chain, its
fault phases and its baselines, prints one JSON object of the documented shape, and stops
its daemons and removes its data (no timing assertions: the numbers are only printed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from machi.bench.chain import chain_timers
from machi.bench.flu import BenchError
from machi.node.config import FAST_CHAIN_TOML, NodeConfig

pytestmark = pytest.mark.timeout(150)

LAT_KEYS = {"ops", "elapsed_s", "ops_per_s", "mb_per_s", "latency_ms_p50",
            "latency_ms_p99", "errors", "client_cpu_s"}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_bench_chain_quick_json(tmp_path: Path) -> None:
    """One sync mode x one size x two concurrencies, the fault phases, both baselines,
    the three target ratios, and nothing left running or on disk."""
    proc = subprocess.run(
        [sys.executable, "-m", "machi.cli", "bench", "chain", "--quick", "--json",
         "--sync", "none", "--sizes", "4KiB", "--concurrency", "1,2",
         "--duration-s", "0.1", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=140, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)  # --json: exactly one JSON object on stdout
    assert result["bench"] == "chain"
    assert result["plan"]["nodes"] == 3 and result["plan"]["sync_modes"] == ["none"]
    assert [(c["sync"], c["size"], c["concurrency"]) for c in result["cells"]] == [
        ("none", 4096, 1), ("none", 4096, 2)]
    for c in result["cells"]:
        assert LAT_KEYS <= set(c["append"]), c["append"]
        assert c["append"]["ops"] > 0 and c["append"]["errors"] == 0
        assert c["append"]["latency_ms_p50"] <= c["append"]["latency_ms_p99"]
        assert "vs_single_flu" in c
        assert c["append"]["chunks_per_request"] >= 1 and c["append"]["batch_splits"] == 0
    base = result["baseline"]
    assert base["fdatasync_4k"]["ops"] > 0 and base["seq_write_1m"]["bytes"] > 0
    assert [(c["sync"], c["concurrency"]) for c in base["single_flu"]] == [
        ("none", 1), ("none", 2)]
    assert base["single_flu_exit_codes"] == {"none": 0}
    conv = result["convergence"]
    assert conv["sync"] == "none"
    # no --fast-timers / --node-toml: the daemons ran the shipped chain timers
    shipped = chain_timers("")
    assert shipped["chain_stability_time_ms"] == NodeConfig().chain_stability_time_ms
    assert result["plan"]["timers"] == shipped and conv["timers"] == shipped
    assert conv["kill"]["confirmed_s"] > 0 and conv["kill"]["appends_ok_s"] is not None
    assert conv["restart"]["node"] == conv["kill"]["node"]
    assert conv["restart"]["back_in_upi_s"] >= conv["restart"]["process_ready_s"]
    assert conv["partition"]["how"] == "SIGSTOP/SIGCONT"
    assert conv["partition"]["heal_converged_s"] > 0
    assert set(result["ratios"]) == {"append_1m_durable_vs_raw_seq_write_per_node",
                                     "append_4k_durable_ops_per_s", "heal_convergence_s"}
    # no durable mode and no 1 MiB cell were asked for: those targets are not available
    assert result["ratios"]["append_1m_durable_vs_raw_seq_write_per_node"]["met"] is None
    assert result["ratios"]["append_4k_durable_ops_per_s"]["met"] is None
    assert result["ratios"]["heal_convergence_s"]["value"] == conv["partition"][
        "heal_converged_s"]
    assert result["managers"]["none"]["epochs_during_cells"][0] is not None
    assert result["managers"]["none"]["servers_cpu_s_per_s"] is not None
    [daemons] = result["daemons"]
    assert set(daemons["pids"]) == {"n1", "n2", "n3"}
    assert set(daemons["exit_codes"].values()) == {0}
    assert not any(_alive(pid) for pid in daemons["pids"].values())
    assert list(tmp_path.iterdir()) == []


def test_bench_chain_rejects_bad_plan(tmp_path: Path) -> None:
    """Bad members and a bad sync mode are refused with a clear message, nothing started."""
    base = [sys.executable, "-m", "machi.cli", "bench", "chain", "--data-dir", str(tmp_path)]
    proc = subprocess.run([*base, "--members", "n1=nowhere"], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "n1" in proc.stderr, proc.stderr
    proc = subprocess.run([*base, "--sync", "sometimes"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 2 and "sometimes" in proc.stderr, proc.stderr
    bad = tmp_path.parent / f"{tmp_path.name}-bad.toml"
    bad.write_text("chain_tick_base_ms = 0\n")
    proc = subprocess.run([*base, "--node-toml", str(bad)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 2 and "chain_tick_base_ms" in proc.stderr, proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_bench_chain_timers_are_the_shipped_ones_unless_overridden() -> None:
    """--fast-timers gives FAST_CHAIN_TOML's keys, --node-toml overrides after it."""
    fast = chain_timers(FAST_CHAIN_TOML)
    assert fast["chain_tick_base_ms"] == 100 and fast["chain_stability_time_ms"] == 400
    mixed = chain_timers(FAST_CHAIN_TOML + "[node]\nchain_stability_time_ms = 700\n")
    assert mixed == {**fast, "chain_stability_time_ms": 700}
    assert chain_timers("") == {k: getattr(NodeConfig(), k) for k in fast}
    with pytest.raises(BenchError, match="unknown config key"):
        chain_timers("chain_tik_ms = 1\n")
