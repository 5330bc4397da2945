"""The ssh provider: any hosts listed in a TOML file, reached with the same `Host` code.

File format (every key but `name` and `address` optional; `[defaults]` applies to all)::

    [defaults]
    user = "admin"             # default "root"
    key = "~/.ssh/id_ed25519"  # default: ssh-agent / ~/.ssh keys
    port = 22
    sudo = true                # may use `sudo -n` for privileged commands (iptables)
    known_hosts = "~/.ssh/known_hosts"
    accept_unknown_host_key = false
    work_dir = "/var/tmp/machi-harness"
    data_dir = "/var/tmp/machi-harness/data"

    [[hosts]]
    name = "n1"
    address = "203.0.113.11"       # where the harness connects
    cluster_address = "10.0.0.11"  # what the other hosts see (default: address)

Owns parsing and validating that file into `HostSpec`s.  Must not: connect anywhere (that is
`Host`'s job, on first use), or accept unknown keys silently (a typo would change a test).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from harness.hosts.base import Host, HostSet, HostSpec

_KEYS = {
    "name": "name", "address": "address", "port": "port", "user": "user", "key": "key_path",
    "sudo": "sudo", "cluster_address": "cluster_address", "probe_port": "probe_port",
    "host_key": "host_key", "known_hosts": "known_hosts_path",
    "accept_unknown_host_key": "accept_unknown_host_key", "work_dir": "work_dir",
    "data_dir": "data_dir", "connect_timeout_s": "connect_timeout_s",
}
_TYPES: dict[str, tuple[type, ...]] = {
    "port": (int,), "probe_port": (int,), "sudo": (bool,), "accept_unknown_host_key": (bool,),
    "connect_timeout_s": (int, float),
}
HOSTS_MAX = 256


class HostsFileError(Exception):
    """The hosts file is missing, unreadable or invalid; the message names the problem."""


def parse_hosts_toml(text: str, *, source: str = "<hosts file>") -> list[HostSpec]:
    """HostSpecs from the TOML text of a hosts file (see the module docstring)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise HostsFileError(f"{source}: not valid TOML: {e}") from e
    extra = set(doc) - {"defaults", "hosts"}
    if extra:
        raise HostsFileError(f"{source}: unknown top-level keys {sorted(extra)}")
    defaults = doc.get("defaults", {})
    hosts = doc.get("hosts", [])
    if not isinstance(defaults, dict) or not isinstance(hosts, list):
        raise HostsFileError(f"{source}: [defaults] must be a table and [[hosts]] an array")
    if not hosts:
        raise HostsFileError(f"{source}: no [[hosts]] entries")
    if len(hosts) > HOSTS_MAX:
        raise HostsFileError(f"{source}: more than {HOSTS_MAX} hosts")
    specs: list[HostSpec] = []
    for i, entry in enumerate(hosts):
        if not isinstance(entry, dict):
            raise HostsFileError(f"{source}: hosts[{i}] is not a table")
        merged: dict[str, Any] = {**defaults, **entry}
        specs.append(_spec(merged, f"{source}: hosts[{i}]"))
    names = [s.name for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise HostsFileError(f"{source}: duplicate host names {dup}")
    return specs


def _spec(d: dict[str, Any], where: str) -> HostSpec:
    unknown = set(d) - set(_KEYS)
    if unknown:
        raise HostsFileError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(_KEYS)}")
    for req in ("name", "address"):
        if not isinstance(d.get(req), str) or not d[req]:
            raise HostsFileError(f"{where}: `{req}` (a string) is required")
    kw: dict[str, Any] = {}
    for k, v in d.items():
        want = _TYPES.get(k, (str,))
        if (isinstance(v, bool) and bool not in want) or not isinstance(v, want):
            raise HostsFileError(f"{where}: `{k}` must be {'/'.join(t.__name__ for t in want)}")
        kw[_KEYS[k]] = v
    try:
        return HostSpec(**kw)
    except ValueError as e:
        raise HostsFileError(f"{where}: {e}") from e


def load_hosts_file(path: str | Path) -> list[HostSpec]:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise HostsFileError(f"cannot read hosts file {p}: {e}") from e
    return parse_hosts_toml(text, source=str(p))


def open_hosts(path: str | Path) -> HostSet:
    return HostSet([Host(s) for s in load_hosts_file(path)])
