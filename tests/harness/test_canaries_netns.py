"""The harness proves it finds bugs: on a 5-node netns cluster every canary (a switch that
breaks one guarantee on purpose, TEST ONLY) makes a short default harness run `invalid`,
and the same runs without a canary are `valid`, in CP and in AP.

One cluster per module (own prefix machi-t<pid>c-, always taken down); each run is the real
CLI in a subprocess.  Seeds and nemeses are chosen so the fault the canary needs happens
(docs/harness-run.md "Canaries" has the catch rates over other seeds).  CP runs and the
clean runs are in the default suite (~3 min); the AP canary runs are marked slow.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.hosts import netns
from tests.harness.harness_runs import run_test

pytestmark = [pytest.mark.netns, pytest.mark.timeout(170)]

NODES = 5

# canary -> (nemesis, seed, time limit s, what must be reported).  Seeds over 8 s on
# n1..n5: kill seed 5 = n2,n5 killed at 2.5 s, restarted at 5.1 s; crash seed 5 = every
# node SIGKILLed at 2.5 s, restarted at 5.1 s.
CANARY_RUNS: dict[str, tuple[str, int, float, str]] = {
    # reads of in-flight appends from a non-tail, then again: seen, then unwritten
    "read-non-tail": ("none", 5, 8, "unwritten-after-read"),
    # the tail never gets the chunk: the final read-back finds it missing
    "ack-before-tail": ("none", 5, 5, "lost"),
    # one node holds two different projections at one epoch number
    "epoch-reuse": ("kill", 5, 8, "epoch_unique"),
    # a restarted node joins the UPI without its data
    "skip-repair": ("kill", 5, 8, "lost"),
    # acknowledged, then the whole cluster crashes before the write-back
    "ack-before-sync": ("crash", 5, 8, "lost"),
}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Path]:
    why = netns.preflight()
    if why:
        pytest.skip(f"netns harness runs need root and `ip netns`: {why}")
    with netns.temporary_cluster(NODES, prefix=f"machi-t{os.getpid() % 100000}c-") as state_dir:
        yield state_dir


def _run(state_dir: Path, store: Path, *args: str) -> tuple[int, str, dict[str, Any], Path]:
    return run_test(state_dir, store, NODES, *args)


def _caught(res: dict[str, Any], what: str) -> bool:
    """The canary's signature: a failed check, or a write-once anomaly of that kind."""
    checks = res["checks"]
    if what in checks:
        return checks[what]["valid"] is False
    wo = checks["write_once"]
    anomalies = (wo.get("witness") or {}).get("anomalies") or {}
    if res["options"]["mode"] == "ap" and what.startswith("unwritten-"):
        return (wo.get("ap_calm_stale_reads") or {}).get("kinds", {}).get(what, 0) > 0
    return anomalies.get(what, {}).get("count", 0) > 0


def _check_canary(cluster: Path, tmp_path: Path, mode: str, canary: str) -> None:
    nemesis, seed, limit, what = CANARY_RUNS[canary]
    code, out, res, run_dir = _run(cluster, tmp_path, "--mode", mode, "--nemesis", nemesis,
                                   "--time-limit", str(limit), "--seed", str(seed),
                                   "--canary", canary)
    summary = json.dumps({k: c.get("valid") for k, c in res["checks"].items()})
    assert code == 1 and res["valid"] is False, (summary, out[-2000:])
    assert res["test_canary"] == canary
    assert _caught(res, what), (what, json.dumps(res["checks"], default=str)[:3000])
    # the report names the canary and shows the anomaly with its explanation
    page = (run_dir / "index.html").read_text()
    assert f"CANARY {canary}" in page and "INVALID" in page
    assert what in page


@pytest.mark.parametrize("canary", sorted(CANARY_RUNS))
def test_cp_canary_is_caught(cluster: Path, tmp_path: Path, canary: str) -> None:
    """In CP, a short default run with the canary on is invalid, for the canary's reason."""
    _check_canary(cluster, tmp_path, "cp", canary)


@pytest.mark.slow
@pytest.mark.parametrize("canary", sorted(CANARY_RUNS))
def test_ap_canary_is_caught(cluster: Path, tmp_path: Path, canary: str) -> None:
    """In AP, a short default run with the canary on is invalid, for the canary's reason."""
    _check_canary(cluster, tmp_path, "ap", canary)


@pytest.mark.parametrize(("mode", "nemesis"), [("cp", "crash"), ("ap", "kill")])
def test_clean_run_is_valid(cluster: Path, tmp_path: Path, mode: str, nemesis: str) -> None:
    """Without a canary, the canaries' runs are valid: CP through a whole-cluster crash, AP
    through kills (tolerated stale reads are warnings with counts, not anomalies)."""
    code, out, res, _run_dir = _run(cluster, tmp_path, "--mode", mode, "--nemesis", nemesis,
                                    "--time-limit", "8", "--seed", "5")
    assert code == 0, (out[-3000:], json.dumps(res["checks"], default=str)[:3000])
    assert res["valid"] is True and res["test_canary"] is None
    assert res["checks"]["epoch_unique"]["valid"] is True
    assert res["checks"]["replicas_equal"]["valid"] is True
    faults = [f["fault"] for f in res["faults"]]
    assert faults == ["kill", "restart"], faults
    if nemesis == "crash":
        assert len(res["faults"][0]["targets"]) == NODES
    assert isinstance(res["warnings"], list)
    assert res["counts"]["append"]["ok"] > 0 and res["counts"]["read (final)"]["ok"] > 0
