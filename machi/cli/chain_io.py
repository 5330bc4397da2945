"""`machi append` and `machi read`: one chunk through a whole chain (``ChainClient``).

Owns the members option (``--members n1=HOST:PORT,...`` or a cluster TOML file, format in
docs/client.md), printing the append's position as JSON and writing read bytes to stdout.
Errors print ``STATUS (outcome): message`` on stderr and exit 1 (2 for an unwritten read).
Must not: contain chain logic (that is ``machi.client.chain_client``).
"""

from __future__ import annotations

import json
import ssl
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import click

from machi.client.chain_client import ChainClient, outcome_of
from machi.client.flu_client import parse_server
from machi.core.checksum import TaggedCsum, digest
from machi.core.errors import BadArg, ConfigError, MachiError, NotWritten
from machi.core.outcome import OpKind
from machi.core.projection import valid_name

MAX_APPEND_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class ClusterConfig:
    members: dict[str, tuple[str, int]]
    secret: bytes | None = None
    tls_ca: Path | None = None
    tls_hostname: str | None = None


def parse_members(text: str) -> dict[str, tuple[str, int]]:
    """``n1=HOST:PORT,n2=HOST:PORT`` -> {name: (host, port)}; raises ``ConfigError``."""
    out: dict[str, tuple[str, int]] = {}
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        name, sep, addr = item.partition("=")
        if not sep or not valid_name(name):
            raise ConfigError(f"bad member {item!r}: want NAME=HOST:PORT")
        if name in out:
            raise ConfigError(f"member {name!r} given twice")
        try:
            out[name] = parse_server(addr)
        except BadArg as e:
            raise ConfigError(f"member {name}: {e.message}") from None
    if not out:
        raise ConfigError("no members given")
    return out


def load_cluster(path: Path) -> ClusterConfig:
    """Read a cluster TOML file (docs/client.md); relative paths are relative to it."""
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: {e}") from None
    unknown = set(doc) - {"members", "secret_file", "tls"}
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)}")
    raw = doc.get("members")
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{path}: [members] with at least one NAME = \"HOST:PORT\"")
    bad = [k for k, v in raw.items() if not isinstance(v, str)]
    if bad:
        raise ConfigError(f"{path}: members {bad}: want \"HOST:PORT\" strings")
    members = parse_members(",".join(f"{k}={v}" for k, v in raw.items()))
    secret = None
    if "secret_file" in doc:
        secret = _read_secret(_rel(path, doc["secret_file"], "secret_file"))
    tls = doc.get("tls", {})
    if not isinstance(tls, dict) or set(tls) - {"ca", "server_hostname"}:
        raise ConfigError(f"{path}: [tls] takes only ca and server_hostname")
    ca = _rel(path, tls["ca"], "tls.ca") if "ca" in tls else None
    host = tls.get("server_hostname")
    if host is not None and not isinstance(host, str):
        raise ConfigError(f"{path}: tls.server_hostname must be a string")
    return ClusterConfig(members, secret, ca, host)


def _rel(base: Path, value: Any, key: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{base}: {key} must be a path string")
    p = Path(value)
    return p if p.is_absolute() else base.parent / p


def _read_secret(path: Path) -> bytes:
    try:
        return path.read_bytes().strip()
    except OSError as e:
        raise ConfigError(f"secret file: {e}") from None


def _chain_options(fn: Any) -> Any:
    for opt in reversed([
        click.option("--members", help="n1=HOST:PORT,n2=HOST:PORT,... (seeds discovery)."),
        click.option("--cluster", type=click.Path(path_type=Path, dir_okay=False),
                     help="Cluster TOML file (members, secret_file, [tls]); see docs/client.md."),
        click.option("--secret-file", type=click.Path(path_type=Path, dir_okay=False),
                     help="Shared secret file (overrides the cluster file's)."),
        click.option("--tls-ca", type=click.Path(path_type=Path, dir_okay=False),
                     help="Use TLS trusting this CA (overrides the cluster file's)."),
        click.option("--op-timeout-ms", type=click.IntRange(1, 3_600_000), default=30_000,
                     show_default=True, help="Deadline of the whole operation."),
        click.option("--request-timeout-ms", type=click.IntRange(1, 3_600_000), default=5_000,
                     show_default=True, help="Deadline of each request to one node."),
    ]):
        fn = opt(fn)
    return fn


def _client(members: str | None, cluster: Path | None, secret_file: Path | None,
            tls_ca: Path | None, op_timeout_ms: int, request_timeout_ms: int) -> ChainClient:
    if (members is None) == (cluster is None):
        raise ConfigError("give exactly one of --members and --cluster")
    cfg = load_cluster(cluster) if cluster is not None else ClusterConfig(
        parse_members(members or ""))
    secret = _read_secret(secret_file) if secret_file is not None else cfg.secret
    ca = tls_ca if tls_ca is not None else cfg.tls_ca
    ctx = ssl.create_default_context(cafile=str(ca)) if ca is not None else None
    return ChainClient(cfg.members, secret=secret, tls=ctx, tls_hostname=cfg.tls_hostname,
                       op_timeout_ms=op_timeout_ms, request_timeout_ms=request_timeout_ms,
                       name="machi-cli")


def _run(op: OpKind, body: Any) -> None:
    try:
        anyio.run(body)
    except ConfigError as e:
        raise click.UsageError(str(e)) from None
    except MachiError as e:
        click.echo(f"{e.status.name} ({outcome_of(e, op).value}): {e.message}", err=True)
        sys.exit(2 if isinstance(e, NotWritten) else 1)
    except ssl.SSLError as e:
        raise click.UsageError(f"TLS: {e}") from None


@click.command("append")
@_chain_options
@click.option("--prefix", required=True, help="File prefix.")
@click.argument("source", type=click.Path(path_type=Path, dir_okay=False, allow_dash=True))
def append(members: str | None, cluster: Path | None, secret_file: Path | None,
           tls_ca: Path | None, op_timeout_ms: int, request_timeout_ms: int, prefix: str,
           source: Path) -> None:
    """Append the bytes of SOURCE (a file, or - for stdin) through the chain; print
    {"file", "offset", "size", "checksum"} as JSON."""
    if str(source) == "-":
        data = sys.stdin.buffer.read(MAX_APPEND_BYTES + 1)
    else:
        try:
            with source.open("rb") as f:
                data = f.read(MAX_APPEND_BYTES + 1)
        except OSError as e:
            raise click.UsageError(f"{source}: {e}") from None
    if len(data) > MAX_APPEND_BYTES:
        raise click.UsageError(f"chunk larger than {MAX_APPEND_BYTES} bytes")
    if not data:
        raise click.UsageError("empty chunk")

    async def go() -> None:
        async with _client(members, cluster, secret_file, tls_ca, op_timeout_ms,
                           request_timeout_ms) as cc:
            pos = await cc.append(prefix, data)
        click.echo(json.dumps({"file": pos.file, "offset": pos.offset, "size": pos.size,
                               "checksum": pos.csum.hex()}))

    _run(OpKind.APPEND, go)


@click.command("read")
@_chain_options
@click.option("--file", "file_", required=True, help="File name.")
@click.option("--offset", type=click.IntRange(0), required=True)
@click.option("--size", type=click.IntRange(1, MAX_APPEND_BYTES), required=True)
@click.option("--checksum", help="Tagged hex checksum printed by `machi append`: the whole "
              "range must match its digest.")
def read(members: str | None, cluster: Path | None, secret_file: Path | None,
         tls_ca: Path | None, op_timeout_ms: int, request_timeout_ms: int, file_: str,
         offset: int, size: int, checksum: str | None) -> None:
    """Read SIZE bytes at OFFSET of FILE from the chain's tail (read-repairing if
    needed) and write them to stdout; every chunk's checksum is verified."""
    want: TaggedCsum | None = None
    if checksum is not None:
        try:
            want = TaggedCsum.from_hex(checksum)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--checksum") from None

    async def go() -> None:
        async with _client(members, cluster, secret_file, tls_ca, op_timeout_ms,
                           request_timeout_ms) as cc:
            data = await cc.read(file_, offset, size)
        if want is not None and digest(data) != want.digest:
            click.echo("BAD_CHECKSUM (fail): the bytes do not match --checksum", err=True)
            sys.exit(1)
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()

    _run(OpKind.READ, go)
