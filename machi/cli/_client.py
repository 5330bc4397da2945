"""Shared plumbing of the client-side commands (`machi flu`, `machi projection`): the
connection options, running one async call, and turning errors into a status name on
stderr and a non-zero exit.

Owns no protocol logic (that is ``machi.client.flu_client``).
"""

from __future__ import annotations

import functools
import ssl
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import click

from machi.client.flu_client import FluClient, parse_server
from machi.core.epoch import EpochId, make_epoch_id
from machi.core.errors import MachiError

F = TypeVar("F", bound=Callable[..., Any])


def connection_options(fn: F) -> F:
    """--server, --secret-file, --tls-ca, --timeout-ms."""
    for opt in reversed([
        click.option("--server", required=True, help="HOST:PORT of the FLU."),
        click.option("--secret-file", type=click.Path(path_type=Path, dir_okay=False),
                     help="Shared secret file (when the node requires authentication)."),
        click.option("--tls-ca", type=click.Path(path_type=Path, dir_okay=False),
                     help="Use TLS, trusting this CA (or self-signed) certificate."),
        click.option("--timeout-ms", type=click.IntRange(1, 3_600_000), default=10_000,
                     show_default=True),
    ]):
        fn = opt(fn)
    return fn


def make_client(server: str, secret_file: Path | None, tls_ca: Path | None,
                timeout_ms: int) -> FluClient:
    host, port = parse_server(server)
    secret = secret_file.read_bytes().strip() if secret_file is not None else None
    ctx = None
    if tls_ca is not None:
        ctx = ssl.create_default_context(cafile=str(tls_ca))
    return FluClient(host, port, secret=secret, ssl_context=ctx, timeout_ms=timeout_ms,
                     name="machi-cli")


def run_client(body: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Decorate an ``async def body(client, **kw)`` command body: connect, run, map errors."""

    @functools.wraps(body)
    def wrapper(server: str, secret_file: Path | None, tls_ca: Path | None, timeout_ms: int,
                **kw: Any) -> None:
        async def go() -> None:
            async with make_client(server, secret_file, tls_ca, timeout_ms) as client:
                await body(client, **kw)

        try:
            anyio.run(go)
        except MachiError as e:
            click.echo(str(e), err=True)
            sys.exit(1)
        except OSError as e:
            click.echo(f"PARTITION: {e}", err=True)
            sys.exit(1)

    return wrapper


def parse_epoch(text: str | None) -> EpochId | None:
    """``NUMBER:HEXCSUM`` -> EpochId (None when not given)."""
    if text is None:
        return None
    number, sep, csum = text.partition(":")
    try:
        if not sep:
            raise ValueError("want NUMBER:HEXCSUM")
        return make_epoch_id(int(number), bytes.fromhex(csum))
    except ValueError as e:
        raise click.BadParameter(f"{text!r}: {e}", param_hint="--epoch") from None


async def epoch_or_current(client: FluClient, epoch: str | None) -> EpochId:
    given = parse_epoch(epoch)
    if given is not None:
        return given
    return (await client.wedge_status()).epoch_id
