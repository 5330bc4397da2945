"""The ssh hosts provider against real sshd: a TOML hosts file lists the netns hosts' sshd
addresses, the client key and a known_hosts file (no pinned keys from the netns provider),
and `machi-harness test --hosts ssh --hosts-file F` deploys and runs a short checked test
from inside the control namespace.

Own 3-node cluster (prefix machi-t<pid>s-), always taken down.  The hosts have no route to a
package index, so the run uses `--python` (this interpreter, which has the dependencies)
and `--no-install-deps`; everything else is the ssh provider's code path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.hosts import netns
from harness.hosts.ssh import load_hosts_file

pytestmark = [pytest.mark.netns, pytest.mark.timeout(170)]

CLI = str(Path(sys.executable).parent / "machi-harness")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Path]:
    why = netns.preflight()
    if why:
        pytest.skip(f"netns harness runs need root and `ip netns`: {why}")
    with netns.temporary_cluster(3, prefix=f"machi-t{os.getpid() % 100000}s-") as state_dir:
        yield state_dir


def _hosts_file(state_dir: Path, dest: Path) -> Path:
    """A hosts TOML for the ssh provider describing the netns hosts, the way a user would
    write one for their own machines (known_hosts file, key file, per-host directories)."""
    state = json.loads((state_dir / "cluster.json").read_text())
    known = dest / "known_hosts"
    lines, hosts = [], []
    for n in state["nodes"]:
        hd = Path(n["host_dir"])
        kind, b64 = (hd / "ssh_host_ed25519_key.pub").read_text().split()[:2]
        lines.append(f"{n['address']} {kind} {b64}")
        hosts.append(f'[[hosts]]\nname = "{n["name"]}"\naddress = "{n["address"]}"\n'
                     f'work_dir = "{dest}/{n["name"]}/work"\n'
                     f'data_dir = "{dest}/{n["name"]}/data"\n')
    known.write_text("\n".join(lines) + "\n")
    f = dest / "hosts.toml"
    f.write_text(f'[defaults]\nuser = "root"\nsudo = false\nkey = "{state_dir / "client_key"}"\n'
                 f'known_hosts = "{known}"\naccept_unknown_host_key = false\n\n'
                 + "\n".join(hosts))
    return f


def test_ssh_provider_deploys_and_runs_a_checked_test(cluster: Path, tmp_path: Path) -> None:
    """A short CP run with a kill over the ssh provider ends valid, with node logs."""
    hosts_file = _hosts_file(cluster, tmp_path)
    specs = load_hosts_file(hosts_file)
    assert [s.host_key for s in specs] == [None] * 3  # keys come from known_hosts
    store = tmp_path / "store"
    ctl = json.loads((cluster / "cluster.json").read_text())["control"]["netns"]
    cmd = ["ip", "netns", "exec", ctl, CLI, "test", "--hosts", "ssh", "--hosts-file",
           str(hosts_file), "--nodes", "3", "--python", sys.executable, "--no-install-deps",
           "--store", str(store), "--mode", "cp", "--nemesis", "kill", "--time-limit", "6",
           "--seed", "5", "--concurrency", "2n", "--chain-fast"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=160,
                       cwd=Path(__file__).resolve().parents[2])
    out = p.stdout + p.stderr
    run_dir = (store / "chunks-cp" / "latest").resolve()
    res = json.loads((run_dir / "results.json").read_text())
    assert p.returncode == 0, (out[-3000:], json.dumps(res["checks"], default=str)[:3000])
    assert res["options"]["provider"] == "ssh" and res["valid"] is True
    assert [f["fault"] for f in res["faults"]] == ["kill", "restart"]
    for n in ("n1", "n2", "n3"):
        assert (run_dir / "nodes" / n / "node.log").stat().st_size > 0
        # the wheel was installed where the hosts file said, not in the netns state dir
        assert list((tmp_path / n / "work").glob("lib-*/machi/__init__.py"))
    # nothing left behind: no daemon in any host namespace
    st = netns.cluster_status(state_dir=cluster)
    assert all(not any(n["daemons"].values()) for n in st["nodes"]), st


def test_ssh_provider_rejects_a_host_key_it_does_not_know(cluster: Path,
                                                         tmp_path: Path) -> None:
    """With a known_hosts file that lacks a host, the ssh provider refuses to connect."""
    hosts_file = _hosts_file(cluster, tmp_path)
    (tmp_path / "known_hosts").write_text("")
    ctl = json.loads((cluster / "cluster.json").read_text())["control"]["netns"]
    p = subprocess.run(["ip", "netns", "exec", ctl, CLI, "cluster", "exec", "--provider", "ssh",
                        "--hosts-file", str(hosts_file), "n1", "--", "hostname"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0
    assert "n1" not in p.stdout.split()
