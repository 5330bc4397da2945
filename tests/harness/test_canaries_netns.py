"""The harness proves it finds bugs: on a 5-node netns cluster every canary (a switch that
breaks one guarantee on purpose, TEST ONLY) makes its *default run* -- `machi-harness test
--canary X --time-limit 12 --seed 1`, nothing else: default nemesis (partition,kill; plus
crash for ack-before-sync), default timers, concurrency and mix -- `invalid`, and the
same run without a canary is `valid`, in CP and in AP.

One cluster per module (own prefix machi-t<pid>c-, always taken down); each run is the real
CLI in a subprocess.  Seed 1 for every run (an ordinary seed, not picked per canary; the
catch rates over random seeds are in docs/harness-run.md "Canaries").  Default suite: four
CP canaries (not ack-before-tail) and the clean CP and AP runs (6 runs, ~4 min on 2 cores);
CP ack-before-tail, the AP canaries and the clean runs with the crash the ack-before-sync
run adds are marked slow.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.canary import SIGNATURES, signatures_found
from harness.hosts import netns
from tests.harness.harness_runs import run_test

pytestmark = [pytest.mark.netns, pytest.mark.timeout(170)]

NODES = 5
SEED = 1
TIME_LIMIT_S = 12

@pytest.fixture(scope="module")
def cluster() -> Iterator[Path]:
    why = netns.preflight()
    if why:
        pytest.skip(f"netns harness runs need root and `ip netns`: {why}")
    with netns.temporary_cluster(NODES, prefix=f"machi-t{os.getpid() % 100000}c-") as state_dir:
        yield state_dir


def _default_run(state_dir: Path, store: Path, mode: str,
                 *args: str) -> tuple[int, str, dict[str, Any], Path]:
    """The default run: only mode, time limit and seed (and where cluster and store are)."""
    return run_test(state_dir, store, NODES, "--mode", mode, "--time-limit",
                    str(TIME_LIMIT_S), "--seed", str(SEED), *args, fast=False)


def _check_canary(cluster: Path, tmp_path: Path, mode: str, canary: str) -> None:
    code, out, res, run_dir = _default_run(cluster, tmp_path, mode, "--canary", canary)
    summary = json.dumps({k: c.get("valid") for k, c in res["checks"].items()})
    assert code == 1 and res["valid"] is False, (summary, out[-2000:])
    assert res["test_canary"] == canary and res["seed"] == SEED
    found = signatures_found(res)
    assert found & set(SIGNATURES[canary]), (found, json.dumps(res["checks"], default=str)[:3000])
    # the default nemesis, plus what the canary needs (recorded)
    want_added = ["crash"] if canary == "ack-before-sync" else []
    assert res["options"]["nemesis"] == ["partition", "kill", *want_added]
    assert res["options"]["nemesis_for_canary"] == want_added
    if want_added:
        assert res["faults"][0]["fault"] == "kill" and res["faults"][0].get("crash") is True
    # the report names the canary and shows the verdict
    page = (run_dir / "index.html").read_text()
    assert f"CANARY {canary}" in page and "INVALID" in page


# the default suite's share (budget ~4 min on 2 cores); CP ack-before-tail is slow only
# (every other CP run would catch it too: the tail never gets a chunk)
CP_DEFAULT_SUITE = ("ack-before-sync", "epoch-reuse", "read-non-tail", "skip-repair")


@pytest.mark.parametrize("canary", [
    c if c in CP_DEFAULT_SUITE else pytest.param(c, marks=pytest.mark.slow)
    for c in sorted(SIGNATURES)])
def test_cp_canary_default_run_is_invalid(cluster: Path, tmp_path: Path, canary: str) -> None:
    """In CP, the canary's default run is invalid, for the canary's reason."""
    _check_canary(cluster, tmp_path, "cp", canary)


@pytest.mark.slow
@pytest.mark.parametrize("canary", sorted(SIGNATURES))
def test_ap_canary_default_run_is_invalid(cluster: Path, tmp_path: Path, canary: str) -> None:
    """In AP, the canary's default run is invalid, for the canary's reason."""
    _check_canary(cluster, tmp_path, "ap", canary)


def _check_clean(cluster: Path, tmp_path: Path, mode: str) -> dict[str, Any]:
    code, out, res, _run_dir = _default_run(cluster, tmp_path, mode)
    assert code == 0, (out[-3000:], json.dumps(res["checks"], default=str)[:3000])
    assert res["valid"] is True and res["test_canary"] is None
    assert res["checks"]["epoch_unique"]["valid"] is True
    assert res["checks"]["replicas_equal"]["valid"] is True
    assert res["faults"], "the default schedule has a fault even in a short run"
    counts = res["counts"]
    assert counts["append"].get("ok", 0) > 0 and counts["read (final)"].get("ok", 0) > 0, counts
    assert isinstance(res["warnings"], list)
    return res


@pytest.mark.parametrize("mode", ["cp", "ap"])
def test_clean_default_run_is_valid(cluster: Path, tmp_path: Path, mode: str) -> None:
    """Without a canary the default run (partition,kill) is valid in both modes (tolerated
    AP stale reads are warnings with counts, not anomalies)."""
    res = _check_clean(cluster, tmp_path, mode)
    assert res["options"]["nemesis"] == ["partition", "kill"]
    assert res["options"]["nemesis_for_canary"] == []


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["cp", "ap"])
def test_clean_run_with_the_crash_is_valid(cluster: Path, tmp_path: Path, mode: str) -> None:
    """The ack-before-sync run without the canary (the same nemesis, crash first): a correct
    store loses nothing acknowledged when every node dies at once, and the run is valid.
    AP included: a chain that restarts whole no longer resumes its old epoch unrepaired
    (chain_manager.restart_needs_new_epoch: the restarted FLUs stay wedged, the chain
    moves to a new epoch with them repairing and AP repair merges every replica), so the
    chunks of appends in flight at the crash end up on every replica (`replicas_equal`,
    which found the issue in session 4, docs/harness-run.md "Canaries")."""
    code, out, res, _run_dir = _default_run(cluster, tmp_path, mode, "--nemesis",
                                            "partition,kill,crash")
    checks = res["checks"]
    detail = (out[-3000:], json.dumps(checks, default=str)[:3000])
    assert res["faults"][0]["fault"] == "kill" and res["faults"][0].get("crash") is True
    for name in ("write_once", "final_reads", "epoch_unique", "projection_safety"):
        assert checks[name]["valid"] is True, (name, detail)
    assert res["counts"]["append"].get("ok", 0) > 0, (res["counts"], detail)
    assert code == 0 and res["valid"] is True, detail
    assert checks["replicas_equal"]["valid"] is True, detail
