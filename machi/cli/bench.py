"""`machi bench ...` commands: argument parsing and output only; the benchmarks live in
``machi.bench``."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from types import FrameType

import click

from machi.bench.stats import parse_size


@click.group()
def bench() -> None:
    """Benchmarks (print numbers as JSON; nothing is asserted)."""


def _csv(kind: str, text: str) -> tuple[str, ...]:
    items = tuple(x.strip() for x in text.split(",") if x.strip())
    if not items:
        raise click.BadParameter(f"want a comma-separated list of {kind}")
    return items


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through the cleanup of the daemons and data dirs


@bench.command("flu")
@click.option("--server", help="HOST:PORT of a running FLU (default: start our own).")
@click.option("--sync", "sync_modes", default="always,batch,none", show_default=True,
              help="Sync modes to start daemons with (ignored with --server).")
@click.option("--sizes", default="4KiB,1MiB", show_default=True, help="Chunk sizes.")
@click.option("--concurrency", default="1,8,32", show_default=True,
              help="Requests in flight on the one pipelined connection.")
@click.option("--duration-s", type=float, default=None,
              help="Seconds per cell (appends, then reads) and per baseline test "
                   "[default: 2, or 0.3 with --quick].")
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Where the temporary dir for the baseline and the daemons' data goes "
                   "[default: the system temp dir].")
@click.option("--quick", is_flag=True, help="Short smoke run: 0.3 s cells, concurrency 1,8.")
@click.option("--json", "json_only", is_flag=True, help="Print only the JSON object.")
def flu(server: str | None, sync_modes: str, sizes: str, concurrency: str,
        duration_s: float | None, data_dir: Path | None, quick: bool, json_only: bool) -> None:
    """Append/read throughput and latency of one FLU against the raw disk baseline."""
    from machi.bench.flu import BenchError, BenchPlan, format_table, run_bench

    try:
        size_list = tuple(parse_size(s) for s in _csv("sizes", sizes))
        conc = tuple(int(c) for c in _csv("integers", concurrency))
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    if quick and concurrency == "1,8,32":
        conc = (1, 8)
    duration = duration_s if duration_s is not None else (0.3 if quick else 2.0)
    plan = BenchPlan(
        sync_modes=_csv("sync modes", sync_modes), sizes=size_list, concurrency=conc,
        duration_s=duration, baseline_s=duration, data_dir=data_dir, server=server,
    )

    def progress(line: str) -> None:
        click.echo(line, err=True)

    old = signal.signal(signal.SIGTERM, _sigterm)
    try:
        result = run_bench(plan, progress)
    except BenchError as e:
        click.echo(f"bench error: {e}", err=True)
        sys.exit(2)
    except Exception as e:  # e.g. a MachiError from a worker, inside an ExceptionGroup
        while isinstance(e, ExceptionGroup) and e.exceptions:
            e = e.exceptions[0]
        click.echo(f"bench failed: {type(e).__name__}: {e}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("interrupted; daemons stopped", err=True)
        sys.exit(130)
    finally:
        signal.signal(signal.SIGTERM, old)
    if not json_only:
        click.echo(format_table(result))
    click.echo(json.dumps(result, indent=None if json_only else 2))


@bench.command("chain")
@click.option("--members", help="n1=HOST:PORT,...: a running chain (default: start our own; "
                                "no faults are injected into a given chain).")
@click.option("--nodes", type=click.IntRange(2, 9), default=3, show_default=True,
              help="Daemons in our own chain.")
@click.option("--sync", "sync_modes", default="batch,none", show_default=True,
              help="Sync modes to start the daemons with (a fresh chain each).")
@click.option("--sizes", default="4KiB,1MiB", show_default=True, help="Chunk sizes.")
@click.option("--concurrency", default="1,8,32,128", show_default=True,
              help="Appends in flight through the one ChainClient.")
@click.option("--duration-s", type=float, default=None,
              help="Seconds per cell and per baseline test [default: 2, or 0.3 with --quick].")
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Parent of the temporary dir for the baseline and the daemons' data.")
@click.option("--no-faults", is_flag=True, help="Skip the kill/restart/pause phases.")
@click.option("--faults-only", is_flag=True,
              help="Only the kill/restart/pause phases on a fresh local chain (first sync "
                   "mode): no append cells, no baselines.")
@click.option("--batch-max-chunks", type=click.IntRange(1, 1024), default=64,
              show_default=True,
              help="ChainClient natural batching: most chunks per request (1 = off).")
@click.option("--batches-in-flight", type=click.IntRange(1, 64), default=2, show_default=True,
              help="ChainClient natural batching: batches in flight per prefix (K).")
@click.option("--fast-timers", is_flag=True,
              help="Run our daemons with the tests' short chain-manager timers "
                   "(FAST_CHAIN_TOML) instead of the shipped defaults.")
@click.option("--node-toml", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Extra node config keys for our daemons (e.g. chain_* timers), after "
                   "--fast-timers.")
@click.option("--quick", is_flag=True, help="Short smoke run: 0.3 s cells, concurrency 1,8.")
@click.option("--json", "json_only", is_flag=True, help="Print only the JSON object.")
def chain(members: str | None, nodes: int, sync_modes: str, sizes: str, concurrency: str,
          duration_s: float | None, data_dir: Path | None, no_faults: bool,
          faults_only: bool, batch_max_chunks: int, batches_in_flight: int,
          fast_timers: bool, node_toml: Path | None, quick: bool, json_only: bool) -> None:
    """Appends through ChainClient on a self-managing chain, convergence after a kill, a
    restart and a SIGSTOP/SIGCONT, next to the single-FLU and raw disk baselines.  Our
    daemons run the shipped chain-manager timers unless --fast-timers / --node-toml.
    Exit 3 (after printing the JSON) when a fault phase did not converge."""
    from machi.bench.chain import ChainPlan, format_table, run_chain_bench, run_chain_faults
    from machi.bench.flu import BenchError
    from machi.cli.chain_io import parse_members
    from machi.core.errors import ConfigError
    from machi.node.config import FAST_CHAIN_TOML

    try:
        size_list = tuple(parse_size(s) for s in _csv("sizes", sizes))
        conc = tuple(int(c) for c in _csv("integers", concurrency))
        seeds = parse_members(members) if members is not None else None
        extra = node_toml.read_text() if node_toml is not None else ""
    except (ValueError, ConfigError, OSError, UnicodeDecodeError) as e:
        raise click.BadParameter(str(e)) from None
    toml = (FAST_CHAIN_TOML if fast_timers else "") + extra
    if quick and concurrency == "1,8,32,128":
        conc = (1, 8)
    duration = duration_s if duration_s is not None else (0.3 if quick else 2.0)
    plan = ChainPlan(members=seeds, nodes=nodes, sync_modes=_csv("sync modes", sync_modes),
                     sizes=size_list, concurrency=conc, duration_s=duration,
                     baseline_s=duration, data_dir=data_dir, faults=not no_faults,
                     batch_max_chunks=batch_max_chunks, batches_in_flight=batches_in_flight,
                     node_toml=toml)

    def progress(line: str) -> None:
        click.echo(line, err=True)

    old = signal.signal(signal.SIGTERM, _sigterm)
    try:
        result = (run_chain_faults if faults_only else run_chain_bench)(plan, progress)
    except BenchError as e:
        click.echo(f"bench error: {e}", err=True)
        sys.exit(2)
    except Exception as e:  # e.g. a MachiError from a worker, inside an ExceptionGroup
        while isinstance(e, ExceptionGroup) and e.exceptions:
            e = e.exceptions[0]
        if isinstance(e, BenchError):
            click.echo(f"bench error: {e}", err=True)
            sys.exit(2)
        click.echo(f"bench failed: {type(e).__name__}: {e}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("interrupted; daemons stopped", err=True)
        sys.exit(130)
    finally:
        signal.signal(signal.SIGTERM, old)
    if not json_only and not faults_only:
        click.echo(format_table(result))
    click.echo(json.dumps(result, indent=None if json_only else 2))
    if "error" in result["convergence"]:
        sys.exit(3)  # the chain did not settle: a result worth a non-zero exit
