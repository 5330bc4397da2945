"""`machi demo`: the main job (three FLUs on loopback, a chain, a verified workload).

Argument parsing only; the demo lives in ``machi.bench.demo``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command("demo")
@click.option("--appends", type=click.IntRange(1, 5000), default=300, show_default=True,
              help="Chunks to append (random sizes up to 64 KiB).")
@click.option("--concurrency", type=click.IntRange(1, 64), default=8, show_default=True,
              help="Requests in flight.")
@click.option("--seed", type=int, default=1, show_default=True,
              help="Seed of the workload (chunk sizes, contents, prefixes).")
@click.option("--sync", type=click.Choice(["always", "batch", "none"]), default="batch",
              show_default=True, help="Durability of the three FLUs.")
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Parent of the temporary data dirs [default: the system temp dir].")
@click.option("--chain-manager", is_flag=True,
              help="Let the daemons' chain managers form the chain (Humming Consensus) "
                   "instead of installing the projections by hand.")
def demo(appends: int, concurrency: int, seed: int, sync: str, data_dir: Path | None,
         chain_manager: bool) -> None:
    """Start 3 FLUs on 127.0.0.1, chain them, append/read/verify, show the error paths,
    stop them (exit 0 only when every check passed)."""
    from machi.bench.demo import DemoOptions, run_demo

    opts = DemoOptions(appends=appends, concurrency=concurrency, seed=seed, sync=sync,
                       data_dir=data_dir, chain_manager=chain_manager)

    def say(line: str) -> None:
        click.echo(line)

    sys.exit(run_demo(opts, say))
