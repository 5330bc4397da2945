"""A 3-node netns cluster through real sshd, paramiko and iptables, torn down to nothing.

The cluster uses its own namespace prefix (machi-t<pid>-) and state directory, so it never
meets a cluster someone else brought up.  Each step runs inside the control namespace (a
function of `netns_steps.py`, called through one `ControlNamespaceWorker`) and returns
observations that the tests assert on.  Tests run in file order and share one cluster; the
last one takes it down.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness.hosts import netns

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

STEPS_DIR = str(Path(__file__).parent)


@dataclass
class Cluster:
    state_dir: Path
    prefix: str
    namespaces_before: set[str]
    facts: dict[str, Any]
    worker: netns.ControlNamespaceWorker

    def step(self, name: str, **payload: Any) -> Any:
        return self.worker.call(
            f"netns_steps:{name}", {"state_dir": str(self.state_dir), **payload}, timeout_s=60
        )


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    why = netns.preflight()
    if why:
        pytest.skip(f"netns cluster tests need root and `ip netns`: {why}")
    prefix = f"machi-t{os.getpid() % 100000}-"
    before = set(netns.netns_list())
    with (
        netns.temporary_cluster(3, prefix=prefix) as state_dir,
        netns.ControlNamespaceWorker(extra_sys_path=[STEPS_DIR]) as worker,
    ):
        yield Cluster(state_dir, prefix, before, {}, worker)


def test_hosts_are_namespaces_with_their_own_sshd_and_no_way_out(cluster: Cluster) -> None:
    """Commands reach every host through its sshd; no host and no root route leads out."""
    out = cluster.step("commands")
    assert out["hosts"] == {
        # hostname, address, default routes, uid, IPv6 addresses (none: IPv4 only)
        "n1": ["n1", "10.77.0.11/24", "0", "0", "0"],
        "n2": ["n2", "10.77.0.12/24", "0", "0", "0"],
        "n3": ["n3", "10.77.0.13/24", "0", "0", "0"],
    }
    assert out["error"]["node"] == "n1" and out["error"]["exit_code"] == 7
    assert out["error"]["stderr"].strip() == "to-stderr"
    assert out["reconnect"] == "n2" and out["after_break"] == "n2" and out["connects"] == 3
    assert out["async"] == {"one": "n3", "n1": "n1", "n2": "n2", "n3": "n3"}
    root_routes = subprocess.run(["ip", "-4", "route", "show"], capture_output=True, text=True)
    assert "10.77." not in root_routes.stdout
    root_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert "veth-" not in root_links
    with pytest.raises(netns.NetnsError, match="outside"):
        netns.open_hosts(state_dir=cluster.state_dir)  # the root namespace may not talk


def test_upload_and_download_round_trip(cluster: Cluster, tmp_path: Path) -> None:
    """A file uploaded over sftp comes back byte for byte."""
    out = cluster.step("files", local_dir=str(tmp_path))
    assert out["same"] is True
    assert len(out["remote_sha256"]) == 64


def test_ssh_provider_reaches_the_same_hosts_and_checks_host_keys(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A TOML hosts file drives the same hosts; an unknown host key is refused."""
    out = cluster.step("ssh_provider", local_dir=str(tmp_path))
    assert out["names"] == {"n1": "n1", "n2": "n2", "n3": "n3"}
    assert out["unknown_key"].startswith("HostUnreachableError")
    assert "not found in known_hosts" in out["unknown_key"]


def test_daemon_outlives_its_ssh_session(cluster: Cluster) -> None:
    """A daemon started over ssh keeps serving after the session closed; no double start."""
    out = cluster.step("daemon")
    assert out["alive"] is True, out["log"]
    assert out["http"] == "ok", out["log"]
    assert out["parent"] not in ("sshd", "bash", "sh")  # its session's shell is gone
    assert out["session"] == str(out["pid"])  # setsid: it leads its own session
    assert out["dup"] == "refused: exit 17"
    cluster.facts["web_pid"] = out["pid"]


def test_one_way_partition_then_heal(cluster: Cluster) -> None:
    """n1 -> n2 cut: n2 hears nothing from n1, n1 still hears n2; heal restores all pairs."""
    out = cluster.step("partition")
    assert out["rules"] == {"n1": 0, "n2": 1, "n3": 0}
    assert "10.77.0.13 marker-3to2" in out["n2_got"]
    assert "cut-1to2" not in out["n2_got"]
    assert "10.77.0.12 open-2to1" in out["n1_got"]
    during = out["during"]
    assert during["tcp_n1_n2"] is False  # the SYN from n1 is dropped at n2
    assert during["tcp_n3_n2"] is True and during["tcp_n2_n3"] is True
    # TCP needs both directions: n1->n2 and n2->n1 (replies dropped) both fail, nothing else.
    assert sorted(map(tuple, during["probe_failed"])) == [("n1", "n2"), ("n2", "n1")]
    after = out["after"]
    assert after["rules"] == {"n1": 0, "n2": 0, "n3": 0}
    assert after["ok_pairs"] == 6
    assert after["tcp_n1_n2"] is True
    assert "10.77.0.11 healed-1to2" in after["n2_got"]
    lossy = [ln for ln in out["lossy_rules"].splitlines() if ln.startswith("-A")]
    assert len(lossy) == 2 and all("--probability 0.5" in ln for ln in lossy)
    assert out["rules_after_with"] == {"n1": 0, "n2": 0, "n3": 0}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("machi-harness")
    return subprocess.run([str(exe), "cluster", *args], capture_output=True, text=True,
                          timeout=60)


def test_cli_exec_status_and_heal(cluster: Cluster) -> None:
    """The CLI re-executes itself in the control namespace and reaches hosts through ssh."""
    r = _cli("exec", "n2", "--", "sh", "-c", "hostname; echo oops >&2; exit 3")
    assert (r.returncode, r.stdout, r.stderr) == (3, "n2\n", "oops\n")
    r = _cli("exec", "n9", "--", "true")
    assert r.returncode == 1 and "no host 'n9'" in r.stderr
    r = _cli("status", "--json")
    assert r.returncode == 0, r.stderr
    status = json.loads(r.stdout)
    assert [n["sshd_alive"] for n in status["nodes"]] == [True, True, True]
    assert status["ssh"] == {"n1": "ok (n1)", "n2": "ok (n2)", "n3": "ok (n3)"}
    r = _cli("heal")
    assert (r.returncode, r.stdout.strip()) == (0, "healed: 6 host pairs connect"), r.stderr


def test_pause_resume_kill_restart(cluster: Cluster) -> None:
    """SIGSTOP silences the daemon, SIGCONT revives it, SIGKILL ends it, restart serves."""
    out = cluster.step("signals")
    assert out["pause"] == {"n1": True}
    assert out["paused_state"] == "T"
    assert out["paused_http"] == "noanswer"  # the kernel accepts, the process is frozen
    assert out["resumed_http"] == "ok"
    assert out["kill"] == {"n1": True}
    assert out["killed_alive"] == {"n1": False}
    assert out["killed_http"] == "refused"
    assert out["kill_again"] == {"n1": False}  # nothing to kill: no stray signal
    assert out["restarted_pid"] != out["pid"]
    assert out["restarted_http"] == "ok"
    cluster.facts["paused_pid"] = out["left_paused_pid"]


def test_executor_carries_out_a_schedule_and_heals_everything(cluster: Cluster) -> None:
    """Schedule events become rules and signals; role partitions follow the chain view;
    heal_all leaves no rule and every daemon running, and proves every pair connects."""
    out = cluster.step("executor")
    r = out["records"]
    assert r[0]["components"] == [["n1"], ["n2", "n3"]]
    assert r[1]["connected_pairs"] == 6
    assert r[2]["was_running"] == {"n2": True}
    assert r[3]["torn"][0]["size_after"] < 1000
    assert r[4]["pids"]["n2"] > 0
    assert r[5]["was_running"] == {"n3": True}
    assert "running" in r[6]["torn"][0]["skipped"]  # paused is not down: no torn write
    assert r[7]["was_running"] == {"n3": True}
    assert r[8]["grudge"]["n3"] == ["n1", "n2"]  # the head of upi [n3, n1, n2]
    assert "no repairing node" in r[9]["skipped"]
    assert r[10]["connected_pairs"] == 6
    after = out["after"]
    assert after["alive"] == {"n1": True, "n2": True, "n3": True}
    assert after["rules"] == {"n1": 0, "n2": 0, "n3": 0}
    assert after["healed"] == {"connected_pairs": 6}  # the final heal is proven too
    assert set(after["states"].values()) <= {"S", "R"}


def test_torn_write_flips_or_truncates_only_the_tail(cluster: Cluster) -> None:
    """Bit flips touch one byte in the tail; truncation cuts the tail; never while running."""
    out = cluster.step("torn")
    flip = out["flip"]
    assert flip["size_before"] == flip["size_after"] == 10000
    assert flip["offset"] >= 10000 - 100
    assert out["nonzero"] == [[flip["offset"], flip["mask"]]]
    cut = out["cut"]
    assert 10000 - 100 <= cut["size_after"] < 10000 == cut["size_before"]
    assert out["size"] == cut["size_after"]
    assert out["refused_while_running"] is True


def test_cluster_down_after_a_crash_leaves_nothing(cluster: Cluster) -> None:
    """With a partition active and daemons running or paused, `down` removes every
    namespace, process, rule and file, and is idempotent."""
    mess = cluster.step("leave_mess")
    assert mess["rules"] == {"n1": 1, "n2": 1, "n3": 2}
    status = netns.cluster_status(state_dir=cluster.state_dir)
    sshd = [n["sshd_pid"] for n in status["nodes"]]
    assert [n["nemesis_rules"] for n in status["nodes"]] == [1, 1, 2]
    assert status["nodes"][1]["daemons"]["sleeper"] == mess["sleeper_pid"]
    pids = [*sshd, mess["sleeper_pid"], cluster.facts.get("paused_pid", 0)]
    pids = [p for p in pids if p]
    assert all(netns._proc_starttime(p) for p in pids)

    removed = netns.cluster_down(state_dir=cluster.state_dir)
    assert any(r.startswith("processes") for r in removed)

    left = [n for n in netns.netns_list() if n.startswith(cluster.prefix)]
    assert left == []
    assert not any(netns._proc_starttime(p) for p in pids)
    assert not cluster.state_dir.exists()
    root_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert "veth-" not in root_links and "br0" not in root_links
    assert netns.cluster_down(state_dir=cluster.state_dir) == []


def test_failed_cluster_up_removes_what_it_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """When sshd cannot start, `cluster up` fails clearly and leaves no namespace or state."""
    why = netns.preflight()
    if why:
        pytest.skip(f"netns cluster tests need root and `ip netns`: {why}")
    prefix = f"machi-f{os.getpid() % 100000}-"
    monkeypatch.setenv("MACHI_NETNS_PREFIX", prefix)
    monkeypatch.setattr(netns, "SSHD", "/bin/false")  # a broken sshd install
    state_dir = netns.state_dir_default()
    try:
        with pytest.raises(netns.NetnsError, match="/bin/false"):
            netns.cluster_up(2, state_dir=state_dir, install=False)
        assert [n for n in netns.netns_list() if n.startswith(prefix)] == []
        assert not state_dir.exists()
    finally:
        netns.cluster_down(state_dir=state_dir)  # a no-op unless the assertions failed


def test_cluster_up_never_adopts_a_foreign_state_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A non-empty directory that is not a netns state dir is refused (down would delete it)."""
    why = netns.preflight()
    if why:
        pytest.skip(f"netns cluster tests need root and `ip netns`: {why}")
    monkeypatch.setenv("MACHI_NETNS_PREFIX", f"machi-g{os.getpid() % 100000}-")
    (tmp_path / "precious").write_text("keep me")
    with pytest.raises(netns.NetnsError, match="not empty"):
        netns.cluster_up(1, state_dir=tmp_path, install=False)
    with pytest.raises(netns.NetnsError, match="not touching anything"):
        netns.cluster_down(state_dir=tmp_path)
    assert (tmp_path / "precious").read_text() == "keep me"
