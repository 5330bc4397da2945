"""The Vagrant set-up without machines: `vagrant validate` accepts the
Vagrantfile, `vagrant/build-wheel` builds a wheel of this checkout, and the unmodified
`vagrant/provision.sh` installs it (dependencies from the package index) into
/opt/machi/venv so that `machi` runs -- inside a private mount namespace whose /opt,
/usr/local/bin, /var/tmp, /tmp, /etc/hosts, /etc/passwd and /etc/group are throwaway
copies, so nothing outside the test changes.

Marked e2e (needs the network for the dependencies, root for the mount namespace, and the
Debian `vagrant` package for the validate step; each part skips when its tool is missing).
Machines that `vagrant up` made (containers, MACHI_VAGRANT_DOCKER=1) and a harness run on
them: tests/harness/test_vagrant_docker.py.  Not tested anywhere here: VirtualBox/libvirt
VMs (docs/harness-hosts.md).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]


def test_vagrant_validates_the_vagrantfile(tmp_path: Path) -> None:
    """`vagrant validate` (no provider needed) accepts the Vagrantfile for 1 and 5 nodes."""
    if shutil.which("vagrant") is None:
        pytest.skip("vagrant is not installed (Debian: apt-get install vagrant)")
    for nodes in ("5", "1"):
        env = {**os.environ, "MACHI_NODES": nodes, "VAGRANT_HOME": str(tmp_path / "vh"),
               "VAGRANT_DOTFILE_PATH": str(tmp_path / "dot"),
               "VAGRANT_CHECKPOINT_DISABLE": "1"}
        p = subprocess.run(["vagrant", "validate", "--ignore-provider"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stdout + p.stderr
        assert "validated successfully" in p.stdout, p.stdout
    env = {**os.environ, "MACHI_NODES": "12", "VAGRANT_HOME": str(tmp_path / "vh"),
           "VAGRANT_DOTFILE_PATH": str(tmp_path / "dot")}
    p = subprocess.run(["vagrant", "validate", "--ignore-provider"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "MACHI_NODES must be 1..9" in p.stdout + p.stderr


def test_provisioning_installs_the_wheel_of_this_checkout(tmp_path: Path) -> None:
    """build-wheel, then provision.sh as Vagrant runs it: `machi` from /opt/machi/venv
    imports the checkout's code, /etc/hosts names the peers, the harness dirs exist."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a private mount namespace")
    wheel_dir = tmp_path / "wheel"
    subprocess.run([str(REPO / "vagrant" / "build-wheel"), str(wheel_dir)], cwd=REPO,
                   check=True, timeout=300)
    wheels = list(wheel_dir.glob("machi_py-*.whl"))
    assert len(wheels) == 1, wheels
    real_hosts = Path("/etc/hosts").read_text()
    etc = tmp_path / "etc"
    etc.mkdir()
    for f in ("hosts", "passwd", "group"):
        shutil.copy(f"/etc/{f}", etc / f)
    with (etc / "passwd").open("a") as fh:
        fh.write("vagrant:x:64123:64123:vagrant:/nonexistent:/bin/sh\n")
    with (etc / "group").open("a") as fh:
        fh.write("vagrant:x:64123:\n")
    script = f"""set -e
mount --make-rprivate /
for f in hosts passwd group; do mount --bind {etc}/$f /etc/$f; done
for d in /opt /usr/local/bin /var/tmp; do mount -t tmpfs tmpfs "$d"; done
cp {wheels[0]} /var/tmp/
mount -t tmpfs tmpfs /tmp
mkdir -p /tmp/machi-wheel && mv /var/tmp/machi_py-*.whl /tmp/machi-wheel/
cd / && unset PYTHONPATH
bash {REPO}/vagrant/provision.sh n2 5 192.168.56.
echo "WHERE $(/opt/machi/venv/bin/python -c 'import machi, harness; print(machi.__file__)')"
echo "OWNER $(stat -c %U /var/tmp/machi-harness/data)"
machi --help | sed 's/^/HELP /'
test ! -e /tmp/machi-wheel
"""
    p = subprocess.run(["unshare", "--mount", "bash", "-c", script], capture_output=True,
                       text=True, timeout=540)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    lines = p.stdout.splitlines()
    assert "provision: n2 ready" in p.stdout
    assert any(ln.startswith("WHERE /opt/machi/venv/") for ln in lines), p.stdout
    assert "OWNER vagrant" in lines, p.stdout
    assert any(ln.startswith("HELP ") and "node" in ln for ln in lines), p.stdout
    hosts = (etc / "hosts").read_text()
    assert all(f"192.168.56.{10 + i} n{i}" in hosts for i in range(1, 6))
    assert Path("/etc/hosts").read_text() == real_hosts  # the machine's own is untouched
