"""Goal: `machi demo` (the main job) starts three FLUs, runs its verified chain workload,
stops them, exits 0 with an errors=0 summary and leaves no process or data dir behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_demo_runs_clean(tmp_path: Path) -> None:
    """The demo succeeds, shows every error path once, and cleans up after itself."""
    proc = subprocess.run(
        [sys.executable, "-m", "machi.cli", "demo", "--appends", "80",
         "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=90, check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    summary = [ln for ln in out.splitlines() if ln.startswith("summary:")]
    assert len(summary) == 1 and summary[0].endswith("errors=0"), out
    assert "81 appends" in summary[0] and "80 reads verified" in summary[0]
    for status in ("BAD_ARG=1", "BAD_EPOCH=1", "TRIMMED=1", "WEDGED=2"):
        assert status in summary[0]
    assert "identical checksums on every member" in out
    assert "all exited 0" in out
    pids = [int(p) for p in re.findall(r"started FLU n\d pid=(\d+)", out)]
    assert len(pids) == 3 and not any(_alive(p) for p in pids)
    assert list(tmp_path.iterdir()) == []



def test_demo_with_chain_managers(tmp_path: Path) -> None:
    """With --chain-manager the daemons form the chain by Humming Consensus and the same
    verified workload succeeds."""
    proc = subprocess.run(
        [sys.executable, "-m", "machi.cli", "demo", "--chain-manager", "--appends", "40",
         "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=90, check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "Humming Consensus (bootstrap): all three at epoch" in out
    summary = [ln for ln in out.splitlines() if ln.startswith("summary:")]
    assert len(summary) == 1 and summary[0].endswith("errors=0"), out
    assert "41 appends" in summary[0] and "40 reads verified" in summary[0]
    assert "all exited 0" in out
    pids = [int(p) for p in re.findall(r"started FLU n\d pid=(\d+)", out)]
    assert len(pids) == 3 and not any(_alive(p) for p in pids)
    assert list(tmp_path.iterdir()) == []
