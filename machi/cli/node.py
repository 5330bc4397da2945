"""`machi node ...` commands: run one FLU in the foreground, repair its metadata.

Owns argument parsing and the mapping of flags onto ``NodeConfig``; the daemon lives in
``machi.node``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anyio
import click

from machi.core.errors import ConfigError


@click.group()
def node() -> None:
    """Run and maintain a storage node (FLU)."""


@node.command("run")
@click.option("--name", help="Node name (1-64 of [A-Za-z0-9_.-]).")
@click.option("--listen", help="HOST:PORT to serve the wire protocol on.")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Data directory.")
@click.option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False),
              help="TOML config file; flags override it.")
@click.option("--metrics", help="HOST:PORT for the Prometheus metrics endpoint.")
@click.option("--sync", type=click.Choice(["always", "batch", "none"]), help="Durability.")
@click.option("--secret-file", type=click.Path(path_type=Path, dir_okay=False),
              help="Shared secret: every connection must authenticate with it.")
@click.option("--tls-cert", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--tls-key", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--witness/--no-witness", default=None, help="Witness: no data operations.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
def run(config_file: Path | None, **flags: object) -> None:
    """Run one FLU in the foreground (JSON-lines logs on stderr; SIGTERM stops it)."""
    from machi.node.config import build_config, load_file
    from machi.node.run import main

    try:
        file_values = load_file(config_file) if config_file is not None else {}
        cfg = build_config(file_values, dict(flags))
    except ConfigError as e:
        click.echo(f"config error: {e}", err=True)
        sys.exit(2)
    from machi.storage.errors import StorageCorrupt

    try:
        main(cfg)
    except ConfigError as e:
        click.echo(f"config error: {e}", err=True)
        sys.exit(2)
    except StorageCorrupt as e:
        click.echo(f"storage error: {e}", err=True)
        sys.exit(3)
    except OSError as e:  # e.g. the port is taken, the data directory is not writable
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:  # a second ^C during the graceful stop
        sys.exit(130)


@node.command("repair")
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), required=True)
def repair(data_dir: Path) -> None:
    """Reconcile the metadata database with the data files (after a startup error)."""
    from machi.storage.recovery import repair_metadata

    report = anyio.run(repair_metadata, data_dir)
    click.echo(json.dumps(_jsonable(report), indent=2, default=str))


def _jsonable(report: object) -> object:
    if hasattr(report, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(report)  # type: ignore[call-overload]
    return report
