"""`machi flu ...` commands."""

from __future__ import annotations

import click


@click.group()
def flu() -> None:
    """flu commands."""
