"""`machi chain bootstrap|status|set-members`: the chain manager's admin ops on running
nodes (CHAIN_BOOTSTRAP, CHAIN_SET_MEMBERS, CHAIN_STATUS; docs/chain-manager.md).

Owns the options (``--members`` or ``--cluster`` as ``machi append``), which node gets
which request, and the output: one JSON object per node on stdout.  Must not: decide
anything about the chain (each node's chain manager does).
"""

from __future__ import annotations

import json
import ssl
import sys
from pathlib import Path
from typing import Any

import anyio
import click

from machi.cli.chain_io import ClusterConfig, _read_secret, load_cluster, parse_members
from machi.client.flu_client import FluClient
from machi.core.errors import ConfigError, MachiError
from machi.core.wire import Op


def _options(fn: Any) -> Any:
    for opt in reversed([
        click.option("--members", help="n1=HOST:PORT,n2=HOST:PORT,... (the chain's members)."),
        click.option("--cluster", type=click.Path(path_type=Path, dir_okay=False),
                     help="Cluster TOML file (members, secret_file, [tls]); see docs/client.md."),
        click.option("--secret-file", type=click.Path(path_type=Path, dir_okay=False),
                     help="Shared secret file (overrides the cluster file's)."),
        click.option("--tls-ca", type=click.Path(path_type=Path, dir_okay=False),
                     help="Use TLS trusting this CA (overrides the cluster file's)."),
        click.option("--timeout-ms", type=click.IntRange(1, 3_600_000), default=5_000,
                     show_default=True, help="Deadline of each request to one node."),
    ]):
        fn = opt(fn)
    return fn


class _Target:
    def __init__(self, members: str | None, cluster: Path | None, secret_file: Path | None,
                 tls_ca: Path | None, timeout_ms: int) -> None:
        if (members is None) == (cluster is None):
            raise ConfigError("give exactly one of --members and --cluster")
        cfg = load_cluster(cluster) if cluster is not None else ClusterConfig(
            parse_members(members or ""))
        self.members = cfg.members
        self.secret = _read_secret(secret_file) if secret_file is not None else cfg.secret
        ca = tls_ca if tls_ca is not None else cfg.tls_ca
        self.tls = ssl.create_default_context(cafile=str(ca)) if ca is not None else None
        self.tls_hostname = cfg.tls_hostname
        self.timeout_ms = timeout_ms

    def members_meta(self) -> dict[str, str]:
        return {n: f"{h}:{p}" for n, (h, p) in self.members.items()}

    async def call(self, name: str, op: Op, meta: dict[str, Any]) -> dict[str, Any]:
        """One admin request; errors come back as ``{"node", "error"}``."""
        host, port = self.members[name]
        try:
            async with FluClient(host, port, secret=self.secret, ssl_context=self.tls,
                                 tls_hostname=self.tls_hostname, timeout_ms=self.timeout_ms,
                                 connect_timeout_ms=self.timeout_ms, name="machi-chain") as c:
                out = await c.chain_admin(op, meta)
        except MachiError as e:
            return {"node": name, "error": f"{e.status.name}: {e.message}"}
        except (OSError, ssl.SSLError) as e:
            return {"node": name, "error": f"PARTITION: {e}"}
        return out

    async def call_all(
        self, names: list[str], op: Op, meta: dict[str, Any]
    ) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}

        async def one(n: str) -> None:
            out[n] = await self.call(n, op, meta)

        async with anyio.create_task_group() as tg:
            for n in names:
                tg.start_soon(one, n)
        return {n: out[n] for n in names}


def _emit(results: dict[str, dict[str, Any]]) -> None:
    for name, r in results.items():
        click.echo(json.dumps({"node": name, **r}, sort_keys=True))


def _run(body: Any) -> None:
    try:
        ok = anyio.run(body)
    except ConfigError as e:
        raise click.UsageError(str(e)) from None
    sys.exit(0 if ok else 1)


def _names(text: str | None) -> list[str]:
    return [s.strip() for s in (text or "").split(",") if s.strip()]


@click.group()
def chain() -> None:
    """Configure and inspect self-managing chains (Humming Consensus)."""


@chain.command("bootstrap")
@_options
@click.option("--chain", "chain_name", required=True, help="Chain name.")
@click.option("--mode", type=click.Choice(["ap", "cp"]), required=True)
@click.option("--witnesses", help="n1,n2,...: members that are witnesses (CP).")
def bootstrap(members: str | None, cluster: Path | None, secret_file: Path | None,
              tls_ca: Path | None, timeout_ms: int, chain_name: str, mode: str,
              witnesses: str | None) -> None:
    """Configure a chain on running nodes: every reachable member enables its chain
    manager, then the first reachable one proposes epoch 1 (Humming Consensus spreads
    it).  Prints each node's status; exit 1 if no member accepted the proposal."""

    async def go() -> bool:
        t = _Target(members, cluster, secret_file, tls_ca, timeout_ms)
        meta: dict[str, Any] = {"chain": chain_name, "mode": mode,
                                "members": t.members_meta(), "witnesses": _names(witnesses)}
        names = list(t.members)
        enabled = await t.call_all(names, Op.CHAIN_BOOTSTRAP, {**meta, "propose": False})
        results = dict(enabled)
        accepted = False
        for n in names:
            if "error" in enabled[n]:
                continue
            results[n] = await t.call(n, Op.CHAIN_BOOTSTRAP, {**meta, "propose": True})
            if "error" not in results[n]:
                results[n]["proposed"] = True
                accepted = True
                break
        _emit(results)
        return accepted

    _run(go)


@chain.command("status")
@_options
def status(members: str | None, cluster: Path | None, secret_file: Path | None,
           tls_ca: Path | None, timeout_ms: int) -> None:
    """One JSON object per node: epoch, epoch_csum, author, upi, repairing, down,
    witnesses, mode, wedged, confirmed (or error).  Exit 1 if a node did not answer."""

    async def go() -> bool:
        t = _Target(members, cluster, secret_file, tls_ca, timeout_ms)
        results = await t.call_all(list(t.members), Op.CHAIN_STATUS, {})
        _emit(results)
        return all("error" not in r for r in results.values())

    _run(go)


@chain.command("set-members")
@_options
@click.option("--witnesses", help="n1,...: the new witness set (default: unchanged).")
def set_members(members: str | None, cluster: Path | None, secret_file: Path | None,
                tls_ca: Path | None, timeout_ms: int, witnesses: str | None) -> None:
    """Change the chain's members to exactly the given ones (add / remove).  New members
    get their manager enabled; a configured member that stays proposes the change (epoch
    jump 1111, as the original)."""

    async def go() -> bool:
        t = _Target(members, cluster, secret_file, tls_ca, timeout_ms)
        names = list(t.members)
        before = await t.call_all(names, Op.CHAIN_STATUS, {})
        configured = [n for n in names if before[n].get("running") and before[n].get("epoch")]
        if not configured:
            _emit(before)
            click.echo("no listed member runs a configured chain", err=True)
            return False
        ref = before[configured[0]]
        meta: dict[str, Any] = {"members": t.members_meta()}
        if witnesses is not None:
            meta["witnesses"] = _names(witnesses)
        fresh = [n for n in names if n not in configured]
        results = dict(before)
        if fresh:
            results.update(await t.call_all(fresh, Op.CHAIN_BOOTSTRAP, {
                "chain": ref["chain"], "mode": ref["mode"], "members": t.members_meta(),
                "propose": False,
            }))
        accepted = False
        for n in configured:
            results[n] = await t.call(n, Op.CHAIN_SET_MEMBERS, meta)
            if "error" not in results[n]:
                results[n]["proposed"] = True
                accepted = True
                break
        _emit(results)
        return accepted

    _run(go)
