"""`machi projection ...` commands."""

from __future__ import annotations

import click


@click.group()
def projection() -> None:
    """projection commands."""
