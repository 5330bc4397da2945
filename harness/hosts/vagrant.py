"""The vagrant provider: the VMs of the top-level Vagrantfile, reached like any SSH host.

Owns turning `vagrant ssh-config` output into `HostSpec`s.  SSH goes where Vagrant says: the
forwarded port (usually 127.0.0.1:2222+), or with vagrant-libvirt the VM's management
address, port 22 (MACHI_VAGRANT_LIBVIRT=1: reachable only inside the network namespace of the
private libvirtd scripts/vagrant-libvirt-setup starts, where the harness must run).  The
cluster address of n<i> is the VM's private network address from the Vagrantfile
(<prefix><10+i>), which is what the other VMs see and what the nemesis drops.  The prefix
follows the same environment as the Vagrantfile: MACHI_VAGRANT_NET_PREFIX, else 10.78.56.
with MACHI_VAGRANT_DOCKER=1 (containers from scripts/vagrant-docker-setup), else 192.168.56.
(VMs, also MACHI_VAGRANT_LIBVIRT=1).  `parse_ssh_config` is a pure function tested on sample
output; `vagrant_ssh_config` calls the real `vagrant` (tests/harness/test_vagrant_docker.py
runs it against containers `vagrant up` made).

Must not: bring VMs up or down implicitly (that is `vagrant up` / `vagrant destroy`, run by
the user or `cluster up --provider vagrant`), or trust unknown host keys other than the
ones Vagrant itself declares as throwaway (`StrictHostKeyChecking no`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from harness.hosts.base import Host, HostSet, HostSpec

PRIVATE_NET_PREFIX = "192.168.56."  # VMs (VirtualBox / libvirt host-only network)
DOCKER_NET_PREFIX = "10.78.56."  # MACHI_VAGRANT_DOCKER=1 (a Docker network Vagrant creates)
_PREFIX_RE = re.compile(r"^\d{1,3}\.\d{1,3}\.\d{1,3}\.$")
REPO_ROOT = Path(__file__).resolve().parents[2]
_NODE_RE = re.compile(r"^n(\d{1,3})$")


class VagrantError(Exception):
    """`vagrant` is missing, failed, or its ssh-config is not what the Vagrantfile makes."""


def net_prefix(environ: Mapping[str, str] | None = None) -> str:
    """The private-network prefix the Vagrantfile uses under `environ` (default os.environ)."""
    env = os.environ if environ is None else environ
    prefix = env.get("MACHI_VAGRANT_NET_PREFIX") or (
        DOCKER_NET_PREFIX if env.get("MACHI_VAGRANT_DOCKER") == "1" else PRIVATE_NET_PREFIX)
    if not _PREFIX_RE.match(prefix):
        raise VagrantError(f"MACHI_VAGRANT_NET_PREFIX must look like 10.78.56. (got {prefix!r})")
    return prefix


def cluster_address(name: str, prefix: str = PRIVATE_NET_PREFIX) -> str | None:
    """The private-network address the Vagrantfile gives n<i> (None for other names)."""
    m = _NODE_RE.match(name)
    return f"{prefix}{10 + int(m.group(1))}" if m else None


def parse_ssh_config(text: str, prefix: str = PRIVATE_NET_PREFIX) -> list[HostSpec]:
    """HostSpecs from the text `vagrant ssh-config` prints (one `Host` block per VM), with
    cluster addresses on the private network `prefix` (see `net_prefix`)."""
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
                cluster_address=cluster_address(name, prefix),
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
    prefix = net_prefix()
    return HostSet([Host(s) for s in parse_ssh_config(vagrant_ssh_config(vagrant_dir), prefix)])
