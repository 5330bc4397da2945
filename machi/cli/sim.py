"""`machi sim ...` commands."""

from __future__ import annotations

import click


@click.group()
def sim() -> None:  # replaced by a command when the simulator lands
    """sim commands."""
