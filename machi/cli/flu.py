"""`machi flu ...` commands: one low-level operation against one FLU.

Output: ``append`` prints one JSON object, ``read`` writes raw bytes to stdout,
``list-files`` and ``checksum-list`` print JSON lines, errors print the status name to
stderr and exit 1.  Epoch ids are fetched with wedge_status unless ``--epoch`` is given.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from machi.client.flu_client import FluClient

from ._client import connection_options, epoch_or_current, run_client

_epoch_opt = click.option("--epoch", help="Epoch id NUMBER:HEXCSUM (default: the node's).")


@click.group()
def flu() -> None:
    """Low-level operations on one FLU."""


def _input(path: Path | None) -> bytes:
    if path is None or str(path) == "-":
        return sys.stdin.buffer.read()
    return path.read_bytes()


def _print(obj: Any) -> None:
    click.echo(json.dumps(obj, separators=(",", ":")))


@flu.command()
@connection_options
@click.option("--prefix", required=True, help="File name prefix.")
@click.option("--input", "input_path", type=click.Path(path_type=Path, dir_okay=False,
              allow_dash=True), help="Chunk file (default: stdin).")
@click.option("--chunk-extra", type=click.IntRange(0), default=0)
@_epoch_opt
@run_client
async def append(client: FluClient, prefix: str, input_path: Path | None, chunk_extra: int,
                 epoch: str | None) -> None:
    """Append a chunk; prints {"file","offset","size","checksum"}."""
    data = _input(input_path)
    eid = await epoch_or_current(client, epoch)
    pos = await client.append(prefix, data, epoch_id=eid, chunk_extra=chunk_extra)
    _print({"file": pos.file, "offset": pos.offset, "size": pos.size,
            "checksum": pos.csum.hex()})


@flu.command()
@connection_options
@click.option("--file", "file", required=True)
@click.option("--offset", type=click.IntRange(0), required=True)
@click.option("--input", "input_path", type=click.Path(path_type=Path, dir_okay=False,
              allow_dash=True), help="Chunk file (default: stdin).")
@_epoch_opt
@run_client
async def write(client: FluClient, file: str, offset: int, input_path: Path | None,
                epoch: str | None) -> None:
    """Write a chunk at an explicit offset; prints {"file","offset","size","checksum"}."""
    data = _input(input_path)
    eid = await epoch_or_current(client, epoch)
    csum = await client.write(file, offset, data, epoch_id=eid)
    _print({"file": file, "offset": offset, "size": len(data), "checksum": csum.hex()})


@flu.command()
@connection_options
@click.option("--file", "file", required=True)
@click.option("--offset", type=click.IntRange(0), required=True)
@click.option("--size", type=click.IntRange(0), required=True)
@_epoch_opt
@run_client
async def read(client: FluClient, file: str, offset: int, size: int, epoch: str | None) -> None:
    """Read a range and write the bytes of its written chunks to stdout."""
    eid = await epoch_or_current(client, epoch)
    reply = await client.read(file, offset, size, epoch_id=eid)
    out = sys.stdout.buffer
    for c in reply.chunks:
        out.write(c.data)
    out.flush()
    if reply.partial:
        click.echo("partial read: some of the range is not written", err=True)


@flu.command()
@connection_options
@click.option("--file", "file", required=True)
@click.option("--offset", type=click.IntRange(0), required=True)
@click.option("--size", type=click.IntRange(0), required=True)
@_epoch_opt
@run_client
async def trim(client: FluClient, file: str, offset: int, size: int, epoch: str | None) -> None:
    """Trim a range."""
    eid = await epoch_or_current(client, epoch)
    await client.trim(file, offset, size, epoch_id=eid)


@flu.command("list-files")
@connection_options
@run_client
async def list_files(client: FluClient) -> None:
    """One JSON line {"file","size"} per data file."""
    for name, size in await client.list_files():
        _print({"file": name, "size": size})


@flu.command("checksum-list")
@connection_options
@click.option("--file", "file", required=True)
@run_client
async def checksum_list(client: FluClient, file: str) -> None:
    """One JSON line {"offset","size","checksum"} per chunk (checksum null = trimmed)."""
    async for batch in client.checksum_list_batches(file):
        for e in batch:
            _print({"offset": e.offset, "size": e.size,
                    "checksum": None if e.csum is None else e.csum.hex()})


@flu.command("wedge-status")
@connection_options
@run_client
async def wedge_status(client: FluClient) -> None:
    """Prints {"name","wedged","epoch_id","mode","witness","public_epoch_number"}."""
    s = await client.wedge_status()
    _print({"name": s.name, "wedged": s.wedged, "epoch_id": s.epoch_id.to_json(),
            "mode": s.mode, "witness": s.witness, "public_epoch_number": s.public_epoch_number})


@flu.command()
@connection_options
@click.argument("message", default="ping")
@run_client
async def echo(client: FluClient, message: str) -> None:
    """Echo MESSAGE through the node."""
    click.echo((await client.echo(message.encode())).decode(errors="replace"))
