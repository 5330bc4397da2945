"""`machi projection ...` commands: read and write one FLU's projection store (JSON).

``write`` reads one projection (the JSON form of ``Projection.to_json``) from a file or
stdin.  Errors print the status name to stderr and exit 1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from machi.client.flu_client import FluClient
from machi.core.errors import BadArg
from machi.core.projection import projection_from_json

from ._client import connection_options, run_client

_kind = click.option("--kind", type=click.Choice(["public", "private"]), required=True)


@click.group()
def projection() -> None:
    """Read and write a FLU's projection store."""


@projection.command("read-latest")
@connection_options
@_kind
@run_client
async def read_latest(client: FluClient, kind: str) -> None:
    """Print the latest projection of KIND as JSON."""
    p = await client.projection_read_latest(kind)
    click.echo(json.dumps(p.to_json(), sort_keys=True))


@projection.command("read")
@connection_options
@_kind
@click.option("--epoch", "epoch_number", type=click.IntRange(0), required=True)
@run_client
async def read(client: FluClient, kind: str, epoch_number: int) -> None:
    """Print the projection of KIND at one epoch as JSON."""
    p = await client.projection_read(kind, epoch_number)
    click.echo(json.dumps(p.to_json(), sort_keys=True))


@projection.command("list")
@connection_options
@_kind
@run_client
async def list_(client: FluClient, kind: str) -> None:
    """Print the stored epoch numbers of KIND, one per line."""
    for n in await client.projection_list(kind):
        click.echo(str(n))


@projection.command("write")
@connection_options
@_kind
@click.option("--input", "input_path", type=click.Path(path_type=Path, dir_okay=False,
              allow_dash=True), help="Projection JSON file (default: stdin).")
@run_client
async def write(client: FluClient, kind: str, input_path: Path | None) -> None:
    """Write one projection (JSON) into the KIND half of the store."""
    raw = sys.stdin.buffer.read() if input_path is None or str(input_path) == "-" \
        else input_path.read_bytes()
    try:
        p = projection_from_json(json.loads(raw))
    except (ValueError, UnicodeDecodeError) as e:
        raise BadArg(f"bad projection JSON: {e}") from None
    await client.projection_write(kind, p)
    click.echo(json.dumps({"kind": kind, "epoch_id": p.epoch_id.to_json()}))


@projection.command("make")
@click.option("--epoch", "epoch_number", type=click.IntRange(0), required=True)
@click.option("--author", required=True, help="Author server name (a member).")
@click.option("--chain", "chain_name", required=True)
@click.option("--members", required=True, help="Comma-separated member names.")
@click.option("--upi", default=None, help="Comma-separated UPI (default: all members).")
@click.option("--mode", type=click.Choice(["ap", "cp"]), default="ap", show_default=True)
def make(epoch_number: int, author: str, chain_name: str, members: str, upi: str | None,
         mode: str) -> None:
    """Print a new projection as JSON (e.g. to bootstrap a node with `write`)."""
    from machi.core.projection import make_projection

    all_members = [m for m in members.split(",") if m]
    upi_list = all_members if upi is None else [m for m in upi.split(",") if m]
    try:
        p = make_projection(epoch_number=epoch_number, author_server=author,
                            chain_name=chain_name, all_members=all_members,
                            mode="cp" if mode == "cp" else "ap",
                            upi=upi_list, down=[m for m in all_members if m not in upi_list])
    except ValueError as e:
        click.echo(f"BAD_ARG: {e}", err=True)
        sys.exit(1)
    click.echo(json.dumps(p.to_json(), sort_keys=True))
