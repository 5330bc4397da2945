"""Pick a hosts provider by name: netns (default on Linux as root), ssh (a TOML file) or
vagrant (`vagrant ssh-config`).  Every provider returns the same `HostSet` of SSH hosts.

Must not: bring clusters up or down (see `netns.cluster_up` and the `cluster` CLI).
"""

from __future__ import annotations

from pathlib import Path

from harness.hosts.base import HostSet

PROVIDERS = ("netns", "ssh", "vagrant")


def open_hosts(
    provider: str = "netns", *, hosts_file: str | Path | None = None,
    state_dir: Path | None = None, vagrant_dir: Path | None = None,
    nodes: int | None = None,
) -> HostSet:
    """The hosts of `provider`, optionally only the first `nodes` of them."""
    if provider == "netns":
        from harness.hosts import netns

        hosts = netns.open_hosts(state_dir=state_dir)
    elif provider == "ssh":
        from harness.hosts import ssh

        if hosts_file is None:
            raise ValueError("--provider ssh needs --hosts-file FILE")
        hosts = ssh.open_hosts(hosts_file)
    elif provider == "vagrant":
        from harness.hosts import vagrant

        hosts = vagrant.open_hosts(vagrant_dir)
    else:
        raise ValueError(f"unknown provider {provider!r}; known: {', '.join(PROVIDERS)}")
    if nodes is not None:
        if not 1 <= nodes <= len(hosts):
            raise ValueError(f"asked for {nodes} nodes but {provider} has {len(hosts)}")
        hosts = HostSet(hosts.hosts[:nodes])
    return hosts
