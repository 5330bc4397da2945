"""The ``machi-harness`` command: one click entry point; sub-commands live in their modules."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def main() -> None:
    """Jepsen-style test harness and history checkers for Machi-py."""


def _register() -> None:
    import importlib

    # Each entry: (module, attribute).  Listed explicitly so a broken module fails loudly.
    for mod, attr in _COMMANDS:
        main.add_command(getattr(importlib.import_module(mod), attr))


_COMMANDS: list[tuple[str, str]] = [
    ("harness.checker.cli_check", "check"),
    ("harness.checker.cli_check", "convert"),
    ("harness.checker.bench", "bench_check"),
    ("harness.checker.cli_projections", "check_projections"),
    ("harness.cli_cluster", "cluster"),
    ("harness.cli_test", "test"),
    ("harness.cli_test", "analyze"),
    ("harness.cli_test", "serve"),
]

_register()
