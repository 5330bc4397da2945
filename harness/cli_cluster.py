"""`machi-harness cluster ...`: bring hosts up and down, inspect, heal, run a command.

    machi-harness cluster up --nodes 5            # netns (root): n1..n5 with sshd
    machi-harness cluster status
    machi-harness cluster exec n1 -- hostname     # through sshd and paramiko
    machi-harness cluster heal                    # flush nemesis rules, prove connectivity
    machi-harness cluster down                    # remove everything (also after a crash)

With the netns provider every command that talks to the hosts re-executes itself inside the
`machi-ctl` namespace first.  Owns only the command-line surface; the work is in
`harness.hosts` and `harness.nemesis`.  Must not: talk to 10.77.0.0/24 from the root
namespace, or print a traceback for an expected failure (exit 1 with the message instead).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import click

from harness.hosts import netns
from harness.hosts.base import HostError, MultiHostError
from harness.hosts.providers import PROVIDERS, open_hosts
from harness.hosts.ssh import HostsFileError
from harness.hosts.vagrant import VagrantError
from harness.nemesis.partition import PartitionError

# Failures the user can act on: reported as one line (exit 1), never as a traceback.
_EXPECTED = (HostError, MultiHostError, PartitionError, HostsFileError, VagrantError,
             netns.NetnsError, ValueError, KeyError, OSError, subprocess.SubprocessError)

_provider = click.option(
    "--provider", type=click.Choice(PROVIDERS), default="netns", show_default=True,
    help="Where the hosts are.",
)
_hosts_file = click.option(
    "--hosts-file", type=click.Path(dir_okay=False), default=None,
    help="TOML list of hosts (--provider ssh).",
)
_state_dir = click.option(
    "--state-dir", type=click.Path(file_okay=False), default=None,
    help="netns state directory [default: $MACHI_NETNS_STATE_DIR or /run/machi-netns]",
)


def _sd(state_dir: str | None) -> Path:
    return Path(state_dir) if state_dir else netns.state_dir_default()


def _enter_control_ns(provider: str, state_dir: str | None, args: list[str]) -> None:
    """netns only: re-exec `machi-harness cluster <args>` inside machi-ctl."""
    if provider != "netns" or netns.in_control_namespace():
        return
    if state_dir:
        args = [*args[:1], "--state-dir", state_dir, *args[1:]]
    try:
        netns.reexec_in_control_ns(["cluster", *args])
    except netns.NetnsError as e:
        raise click.ClickException(str(e)) from e


def _fail(e: Exception) -> click.ClickException:
    return click.ClickException(str(e))


@click.group("cluster")
def cluster() -> None:
    """Hosts for harness runs: netns (local, root), ssh (TOML file) or vagrant."""


@cluster.command("up")
@click.option("--nodes", type=click.IntRange(1, netns.NODES_MAX), default=5, show_default=True)
@_provider
@_state_dir
@click.option("--no-install", is_flag=True, help="Do not run scripts/install-system-deps.")
def up(nodes: int, provider: str, state_dir: str | None, no_install: bool) -> None:
    """Create the hosts (netns) or check they answer (ssh/vagrant: run `vagrant up` first)."""
    if provider == "vagrant":
        p = subprocess.run(["vagrant", "up"], cwd=netns.REPO_ROOT)
        sys.exit(p.returncode)
    if provider == "ssh":
        raise click.ClickException("ssh hosts are yours to start; try `cluster status`")
    sd = _sd(state_dir)
    try:
        netns.cluster_up(nodes, state_dir=sd, install=not no_install)
        report = netns.call_in_control_ns(
            "harness.cli_cluster:_netns_check", {"state_dir": str(sd)}
        )
    except _EXPECTED as e:
        raise _fail(e) from e
    for name, line in report["hosts"].items():
        click.echo(f"{name}  {line}")
    click.echo(f"cluster up: {nodes} hosts, state in {sd}")


def _netns_check(payload: dict[str, Any]) -> dict[str, Any]:
    """Inside machi-ctl: every host answers over ssh; nemesis chains exist and are empty."""
    from harness.nemesis.partition import IptablesNet

    with netns.open_hosts(state_dir=Path(payload["state_dir"])) as hosts:
        res = hosts.run_all("echo $(hostname) $(ip -4 -o addr show eth0 | awk '{print $4}')")
        IptablesNet(hosts).setup()
        return {"hosts": {n: r.stdout.strip() for n, r in res.items()}}


@cluster.command("down")
@_provider
@_hosts_file
@_state_dir
def down(provider: str, hosts_file: str | None, state_dir: str | None) -> None:
    """Remove everything (netns: processes, namespaces, state; others: nemesis rules)."""
    if provider == "netns":
        try:
            removed = netns.cluster_down(state_dir=_sd(state_dir))
        except _EXPECTED as e:
            raise _fail(e) from e
        for r in removed:
            click.echo(f"removed {r}")
        click.echo("cluster down" if removed else "nothing to remove")
        return
    from harness.nemesis.partition import IptablesNet

    try:
        with open_hosts(provider, hosts_file=hosts_file) as hosts:
            IptablesNet(hosts).teardown()
    except _EXPECTED as e:
        raise _fail(e) from e
    click.echo("nemesis rules removed")


@cluster.command("status")
@_provider
@_hosts_file
@_state_dir
@click.option("--json", "as_json", is_flag=True)
def status(provider: str, hosts_file: str | None, state_dir: str | None, as_json: bool) -> None:
    """What exists (netns) and whether each host answers over ssh."""
    out: dict[str, Any] = {}
    if provider == "netns":
        out = netns.cluster_status(state_dir=_sd(state_dir))
        if not out["up"]:
            click.echo(json.dumps(out, indent=1) if as_json else "no netns cluster is up")
            return
    if provider != "netns" or netns.in_control_namespace():
        out["ssh"] = _ssh_status(provider, hosts_file, state_dir)
    else:
        try:
            out["ssh"] = netns.call_in_control_ns(
                "harness.cli_cluster:_ssh_status_json", {"state_dir": str(_sd(state_dir))}
            )
        except netns.NetnsError as e:
            out["ssh"] = {"error": str(e)}
    if as_json:
        click.echo(json.dumps(out, indent=1))
        return
    for n in out.get("nodes", []):
        daemons = " ".join(f"{k}={v or 'down'}" for k, v in n["daemons"].items())
        click.echo(f"{n['name']}  {n['address']}  netns={'yes' if n['netns_present'] else 'NO'}"
                   f"  sshd={'up' if n['sshd_alive'] else 'DOWN'}  rules={n['nemesis_rules']}"
                   + (f"  daemons: {daemons}" if daemons else ""))
    for name, line in out["ssh"].items():
        click.echo(f"{name}  ssh: {line}")


def _ssh_status(provider: str, hosts_file: str | None, state_dir: str | None) -> dict[str, str]:
    try:
        hosts = open_hosts(provider, hosts_file=hosts_file,
                           state_dir=Path(state_dir) if state_dir else None)
    except _EXPECTED as e:
        return {"error": str(e)}
    with hosts:
        res = hosts.map(lambda h: h.run("hostname", timeout_s=10).stdout.strip(), check=False)
        return {n: (f"ok ({res[n]})" if n in res else "UNREACHABLE") for n in hosts.names}


def _ssh_status_json(payload: dict[str, Any]) -> dict[str, str]:
    return _ssh_status("netns", None, payload["state_dir"])


@cluster.command("heal")
@_provider
@_hosts_file
@_state_dir
def heal(provider: str, hosts_file: str | None, state_dir: str | None) -> None:
    """Flush every nemesis rule on every host, then prove all pairs connect."""
    _enter_control_ns(provider, state_dir, ["heal"])
    from harness.nemesis.partition import IptablesNet

    try:
        with open_hosts(provider, hosts_file=hosts_file,
                        state_dir=Path(state_dir) if state_dir else None) as hosts:
            report = IptablesNet(hosts).heal_and_check()
    except _EXPECTED as e:
        raise _fail(e) from e
    click.echo(f"healed: {len(report.ok)} host pairs connect")


@cluster.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("node")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@_provider
@_hosts_file
@_state_dir
@click.option("--sudo", is_flag=True, help="Run under sudo -n (no-op when the user is root).")
@click.option("--timeout-s", type=float, default=60.0, show_default=True)
def exec_(node: str, command: tuple[str, ...], provider: str, hosts_file: str | None,
          state_dir: str | None, sudo: bool, timeout_s: float) -> None:
    """Run COMMAND on NODE through ssh; exit with its exit status."""
    _enter_control_ns(provider, state_dir, ["exec", node, "--timeout-s", str(timeout_s),
                                            *(["--sudo"] if sudo else []), "--", *command])
    # One argument is a shell string ("ls | wc -l"); several are an argv, quoted.
    text = command[0] if len(command) == 1 else shlex.join(command)
    try:
        with open_hosts(provider, hosts_file=hosts_file,
                        state_dir=Path(state_dir) if state_dir else None) as hosts:
            res = hosts[node].run(text, sudo=sudo, timeout_s=timeout_s, check=False)
    except _EXPECTED as e:
        raise _fail(e) from e
    sys.stdout.write(res.stdout)
    sys.stderr.write(res.stderr)
    sys.exit(res.exit_code)
