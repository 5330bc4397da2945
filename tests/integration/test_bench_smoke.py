"""Goal: `machi bench flu --quick --json` runs every requested cell against its own
daemons, prints one JSON object of the documented shape, and stops its daemons and removes
its data (no timing assertions: the numbers are only printed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from machi.node.process import NodeProcess, bootstrap

pytestmark = pytest.mark.timeout(120)

LAT_KEYS = {"ops", "elapsed_s", "ops_per_s", "mb_per_s", "gb_per_s", "latency_ms_p50",
            "latency_ms_p99", "latency_ms_max", "client_cpu_s"}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_bench_flu_quick_json(tmp_path: Path) -> None:
    """One sync mode x two sizes x two concurrencies: all cells, baseline, ratios, cleanup."""
    proc = subprocess.run(
        [sys.executable, "-m", "machi.cli", "bench", "flu", "--quick", "--json",
         "--sync", "batch", "--sizes", "4KiB,64KiB", "--concurrency", "1,4",
         "--duration-s", "0.15", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=100, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)  # --json: exactly one JSON object on stdout
    assert result["bench"] == "flu"
    assert result["plan"]["sync_modes"] == ["batch"]
    base = result["baseline"]
    assert base["fdatasync_4k"]["ops"] > 0 and base["seq_write_1m"]["bytes"] > 0
    assert Path(base["directory"]).parent == tmp_path
    cells = result["cells"]
    assert [(c["sync"], c["size"], c["concurrency"]) for c in cells] == [
        ("batch", size, c) for size in (4096, 65536) for c in (1, 4)
    ]
    for c in cells:
        for op in ("append", "read"):
            assert LAT_KEYS <= set(c[op]), (op, c[op])
            assert c[op]["ops"] > 0
            assert c[op]["latency_ms_p50"] <= c[op]["latency_ms_p99"]
        assert {"server_cpu_us_per_op", "server_minflt_per_op"} <= set(c["append"])
        multi = c["append_chunks"]  # multi-chunk requests (protocol v2), per chunk
        assert multi["chunks_per_request"] == 16 and multi["chunks"] == 16 * multi["ops"] > 0
    assert set(result["ratios"]) == {"append_4k_durable_vs_raw_fdatasync",
                                     "append_1m_durable_vs_raw_seq_write", "read_gb_per_s"}
    r4k = result["ratios"]["append_4k_durable_vs_raw_fdatasync"]
    assert r4k["value"] is not None and r4k["cell"].startswith("sync=batch")
    # no 1 MiB cell was asked for: that ratio is reported as not available
    assert result["ratios"]["append_1m_durable_vs_raw_seq_write"]["met"] is None
    daemons = result["daemons"]
    assert [d["sync"] for d in daemons] == ["batch"]
    assert all(d["exit_code"] == 0 and not _alive(d["pid"]) for d in daemons)
    assert list(tmp_path.iterdir()) == []
    assert "started FLU sync=batch" in proc.stderr


def test_bench_flu_rejects_bad_plan(tmp_path: Path) -> None:
    """A bad sync mode is refused with a clear message before any daemon starts."""
    proc = subprocess.run(
        [sys.executable, "-m", "machi.cli", "bench", "flu", "--sync", "sometimes",
         "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 2
    assert "--sync" in proc.stderr and "sometimes" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_bench_flu_against_a_running_server(tmp_path: Path) -> None:
    """--server: a wedged FLU is refused with a clear message; an unwedged one is measured
    and left running (the bench stops only daemons it started)."""
    node = NodeProcess("target", tmp_path / "target")
    try:
        node.start()
        args = [sys.executable, "-m", "machi.cli", "bench", "flu", "--server", node.address,
                "--json", "--sizes", "4KiB", "--concurrency", "2", "--duration-s", "0.1",
                "--data-dir", str(tmp_path / "bench")]
        proc = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 2 and "wedged" in proc.stderr, proc.stderr

        async def boot() -> None:
            async with node.client() as c:
                await bootstrap(c, "target")

        anyio.run(boot)
        proc = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        assert result["daemons"] == [] and result["plan"]["sync_modes"] == ["server"]
        assert [(c["sync"], c["concurrency"]) for c in result["cells"]] == [("server", 2)]
        assert result["cells"][0]["append"]["ops"] > 0
        assert "server_cpu_s" not in result["cells"][0]["append"]  # not our process
        assert node.running()
        assert list((tmp_path / "bench").iterdir()) == []
    finally:
        node.kill()
