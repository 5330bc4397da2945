"""`machi node ...` commands."""

from __future__ import annotations

import click


@click.group()
def node() -> None:
    """node commands."""
