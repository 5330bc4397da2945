"""The vagrant provider: the VMs of the top-level Vagrantfile, reached like any SSH host.

Owns turning `vagrant ssh-config` output into `HostSpec`s.  SSH goes to the forwarded port
Vagrant reports (usually 127.0.0.1:2222+); the cluster address of n<i> is the VM's private
network address from the Vagrantfile (192.168.56.<10+i>), which is what the other VMs see
and what the nemesis drops.  Vagrant itself cannot run in CI: `parse_ssh_config` is a pure
function tested on sample output; `vagrant_ssh_config` calls the real `vagrant`.

Must not: bring VMs up or down implicitly (that is `vagrant up` / `vagrant destroy`, run by
the user or `cluster up --provider vagrant`), or trust unknown host keys other than the
ones Vagrant itself declares as throwaway (`StrictHostKeyChecking no`).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from harness.hosts.base import Host, HostSet, HostSpec

PRIVATE_NET_PREFIX = "192.168.56."
REPO_ROOT = Path(__file__).resolve().parents[2]
_NODE_RE = re.compile(r"^n(\d{1,3})$")


class VagrantError(Exception):
    """`vagrant` is missing, failed, or its ssh-config is not what the Vagrantfile makes."""


def cluster_address(name: str) -> str | None:
    """The private-network address the Vagrantfile gives n<i> (None for other names)."""
    m = _NODE_RE.match(name)
    return f"{PRIVATE_NET_PREFIX}{10 + int(m.group(1))}" if m else None


def parse_ssh_config(text: str) -> list[HostSpec]:
    """HostSpecs from the text `vagrant ssh-config` prints (one `Host` block per VM)."""
    import paramiko

    cfg = paramiko.SSHConfig.from_text(text)
    names = [h for h in cfg.get_hostnames() if h != "*"]
    if not names:
        raise VagrantError("no Host entries in the vagrant ssh-config output")
    specs = []
    for name in names:
        d = cfg.lookup(name)
        if "hostname" not in d or "port" not in d:
            raise VagrantError(f"{name}: ssh-config lacks HostName/Port")
        keys = d.get("identityfile") or []
        strict = str(d.get("stricthostkeychecking", "yes")).lower()
        specs.append(
            HostSpec(
                name=name,
                address=d["hostname"],
                port=int(d["port"]),
                user=d.get("user", "vagrant"),
                key_path=keys[0] if keys else None,
                sudo=True,
                cluster_address=cluster_address(name),
                probe_port=22,
                known_hosts_path=None,
                accept_unknown_host_key=strict == "no",
                work_dir="/var/tmp/machi-harness",
                data_dir="/var/tmp/machi-harness/data",
            )
        )
    return sorted(specs, key=lambda s: (len(s.name), s.name))


def vagrant_ssh_config(vagrant_dir: Path | None = None, *, timeout_s: float = 120.0) -> str:
    """Run `vagrant ssh-config` where the Vagrantfile is."""
    if shutil.which("vagrant") is None:
        raise VagrantError("vagrant is not installed (see docs/harness-hosts.md)")
    p = subprocess.run(
        ["vagrant", "ssh-config"], cwd=vagrant_dir or REPO_ROOT, capture_output=True,
        text=True, timeout=timeout_s,
    )
    if p.returncode != 0:
        raise VagrantError(f"vagrant ssh-config failed (are the VMs up?): {p.stderr.strip()}")
    return p.stdout


def open_hosts(vagrant_dir: Path | None = None) -> HostSet:
    return HostSet([Host(s) for s in parse_ssh_config(vagrant_ssh_config(vagrant_dir))])
