"""`machi-harness test` end to end on a 3-node netns cluster: deploy over sshd, clients under
partitions and kills (CP and AP) and under pauses and torn writes (CP), heal, read-back,
checks, store folder and report -- a correct store is valid (the canaries, which must make
runs invalid, are in test_canaries_netns.py).

The cluster has its own namespace prefix (machi-t<pid>-) and is always taken down; the runs
are the real CLI in a subprocess (it re-execs itself into the control namespace).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.hosts import netns
from tests.harness.harness_runs import CLI, run_test

pytestmark = [pytest.mark.netns, pytest.mark.timeout(170)]

# seed 72 over 14 s on n1..n3: the head killed at 1.6 s, restarted at 6.8 s, then a
# majority/minority partition from 9.7 s to 12.6 s (after the first successful op)
SEED = 72


@pytest.fixture(scope="module")
def cluster() -> Iterator[Path]:
    why = netns.preflight()
    if why:
        pytest.skip(f"netns harness runs need root and `ip netns`: {why}")
    with netns.temporary_cluster(3, prefix=f"machi-t{os.getpid() % 100000}r-") as state_dir:
        yield state_dir


def _run(state_dir: Path, store: Path, *args: str) -> tuple[int, str, dict[str, Any], Path]:
    return run_test(state_dir, store, 3, *args)


def test_cp_run_with_partitions_and_kills_is_valid(cluster: Path, tmp_path: Path) -> None:
    """A short CP run with a kill and a partition ends valid, with every artefact stored."""
    code, out, res, run_dir = _run(cluster, tmp_path, "--mode", "cp", "--nemesis",
                                   "partition,kill", "--time-limit", "14", "--seed", str(SEED))
    assert code == 0, (out[-3000:], json.dumps(res["checks"], default=str)[:3000])
    assert res["valid"] is True and res["seed"] == SEED
    assert {"write_once", "projection_safety", "final_phase"} <= set(res["checks"])
    assert res["counts"]["append"]["ok"] > 0 and res["counts"]["read (final)"]["ok"] > 0
    faults = [f["fault"] for f in res["faults"]]
    assert "kill" in faults and "partition" in faults and "heal" in faults
    assert res["convergence"]["converged"] is True
    for f in ("history.jsonl", "run.json", "harness.log", "index.html", "final.json"):
        assert (run_dir / f).stat().st_size > 0, f
    for n in ("n1", "n2", "n3"):
        assert (run_dir / "nodes" / n / "node.log").stat().st_size > 0
        plog = (run_dir / "nodes" / n / "projection-log.jsonl").read_text().splitlines()
        assert plog and all('"time_unix_ms"' in ln for ln in plog)  # the wall clock too
    page = (run_dir / "index.html").read_text()
    assert "valid" in page and "<svg" in page and "http://" not in page.replace(
        "http://www.w3.org", "")
    assert f"report: {run_dir}" in out or "report:" in out
    # the final heal is proven like every heal: all 6 ordered pairs connect
    assert res["final_heal"] == {"connected_pairs": 6}
    heal_all = [json.loads(ln) for ln in (run_dir / "history.jsonl").read_text().splitlines()
                if '"heal-all"' in ln]
    assert heal_all[-1]["value"]["connected_pairs"] == 6
    # the ~1 s status polls are stored (the report draws wedged periods from them)
    polls = [json.loads(ln) for ln in (run_dir / "status.jsonl").read_text().splitlines()]
    assert len(polls) >= 12 and set(polls[0]["nodes"]) == {"n1", "n2", "n3"}
    assert all("wedged" in s or "error" in s for p in polls for s in p["nodes"].values())
    assert res["checks"]["final_reads"]["valid"] is True
    assert res["checks"]["final_reads"]["reads"] >= 3 * res["counts"]["append"]["ok"]
    # nothing left behind inside the namespaces: no daemon, no nemesis rule
    st = netns.cluster_status(state_dir=cluster)
    assert all(not any(n["daemons"].values()) for n in st["nodes"]), st
    assert all(n["nemesis_rules"] == 0 for n in st["nodes"]), st
    # analyze re-checks the stored run to the same verdict
    p = subprocess.run([CLI, "analyze", str(run_dir)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "verdict: valid" in p.stdout


def test_ap_run_with_partitions_and_kills_is_valid_and_replicas_converge(
    cluster: Path, tmp_path: Path
) -> None:
    """A short AP run (appends on every side of a partition, a node killed and restarted)
    ends valid with equal replicas and a reported convergence time."""
    # seed 72 over 14 s: the head killed at 1.6 s, restarted at 6.8 s; majority/minority
    # partition from 9.7 s to 12.6 s
    code, out, res, _run_dir = _run(cluster, tmp_path, "--mode", "ap", "--nemesis",
                                    "partition,kill", "--time-limit", "14", "--seed",
                                    str(SEED))
    assert code == 0, (out[-3000:], json.dumps(res["checks"], default=str)[:3000])
    assert res["checks"]["replicas_equal"]["valid"] is True
    assert res["checks"]["replicas_equal"]["counts_in_verdict"] is True
    assert [f["fault"] for f in res["faults"]] == ["kill", "restart", "partition", "heal"]
    assert res["convergence"]["converged"] is True
    assert res["convergence"]["time_to_converge"] >= 0


def test_cp_run_with_a_torn_write_and_a_pause_is_valid(cluster: Path, tmp_path: Path) -> None:
    """A short CP run where a node's data file is torn while it is down, and later a node is
    paused, ends valid: the restarted node's corrupt chunks are repaired before it serves
    them again, so every UPI member returns every acknowledged chunk intact."""
    # seed 66 over 14 s: n2 killed at 1.6 s, its data files torn at 4.2 s, restarted at
    # 6.8 s; n2 paused from 10.2 s to 12.6 s
    code, out, res, _run_dir = _run(cluster, tmp_path, "--mode", "cp", "--nemesis",
                                    "pause,torn-write", "--time-limit", "14", "--seed", "66")
    assert code == 0, (out[-3000:], json.dumps(res["checks"], default=str)[:3000])
    faults = [f["fault"] for f in res["faults"]]
    assert faults == ["kill", "torn-write", "restart", "pause", "resume"], faults
    torn = [t for f in res["faults"] if f["fault"] == "torn-write" for t in f["torn"]]
    assert torn and all("skipped" not in t for t in torn), torn
    fr = res["checks"]["final_reads"]
    assert fr["valid"] is True and fr["bad"] == 0 and fr["reads"] > 0
