"""The ssh hosts provider against real sshd: a TOML hosts file lists the netns hosts' sshd
addresses, the client key and a known_hosts file (no pinned keys from the netns provider),
and `machi-harness test --hosts ssh --hosts-file F` deploys and runs a short checked test
from inside the control namespace: as root, and as a throwaway non-root user with sudo.

Own 3-node cluster (prefix machi-t<pid>s-), always taken down.  The hosts have no route to a
package index, so the run uses `--python` (this interpreter, which has the dependencies)
and `--no-install-deps`; everything else is the ssh provider's code path.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.hosts import netns
from harness.hosts.ssh import load_hosts_file

pytestmark = [pytest.mark.netns, pytest.mark.timeout(170)]

CLI = str(Path(sys.executable).parent / "machi-harness")
SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Path]:
    why = netns.preflight()
    if why:
        pytest.skip(f"netns harness runs need root and `ip netns`: {why}")
    with netns.temporary_cluster(3, prefix=f"machi-t{os.getpid() % 100000}s-") as state_dir:
        yield state_dir


def _hosts_file(state_dir: Path, dest: Path, user: str = "root", sudo: bool = False) -> Path:
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
    f.write_text(f'[defaults]\nuser = "{user}"\nsudo = {str(sudo).lower()}\n'
                 f'key = "{state_dir / "client_key"}"\n'
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


@pytest.fixture
def sudo_user(cluster: Path) -> Iterator[tuple[str, Path]]:
    """A throwaway non-root account that may `sudo -n` anything, with the harness's client
    key in its own ~/.ssh/authorized_keys: the usual shape of a user's SSH hosts.  The
    account, its sudoers file and its home are removed afterwards, also on failure."""
    if shutil.which("sudo") is None or shutil.which("useradd") is None:
        pytest.skip("needs sudo and useradd (scripts/install-system-deps installs sudo)")
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import sys, venv; print(sys.version_info[:2])"],
                           capture_output=True, text=True)
    if probe.returncode != 0 or probe.stdout.strip() != str(tuple(sys.version_info[:2])):
        pytest.skip(f"needs {SYSTEM_PYTHON} with venv, Python {sys.version_info[:2]}")
    name = f"mt{os.getpid() % 100000}u"
    home = Path(f"/tmp/machi-{name}-home")
    sudoers = Path(f"/etc/sudoers.d/machi-{name}")
    try:
        pwd.getpwnam(name)
        pytest.skip(f"account {name} already exists (left by another run?)")
    except KeyError:
        pass
    try:
        subprocess.run(["useradd", "--no-create-home", "--home-dir", str(home), "--shell",
                        "/bin/sh", "--user-group", name], check=True, capture_output=True)
        # `*`: no password, but not locked (sshd with UsePAM no refuses locked accounts)
        subprocess.run(["usermod", "-p", "*", name], check=True, capture_output=True)
        uid, gid = pwd.getpwnam(name).pw_uid, pwd.getpwnam(name).pw_gid
        (home / ".ssh").mkdir(parents=True, mode=0o700)
        (home / ".ssh" / "authorized_keys").write_text((cluster / "client_key.pub").read_text())
        for p in (home, home / ".ssh", home / ".ssh" / "authorized_keys"):
            os.chown(p, uid, gid)
        home.chmod(0o755)
        (home / ".ssh" / "authorized_keys").chmod(0o600)
        sudoers.write_text(f"{name} ALL=(root) NOPASSWD: ALL\n")
        sudoers.chmod(0o440)
        # This interpreter lives under /root, which the user cannot enter: give the user a
        # venv of the system's python3 (same minor version) that sees this venv's packages.
        venv = home / "venv"
        subprocess.run([SYSTEM_PYTHON, "-m", "venv", "--without-pip", str(venv)], check=True,
                       capture_output=True)
        ver = f"python{sys.version_info.major}.{sys.version_info.minor}"
        (venv / "lib" / ver / "site-packages" / "machi-test-deps.pth").write_text(
            sysconfig.get_paths()["purelib"] + "\n")
        yield name, home
    finally:
        # the user's daemons were stopped by the run; kill only what is left of this user's
        subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
        sudoers.unlink(missing_ok=True)
        subprocess.run(["userdel", name], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def test_ssh_provider_as_a_non_root_user_with_sudo(cluster: Path, tmp_path: Path,
                                                  sudo_user: tuple[str, Path]) -> None:
    """As a non-root user with `sudo = true`, a CP run with partitions and a kill deploys,
    cuts the network with iptables through `sudo -n`, runs the daemons as that user, and
    ends valid."""
    name, home = sudo_user
    hosts_file = _hosts_file(cluster, home, user=name, sudo=True)
    store = tmp_path / "store"
    ctl = json.loads((cluster / "cluster.json").read_text())["control"]["netns"]
    cmd = ["ip", "netns", "exec", ctl, CLI, "test", "--hosts", "ssh", "--hosts-file",
           str(hosts_file), "--nodes", "3", "--python", str(home / "venv" / "bin" / "python"),
           "--no-install-deps", "--store", str(store), "--mode", "cp", "--nemesis",
           "partition,kill",
           "--time-limit", "14", "--seed", "72", "--concurrency", "2n", "--chain-fast"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=160,
                       cwd=Path(__file__).resolve().parents[2])
    out = p.stdout + p.stderr
    run_dir = (store / "chunks-cp" / "latest").resolve()
    res = json.loads((run_dir / "results.json").read_text())
    assert p.returncode == 0, (out[-3000:], json.dumps(res["checks"], default=str)[:3000])
    assert res["options"]["provider"] == "ssh" and res["valid"] is True
    # seed 72 over 14 s on 3 nodes: the head killed at 1.6 s, restarted at 6.8 s, then a
    # majority/minority partition from 9.7 s to 12.6 s (docs/harness-hosts.md, schedule)
    assert [f["fault"] for f in res["faults"]] == ["kill", "restart", "partition", "heal"], \
        res["faults"]
    uid = pwd.getpwnam(name).pw_uid
    for n in ("n1", "n2", "n3"):
        # the wheel, the data and the logs belong to the user, not to root
        data = home / n / "data"
        assert data.is_dir() and data.stat().st_uid == uid
        assert (run_dir / "nodes" / n / "node.log").stat().st_size > 0
    st = netns.cluster_status(state_dir=cluster)
    assert all(not any(n["daemons"].values()) for n in st["nodes"]), st
