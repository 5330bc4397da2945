"""`machi-harness test | analyze | serve`: a Jepsen-style run, a re-check, the report server.

    machi-harness test --hosts netns --nodes 3 --mode cp --nemesis partition,kill \\
        --time-limit 20 --concurrency 2n --seed 1
    machi-harness analyze store/chunks/latest
    machi-harness serve --port 8080          # 127.0.0.1 only

With `--hosts netns` the command brings a netns cluster up when none is (or reuses the one
that is, if it has the same number of nodes), then re-executes itself inside the control
namespace.  Owns the command-line surface only; the run is `harness.run`.  Must not talk to
10.77.0.0/24 from the root namespace or print a traceback for an expected failure.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import sys
from pathlib import Path

import click

from harness.checker.cli_check import USAGE_EXIT
from harness.deploy import CANARIES
from harness.hosts import netns
from harness.hosts.providers import PROVIDERS, open_hosts
from harness.nemesis.schedule import FAULTS

NEMESIS_DEFAULT = "partition,kill"

#: exit status when the run could not be made: hosts unreachable, a bad hosts file, a
#: failed deploy or bootstrap, a netns cluster that cannot be brought up
COULD_NOT_RUN_EXIT = 3
EXIT_HELP = ("Exit status: 0 valid, 1 invalid, 2 unknown, 3 could not run (hosts, "
             f"deploy, configuration), {USAGE_EXIT} usage error (bad options; as "
             "`machi-harness check`), 130 interrupted.")


class _HarnessCommand(click.Command):
    """A click command whose usage errors (parsing and BadParameter raised by the command
    itself) exit with USAGE_EXIT, like `machi-harness check`, not click's 2 (= unknown)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            exc.exit_code = USAGE_EXIT
            raise

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            exc.exit_code = USAGE_EXIT
            raise


class CouldNotRun(click.ClickException):
    """The run could not be made; one line on stderr, exit 3."""

    exit_code = COULD_NOT_RUN_EXIT

    def __init__(self, what: str, e: BaseException | None = None) -> None:
        from harness.run import one_line

        super().__init__(f"could not run: {what}" + (f": {one_line(e)}" if e else ""))

    def show(self, file: object = None) -> None:
        click.echo(self.format_message(), err=True)


def _concurrency(text: str, nodes: int) -> int:
    t = text.strip()
    try:
        n = int(t[:-1]) * nodes if t.endswith("n") else int(t)
    except ValueError:
        raise click.BadParameter(f"want N or Kn (K x nodes), got {text!r}") from None
    if not 1 <= n <= 1000:
        raise click.BadParameter(f"concurrency must be in [1, 1000], got {n}")
    return n


@click.command("test", cls=_HarnessCommand, epilog=EXIT_HELP)
@click.option("--hosts", "provider", type=click.Choice(PROVIDERS), default="netns",
              show_default=True, help="Where the nodes run.")
@click.option("--hosts-file", type=click.Path(dir_okay=False), default=None,
              help="TOML list of hosts (--hosts ssh).")
@click.option("--nodes", type=click.IntRange(1, netns.NODES_MAX), default=5, show_default=True)
@click.option("--mode", type=click.Choice(["ap", "cp"]), default="cp", show_default=True)
@click.option("--witnesses", type=click.IntRange(0, 16), default=0, show_default=True)
@click.option("--workload", type=click.Choice(["chunks"]), default="chunks", show_default=True)
@click.option("--nemesis", default=NEMESIS_DEFAULT, show_default=True,
              help=f"Comma-separated subset of {','.join(FAULTS)} (or 'none').  A schedule "
              "with crash (every node killed at once) starts with it.  Without --nemesis, "
              "--canary ack-before-sync adds crash (recorded as options.nemesis_for_canary).")
@click.option("--time-limit", type=click.FloatRange(1, 86400), default=60, show_default=True,
              help="Seconds of client load (faults during it; heal and read-back follow).")
@click.option("--concurrency", default="2n", show_default=True, help="Clients: N or Kn.")
@click.option("--rate", type=click.FloatRange(0), default=0, show_default=True,
              help="Ops per second, all clients together (0 = unthrottled).")
@click.option("--mix", default="append=0.6,read=0.4", show_default=True,
              help="Op weights: append, read, write (writes at chosen positions).")
@click.option("--seed", type=int, default=None, help="Schedule seed [default: random].")
@click.option("--leave-running", is_flag=True, help="Do not stop the daemons at the end.")
@click.option("--canary", type=click.Choice(CANARIES), default=None,
              help="TEST ONLY: break one guarantee on purpose (the run must be invalid).  "
              "The default run of a canary is `test --canary X [--time-limit T]`.")
@click.option("--store", type=click.Path(file_okay=False), default="store", show_default=True)
@click.option("--state-dir", type=click.Path(file_okay=False), default=None,
              help="netns state directory [default: $MACHI_NETNS_STATE_DIR or /run/machi-netns]")
@click.option("--python", default=None,
              help="Interpreter on the hosts [netns: this one; vagrant: /opt/machi/venv; "
              "ssh: python3, dependencies installed with the wheel]")
@click.option("--install-deps/--no-install-deps", default=None,
              help="Install the wheel's dependencies on the hosts from the package index "
              "[default: yes for ssh, no otherwise]; --no-install-deps when the hosts' "
              "--python already has them (e.g. hosts without internet access).")
@click.option("--chain-fast", is_flag=True,
              help="Shorter chain manager timers (quicker recovery in short runs).")
def test(provider: str, hosts_file: str | None, nodes: int, mode: str, witnesses: int,
         workload: str, nemesis: str, time_limit: float, concurrency: str, rate: float,
         mix: str, seed: int | None, leave_running: bool, canary: str | None, store: str,
         state_dir: str | None, python: str | None, install_deps: bool | None,
         chain_fast: bool) -> None:
    """Deploy, run clients under a nemesis, heal, read back, check, report."""
    import random

    from harness.deploy import CANARIES_IMPLEMENTED
    from harness.run import TestOptions, run_test

    if canary and canary not in CANARIES_IMPLEMENTED:
        raise click.UsageError(f"canary {canary} is not implemented yet "
                               f"(have: {', '.join(CANARIES_IMPLEMENTED)})")
    faults = tuple(f for f in nemesis.split(",") if f and f != "none")
    # the default run of a canary: the default nemesis plus the faults the canary needs
    # (a crash: the schedule starts with it); an explicit --nemesis is taken as given
    nemesis_given = (click.get_current_context().get_parameter_source("nemesis")
                     is not click.core.ParameterSource.DEFAULT)
    added: tuple[str, ...] = ()
    if canary and not nemesis_given:
        from harness.canary import CANARY_FAULTS

        added = tuple(f for f in CANARY_FAULTS.get(canary, ()) if f not in faults)
        faults = (*faults, *added)
    bad = set(faults) - set(FAULTS)
    if bad:
        raise click.BadParameter(f"unknown faults {sorted(bad)}", param_hint="--nemesis")
    try:
        mix_w = {k.strip(): float(v) for k, v in (x.split("=") for x in mix.split(",") if x)}
    except ValueError:
        raise click.BadParameter(f"want op=weight,..., got {mix!r}", param_hint="--mix") from None
    if not mix_w or set(mix_w) - {"append", "read", "write"}:
        raise click.BadParameter(f"ops are append, read, write; got {mix!r}", param_hint="--mix")
    _concurrency(concurrency, nodes)  # a usage error before any netns cluster is made
    if seed is None:
        seed = random.SystemRandom().randrange(2**31)
    sd = Path(state_dir) if state_dir else None
    if provider == "netns" and not netns.in_control_namespace():
        try:
            _netns_ready(nodes, sd)
        except netns.NetnsError as e:
            raise CouldNotRun("netns cluster", e) from e
        args = sys.argv[1:]
        if "--seed" not in args:
            args = [*args, "--seed", str(seed)]  # the re-exec'd run uses the same seed
        if "--store" not in args:
            args = [*args, "--store", str(Path(store).resolve())]
        netns.reexec_in_control_ns(args)
    try:
        hosts = open_hosts(provider, hosts_file=hosts_file, state_dir=sd, nodes=nodes)
    except Exception as e:  # a bad hosts file, no cluster, vagrant missing: one line
        raise CouldNotRun(f"{provider} hosts", e) from e
    names = hosts.names
    if python is None:
        python = {"netns": sys.executable, "vagrant": "/opt/machi/venv/bin/python"}.get(
            provider, "python3")
    chain_config: dict[str, int] = {}
    if chain_fast:
        chain_config = {"chain_tick_base_ms": 200, "chain_tick_spread_ms": 400,
                        "chain_stability_time_ms": 1000}
    opts = TestOptions(
        name=f"{workload}-{mode}", provider=provider, nodes=len(names), mode=mode,
        witnesses=witnesses, nemesis=faults, time_limit_s=time_limit,
        concurrency=_concurrency(concurrency, len(names)), rate_per_s=rate, seed=seed,
        canary=canary, leave_running=leave_running, store=store, chain_config=chain_config,
        python=python, deps=provider == "ssh" if install_deps is None else install_deps,
        mix=mix_w, nemesis_for_canary=added,
    )
    if not faults:
        opts.nemesis = ()
    click.echo(f"seed {seed}: {opts.nodes} nodes ({provider}), {mode}, nemesis "
               f"{','.join(faults) or 'none'}, {time_limit:g} s, {opts.concurrency} clients"
               + (f", CANARY {canary}" if canary else "")
               + (f" (nemesis +{','.join(added)} for the canary)" if added else ""), err=True)
    try:
        with hosts:
            code, out = run_test(hosts, opts)
    except KeyboardInterrupt:
        click.echo("interrupted: nemesis rules flushed, daemons stopped, logs downloaded",
                   err=True)
        sys.exit(130)
    except Exception as e:  # a harness bug: the traceback, then the one-line verdict
        import traceback

        traceback.print_exc()
        raise CouldNotRun("harness error", e) from e
    run = json.loads((out / "run.json").read_text())
    if code == COULD_NOT_RUN_EXIT:
        click.echo(f"report: {out / 'index.html'}")
        raise CouldNotRun("setup failed", RuntimeError(run.get("setup_error")))
    if run.get("run_error"):  # the load ran, the run could not be finished: unknown
        click.echo(f"run error: {run['run_error']}", err=True)
    verdict = {0: "valid", 1: "INVALID", 2: "unknown"}[code]
    click.echo(f"verdict: {verdict}")
    click.echo(f"report: {out / 'index.html'}")
    sys.exit(code)


def _netns_ready(nodes: int, state_dir: Path | None) -> None:
    sd = state_dir or netns.state_dir_default()
    state = netns.load_state(sd)
    if state and not state.get("corrupt"):
        have = len(state.get("nodes", []))
        if have < nodes:
            raise CouldNotRun(
                f"a netns cluster with {have} nodes is up ({sd}); run "
                "`machi-harness cluster down` first or ask for fewer nodes")
        return
    why = netns.preflight()
    if why:
        raise CouldNotRun(f"netns hosts need root and `ip netns`: {why}")
    click.echo(f"bringing up a {nodes}-node netns cluster ({sd})", err=True)
    netns.cluster_up(nodes, state_dir=sd)
    netns.call_in_control_ns("harness.cli_cluster:_netns_check", {"state_dir": str(sd)})


@click.command("analyze", cls=_HarnessCommand)
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
def analyze(run_dir: str) -> None:
    """Re-check a stored run (history, projection logs); rewrite results.json, index.html."""
    from harness.checker.result import exit_code
    from harness.run import analyze as do

    results = do(Path(run_dir))
    code = exit_code(results["valid"])
    click.echo(f"verdict: {({0: 'valid', 1: 'INVALID', 2: 'unknown'})[code]}")
    for name, c in results["checks"].items():
        click.echo(f"  {name}: {c.get('valid')}")
    click.echo(f"report: {Path(run_dir) / 'index.html'}")
    sys.exit(code)


@click.command("serve", cls=_HarnessCommand)
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option("--store", type=click.Path(file_okay=False), default="store", show_default=True)
def serve(port: int, store: str) -> None:
    """Serve the store folder (reports) on http://127.0.0.1:PORT/."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=store)
    with http.server.ThreadingHTTPServer(("127.0.0.1", port), handler) as srv:
        click.echo(f"serving {Path(store).resolve()} on http://127.0.0.1:{port}/")
        with contextlib.suppress(KeyboardInterrupt):
            srv.serve_forever()
