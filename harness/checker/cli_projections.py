"""``machi-harness check-projections``: projection safety and convergence of a run's logs.

Owns reading the per-node projection logs (JSON Lines, ``docs/history-write-once.md``)
and printing the verdict of ``projection_safety.check_projection_logs``. It must not
check anything itself.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from harness.checker.projection_safety import check_projection_logs
from harness.checker.result import exit_code

USAGE_EXIT = 254


def _read(path: Path) -> list[dict[str, Any]]:
    out = []
    with path.open("r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                if not line.endswith("\n"):
                    break  # a torn last line: the node crashed while writing it
                raise click.UsageError(f"{path}:{lineno}: invalid JSON: {exc}") from None
            out.append(rec)
    return out


@click.command("check-projections")
@click.option(
    "--mode",
    type=click.Choice(["ap", "cp"]),
    default=None,
    help="Chain mode for records that do not say (default ap).",
)
@click.option("--members", default=None, help="Comma-separated all_members (default: names seen).")
@click.option(
    "--heal-time",
    type=int,
    default=None,
    help="When faults were healed (log time units): also report convergence.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.argument(
    "logs", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
def check_projections(
    mode: str | None,
    members: str | None,
    heal_time: int | None,
    as_json: bool,
    logs: tuple[Path, ...],
) -> None:
    """Check per-node projection LOGS (records of every node, in each node's order):
    increasing epochs, sane transitions, no node in two UPIs per epoch, CP single
    confirmation per epoch; exit 0 safe, 1 unsafe, 254 bad input."""
    try:
        records = [rec for path in logs for rec in _read(path)]
    except click.UsageError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(USAGE_EXIT)
    all_members = [m for m in members.split(",") if m] if members else None
    result = check_projection_logs(records, mode=mode, all_members=all_members, heal_time=heal_time)
    malformed = (result.witness or {}).get("anomalies", {}).get("malformed")
    if as_json:
        click.echo(json.dumps({"files": [str(p) for p in logs], **result.to_json()}))
    else:
        verdict = "safe" if result.valid is True else "UNSAFE" if result.valid is False else "?"
        click.echo(
            f"{verdict}: {result.ops} records, {result.keys} nodes, "
            f"{result.stats['transitions_checked']} transitions checked"
        )
        for kind, a in ((result.witness or {}).get("anomalies") or {}).items():
            click.echo(f"  {kind}: {a['count']}  e.g. {a['examples'][0].get('explanation')}")
        conv = (result.witness or {}).get("convergence")
        if conv is not None:
            click.echo(f"  convergence: {json.dumps(conv)}")
    if malformed:
        sys.exit(USAGE_EXIT)
    sys.exit(exit_code(result.valid))
