"""The ``machi`` command: one click entry point, one module per sub-command group.

Each module owns its commands and calls library code; no protocol or storage logic lives
here.
"""

from __future__ import annotations

import click

from machi import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="machi")
def main() -> None:
    """Machi-py: write-once blob store on Chain Replication and Humming Consensus."""


def _register() -> None:
    from machi.cli import bench, chain, chain_io, demo, flu, node, projection, sim

    main.add_command(node.node)
    main.add_command(flu.flu)
    main.add_command(projection.projection)
    main.add_command(bench.bench)
    main.add_command(sim.sim)
    main.add_command(demo.demo)
    main.add_command(chain_io.append)
    main.add_command(chain_io.read)
    main.add_command(chain.chain)


_register()
