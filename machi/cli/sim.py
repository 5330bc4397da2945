"""`machi sim`: run the deterministic simulator (machi.sim) from one seed.

Owns argument checking and output formatting (JSON lines, or one fixed-column line per
state change); the simulation itself lives in ``machi.sim.run``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from machi.core.projection import valid_name


def _names(value: str, what: str) -> list[str]:
    out = [v.strip() for v in value.split(",") if v.strip()] if value else []
    for n in out:
        if not valid_name(n):
            raise click.BadParameter(f"bad node name {n!r}", param_hint=what)
    if len(set(out)) != len(out):
        raise click.BadParameter("duplicate node names", param_hint=what)
    return out


@click.command()
@click.option("--nodes", required=True, help="Comma-separated node names, e.g. a,b,c.")
@click.option("--mode", type=click.Choice(["ap", "cp"]), required=True)
@click.option("--witnesses", default="", help="CP only: comma-separated witness nodes.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--scenario", type=click.Path(exists=True, dir_okay=False),
    help='JSON list of phases {"partitions": [["a","b"], ...], "ticks": T}; '
    "default: random phases from the seed.",
)
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of text.")
@click.option("--no-clients", is_flag=True, help="Do not run simulated clients.")
@click.option(
    "--heal-ticks-max", type=click.IntRange(1, 10**7), default=None,
    help="Ticks allowed after the heal to converge (stable for 500 ticks), default "
    "30000; past that the run ends not converged (exit 1).",
)
def sim(
    nodes: str, mode: str, witnesses: str, seed: int, scenario: str | None, as_json: bool,
    no_clients: bool, heal_ticks_max: int | None,
) -> None:
    """Run N chain managers, in-memory FLUs and clients over one-way links, from a seed.

    Exit status 0 only when no invariant was violated and the chain converged after
    every partition was healed.
    """
    from machi.sim.run import HEAL_TICKS_MAX, load_scenario, run

    names = _names(nodes, "--nodes")
    if not names:
        raise click.BadParameter("need at least one node", param_hint="--nodes")
    wit = _names(witnesses, "--witnesses")
    if any(w not in names for w in wit):
        raise click.BadParameter("witnesses must be nodes", param_hint="--witnesses")
    if wit and mode != "cp":
        raise click.BadParameter("witnesses are only allowed in cp mode", param_hint="--witnesses")
    if len(wit) >= len(names):
        raise click.BadParameter("need at least one non-witness node", param_hint="--witnesses")
    phases = None
    if scenario is not None:
        try:
            phases = load_scenario(scenario, names)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--scenario") from None

    def out(line: str) -> None:
        sys.stdout.write(line + "\n")

    def on_adopt(rec: dict[str, Any]) -> None:
        if as_json:
            out(json.dumps(rec, sort_keys=True))
        else:
            out(
                f"{rec['tick']:>8} {rec['node']:<6} adopt   epoch={rec['epoch']:<6} "
                f"{rec['epoch_csum'][:8]} author={rec['author']:<6} upi={rec['upi']} "
                f"repairing={rec['repairing']} down={rec['down']}"
            )

    result = run(
        names, mode=mode,  # type: ignore[arg-type]
        seed=seed, witnesses=wit, phases=phases, clients=not no_clients, on_adopt=on_adopt,
        on_change=None if as_json else out,
        heal_ticks_max=heal_ticks_max or HEAL_TICKS_MAX,
    )
    if as_json:
        out(json.dumps(result.final_json(), sort_keys=True))
    else:
        out(
            f"{'':>8} {'-':<6} converged={result.converged} "
            f"ticks_to_converge={result.ticks_to_converge} "
            f"violations={len(result.violations)} lost_acked_writes={result.lost_acked_writes} "
            f"stats={result.stats}"
        )
        for v in result.violations:
            out(f"{'':>8} {'-':<6} VIOLATION {v}")
    sys.stdout.flush()
    if not result.ok:
        sys.exit(1)
