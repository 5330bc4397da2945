"""The vagrant provider against machines `vagrant up` really made: the top-level Vagrantfile
with MACHI_VAGRANT_DOCKER=1 (Vagrant's docker provider, containers with sshd from the local
image scripts/vagrant-docker-setup builds), n1..n3 provisioned by vagrant/provision.sh with
the wheel of this checkout, `vagrant ssh` into one, then the user's command
`machi-harness test --hosts vagrant --nodes 3 --mode cp --nemesis partition,kill` (the
provider reads `vagrant ssh-config`, deploys, runs the nemesis with iptables inside the
containers) must say `valid`, and `vagrant destroy -f` removes every container and network.

Network safety: the containers sit on a Docker network 10.78.<x>.0/24 that Vagrant creates for
this test (x free, chosen per process) and dockerd's own default bridge; SSH goes to ports
Vagrant publishes on 127.0.0.1.  The root namespace's iptables, which only dockerd touches, is
compared before and after the harness run: the nemesis's rules live inside the guests.

Markers e2e and vagrant (not in the default suite: ~3 min on 2 loaded cores); run with
`pytest -m vagrant`.  Skips, saying why, without root, vagrant, docker, a Docker daemon or the
image (`sudo scripts/vagrant-docker-setup` provides the last three).
What is NOT tested: VirtualBox/libvirt VMs (the same Vagrantfile and provisioning, another
provider), and 5 nodes (same code; 3 keep the run short).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.hosts import vagrant

pytestmark = [pytest.mark.e2e, pytest.mark.vagrant, pytest.mark.timeout(1500)]

REPO = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).parent / "machi-harness")
IMAGE = os.environ.get("MACHI_VAGRANT_IMAGE", "machi-vagrant-debian:bookworm")
NODES = 3
# seed 416388574 over 20 s on n1..n3: kill n2 (4 s) + restart, a majorities-ring partition
# (12 s) + heal
SEED = 416388574


def _sh(cmd: list[str], *, timeout_s: float = 60, env: dict[str, str] | None = None,
        check: bool = False) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env,
                       cwd=REPO)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} exited {p.returncode}:\n{(p.stdout + p.stderr)[-4000:]}")
    return p


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (docker, the Docker networks Vagrant creates)"
    for tool in ("vagrant", "docker"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed: run `sudo scripts/vagrant-docker-setup`"
    if _sh(["docker", "info"], timeout_s=30).returncode != 0:
        return "no Docker daemon answers: run `sudo scripts/vagrant-docker-setup`"
    if _sh(["docker", "image", "inspect", IMAGE], timeout_s=30).returncode != 0:
        return f"image {IMAGE} is missing: run `sudo scripts/vagrant-docker-setup`"
    return None


def _used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network Docker or the root namespace's routes already use."""
    nets: list[ipaddress.IPv4Network] = []
    ids = _sh(["docker", "network", "ls", "-q"], check=True).stdout.split()
    if ids:
        out = _sh(["docker", "network", "inspect", *ids], check=True).stdout
        for n in json.loads(out):
            for c in (n.get("IPAM") or {}).get("Config") or []:
                if "." in c.get("Subnet", ""):
                    nets.append(ipaddress.IPv4Network(c["Subnet"], strict=False))
    for line in _sh(["ip", "-4", "route", "show"], check=True).stdout.splitlines():
        dst = line.split()[0]
        if dst != "default" and "." in dst:
            nets.append(ipaddress.IPv4Network(dst, strict=False))
    return nets


def _free_prefix() -> str:
    """A 10.78.<x>. prefix (60 <= x < 200) that no Docker network or route uses."""
    used = _used_networks()
    for k in range(140):
        x = 60 + (os.getpid() + k) % 140
        net = ipaddress.IPv4Network(f"10.78.{x}.0/24")
        if not any(net.overlaps(u) for u in used):
            return f"10.78.{x}."
    raise AssertionError("no free 10.78.x.0/24 for the test's Docker network")


def _root_iptables() -> str:
    """The root namespace's rules without counters (dockerd's own rules included)."""
    out = _sh(["iptables-save"], check=True).stdout
    return "\n".join(ln.split(" [")[0] if ln.startswith(":") else ln
                     for ln in out.splitlines() if not ln.startswith("#"))


def _container_ids(dot: Path) -> list[str]:
    return [p.read_text().strip() for p in dot.glob("machines/*/docker/id")]


def _cleanup(env: dict[str, str], dot: Path, network: str) -> None:
    """`vagrant destroy -f`, then whatever it left: this test's containers and network."""
    ids = _container_ids(dot)
    _sh(["vagrant", "destroy", "-f"], env=env, timeout_s=600)
    for cid in ids:
        if _sh(["docker", "container", "inspect", cid]).returncode == 0:
            _sh(["docker", "rm", "-f", cid], timeout_s=120)
    if _sh(["docker", "network", "inspect", network]).returncode == 0:
        _sh(["docker", "network", "rm", network], timeout_s=120)


@pytest.fixture
def vagrant_env(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path, str]]:
    why = _why_not()
    if why:
        pytest.skip(why)
    prefix = _free_prefix()
    dot = tmp_path / "dot"
    env = {**os.environ, "MACHI_VAGRANT_DOCKER": "1", "MACHI_NODES": str(NODES),
           "MACHI_VAGRANT_NET_PREFIX": prefix, "VAGRANT_DOTFILE_PATH": str(dot),
           "VAGRANT_HOME": str(tmp_path / "vagrant.d"), "VAGRANT_CHECKPOINT_DISABLE": "1"}
    env.pop("VAGRANT_DEFAULT_PROVIDER", None)
    network = f"vagrant_network_{prefix}0/24"
    try:
        yield env, dot, prefix
    finally:
        _cleanup(env, dot, network)


def test_harness_run_on_machines_vagrant_up_made(
    vagrant_env: tuple[dict[str, str], Path, str], tmp_path: Path
) -> None:
    """vagrant up n1..n3 -> vagrant ssh -> machi-harness test --hosts vagrant says valid, with
    the nemesis inside the guests -> vagrant destroy -f leaves nothing of this test behind."""
    env, dot, prefix = vagrant_env
    up = _sh(["vagrant", "up"], env=env, timeout_s=900)
    assert up.returncode == 0, (up.stdout + up.stderr)[-6000:]
    for i in range(1, NODES + 1):
        assert f"provision: n{i} ready" in up.stdout, up.stdout[-4000:]

    ssh = _sh(["vagrant", "ssh", "n2", "-c", "hostname; ip -4 -o addr; sudo -n iptables -S"],
              env=env, timeout_s=120, check=True)
    lines = ssh.stdout.splitlines()
    assert lines[0].strip() == "n2"
    assert f" {prefix}12/24 " in ssh.stdout, ssh.stdout  # the private network address

    # The provider's view is what `vagrant ssh-config` says (forwarded 127.0.0.1 ports).
    specs = vagrant.parse_ssh_config(
        _sh(["vagrant", "ssh-config"], env=env, check=True).stdout,
        vagrant.net_prefix(env))
    assert [s.name for s in specs] == ["n1", "n2", "n3"]
    assert all(s.address == "127.0.0.1" and s.port != 22 for s in specs), specs
    assert [s.cluster_address for s in specs] == [f"{prefix}{10 + i}" for i in (1, 2, 3)]

    rules_before = _root_iptables()
    store = tmp_path / "store"
    run = _sh([CLI, "test", "--hosts", "vagrant", "--nodes", str(NODES), "--mode", "cp",
               "--nemesis", "partition,kill", "--time-limit", "20", "--seed", str(SEED),
               "--store", str(store)], env=env, timeout_s=600)
    out = run.stdout + run.stderr
    run_dir = (store / "chunks-cp" / "latest").resolve()
    results = json.loads((run_dir / "results.json").read_text())
    assert run.returncode == 0, (out[-4000:], json.dumps(results["checks"])[:3000])
    assert "verdict: valid" in out and results["valid"] is True
    assert results["options"]["provider"] == "vagrant" and results["seed"] == SEED
    faults = {f["fault"]: f for f in results["faults"]}
    assert {"kill", "restart", "partition", "heal"} <= set(faults), results["faults"]
    assert faults["heal"]["connected_pairs"] == NODES * (NODES - 1)
    assert results["counts"]["append"]["ok"] > 0
    assert results["counts"]["read (final)"]["ok"] > 0
    for n in ("n1", "n2", "n3"):
        assert (run_dir / "nodes" / n / "node.log").stat().st_size > 0
    # The nemesis touched only the guests' iptables.
    assert _root_iptables() == rules_before

    ids = _container_ids(dot)
    assert len(ids) == NODES
    down = _sh(["vagrant", "destroy", "-f"], env=env, timeout_s=600)
    assert down.returncode == 0, (down.stdout + down.stderr)[-4000:]
    for cid in ids:
        assert _sh(["docker", "container", "inspect", cid]).returncode != 0, cid
    network = f"vagrant_network_{prefix}0/24"
    assert _sh(["docker", "network", "inspect", network]).returncode != 0, network
