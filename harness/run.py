"""One harness run end to end: deploy, clients + nemesis, heal, final read-back, teardown,
checks, results and report -- and `analyze`, which re-checks a stored run.

Owns: the run's store folder `store/<test>/<timestamp>/` (`latest` link): `run.json`
(options, seed, schedule; written first), `history.jsonl` (incremental), `harness.log`,
`final.json` (read-back, epoch ids seen per node), `status.jsonl` (the ~1 s CHAIN_STATUS
polls), `nodes/<n>/{node.log,metrics.txt,
projection-log.jsonl}`, `results.json` (every checker's verdict, op counts, convergence,
warnings) and `index.html`; the run-level rules (`epoch_unique`, AP stale reads tolerated
only near faults, CP divergent chunks; docs/harness-run.md); the wiring of the
nemesis executor to the schedule clock; the combined verdict and its exit status
(0 valid, 1 invalid, 2 unknown).

Must not: run from outside the control namespace with netns hosts (the CLI re-execs first),
leave nemesis rules, paused or dead daemons behind (heal_all, IptablesNet's exit), or
decide a verdict itself (the checkers do; this module only combines them).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import anyio
import anyio.to_thread

from harness.checker.coverage import Fault
from harness.deploy import ANTI_ENTROPY_WAIT_S, DAEMON, DeployError, Deployment, DeployOptions
from harness.history import HistoryWriter
from harness.hosts.base import HostError, HostSet, MultiHostError
from harness.nemesis.executor import NemesisExecutor
from harness.nemesis.partition import IptablesNet, PartitionError
from harness.nemesis.process import ProcessNemesis
from harness.nemesis.schedule import KILL_ROLES, FaultEvent, ScheduleOptions, make_schedule
from harness.workload import Recorder, Workload, WorkloadOptions
from machi.core.errors import ConfigError

STORE_DEFAULT = Path("store")
FINAL_STABLE_TIMEOUT_S = 60.0
EPOCHS_SEEN_MAX = 10_000  # epoch numbers remembered for the epoch_unique check
STATUS_LINES_MAX = 100_000  # status.jsonl lines (one per ~1 s poll)
#: write-once anomalies that AP mode allows during partitions (stale reads)
AP_STALE_KINDS = frozenset({"unwritten-after-ack", "unwritten-after-read"})
#: AP: stale reads are tolerated while a fault is active and this long after it ends (the
#: sides merge again: measured 0.4-17.6 s to converge after a heal on netns)
AP_SETTLE_MS = 20_000
#: what a run's partitions are drawn from: the fixed shapes and the chain roles, chosen
#: at run time from the polled chain status (a role with no node, e.g. no repairing node
#: now, is skipped and recorded so)
RUN_PARTITION_KINDS = (*ScheduleOptions().partition_kinds, "isolate-head", "isolate-tail",
                       "isolate-middle", "isolate-repairing")
#: exit status of a run that could not be made (hosts, deploy, configuration); the
#: checkers' statuses are 0 valid, 1 invalid, 2 unknown
COULD_NOT_RUN_EXIT = 3
#: what makes a run impossible (or unfinishable) rather than a bug of the harness
SETUP_ERRORS = (DeployError, HostError, MultiHostError, ConfigError, PartitionError, OSError)
log = logging.getLogger("harness.run")


@dataclass
class TestOptions:
    """Everything a run is made of (recorded in run.json / results.json)."""

    name: str = "chunks"
    provider: str = "netns"
    nodes: int = 3
    mode: str = "cp"
    witnesses: int = 0
    nemesis: tuple[str, ...] = ("partition", "kill")
    time_limit_s: float = 20.0
    concurrency: int = 6
    rate_per_s: float = 0.0
    seed: int = 0
    canary: str | None = None
    leave_running: bool = False
    store: str = str(STORE_DEFAULT)
    chain_config: dict[str, Any] = field(default_factory=dict)
    python: str = sys.executable  # interpreter on the hosts
    deps: bool = False  # install the wheel's dependencies on the hosts too
    mix: dict[str, float] = field(default_factory=lambda: {"append": 0.6, "read": 0.4})
    #: faults added to the default nemesis for the canary (`--canary` without
    #: `--nemesis`); a schedule with a crash starts with it
    nemesis_for_canary: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["nemesis"] = list(self.nemesis)
        d["nemesis_for_canary"] = list(self.nemesis_for_canary)
        d["test_canary"] = self.canary
        return d


def new_store_dir(store: Path, test: str) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"-{os.getpid()}"
    d = store / test / stamp
    d.mkdir(parents=True)
    latest = store / test / "latest"
    tmp = store / test / f".latest.{os.getpid()}"
    if tmp.is_symlink():
        tmp.unlink()
    tmp.symlink_to(stamp)
    tmp.replace(latest)
    return d


def _setup_log(path: Path) -> logging.Handler:
    h = logging.FileHandler(path)
    h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(h)
    root.setLevel(logging.INFO)
    return h


class Runner:
    """Drives one run on an open HostSet (already inside the control namespace)."""

    def __init__(self, hosts: HostSet, opts: TestOptions, out: Path,
                 progress: Callable[[str], None] | None = None) -> None:
        self.hosts = hosts
        self.opts = opts
        self.out = out
        self.progress = progress or (lambda s: None)
        self.dep = Deployment(hosts, DeployOptions(
            mode=opts.mode, witnesses=opts.witnesses, run_id=out.name,
            config=dict(opts.chain_config), python=opts.python, deps=opts.deps,
            canary=opts.canary))
        self.schedule: list[FaultEvent] = make_schedule(
            opts.seed, hosts.names, ScheduleOptions(
                time_limit_s=opts.time_limit_s, faults=tuple(opts.nemesis),
                partition_kinds=RUN_PARTITION_KINDS,
                # a run with a crash starts with it (the run that --canary ack-before-sync
                # makes and its clean twin with --nemesis partition,kill,crash are the same)
                required=("crash",) if "crash" in opts.nemesis else (),
                kill_roles=KILL_ROLES),
        ) if opts.nemesis else []
        self.status: dict[str, Any] = {}
        #: the ~1 s CHAIN_STATUS polls, one JSON line each (status.jsonl; the report draws
        #: each node's wedged periods from it)
        self.status_log: IO[str] | None = None
        self.status_lines = 0
        self.current_fault = ""
        self.faults: list[dict[str, Any]] = []
        #: node -> epoch number -> {projection checksum (hex): where it was first seen}
        self.epochs_seen: dict[str, dict[int, dict[str, str]]] = {}

    async def _read_projection_stores(self) -> dict[str, Any]:
        """Every node's public and private projection store, reduced to epoch ids (on one
        node, one epoch number names one projection: docs/harness-run.md)."""
        from machi.client.flu_client import FluClient

        errors: dict[str, str] = {}

        async def one(n: str) -> None:
            host, port = self.dep.members()[n]
            try:
                async with FluClient(host, port, timeout_ms=10_000, name="harness-final") as c:
                    for kind in ("public", "private"):
                        for p in (await c.projection_get_all(kind))[-EPOCHS_SEEN_MAX:]:
                            self._see_epoch(n, p.epoch_number, p.epoch_csum.hex(), kind)
            except Exception as e:  # an unreadable store is reported, not a verdict
                errors[n] = repr(e)

        async with anyio.create_task_group() as tg:
            for n in self.hosts.names:
                tg.start_soon(one, n)
        return {"errors": errors}

    def chain_view(self) -> tuple[list[str], list[str]]:
        for s in self.status.values():
            if isinstance(s, dict) and s.get("upi"):
                return list(s["upi"]), list(s.get("repairing", []))
        return list(self.hosts.names), []

    def run(self) -> dict[str, Any]:
        run_json: dict[str, Any] = {
            "options": self.opts.to_json(), "seed": self.opts.seed,
            "nodes": self.hosts.names, "schedule": [e.to_json() for e in self.schedule],
            "members": self.dep.members_meta(),
            # the harness's monotonic and wall clocks read together: projection-log lines
            # of hosts on other kernels are placed by their wall clock (on_harness_clock)
            "clock": {"monotonic_ms": int(time.monotonic() * 1000),
                      "unix_ms": int(time.time() * 1000)},
        }
        (self.out / "run.json").write_text(json.dumps(run_json, indent=1))
        info: dict[str, Any] = {"setup_error": None}
        phase = "setup"
        try:
            self.progress("deploying")
            self.dep.setup()
            info["setup_s"] = self.dep.setup_s
            log.info("deployed: %s", self.dep.setup_s)
            with IptablesNet(self.hosts) as net:
                phase = "run"
                procs = ProcessNemesis(self.hosts, DAEMON)
                ex = NemesisExecutor(net, procs, chain_view=self.chain_view,
                                     data_files=self.dep.data_files)
                with (HistoryWriter(self.out / "history.jsonl") as w,
                      (self.out / "status.jsonl").open("w") as status_log):
                    self.status_log = status_log
                    rec = Recorder(w, time.monotonic_ns())
                    info.update(anyio.run(self._main, ex, rec))
        except SETUP_ERRORS as e:
            # hosts unreachable, a failed install, a bad config: the run could not be made
            # (exit 3) -- or, once the load ran, could not be finished (unknown)
            info[f"{phase}_error"] = one_line(e)
            log.error("%s failed: %s", phase, e)
        finally:
            self.progress("teardown")
            try:
                info["teardown"] = self.dep.teardown(
                    self.out, leave_running=self.opts.leave_running)
            except Exception as e:  # reported; the daemons may be left running
                info["teardown"] = {"error": one_line(e)}
                log.exception("teardown failed")
        run_json.update(info)
        (self.out / "run.json").write_text(json.dumps(run_json, indent=1, default=str))
        return run_json

    def _see_epoch(self, node: str, epoch: Any, csum: Any, source: str) -> None:
        """Remember which projection (checksum) a node had at an epoch number, and where
        it was seen (status poll, public or private store)."""
        if not isinstance(epoch, int) or not isinstance(csum, str):
            return
        mine = self.epochs_seen.setdefault(node, {})
        at = mine.setdefault(epoch, {}) if len(mine) < EPOCHS_SEEN_MAX else mine.get(epoch)
        if at is not None and csum not in at:
            at[csum] = source

    async def _poll_status(self, stop: anyio.Event) -> None:
        while not stop.is_set():
            start_ms = int(time.monotonic() * 1000)
            self.status = await self.dep.status_all()
            for n, s in self.status.items():
                if isinstance(s, dict):
                    self._see_epoch(n, s.get("epoch"), s.get("epoch_csum"), "status")
            self._log_status(self.status, start_ms)
            with anyio.move_on_after(1.0):
                await stop.wait()

    def _log_status(self, status: dict[str, Any], start_ms: int | None = None) -> None:
        """One status.jsonl line per poll: harness monotonic ms when the poll started
        (`start_ms`) and when every answer was in (`time_ms`), wall-clock ms, per node the
        fields the report draws (or the error string of a node that did not answer), and
        `stable`: the epoch id [number, checksum hex] when every node answered with that
        one epoch id, confirmed, not wedged, every non-witness in the UPI and nothing
        repairing (else null; the AP stale-read rule judges reads between two such polls
        of one epoch: `stable_intervals`)."""
        if self.status_log is None or self.status_lines >= STATUS_LINES_MAX:
            return
        keep = ("wedged", "epoch", "confirmed", "upi", "repairing", "running")
        nodes = {n: ({k: s.get(k) for k in keep} if isinstance(s, dict) else {"error": s})
                 for n, s in sorted(status.items())}
        stable = None
        try:
            if (Deployment.stable(status, self.hosts.names, self.dep.witnesses)
                    and not any(isinstance(s, dict) and s.get("wedged")
                                for s in status.values())):
                s0 = status[self.hosts.names[0]]
                assert isinstance(s0, dict)
                stable = [s0["epoch"], s0["epoch_csum"]]
        except (KeyError, TypeError, AssertionError):  # an odd answer is not stable
            stable = None
        self.status_log.write(json.dumps({"time_ms": int(time.monotonic() * 1000),
                                          "start_ms": start_ms,
                                          "time_unix_ms": int(time.time() * 1000),
                                          "nodes": nodes, "stable": stable}) + "\n")
        self.status_log.flush()
        self.status_lines += 1

    async def _nemesis(self, ex: NemesisExecutor, rec: Recorder, wl: Workload) -> None:
        await wl.started.wait()  # the schedule's clock starts with the load's (first ok op)
        t0 = time.monotonic()
        for ev in self.schedule:
            await anyio.sleep(max(0.0, t0 + ev.time_s - time.monotonic()))
            self.current_fault = f"{ev.fault} {','.join(ev.targets)}"
            rec.event("nemesis", "info", ev.fault, {"targets": list(ev.targets),
                                                      "phase": "start"})
            try:
                record = await anyio.to_thread.run_sync(ex.apply, ev)
            except Exception as e:  # a failed fault is recorded, run goes on
                record = {"fault": ev.fault, "error": repr(e)}
                log.warning("nemesis %s failed: %r", ev.fault, e)
            rec.event("nemesis", "info", ev.fault, {**record, "phase": "done"})
            self.faults.append({"t_s": round(time.monotonic() - t0, 3), **record})
            if ev.fault in ("heal", "restart", "resume"):
                self.current_fault = ""

    async def _main(self, ex: NemesisExecutor, rec: Recorder) -> dict[str, Any]:
        o = self.opts
        from harness.canary import CLIENTS
        from machi.client.chain_client import ChainClient

        wopts = WorkloadOptions(concurrency=o.concurrency, time_limit_s=o.time_limit_s,
                                rate_per_s=o.rate_per_s, seed=o.seed, canary=o.canary,
                                mix=dict(o.mix))
        # daemon-side canaries (harness.deploy.DAEMON_CANARIES) keep the plain client
        cls: type[ChainClient] = CLIENTS.get(o.canary or "", ChainClient)
        members = self.dep.members()

        def factory(i: int) -> ChainClient:
            return cls(members, op_timeout_ms=wopts.op_timeout_ms, request_timeout_ms=3_000,
                       seed=o.seed * 1000 + i, name=f"c{i}")

        wl = Workload(rec, members, wopts, factory)
        t_start = time.monotonic()

        def show() -> None:
            n = sum(sum(c.values()) for c in rec.counts.values())
            ok = sum(c.get("ok", 0) for c in rec.counts.values())
            self.progress(f"t={time.monotonic() - t_start:5.1f}s ops={n} ok={ok} "
                          f"fault=[{self.current_fault or 'none'}]")

        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._poll_status, stop)
            async with anyio.create_task_group() as tg2:
                tg2.start_soon(self._nemesis, ex, rec, wl)
                tg2.start_soon(wl.run, show)
            # heal everything, then read back
            self.progress("healing")
            rec.event("nemesis", "info", "heal-all", {"phase": "start"})
            try:
                healed: dict[str, Any] = await anyio.to_thread.run_sync(ex.heal_all)
            except (PartitionError, HostError, MultiHostError) as e:
                # not proven healed: the final phase is judged unknown (final_phase)
                healed = {"error": one_line(e)}
                log.warning("final heal: %s", e)
            heal_ms = int(time.monotonic() * 1000)
            rec.event("nemesis", "info", "heal-all", {"phase": "done", "heal_time_ms": heal_ms,
                                                      **healed})
            self.progress("waiting for a stable chain")
            stable: dict[str, Any] | None = None
            try:
                stable = await self.dep.wait_stable(time.monotonic() + FINAL_STABLE_TIMEOUT_S)
            except DeployError as e:
                log.warning("final: %s", e)
            stable_ms = int(time.monotonic() * 1000)
            ae_wait: dict[str, Any] | None = None
            if stable is not None and o.mode == "ap":
                # an append whose reply was lost may sit on some replicas only while the
                # chain keeps its epoch: the tail's next anti-entropy pass merges it
                self.progress("waiting for two anti-entropy passes")
                ae_wait = await self.dep.wait_anti_entropy(
                    stable, time.monotonic() + ANTI_ENTROPY_WAIT_S)
                try:  # the status the final reads use: the chain may have moved since
                    stable = await self.dep.wait_stable(
                        time.monotonic() + FINAL_STABLE_TIMEOUT_S)
                except DeployError as e:
                    log.warning("final: %s", e)
                    stable = None
            final: dict[str, Any] = {"stable": stable is not None,
                                     "wait_stable_ms": stable_ms - heal_ms, "heal": healed}
            if ae_wait is not None:
                final["anti_entropy"] = ae_wait
            st = stable or await self.dep.status_all()
            s0 = next((s for s in st.values() if isinstance(s, dict) and s.get("upi")), None)
            if s0 is not None:
                from machi.core.epoch import EpochId

                eid = EpochId(int(s0["epoch"]), bytes.fromhex(s0["epoch_csum"]))
                replicas = [m for m in s0["upi"] if m not in s0.get("witnesses", [])]
                # CP: the UPI tail is what clients read; AP: every replica must hold
                # everything after repair (replicas_equal), no single authority
                authority: str | None = replicas[-1] if replicas else None
                if o.mode == "ap":
                    replicas = [m for m in self.hosts.names if m not in self.dep.witnesses]
                    authority = None
                self.progress(f"final reads from {replicas}")
                final.update(await wl.final_reads(eid, replicas, authority=authority))
            else:
                final["error"] = "no node reports a projection with a UPI"
            final["status"] = st
            self.progress("reading projection stores")
            final["projection_stores"] = await self._read_projection_stores()
            final["epochs_seen"] = {
                n: {str(e): v for e, v in sorted(es.items())}
                for n, es in sorted(self.epochs_seen.items())}
            final["end_time_ms"] = int(time.monotonic() * 1000)  # before any daemon stops
            stop.set()
        final["heal_time_ms"] = heal_ms
        final["counts"] = rec.counts
        (self.out / "final.json").write_text(json.dumps(final, indent=1, default=str))
        lat = [list(x) for x in rec.latencies]
        (self.out / "latencies.json").write_text(json.dumps(lat))
        return {"heal_time_ms": heal_ms, "faults": self.faults}


def run_test(hosts: HostSet, opts: TestOptions, *, verbose: bool = True) -> tuple[int, Path]:
    """Run, analyze, report; returns (exit status, store dir): 0 valid, 1 invalid, 2
    unknown, 3 could not run (`setup_error` in run.json and results.json)."""
    out = new_store_dir(Path(opts.store), opts.name)
    handler = _setup_log(out / "harness.log")

    def progress(s: str) -> None:
        if verbose:
            try:
                sys.stderr.write(f"\r\033[K{s}" if sys.stderr.isatty() else f"{s}\n")
                sys.stderr.flush()
            except OSError:  # e.g. the reader of a piped stderr is gone: keep running
                pass  # (a failing progress line must not skip the teardown)
        log.info("progress: %s", s)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old_term = signal.signal(signal.SIGTERM, on_term)  # SIGTERM cleans up like Ctrl-C
    try:
        run_json = Runner(hosts, opts, out, progress).run()
    finally:
        signal.signal(signal.SIGTERM, old_term)
        logging.getLogger().removeHandler(handler)
        handler.close()
    if verbose and sys.stderr.isatty():
        sys.stderr.write("\n")
    results = analyze(out)
    from harness.checker.result import exit_code

    if run_json.get("setup_error"):
        return COULD_NOT_RUN_EXIT, out
    return exit_code(results["valid"]), out


def one_line(e: BaseException, limit: int = 2000) -> str:
    """An error as one line (host errors carry stdout/stderr on several lines)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[:limit] + " ..."


# ---------------------------------------------------------------------------------------
# Analysis


def _jsonl(path: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if not path.exists():
        return out
    for line in path.read_bytes().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a torn last line
    return out


# A run's nemesis events: ``f`` is the fault, ``value.phase`` "start" (about to apply) or
# "done" (applied). A fault is active from its "done" to the "start" of what ends it.
_FAULT_CLASS = {"partition": "net", "loss": "net", "kill": "proc", "torn-write": "proc",
                "pause": "pause"}
_END_CLASS = {"heal": "net", "restart": "proc", "resume": "pause"}


def run_faults(events: list[dict[str, Any]]) -> list[Fault]:
    """Fault intervals (event index units) from a run history's nemesis events.

    A partition or loss lasts until the next ``heal``, a kill (or torn write) of a node until
    its ``restart``, a pause until its ``resume`` (the end's "start", or its "done" when no
    "start" was recorded); ``heal-all`` ends everything; a fault that failed to apply is no
    fault, nor is a crash (every node killed at once: nothing can succeed during it); one
    never ended lasts to the end of the history.
    """
    open_: dict[tuple[str, str], tuple[int, str]] = {}
    out: list[Fault] = []
    for ev in events:
        if ev.get("process") != "nemesis" or not isinstance(ev.get("index"), int):
            continue
        v = ev.get("value") if isinstance(ev.get("value"), dict) else {}
        f, idx = str(ev.get("f")), ev["index"]
        targets = [str(t) for t in v.get("targets") or []]
        if v.get("crash"):
            # every node killed at once: no op can succeed while it lasts, so it is no
            # coverage interval (what a crash tests is the recovery after the restart)
            continue
        if (f in _FAULT_CLASS and v.get("phase") == "done" and not v.get("error")
                and not v.get("skipped")):
            cls = _FAULT_CLASS[f]
            for t in (["*"] if cls == "net" else targets):
                open_.setdefault((cls, t), (idx, f))
        elif v.get("phase") in ("start", "done") and (f == "heal-all" or f in _END_CLASS):
            for key in list(open_):
                cls, t = key
                if f == "heal-all" or (cls == _END_CLASS[f] and (cls == "net" or t in targets)):
                    start, kind = open_.pop(key)
                    out.append(Fault(start, idx, kind))
    out.extend(Fault(start, None, kind) for start, kind in open_.values())
    return sorted(out, key=lambda flt: flt.start)


def _coverage_check(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The coverage guard as a check: unknown when an op kind never succeeded during a fault
    (final read-back excluded: it runs after heal-all by design)."""
    from harness.checker.coverage import guard, measure
    from harness.checker.result import UNKNOWN, CheckResult
    from harness.history import HistoryError, events_from_dicts, pair_ops

    try:
        ops = pair_ops(events_from_dicts(e for e in events if not e.get("final")))
        faults = run_faults(events)
    except (HistoryError, ValueError) as e:
        return {"valid": UNKNOWN, "witness": {"error": str(e)}}
    res = guard(CheckResult(True, "coverage", len(ops), 1), measure(ops, faults, unit="index"))
    return {"valid": res.valid, "witness": res.witness, **res.stats["coverage"]}


def _warnings(checks: dict[str, Any]) -> list[dict[str, Any]]:
    """What a rule tolerated (not in the verdict), with counts, so a person sees it."""
    out: list[dict[str, Any]] = []
    wo = checks.get("write_once") or {}
    stale = wo.get("ap_stale_reads") or {}
    calm = (wo.get("ap_calm_stale_reads") or {}).get("count", 0)
    tolerated = sum(stale.values()) - calm
    if tolerated > 0:
        out.append({"check": "write_once", "kind": "ap-stale-reads", "count": tolerated,
                    "text": "AP stale reads during faults or within the settle time after "
                            "one (tolerated: AP is eventually consistent)"})
    div = (checks.get("replicas_equal") or {}).get("divergent_chunks") or {}
    if div.get("upstream_only"):
        out.append({"check": "replicas_equal", "kind": "cp-abandoned-chunks",
                    "count": div["upstream_only"],
                    "text": "chunks held upstream of the CP tail only (abandoned appends; "
                            "read back unwritten at the tail)"})
    other = (checks.get("final_reads") or {}).get("unacked_errors") or {}
    if other:
        out.append({"check": "final_reads", "kind": "final-read-errors-unacked",
                    "count": sum(other.values()),
                    "text": "final reads of chunks nobody acknowledged (listed by every "
                            "replica) that failed on a replica"})
    return out


def final_reads_check(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The final read-back of acknowledged positions, replica by replica.

    Every final read (`final: true`) is on a replica that must hold every acknowledged
    chunk (CP: a UPI member at the stable epoch; AP: every replica after repair).  For an
    acknowledged position (an ok append or write; the value it wrote):
    - BAD_CHECKSUM, or an ok read of different bytes: that replica lost the chunk's
      integrity -> invalid (one good replica does not make up for it: the bad one may
      become the tail and serve it);
    - any other error (timeout, PARTITION, WEDGED, no connection...): the read proves
      nothing -> unknown (coverage);
    - an ok read of null (unwritten) is `lost` in write_once, not here.
    Errors on final reads of unacknowledged chunks are counted (`unacked_errors`, a
    warning), not judged."""
    from harness.checker.result import UNKNOWN

    acked: dict[tuple[Any, ...], Any] = {}
    for ev in events:
        if (ev.get("type") == "ok" and ev.get("f") in ("append", "write")
                and not ev.get("final") and isinstance(ev.get("value"), dict)):
            pos = ev["value"].get("pos")
            if isinstance(pos, list) and len(pos) == 3:
                acked.setdefault(tuple(pos), ev["value"].get("v"))
    invoked: dict[Any, dict[str, Any]] = {}
    bad: list[dict[str, Any]] = []
    inconclusive: list[dict[str, Any]] = []
    errors: dict[str, int] = {}
    unacked: dict[str, int] = {}
    reads = 0
    for ev in events:
        if not ev.get("final") or ev.get("f") != "read":
            continue
        if ev.get("type") == "invoke":
            invoked[ev.get("process")] = ev
            continue
        inv = invoked.pop(ev.get("process"), {})
        raw = ev.get("value")
        value: dict[str, Any] = raw if isinstance(raw, dict) else {}
        pos_l = value.get("pos") or (inv.get("value") or {}).get("pos")
        pos = tuple(pos_l) if isinstance(pos_l, list) else None
        node = ev.get("node") or inv.get("node")
        reads += 1
        if pos not in acked:
            if ev.get("type") != "ok":
                k = f"{node}:{ev.get('error')}"
                unacked[k] = unacked.get(k, 0) + 1
            continue
        want = acked[pos]
        where = {"node": node, "pos": list(pos), "v": want, "index": ev.get("index")}
        if ev.get("type") == "ok":
            got = value.get("v")
            if got is not None and got != want:
                bad.append({**where, "error": f"different bytes: read {got!r}"})
            continue
        err = str(ev.get("error"))
        errors[f"{node}:{err}"] = errors.get(f"{node}:{err}", 0) + 1
        (bad if err == "BAD_CHECKSUM" else inconclusive).append({**where, "error": err})
    out: dict[str, Any] = {"valid": False if bad else UNKNOWN if inconclusive else True,
                           "reads": reads, "acked_positions": len(acked),
                           "bad": len(bad), "inconclusive": len(inconclusive),
                           "errors": errors, "unacked_errors": unacked}
    if bad or inconclusive:
        worst = bad or inconclusive
        ex = worst[0]
        what = ("acknowledged chunk(s) read back corrupt on a replica that must hold them"
                if bad else "final read(s) of acknowledged chunks failed: nothing proven")
        out["witness"] = {
            "explanation": f"{len(worst)} {what}; e.g. node {ex['node']} position "
                           f"{ex['pos']}: {ex['error']}",
            "examples": bad[:10] + inconclusive[:max(0, 10 - len(bad))]}
    return out


def stable_intervals(polls: list[dict[str, Any]]) -> list[tuple[int, int, int]]:
    """Periods (ns, harness monotonic clock) in which the chain was verifiably one stable
    chain: `(lo, hi, epoch number)` for each run of consecutive status polls (status.jsonl)
    that all show the same `stable` epoch id (every node answered with it, confirmed, not
    wedged, full UPI, nothing repairing), from when the first poll's answers were in
    (`time_ms`) to when the last poll started (`start_ms`).  A node's epoch only grows, so
    a node at epoch E in two polls was at E all the time between them.  Polls without
    `start_ms` / `stable` (runs before these fields) give none."""
    out: list[tuple[int, int, int]] = []
    run: list[dict[str, Any]] = []

    def close() -> None:
        if len(run) >= 2:
            lo, hi = run[0].get("time_ms"), run[-1].get("start_ms")
            if isinstance(lo, int) and isinstance(hi, int) and hi > lo:
                out.append((lo * 1_000_000, hi * 1_000_000, int(run[0]["stable"][0])))
        run.clear()

    for poll in polls:
        st = poll.get("stable")
        ok = (isinstance(st, list) and len(st) == 2 and isinstance(st[0], int)
              and isinstance(poll.get("start_ms"), int) and isinstance(poll.get("time_ms"), int))
        if run and (not ok or st != run[0]["stable"]):
            close()
        if ok:
            run.append(poll)
    close()
    return out


def ap_calm_stale_reads(events: list[dict[str, Any]], settle_ms: int,
                        stable: list[tuple[int, int, int]] | None = None) -> dict[str, Any]:
    """AP stale reads outside every fault window: the write-once check again on the
    history without the reads invoked while a fault was active or less than `settle_ms`
    after it ended, or less than `settle_ms` after a client op first reported a new epoch
    number (the final read-back stays: it follows the heal and the repair) -- except the
    reads that ran entirely inside a `stable` interval (`stable_intervals`) and were served
    at that interval's epoch: those are always judged (one stable chain; its tail holds
    every acknowledged chunk).  Returns the stale-read anomalies that remain (count,
    kinds, examples)."""
    from harness.checker.write_once import check_write_once

    times = {ev["index"]: ev["time"] for ev in events
             if isinstance(ev.get("index"), int) and isinstance(ev.get("time"), int)}
    end_of_history = max(times.values(), default=0)
    settle_ns = settle_ms * 1_000_000
    windows = [(times.get(f.start, 0),
                (times.get(f.end, end_of_history) if f.end is not None else end_of_history)
                + settle_ns) for f in run_faults(events)]
    nemesis_windows = len(windows)
    # a chain change the nemesis did not cause (e.g. a member dropped under load) may
    # split an AP chain too: each epoch number a client op first reports opens a window
    # (from that op's invocation: the op that first sees the split may be the stale read)
    seen_epochs: set[int] = set()
    invoked: dict[Any, int] = {}
    for ev in events:
        e, t = ev.get("epoch"), ev.get("time")
        if ev.get("final") or not isinstance(t, int):
            continue
        if ev.get("type") == "invoke":
            invoked[ev.get("process")] = t
            continue
        t_inv = invoked.pop(ev.get("process"), t)
        if not isinstance(e, int):
            continue
        if seen_epochs and e not in seen_epochs:
            windows.append((t_inv, t + settle_ns))
        seen_epochs.add(e)

    def in_window(t: Any) -> bool:
        return isinstance(t, int) and any(lo <= t <= hi for lo, hi in windows)

    # each client read's completion, by the index of its invocation
    completion: dict[int, dict[str, Any]] = {}
    open_reads: dict[Any, int] = {}
    for ev in events:
        if ev.get("f") == "read" and not ev.get("final") and ev.get("process") != "nemesis":
            if ev.get("type") == "invoke" and isinstance(ev.get("index"), int):
                open_reads[ev.get("process")] = ev["index"]
            elif ev.get("process") in open_reads:
                completion[open_reads.pop(ev.get("process"))] = ev

    def in_stable(inv: dict[str, Any]) -> bool:
        done = completion.get(inv.get("index"))  # type: ignore[arg-type]
        t0, t1 = inv.get("time"), (done or {}).get("time")
        e = (done or {}).get("epoch")
        return (isinstance(t0, int) and isinstance(t1, int) and isinstance(e, int)
                and any(lo <= t0 and t1 <= hi and e == ep for lo, hi, ep in stable or ()))

    keep: list[dict[str, Any]] = []
    dropping: dict[Any, bool] = {}
    dropped = 0
    judged_stable = 0
    for ev in events:
        if ev.get("f") == "read" and not ev.get("final") and ev.get("process") != "nemesis":
            if ev.get("type") == "invoke":
                drop = in_window(ev.get("time"))
                if drop and in_stable(ev):
                    drop = False
                    judged_stable += 1
                dropping[ev.get("process")] = drop
                if drop:
                    dropped += 1
                    continue
            elif dropping.pop(ev.get("process"), False):
                continue
        keep.append(ev)
    res = check_write_once(keep).to_json()
    anomalies = (res.get("witness") or {}).get("anomalies") or {}
    stale = {k: a for k, a in anomalies.items() if k in AP_STALE_KINDS}
    return {"count": sum(a["count"] for a in stale.values()),
            "kinds": {k: a["count"] for k, a in stale.items()},
            "examples": [ex for a in stale.values() for ex in a["examples"][:5]],
            "reads_in_fault_windows": dropped, "fault_windows": nemesis_windows,
            "epoch_change_windows": len(windows) - nemesis_windows, "settle_ms": settle_ms,
            "stable_intervals": len(stable or ()), "judged_in_stable_intervals": judged_stable}


def ap_served_stale_reads(events: list[dict[str, Any]],
                          records: list[dict[str, Any]]) -> dict[str, Any]:
    """AP reads judged by what the node that answered could have known, faults or not.
    A client read answered "not written" by node `s` (for the plain client: the tail's
    answer, after read repair found the chunk on no other member either) is an anomaly
    when `s` must hold the chunk:
    - `unwritten-on-acking-replica`: the chunk was acknowledged (append or write) at epoch
      E, and `s` is a non-witness UPI member of E: Chain Replication wrote it to every UPI
      member before the ack, and a chunk is never deleted;
    - `unwritten-in-one-projection`: an earlier read (completed before this one was
      invoked) saw the chunk served in the very projection (epoch number and checksum)
      this read was served in: one projection is one chain, whose tail never loses a
      chunk.  (Also an ack in that projection.)
    E's UPI and a (node, epoch)'s checksum come from the nodes' projection logs (one
    projection per epoch number per node: `epoch_unique`); the ack's node is the head.
    Not judged: a node whose data files were torn (`torn-write`) from that fault on; a read
    whose epoch its node never logged.  A stale read on the other side of a partition is
    fine: that side's nodes were not in E's UPI and serve another projection.
    Returns count, kinds and examples."""
    upi_at: dict[tuple[str, int], frozenset[str]] = {}
    csum_at: dict[tuple[str, int], str] = {}
    for r in records:
        proj = r.get("projection") if isinstance(r.get("projection"), dict) else {}
        n, e, upi = r.get("node"), r.get("epoch"), proj.get("upi")
        if not isinstance(n, str) or not isinstance(e, int):
            continue
        if isinstance(r.get("epoch_csum"), str):
            csum_at.setdefault((n, e), r["epoch_csum"])
        if isinstance(upi, list):
            wit = set(proj.get("witnesses") or [])
            upi_at.setdefault((n, e), frozenset(str(m) for m in upi if m not in wit))
    # position -> (ack time, UPI, head, epoch); position -> {projection: first time seen}
    acked: dict[tuple[Any, ...], tuple[int, frozenset[str], str, int]] = {}
    seen_in: dict[tuple[Any, ...], dict[tuple[int, str], int]] = {}
    torn_from: dict[str, int] = {}
    invoked: dict[Any, int] = {}
    bad: list[dict[str, Any]] = []
    kinds: dict[str, int] = {}
    for ev in events:
        if ev.get("final") or not isinstance(ev.get("time"), int):
            continue
        v = ev.get("value") if isinstance(ev.get("value"), dict) else {}
        if ev.get("process") == "nemesis":
            if ev.get("f") == "torn-write":
                for t in v.get("targets") or []:
                    torn_from.setdefault(str(t), ev["time"])
            continue
        if ev.get("type") == "invoke":
            invoked[ev.get("process")] = ev["time"]
            continue
        t_inv = invoked.pop(ev.get("process"), None)
        pos, node, epoch = v.get("pos"), str(ev.get("node")), ev.get("epoch")
        if ev.get("type") != "ok" or not isinstance(pos, list) or not isinstance(epoch, int):
            continue
        key = tuple(pos)
        proj = (epoch, csum_at[(node, epoch)]) if (node, epoch) in csum_at else None
        if ev.get("f") in ("append", "write") or (ev.get("f") == "read"
                                                  and v.get("v") is not None):
            if proj is not None:
                seen_in.setdefault(key, {}).setdefault(proj, ev["time"])
            upi = upi_at.get((node, epoch))
            if ev.get("f") != "read" and upi is not None and key not in acked:
                acked[key] = (ev["time"], upi, node, epoch)
            continue
        if ev.get("f") != "read" or t_inv is None:
            continue
        if node in torn_from and torn_from[node] <= ev["time"]:
            continue
        kind = ""
        where: dict[str, Any] = {}
        if key in acked and acked[key][0] <= t_inv and node in acked[key][1]:
            _t, upi, head, e_ack = acked[key]
            kind = "unwritten-on-acking-replica"
            where = {"acked_epoch": e_ack, "acked_by": head, "acked_upi": sorted(upi)}
        elif proj is not None and seen_in.get(key, {}).get(proj, t_inv + 1) <= t_inv:
            kind = "unwritten-in-one-projection"
            where = {"projection": [proj[0], proj[1][:16]]}
        if kind:
            kinds[kind] = kinds.get(kind, 0) + 1
            if len(bad) < 1_000:
                bad.append({"kind": kind, "index": ev.get("index"), "pos": pos, "node": node,
                            "read_epoch": epoch, **where})
    out: dict[str, Any] = {"count": sum(kinds.values()), "kinds": kinds,
                           "examples": bad[:10]}
    if bad:
        ex = bad[0]
        out["explanation"] = (
            f"{out['count']} AP read(s) answered 'not written' by a node that held the "
            f"chunk ({', '.join(f'{k}: {c}' for k, c in kinds.items())}); e.g. {ex['node']} "
            f"at epoch {ex['read_epoch']}, position {ex['pos']}: {ex['kind']}")
    return out


def on_harness_clock(records: list[dict[str, Any]],
                     run: dict[str, Any]) -> list[dict[str, Any]]:
    """Projection-log records with `time_ms` on the harness's monotonic clock (the clock of
    the history, heal time and status polls).

    netns hosts share this kernel's monotonic clock, so their `time_ms` is used as logged.
    Other hosts (VMs, SSH) each have their own monotonic clock: a record's `time_ms` is
    rebuilt from its wall clock `time_unix_ms` and the harness's (monotonic, wall) pair
    read at the run's start (`run.json` `clock`); the daemon's own value is kept as
    `time_ms_daemon`.  Accurate to the offset between the hosts' wall clocks (NTP: a few
    ms); a host whose wall clock is off by seconds misplaces its lines by as much.  Records
    without `time_unix_ms` (daemons older than the field) are left as logged."""
    clock = run.get("clock") or {}
    provider = (run.get("options") or {}).get("provider")
    mono, unix = clock.get("monotonic_ms"), clock.get("unix_ms")
    if provider == "netns" or not isinstance(mono, int) or not isinstance(unix, int):
        return records
    offset = unix - mono
    out = []
    for r in records:
        u = r.get("time_unix_ms")
        out.append({**r, "time_ms": u - offset, "time_ms_daemon": r.get("time_ms")}
                   if isinstance(u, int) else r)
    return out


def epoch_unique(seen: dict[str, dict[str, dict[str, str]]] | None,
                 records: list[dict[str, Any]]) -> dict[str, Any]:
    """On one node, one epoch number names one projection (its projection stores are
    write-once per epoch; it adopts what its public store holds): the epoch ids a node
    showed in status polls, held in its public and private stores at the end (`seen`:
    node -> epoch -> {checksum: where}) and logged as adopted (`records`) must never pair
    one number with two checksums.  Across nodes the same number may name different
    projections (AP: each side of a partition numbers its own).  Unknown when nothing was
    seen (the run did not reach its final phase)."""
    from harness.checker.result import UNKNOWN

    by_key: dict[tuple[str, int], dict[str, str]] = {}
    try:
        for n, es in (seen or {}).items():
            for e, cs in es.items():
                if not isinstance(cs, dict):
                    raise TypeError(f"node {n} epoch {e}: want {{checksum: where}}")
                by_key[(n, int(e))] = dict(cs)
    except (AttributeError, TypeError, ValueError) as err:  # e.g. an older final.json
        return {"valid": UNKNOWN, "epochs": 0,
                "witness": {"reason": f"final.json epochs_seen is malformed: {err}"}}
    for r in records:
        n, e, c = r.get("node"), r.get("epoch"), r.get("epoch_csum")
        if isinstance(n, str) and isinstance(e, int) and isinstance(c, str):
            by_key.setdefault((n, e), {}).setdefault(c, "projection-log")
    if not by_key:
        return {"valid": UNKNOWN, "epochs": 0, "witness": {"reason": "no epoch ids seen"}}
    reused = {k: cs for k, cs in sorted(by_key.items()) if len(cs) > 1}
    out: dict[str, Any] = {"valid": not reused, "epochs": len({e for _n, e in by_key}),
                           "reused": len(reused)}
    if reused:
        out["witness"] = {
            "explanation": f"{len(reused)} time(s) a node held two or more different "
                           "projections at one epoch number",
            "examples": [{"node": n, "epoch": e, "projections": cs}
                         for (n, e), cs in list(reused.items())[:10]]}
    return out


def analyze(run_dir: Path) -> dict[str, Any]:
    """(Re-)check a stored run: writes results.json and index.html; returns the results."""
    from harness.checker.projection_safety import check_projection_logs
    from harness.checker.result import UNKNOWN, combine_verdicts
    from harness.checker.write_once import check_write_once_lines

    run_dir = Path(run_dir)
    run = json.loads((run_dir / "run.json").read_text())
    opts = run["options"]
    final = (json.loads((run_dir / "final.json").read_text())
             if (run_dir / "final.json").exists() else {})
    checks: dict[str, Any] = {}
    hist = run_dir / "history.jsonl"
    if hist.exists():
        with hist.open("rb") as fh:
            checks["write_once"] = check_write_once_lines(fh, memory_limit_mb=2048).to_json()
    else:
        checks["write_once"] = {"valid": UNKNOWN, "witness": {"reason": "no history"}}
    wo = checks["write_once"]
    events = _jsonl(hist)
    checks["coverage"] = _coverage_check(events)
    records: list[dict[str, Any]] = []
    for d in sorted((run_dir / "nodes").glob("*")) if (run_dir / "nodes").exists() else []:
        records.extend(_jsonl(d / "projection-log.jsonl"))
    records = on_harness_clock(records, run)
    records.sort(key=lambda r: (r.get("time_ms") or 0))
    anomalies = (wo.get("witness") or {}).get("anomalies") or {}
    if opts["mode"] == "ap" and wo.get("valid") is False and set(anomalies) <= AP_STALE_KINDS:
        # AP chains answer from their own side of a partition: a read may miss a chunk
        # acknowledged on the other side (eventual consistency, not linearizability) --
        # while faults last and the sides are merged again.  A stale read in calm (no
        # fault active, none in the last AP_SETTLE_MS) is a real anomaly: a stable AP
        # chain is one chain and reads its tail.  What AP promises at the end is checked
        # by `lost` (final reads on every replica), conflicts, from-nowhere,
        # read-of-failed and replicas_equal.
        calm = ap_calm_stale_reads(events, AP_SETTLE_MS,
                                   stable_intervals(_jsonl(run_dir / "status.jsonl")))
        wo["ap_stale_reads"] = {k: anomalies[k]["count"] for k in anomalies}
        wo["ap_calm_stale_reads"] = calm
        # and every read judged by what its node could have known (faults or not)
        served = ap_served_stale_reads(events, records)
        wo["ap_served_stale_reads"] = served
        wo["valid"] = calm["count"] == 0 and served["count"] == 0
    heal = run.get("heal_time_ms") or final.get("heal_time_ms")
    if records:
        try:
            pr = check_projection_logs(records, mode=opts["mode"], all_members=run["nodes"],
                                       heal_time=heal).to_json()
        except ValueError as e:
            pr = {"valid": UNKNOWN, "witness": {"error": str(e)}}
        checks["projection_safety"] = pr
    else:
        checks["projection_safety"] = {"valid": UNKNOWN, "witness": {"reason": "no logs"}}
    checks["epoch_unique"] = epoch_unique(final.get("epochs_seen"), records)
    convergence = (checks["projection_safety"].get("witness") or {}).get("convergence")
    end_ms = final.get("end_time_ms")
    if records and heal is not None and end_ms is not None:
        # judged on the logs up to the end of the final phase: stopping the daemons at
        # teardown makes the survivors change epochs, which says nothing about the run
        from harness.checker.projection_safety import convergence as conv_fn
        from harness.checker.projection_safety import normalise

        try:
            convergence = conv_fn(normalise(
                [r for r in records if (r.get("time_ms") or 0) <= end_ms],
                mode=opts["mode"], all_members=run["nodes"]), heal_time=heal,
                nodes=run["nodes"])
        except ValueError as e:
            convergence = {"converged": False, "reason": str(e)}
    # the run itself: did it reach the final phase?
    # (a final heal whose connectivity proof failed leaves the read-back unproven)
    heal_error = (final.get("heal") or {}).get("error")
    final_ok = bool(final.get("positions") is not None and final.get("stable")
                    and not heal_error)
    checks["final_phase"] = {
        "valid": True if final_ok else UNKNOWN,
        "stable": final.get("stable"), "wait_stable_ms": final.get("wait_stable_ms"),
        "heal": final.get("heal"),
        "positions": final.get("positions"), "error": final.get("error"),
        "setup_error": run.get("setup_error"), "run_error": run.get("run_error"),
        "final_heal": final.get("heal"), "clock": run.get("clock"),
    }
    if final.get("checksum_lists"):
        # AP: after heal and repair every replica must hold the same chunks.  CP: chunks of
        # abandoned attempts may stay upstream of the tail on the replicas that took them
        # (never acked; read back at the tail, where they must be unwritten): a warning.
        # A chunk the CP tail holds but an upstream UPI member lacks breaks Chain
        # Replication's prefix rule (the tail's data is on every UPI member): invalid.
        # An acknowledged chunk missing anywhere is `lost` (write_once), never divergent.
        # A data file without any chunk (a head minted it for an append that then failed
        # at an epoch change) holds nothing to replicate and repair copies none: compared
        # are the files with chunks, the empty ones are only listed.
        lists = final["checksum_lists"]
        empty = sorted({f for v in lists.values() for f, entries in v.items() if not entries})
        lists = {r: {f: e for f, e in v.items() if e} for r, v in lists.items()}
        ref = next(iter(lists.values()))
        diff = [r for r, v in lists.items() if v != ref]
        div = final.get("divergent") or {}
        checks["replicas_equal"] = {
            "valid": ((not diff and final_ok) if opts["mode"] == "ap"
                      else not div.get("on_authority")),
            "differ": diff, "divergent_chunks": div, "empty_files": empty,
            "anti_entropy": final.get("anti_entropy"),
            "counts_in_verdict": opts["mode"] == "ap" or bool(div.get("on_authority"))}
    counts: dict[str, dict[str, int]] = {}
    for ev in events:
        if ev.get("type") == "invoke" or ev.get("process") == "nemesis":
            continue
        key = ev["f"] + (" (final)" if ev.get("final") else "")
        c = counts.setdefault(key, {})
        c[ev["type"]] = c.get(ev["type"], 0) + 1
    # BAD_CHECKSUM (or other bytes) for an acknowledged chunk on a replica that must hold
    # it is invalid; any other failed final read of one leaves the run unknown
    checks["final_reads"] = final_reads_check(events)
    valid = combine_verdicts(c.get("valid", UNKNOWN) for c in checks.values())
    results = {
        "valid": valid, "checks": checks, "counts": counts, "seed": run.get("seed"),
        "warnings": _warnings(checks),
        "options": opts, "test_canary": opts.get("canary"), "nodes": run.get("nodes"),
        "convergence": convergence, "setup_s": run.get("setup_s"),
        "faults": run.get("faults", []), "heal_time_ms": heal,
        "setup_error": run.get("setup_error"), "run_error": run.get("run_error"),
        "final_heal": final.get("heal"), "clock": run.get("clock"),
    }
    (run_dir / "results.json").write_text(json.dumps(results, indent=1, default=str))
    try:
        from harness.report.run_report import write_report

        write_report(run_dir, results)
    except Exception as e:  # a report bug must not hide the verdict
        log.exception("report failed")
        (run_dir / "index.html").write_text(
            f"<!doctype html><title>report failed</title><pre>verdict: {valid}\n"
            f"report error: {e!r}</pre>")
    return results
