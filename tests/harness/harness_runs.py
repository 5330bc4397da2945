"""`machi-harness test` runs on a netns cluster, for the tests that run the real CLI in a
subprocess (test helper, not a test module)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

CLI = str(Path(sys.executable).parent / "machi-harness")


def run_test(state_dir: Path, store: Path, nodes: int, *args: str,
             fast: bool = True) -> tuple[int, str, dict[str, Any], Path]:
    """One `machi-harness test` on the netns cluster of ``state_dir`` (``fast``: fast chain
    timers and 2n clients; else only ``args`` besides where the cluster and the store
    are, i.e. the CLI's defaults); returns exit code, output, results.json and the run
    dir."""
    cmd = [CLI, "test", "--hosts", "netns", "--nodes", str(nodes),
           "--state-dir", str(state_dir), "--store", str(store),
           *(("--concurrency", "2n", "--chain-fast") if fast else ()), *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=160,
                       cwd=Path(__file__).resolve().parents[2])
    test_dirs = [d for d in store.iterdir() if d.is_dir()]
    assert len(test_dirs) == 1, (p.stdout, p.stderr[-3000:])
    run_dir = (test_dirs[0] / "latest").resolve()
    results = json.loads((run_dir / "results.json").read_text())
    return p.returncode, p.stdout + p.stderr, results, run_dir
