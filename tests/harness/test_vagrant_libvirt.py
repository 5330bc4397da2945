"""The vagrant provider against real VMs: the top-level Vagrantfile with MACHI_VAGRANT_LIBVIRT=1
(vagrant-libvirt, the local box scripts/vagrant-libvirt-setup builds, direct kernel boot),
n1..n3 provisioned by vagrant/provision.sh with the wheels of this checkout, `vagrant ssh` into
one, then `machi-harness test --hosts vagrant --nodes 3 --mode cp --nemesis partition,kill`
(the provider reads `vagrant ssh-config`, deploys, the nemesis runs iptables inside the
guests) must say `valid`, and `vagrant destroy -f` removes every domain.

Network safety: the test creates network namespace machi-t<pid>-vm (loopback only, no veth,
no route out) and starts a private libvirtd inside it (`vagrant-libvirt-setup --start`), so the
VMs' isolated management and private networks, libvirt's dnsmasq and its iptables rules exist
only there; `vagrant` and the harness run inside it too.  The root namespace's iptables and
ip_forward are compared before and after.  The fixture always destroys the VMs, stops that
libvirtd and deletes the namespace (`--stop`), also when the test fails.

Markers e2e and vagrant (never in the default suite); run with `pytest -m vagrant
tests/harness/test_vagrant_libvirt.py`.  MACHI_VM_DRIVER=qemu runs the VMs under TCG
emulation instead of KVM (see docs/harness-hosts.md: on this project's machine, KVM guests do
not get through the kernel's decompressor in 10 minutes).  Skips, saying why, without root,
/dev/kvm (with the kvm driver), vagrant, vagrant-libvirt, libvirtd or the box, or when a
libvirtd already runs (never disturbed).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.hosts import vagrant

pytestmark = [pytest.mark.e2e, pytest.mark.vagrant, pytest.mark.timeout(5400)]

REPO = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).parent / "machi-harness")
SETUP = str(REPO / "scripts" / "vagrant-libvirt-setup")
BOX = os.environ.get("MACHI_LIBVIRT_BOX", "machi/bookworm-libvirt")
DRIVER = os.environ.get("MACHI_VM_DRIVER", "kvm")
NODES = 3
SEED = 416388574  # on n1..n3 over 20 s: kill n2 + restart, a majorities-ring partition + heal


def _sh(cmd: list[str], *, timeout_s: float = 120, env: dict[str, str] | None = None,
        check: bool = False) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env,
                       cwd=REPO)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} exited {p.returncode}:\n{(p.stdout + p.stderr)[-4000:]}")
    return p


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespace, libvirtd)"
    if DRIVER == "kvm" and not os.path.exists("/dev/kvm"):
        return "no /dev/kvm (MACHI_VM_DRIVER=qemu emulates instead)"
    for tool in ("vagrant", "virsh", "libvirtd", "qemu-system-x86_64"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed: run `sudo scripts/vagrant-libvirt-setup`"
    if not list(Path("/usr/share/rubygems-integration/all/gems").glob("vagrant-libvirt-*")):
        return "vagrant-libvirt is not installed: run `sudo scripts/vagrant-libvirt-setup`"
    boxes = _sh(["vagrant", "box", "list"], timeout_s=120).stdout
    if not any(line.startswith(f"{BOX} (libvirt") for line in boxes.splitlines()):
        return f"box {BOX} is missing: run `sudo scripts/vagrant-libvirt-setup`"
    if _sh(["pgrep", "-x", "libvirtd"]).returncode == 0:
        return "a libvirtd already runs (the test starts its own and never disturbs one)"
    return None


def _root_network_state() -> str:
    """The root namespace's iptables rules (without counters) and ip_forward."""
    out = _sh(["iptables-save"], check=True).stdout
    rules = [ln.split(" [")[0] if ln.startswith(":") else ln
             for ln in out.splitlines() if not ln.startswith("#")]
    return "\n".join(rules) + "\nip_forward=" + Path("/proc/sys/net/ipv4/ip_forward").read_text()


def _in_ns(ns: str, cmd: list[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *cmd]


@pytest.fixture
def libvirt_env(tmp_path: Path) -> Iterator[tuple[dict[str, str], str]]:
    why = _why_not()
    if why:
        pytest.skip(why)
    ns = f"machi-t{os.getpid()}-vm"
    env = {**os.environ, "MACHI_VAGRANT_LIBVIRT": "1", "MACHI_NODES": str(NODES),
           "MACHI_VM_DRIVER": DRIVER, "MACHI_VM_MEMORY_MB": "768",
           "MACHI_VM_BOOT_TIMEOUT_S": "1800", "VAGRANT_DOTFILE_PATH": str(tmp_path / "dot"),
           "VAGRANT_CHECKPOINT_DISABLE": "1"}
    for k in ("VAGRANT_DEFAULT_PROVIDER", "MACHI_VAGRANT_DOCKER", "MACHI_VAGRANT_NET_PREFIX"):
        env.pop(k, None)
    # The namespace has no route out: the wheels (with dependencies) are built here first, and
    # the Vagrantfile's trigger then finds them up to date.
    _sh(["vagrant/build-wheel", "build/vagrant-wheel", "--with-deps"], timeout_s=900, check=True)
    try:
        _sh([SETUP, "--start", ns], timeout_s=120, check=True)
        yield env, ns
    finally:
        _sh(_in_ns(ns, ["vagrant", "destroy", "-f"]), env=env, timeout_s=900)
        _sh([SETUP, "--stop", ns], timeout_s=300)
        assert ns not in _sh(["ip", "netns", "list"]).stdout
        assert _sh(["pgrep", "-x", "libvirtd"]).returncode != 0


def test_harness_run_on_libvirt_vms(libvirt_env: tuple[dict[str, str], str],
                                    tmp_path: Path) -> None:
    """vagrant up n1..n3 (real VMs) -> vagrant ssh -> machi-harness test --hosts vagrant says
    valid, with the nemesis inside the guests -> vagrant destroy -f leaves no domain; the root
    namespace's iptables and ip_forward never change."""
    env, ns = libvirt_env
    before = _root_network_state()
    up = _sh(_in_ns(ns, ["vagrant", "up"]), env=env, timeout_s=3000)
    assert up.returncode == 0, (up.stdout + up.stderr)[-6000:]
    for i in range(1, NODES + 1):
        assert f"provision: n{i} ready" in up.stdout, up.stdout[-4000:]
        assert f"provision: n{i} installed the dependencies from the uploaded wheels" \
            in up.stdout

    ssh = _sh(_in_ns(ns, ["vagrant", "ssh", "n2", "-c", "hostname; ip -4 -o addr; uname -r"]),
              env=env, timeout_s=300, check=True)
    assert ssh.stdout.splitlines()[0].strip() == "n2"
    assert " 192.168.56.12/24 " in ssh.stdout, ssh.stdout

    # vagrant-libvirt's ssh-config: the VM's management address, port 22 (no forwarding).
    specs = vagrant.parse_ssh_config(
        _sh(_in_ns(ns, ["vagrant", "ssh-config"]), env=env, timeout_s=300, check=True).stdout,
        vagrant.net_prefix(env))
    assert [s.name for s in specs] == ["n1", "n2", "n3"]
    assert all(s.address.startswith("192.168.121.") and s.port == 22 for s in specs), specs
    assert [s.cluster_address for s in specs] == [f"192.168.56.{10 + i}" for i in (1, 2, 3)]

    store = tmp_path / "store"
    run = _sh(_in_ns(ns, [CLI, "test", "--hosts", "vagrant", "--nodes", str(NODES), "--mode",
                          "cp", "--nemesis", "partition,kill", "--time-limit", "20", "--seed",
                          str(SEED), "--store", str(store)]), env=env, timeout_s=2400)
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
    for n in ("n1", "n2", "n3"):
        assert (run_dir / "nodes" / n / "node.log").stat().st_size > 0

    down = _sh(_in_ns(ns, ["vagrant", "destroy", "-f"]), env=env, timeout_s=900)
    assert down.returncode == 0, (down.stdout + down.stderr)[-4000:]
    left = _sh(["virsh", "-c", "qemu:///system", "list", "--all", "--name"], check=True).stdout
    assert not [d for d in left.split() if d.startswith(("vm_n", "vm-n"))], left
    assert _root_network_state() == before
