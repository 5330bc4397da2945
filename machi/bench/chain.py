"""``machi bench chain``: append throughput/latency through ``ChainClient`` on a
self-managing chain, convergence times after faults, and the single-FLU and raw-disk
baselines of the same run (issue 3, "Benchmark").

Owns: the plan, a local chain of ``machi node run`` daemons on 127.0.0.1 (fresh data dirs,
chain manager on, AP, bootstrapped with the CHAIN_BOOTSTRAP admin op, the shipped
chain-manager timers unless ``--fast-timers`` or ``--node-toml`` says otherwise) per
sync mode or a chain given by ``--members``, the append cells, the fault phases (SIGKILL
+ restart of one node; a "partition" simulated by SIGSTOP/SIGCONT of one node, the only
partition a loopback daemon can get), and the ratios against the issue's targets.
Reuses ``machi.bench.flu`` (single-FLU append cells), ``raw_disk`` and ``stats``.
Must not: leave a daemon or data dir behind (also on errors and Ctrl-C),
signal a process it did not start, inject faults into a chain given by ``--members``,
run unbounded, or assert on timings (it prints numbers).
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from machi import __version__
from machi.client.chain_client import ChainClient
from machi.client.flu_client import FluClient
from machi.core.errors import ConfigError, MachiError
from machi.core.wire import Op
from machi.node.config import build_config
from machi.node.process import NodeProcess, bootstrap

from . import raw_disk
from .daemon import node_args
from .flu import CELL_BYTES_MAX, LARGE_SIZE, SMALL_SIZE, BenchError, _proc_sample, _run_async
from .flu import append_cell as flu_append_cell
from .stats import size_label, summarize

SYNC_MODES = ("batch", "none")
DURABLE_MODES = ("batch",)
NODES_MAX = 9
CONVERGE_TIMEOUT_S = 30.0  # bound of every wait for the chain to settle
POLL_S = 0.05  # status poll period (the convergence times' resolution)
STATUS_TIMEOUT_MS = 500
CELL_ERRORS_MAX = 100  # a cell with more failed appends gives up
PROBE_SIZE = 4096
TARGET_APPEND_1M_VS_RAW_PER_NODE = 0.40  # chain MB/s >= 40% of raw seq write / nodes
TARGET_APPEND_4K_DURABLE_OPS_PER_S = 1500.0
TARGET_HEAL_CONVERGENCE_S = 3.0
PARTITION_NOTE = ("loopback daemons: the partition is simulated by SIGSTOP of one node "
                  "(until the others confirm a chain without it) and SIGCONT; real "
                  "partitions (one-way, netns) are the harness's job")

REMOTE_NOTE = ("--members: the chain's sync mode is unknown here, its cells are counted "
               "as durable; the raw disk numbers are this host's")

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class ChainPlan:
    members: Mapping[str, tuple[str, int]] | None = None  # a running chain instead of ours
    nodes: int = 3
    sync_modes: tuple[str, ...] = SYNC_MODES
    sizes: tuple[int, ...] = (SMALL_SIZE, LARGE_SIZE)
    concurrency: tuple[int, ...] = (1, 8, 32, 128)
    duration_s: float = 2.0  # per cell
    baseline_s: float = 2.0  # per raw-disk measurement
    data_dir: Path | None = None
    faults: bool = True  # kill/restart/pause phases (local chain only)
    flu_baseline: bool = True
    cell_bytes_max: int = CELL_BYTES_MAX
    uvloop: bool = True
    #: ChainClient natural batching (docs/client.md): 1 = off (one request per append)
    batch_max_chunks: int = 64
    batches_in_flight: int = 2
    #: extra node TOML for our daemons ("" = the shipped defaults); chain_* timers mostly
    node_toml: str = ""

    def validate(self) -> None:
        bad = [m for m in self.sync_modes if m not in ("always", *SYNC_MODES)]
        if bad or not self.sync_modes:
            raise BenchError(f"--sync: want some of always,batch,none, got {bad}")
        if not 2 <= self.nodes <= NODES_MAX:
            raise BenchError(f"--nodes: want 2..{NODES_MAX}")
        if not self.sizes or any(s <= 0 or s > 64 * 1024**2 for s in self.sizes):
            raise BenchError("--sizes: every size must be in 1 B .. 64 MiB")
        if not self.concurrency or any(not 1 <= c <= 256 for c in self.concurrency):
            raise BenchError("--concurrency: every value must be in 1..256")
        if not 0 < self.duration_s <= 60 or not 0 < self.baseline_s <= 60:
            raise BenchError("--duration-s: want 0 < N <= 60")
        if not 1 <= self.batch_max_chunks <= 1024 or not 1 <= self.batches_in_flight <= 64:
            raise BenchError("--batch-max-chunks: want 1..1024; --batches-in-flight: 1..64")
        chain_timers(self.node_toml)


def chain_timers(node_toml: str) -> dict[str, Any]:
    """The chain-manager keys (``chain_*``) our daemons run with: the shipped defaults
    overridden by ``node_toml``.  A bad or unknown key is a ``BenchError``."""
    try:
        values = tomllib.loads(node_toml)
        values.update(values.pop("node", {}) if isinstance(values.get("node"), dict) else {})
        cfg = build_config({**values, "name": "bench", "data_dir": "data"}, {})
    except (tomllib.TOMLDecodeError, ConfigError) as e:
        raise BenchError(f"--node-toml: {e}") from None
    return {k: getattr(cfg, k) for k in sorted(cfg.__dataclass_fields__)
            if k.startswith("chain_")}


# ---- the local chain ------------------------------------------------------------------
class LocalChain:
    """``nodes`` daemons on 127.0.0.1 with their chain managers on (``node_toml``: extra
    node config keys, "" = the shipped timers)."""

    def __init__(self, root: Path, nodes: int, sync: str, node_toml: str = "") -> None:
        root.mkdir(parents=True, exist_ok=True)
        cfg = root / "node.toml"
        cfg.write_text("# written by machi bench chain\n" + node_toml)
        self.root = root
        self.timers = chain_timers(node_toml)
        self.nodes = {
            f"n{i}": NodeProcess(f"n{i}", root / f"n{i}" / "data", sync=sync,
                                 log_path=root / f"n{i}" / "node.log",
                                 extra_args=["--config", str(cfg)])
            for i in range(1, nodes + 1)
        }
        self.paused: set[str] = set()

    @property
    def seeds(self) -> dict[str, tuple[str, int]]:
        return {n: (x.host, x.port) for n, x in self.nodes.items()}

    def pids(self) -> list[int]:
        return [x.proc.pid for x in self.nodes.values() if x.proc is not None and x.running()]

    def start(self) -> None:
        for x in self.nodes.values():
            x.start(wait=False)
        for x in self.nodes.values():
            x.wait_ready()

    def pause(self, name: str) -> None:
        proc = self.nodes[name].proc
        if proc is None or proc.poll() is not None:
            raise BenchError(f"cannot pause {name}: not running")
        self.paused.add(name)
        os.kill(proc.pid, signal.SIGSTOP)

    def resume(self, name: str) -> None:
        proc = self.nodes[name].proc
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
        self.paused.discard(name)

    def stop_all(self) -> dict[str, int]:
        """SIGCONT what we paused, SIGTERM every node; exit codes by name."""
        for name in list(self.paused):
            self.resume(name)
        return {n: x.stop() for n, x in self.nodes.items()}

    def kill_all(self) -> None:
        for name in list(self.paused):
            self.resume(name)
        for x in self.nodes.values():
            x.kill()

    def logs(self, lines: int = 8) -> str:
        return "\n".join(f"--- {n}\n{x.log_tail(lines)}" for n, x in self.nodes.items())


async def chain_status(host: str, port: int) -> dict[str, Any] | None:
    """CHAIN_STATUS of one node, or None when it does not answer in time."""
    try:
        async with FluClient(host, port, timeout_ms=STATUS_TIMEOUT_MS,
                             connect_timeout_ms=STATUS_TIMEOUT_MS, name="bench-chain") as c:
            return await c.chain_admin(Op.CHAIN_STATUS, {})
    except (MachiError, OSError):
        return None


async def chain_status_retry(host: str, port: int, attempts: int = 3) -> dict[str, Any] | None:
    """``chain_status`` tried up to ``attempts`` times (a loaded node answers late)."""
    for _ in range(attempts):
        st = await chain_status(host, port)
        if st is not None:
            return st
    return None


async def chain_bootstrap(seeds: Mapping[str, tuple[str, int]], chain: str) -> None:
    """What ``machi chain bootstrap --mode ap`` does: enable every manager, then let the
    first node propose epoch 1."""
    meta: dict[str, Any] = {"chain": chain, "mode": "ap", "witnesses": [],
                            "members": {n: f"{h}:{p}" for n, (h, p) in seeds.items()}}
    for i, (host, port) in enumerate([*seeds.values(), next(iter(seeds.values()))]):
        async with FluClient(host, port, timeout_ms=5_000, name="bench-chain") as c:
            await c.chain_admin(Op.CHAIN_BOOTSTRAP, {**meta, "propose": i == len(seeds)})


async def converged(seeds: Mapping[str, tuple[str, int]], up: list[str],
                    want_upi: set[str]) -> dict[str, Any] | None:
    """The shared status when every node in ``up`` sits at one confirmed epoch with UPI ==
    ``want_upi`` and nothing repairing; else None."""
    got: dict[str, dict[str, Any] | None] = {}

    async def one(n: str) -> None:
        got[n] = await chain_status(*seeds[n])

    async with anyio.create_task_group() as tg:  # in parallel: one poll ~ one round trip
        for n in up:
            tg.start_soon(one, n)
    sts = [got[n] for n in up]
    first = sts[0]
    for s in sts:
        if s is None or first is None or not s.get("confirmed") or s.get("repairing"):
            return None
        if (s.get("epoch"), s.get("epoch_csum")) != (first.get("epoch"),
                                                     first.get("epoch_csum")):
            return None
        if set(s.get("upi", [])) != want_upi:
            return None
    return first


async def wait_converged(seeds: Mapping[str, tuple[str, int]], up: list[str],
                         want_upi: set[str], t0: float) -> tuple[dict[str, Any], float]:
    """Poll until converged; returns the status and seconds since ``t0`` (monotonic)."""
    while time.monotonic() - t0 < CONVERGE_TIMEOUT_S:
        st = await converged(seeds, up, want_upi)
        if st is not None:
            return st, time.monotonic() - t0
        await anyio.sleep(POLL_S)
    sts = {n: await chain_status(*seeds[n]) for n in up}
    raise NoConvergence(f"no convergence on UPI {sorted(want_upi)} within "
                        f"{CONVERGE_TIMEOUT_S:g} s", sts)


class NoConvergence(BenchError):
    """The chain did not settle within CONVERGE_TIMEOUT_S (a result, not a crash)."""

    def __init__(self, message: str, statuses: dict[str, dict[str, Any] | None]) -> None:
        super().__init__(f"{message}: {statuses}")
        self.message = message
        self.statuses = statuses


# ---- append cells ---------------------------------------------------------------------
@dataclass(slots=True)
class _Cell:
    deadline: float
    ops_max: int
    latencies_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _cpu_s(pids: list[int]) -> float | None:
    samples = [_proc_sample(p) for p in pids]
    if not pids or any(s is None for s in samples):
        return None
    return sum(s.cpu_s for s in samples if s is not None)


async def chain_cell(cc: ChainClient, prefix: str, size: int, concurrency: int,
                     duration_s: float, bytes_max: int, pids: list[int]) -> dict[str, Any]:
    """``concurrency`` appends in flight through one ChainClient for ``duration_s``."""
    payload = os.urandom(size)
    await cc.append(prefix, payload)  # warm-up, not timed: discovery, the prefix's file
    cell = _Cell(time.perf_counter() + duration_s, max(concurrency, bytes_max // size))

    async def worker() -> None:
        while time.perf_counter() < cell.deadline and len(cell.latencies_s) < cell.ops_max:
            t0 = time.perf_counter()
            try:
                await cc.append(prefix, payload)
            except MachiError as e:
                cell.errors.append(f"{type(e).__name__}: {e}")
                if len(cell.errors) > CELL_ERRORS_MAX:
                    raise BenchError(f"{len(cell.errors)} failed appends: "
                                     f"{cell.errors[-1]}") from None
                await anyio.sleep(0.01)
                continue
            cell.latencies_s.append(time.perf_counter() - t0)

    cpu0, client0 = _cpu_s(pids), time.process_time()
    stats0 = dict(cc.stats)
    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    result = summarize(cell.latencies_s, time.perf_counter() - start, size)
    result["errors"] = len(cell.errors)
    requests = cc.stats["head_requests"] - stats0["head_requests"]
    chunks = cc.stats["head_chunks"] - stats0["head_chunks"]
    # chunks per append request at the head (1.0: no batching); retries count as requests
    result["chunks_per_request"] = round(chunks / requests, 2) if requests else None
    result["batch_splits"] = cc.stats["batch_splits"] - stats0["batch_splits"]
    client_s = time.process_time() - client0
    result["client_cpu_s"] = round(client_s, 3)
    cpu1 = _cpu_s(pids)
    if cpu0 is not None and cpu1 is not None:
        result["servers_cpu_s"] = round(cpu1 - cpu0, 3)
        if result["ops"]:
            result["servers_cpu_us_per_op"] = round((cpu1 - cpu0) / result["ops"] * 1e6, 1)
    if result["ops"]:
        result["client_cpu_us_per_op"] = round(client_s / result["ops"] * 1e6, 1)
    return result


async def measure_chain(seeds: Mapping[str, tuple[str, int]], plan: ChainPlan, mode: str,
                        pids: list[int], progress: Progress) -> list[dict[str, Any]]:
    cells: list[dict[str, Any]] = []
    tag = os.urandom(3).hex()
    async with ChainClient(seeds, op_timeout_ms=30_000, request_timeout_ms=15_000,
                           seed=1, name="bench-chain", batch_max_chunks=plan.batch_max_chunks,
                           batches_in_flight=plan.batches_in_flight) as cc:
        for size in plan.sizes:
            for conc in plan.concurrency:
                app = await chain_cell(cc, f"bc_{tag}_{size_label(size)}_c{conc}", size,
                                       conc, plan.duration_s, plan.cell_bytes_max, pids)
                progress(
                    f"chain sync={mode:<6} size={size_label(size):>6} conc={conc:<3} "
                    f"append {app['ops_per_s']:>9.1f} op/s {app['mb_per_s']:>8.1f} MB/s "
                    f"p50 {app['latency_ms_p50']:.2f} ms p99 {app['latency_ms_p99']:.2f} ms "
                    f"chunks/req {app['chunks_per_request']} "
                    f"cpu us/op srv {app.get('servers_cpu_us_per_op', '-')} "
                    f"cli {app.get('client_cpu_us_per_op', '-')} errors {app['errors']}")
                cells.append({"sync": mode, "size": size, "size_label": size_label(size),
                              "concurrency": conc, "append": app})
    return cells


# ---- fault phases ---------------------------------------------------------------------
async def _probe_appends(seeds: Mapping[str, tuple[str, int]], t0: float) -> float | None:
    """Seconds from ``t0`` until one small append through a fresh-timeout ChainClient
    succeeds (None when none does within the bound)."""
    payload = os.urandom(PROBE_SIZE)
    with anyio.move_on_after(CONVERGE_TIMEOUT_S):
        async with ChainClient(seeds, op_timeout_ms=int(CONVERGE_TIMEOUT_S * 1000),
                               request_timeout_ms=500, discovery_timeout_ms=500,
                               min_request_ms=100, seed=2, name="bench-probe") as cc:
            while True:
                try:
                    await cc.append("bc_probe", payload)
                    return time.monotonic() - t0
                except MachiError:
                    await anyio.sleep(POLL_S)
    return None


async def fault_phases(chain: LocalChain, progress: Progress) -> dict[str, Any]:
    """The phases below; a phase whose chain does not settle ends them with ``error``,
    ``failed_phase`` and every node's status in the result (the bench goes on to its
    baselines and exits 3)."""
    out: dict[str, Any] = {"poll_s": POLL_S, "timeout_s": CONVERGE_TIMEOUT_S,
                           "timers": chain.timers}
    try:
        await _phases(chain, out, progress)
    except NoConvergence as e:
        done = [k for k in ("kill", "restart", "partition") if k in out]
        out.update(error=e.message, statuses=e.statuses,
                   failed_phase=("kill", "restart", "partition")[len(done)])
        progress(f"{out['failed_phase']}: {e.message}\n{chain.logs()}")
    return out


async def _phases(chain: LocalChain, out: dict[str, Any], progress: Progress) -> None:
    """SIGKILL the head, restart it, then pause (SIGSTOP) the tail and heal (SIGCONT)."""
    seeds = chain.seeds
    names = list(seeds)
    st, _ = await wait_converged(seeds, names, set(names), time.monotonic())
    victim = st["upi"][0]
    others = [n for n in names if n != victim]
    t0 = time.monotonic()
    chain.nodes[victim].kill()
    got: dict[str, Any] = {}
    failed: list[NoConvergence] = []

    async def confirm() -> None:
        try:
            s, got["confirmed_s"] = await wait_converged(seeds, others, set(others), t0)
        except NoConvergence as e:  # re-raised below, not inside an ExceptionGroup
            failed.append(e)
            return
        got["epoch"] = s["epoch"]

    async def probe() -> None:
        got["appends_ok_s"] = await _probe_appends({n: seeds[n] for n in others}, t0)

    async with anyio.create_task_group() as tg:
        tg.start_soon(confirm)
        tg.start_soon(probe)
    if failed:
        raise failed[0]
    out["kill"] = {"node": victim, "role": "head", **{k: _r(v) for k, v in got.items()}}
    progress(f"SIGKILL {victim} (head): chain without it confirmed after "
             f"{got['confirmed_s']:.2f} s, appends ok after {_r(got['appends_ok_s'])} s")

    t0 = time.monotonic()
    chain.nodes[victim].start()
    started_s = time.monotonic() - t0
    s, back_s = await wait_converged(seeds, names, set(names), t0)
    out["restart"] = {"node": victim, "process_ready_s": _r(started_s),
                      "back_in_upi_s": _r(back_s), "epoch": s["epoch"]}
    progress(f"restart {victim}: back in the UPI (repair included) after {back_s:.2f} s")

    victim = s["upi"][-1]
    others = [n for n in names if n != victim]
    t0 = time.monotonic()
    chain.pause(victim)
    try:
        s, dropped_s = await wait_converged(seeds, others, set(others), t0)
    finally:
        chain.resume(victim)
    t0 = time.monotonic()
    s, heal_s = await wait_converged(seeds, names, set(names), t0)
    out["partition"] = {"node": victim, "role": "tail", "how": "SIGSTOP/SIGCONT",
                        "dropped_s": _r(dropped_s), "heal_converged_s": _r(heal_s),
                        "epoch": s["epoch"], "note": PARTITION_NOTE}
    progress(f"SIGSTOP {victim} (tail): dropped after {dropped_s:.2f} s; after SIGCONT "
             f"all {len(names)} confirmed again after {heal_s:.2f} s")


async def _idle_cpu(pids: list[int], duration_s: float) -> dict[str, Any]:
    """CPU the daemons burn with no client load (their chain managers' rounds)."""
    cpu0, t0 = _cpu_s(pids), time.monotonic()
    await anyio.sleep(duration_s)
    cpu1, elapsed = _cpu_s(pids), time.monotonic() - t0
    if cpu0 is None or cpu1 is None:
        return {"servers_cpu_s_per_s": None}
    return {"servers_cpu_s_per_s": round((cpu1 - cpu0) / elapsed, 3),
            "elapsed_s": round(elapsed, 3)}


def _r(v: Any) -> Any:
    return round(v, 3) if isinstance(v, float) else v


# ---- runs -----------------------------------------------------------------------------
async def _chain_run(chain: LocalChain, plan: ChainPlan, mode: str, faults: bool,
                     progress: Progress) -> dict[str, Any]:
    seeds = chain.seeds
    t0 = time.monotonic()
    await chain_bootstrap(seeds, "bench")
    _, boot_s = await wait_converged(seeds, list(seeds), set(seeds), t0)
    progress(f"chain of {len(seeds)} (sync={mode}) bootstrapped and confirmed in {boot_s:.2f} s")
    out: dict[str, Any] = {"bootstrap_s": _r(boot_s)}
    out["idle"] = await _idle_cpu(chain.pids(), min(plan.duration_s, 2.0))
    progress(f"idle daemons (managers only): {out['idle']['servers_cpu_s_per_s']} CPU s/s")
    before = await chain_status_retry(*next(iter(seeds.values())))
    out["cells"] = await measure_chain(seeds, plan, mode, chain.pids(), progress)
    after = await chain_status_retry(*next(iter(seeds.values())))
    # a manager that changed the projection during the cells makes their numbers suspect
    out["epochs_during_cells"] = [None if s is None else s.get("epoch")
                                  for s in (before, after)]
    progress(f"epoch before/after the cells: {out['epochs_during_cells']}")
    if faults:
        out["convergence"] = await fault_phases(chain, progress)
    return out


def _local_chain(plan: ChainPlan, mode: str, root: Path, faults: bool,
                 progress: Progress) -> dict[str, Any]:
    chain = LocalChain(Path(tempfile.mkdtemp(prefix=f"chain-{mode}-", dir=root)),
                       plan.nodes, mode, plan.node_toml)
    try:
        chain.start()
        pids = {n: x.proc.pid for n, x in chain.nodes.items() if x.proc is not None}
        progress(f"started {plan.nodes} daemons sync={mode}: "
                 + " ".join(f"{n}={x.address}" for n, x in chain.nodes.items()))
        out: dict[str, Any] = _run_async(_chain_run, chain, plan, mode, faults, progress,
                                         use_uvloop=plan.uvloop)
        out["daemons"] = {"sync": mode, "pids": pids, "exit_codes": chain.stop_all()}
        return out
    except BaseException:
        progress(f"daemon log tails:\n{chain.logs()}")
        raise
    finally:
        chain.kill_all()
        shutil.rmtree(chain.root, ignore_errors=True)


async def _flu_cells(host: str, port: int, plan: ChainPlan, mode: str, pid: int,
                     progress: Progress) -> list[dict[str, Any]]:
    async with FluClient(host, port, timeout_ms=30_000, max_in_flight=max(plan.concurrency) + 8,
                         name="bench") as c:
        epoch_id = await bootstrap(c, f"flu-{mode}", port=port)
        tag = os.urandom(3).hex()
        cells = []
        for size in plan.sizes:
            for conc in plan.concurrency:
                app, _ = await flu_append_cell(c, epoch_id, f"bf_{tag}_{size}_c{conc}", size,
                                               conc, plan.duration_s, plan.cell_bytes_max, pid)
                progress(f"1-FLU sync={mode:<6} size={size_label(size):>6} conc={conc:<3} "
                         f"append {app['ops_per_s']:>9.1f} op/s {app['mb_per_s']:>8.1f} MB/s "
                         f"p50 {app['latency_ms_p50']:.2f} ms")
                cells.append({"sync": mode, "size": size, "size_label": size_label(size),
                              "concurrency": conc, "append": app})
        return cells


def _single_flu(plan: ChainPlan, mode: str, root: Path, progress: Progress) -> dict[str, Any]:
    """The ``machi bench flu`` append cells against one FLU (chain manager off)."""
    work = Path(tempfile.mkdtemp(prefix=f"flu-{mode}-", dir=root))
    node = NodeProcess(f"flu-{mode}", work / "data", sync=mode, log_path=work / "node.log",
                       extra_args=node_args(work, f"flu-{mode}"))
    try:
        node.start()
        assert node.proc is not None
        cells = _run_async(_flu_cells, node.host, node.port, plan, mode, node.proc.pid,
                           progress, use_uvloop=plan.uvloop)
        return {"cells": cells, "exit_code": node.stop()}
    finally:
        node.kill()
        shutil.rmtree(work, ignore_errors=True)


# ---- ratios and the result ------------------------------------------------------------
def _best(cells: list[dict[str, Any]], size: int, key: str,
          modes: tuple[str, ...] | None) -> tuple[float, dict[str, Any] | None]:
    best: tuple[float, dict[str, Any] | None] = (0.0, None)
    for c in cells:
        if (modes is None or c["sync"] in modes) and c["size"] == size \
                and c["append"][key] > best[0]:
            best = (float(c["append"][key]), c)
    return best


def _name(c: dict[str, Any] | None) -> str | None:
    return None if c is None else f"sync={c['sync']} size={c['size_label']} " \
                                  f"conc={c['concurrency']}"


def ratios(cells: list[dict[str, Any]], base: dict[str, Any], nodes: int,
           convergence: dict[str, Any] | None, remote: bool) -> dict[str, Any]:
    """The three issue-3 targets, each from the best qualifying cell or phase."""
    durable = ("remote",) if remote else (*DURABLE_MODES, "always")
    seq_mb = float(base["seq_write_1m"]["mb_per_s"])
    per_node = seq_mb / nodes
    mb, c1 = _best(cells, LARGE_SIZE, "mb_per_s", durable)
    v = round(mb / per_node, 3) if c1 is not None and per_node > 0 else None
    ops, c4 = _best(cells, SMALL_SIZE, "ops_per_s", durable)
    heal = (convergence or {}).get("partition", {}).get("heal_converged_s")
    failed = bool(convergence and "error" in convergence)
    return {
        "append_1m_durable_vs_raw_seq_write_per_node": {
            "value": v, "target": TARGET_APPEND_1M_VS_RAW_PER_NODE,
            "met": None if v is None else v >= TARGET_APPEND_1M_VS_RAW_PER_NODE,
            "append_mb_per_s": mb, "raw_seq_write_mb_per_s": seq_mb, "nodes": nodes,
            "cell": _name(c1), "note": REMOTE_NOTE if remote else None,
        },
        "append_4k_durable_ops_per_s": {
            "value": ops if c4 is not None else None,
            "target": TARGET_APPEND_4K_DURABLE_OPS_PER_S,
            "ratio": round(ops / TARGET_APPEND_4K_DURABLE_OPS_PER_S, 3) if c4 else None,
            "met": None if c4 is None else ops >= TARGET_APPEND_4K_DURABLE_OPS_PER_S,
            "cell": _name(c4), "note": REMOTE_NOTE if remote else None,
        },
        "heal_convergence_s": {
            "value": heal, "target": TARGET_HEAL_CONVERGENCE_S, "nodes": nodes,
            "met": False if failed else None if heal is None
            else heal < TARGET_HEAL_CONVERGENCE_S,
            "note": "target is for 5 nodes (--nodes 5)" if nodes != 5 else None,
        },
    }


def _vs_flu(cells: list[dict[str, Any]], flu: list[dict[str, Any]]) -> None:
    """Annotate each chain cell with its throughput relative to the same single-FLU cell."""
    index = {(c["sync"], c["size"], c["concurrency"]): c for c in flu}
    for c in cells:
        sync = "batch" if c["sync"] == "remote" else c["sync"]  # --members: vs batch
        f = index.get((sync, c["size"], c["concurrency"]))
        if f is not None and f["append"]["ops_per_s"] > 0:
            c["vs_single_flu"] = round(c["append"]["ops_per_s"] / f["append"]["ops_per_s"], 3)


def run_chain_bench(plan: ChainPlan, progress: Progress) -> dict[str, Any]:
    """Run the whole plan; returns the result object (see docs/benchmarks.md)."""
    plan.validate()
    if plan.data_dir is not None:
        plan.data_dir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="machi-bench-chain-", dir=plan.data_dir))
    started = time.time()
    remote = plan.members is not None
    try:
        progress(f"raw disk baseline in {root} ({plan.baseline_s:g} s each)")
        base = raw_disk.baseline(root, plan.baseline_s)
        progress(f"raw: 4KiB write+fdatasync {base['fdatasync_4k']['ops_per_s']:.1f} op/s; "
                 f"1MiB sequential write {base['seq_write_1m']['mb_per_s']:.1f} MB/s")
        cells: list[dict[str, Any]] = []
        daemons: list[dict[str, Any]] = []
        bootstrap_s: dict[str, Any] = {}
        idle: dict[str, Any] = {}
        convergence: dict[str, Any] | None = None
        if plan.members is not None:
            cells = _run_async(measure_chain, plan.members, plan, "remote", [], progress,
                               use_uvloop=plan.uvloop)
        else:
            for i, mode in enumerate(plan.sync_modes):
                faults = plan.faults and i == len(plan.sync_modes) - 1
                r = _local_chain(plan, mode, root, faults, progress)
                cells.extend(r["cells"])
                daemons.append(r["daemons"])
                bootstrap_s[mode] = r["bootstrap_s"]
                idle[mode] = {**r["idle"], "epochs_during_cells": r["epochs_during_cells"]}
                if faults:
                    convergence = {"sync": mode, **r["convergence"]}
        flu_modes = ("batch",) if remote else plan.sync_modes
        flu: list[dict[str, Any]] = []
        flu_exit: dict[str, int] = {}
        if plan.flu_baseline:
            for mode in flu_modes:
                r = _single_flu(plan, mode, root, progress)
                flu.extend(r["cells"])
                flu_exit[mode] = r["exit_code"]
        _vs_flu(cells, flu)
        return {
            "bench": "chain",
            "version": __version__,
            "started_unix_s": round(started, 3),
            "elapsed_s": round(time.time() - started, 3),
            "host": {"cpus": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2)},
            "plan": {
                "members": None if plan.members is None else sorted(plan.members),
                "nodes": len(plan.members) if plan.members is not None else plan.nodes,
                "mode": "ap", "sync_modes": ["remote"] if remote else list(plan.sync_modes),
                "sizes": list(plan.sizes), "concurrency": list(plan.concurrency),
                "duration_s": plan.duration_s, "baseline_s": plan.baseline_s,
                "cell_bytes_max": plan.cell_bytes_max, "client": "ChainClient "
                "(client-driven replication: head, then each other member in order)",
                "batch_max_chunks": plan.batch_max_chunks,
                "batches_in_flight": plan.batches_in_flight,
                "timers": None if remote else chain_timers(plan.node_toml),
            },
            "workdir": str(root),
            "baseline": {**base, "single_flu": flu, "single_flu_exit_codes": flu_exit},
            "daemons": daemons,
            "bootstrap_s": bootstrap_s,
            "managers": idle,
            "cells": cells,
            "convergence": convergence if convergence is not None else {
                "skipped": "a chain given by --members gets no faults" if remote
                else "faults disabled"},
            "ratios": ratios(cells, base, len(plan.members) if plan.members else plan.nodes,
                             convergence, remote),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_chain_faults(plan: ChainPlan, progress: Progress) -> dict[str, Any]:
    """``--faults-only``: a fresh local chain of ``plan.nodes`` daemons (the first sync
    mode), bootstrap, then only the fault phases (kill, restart, pause/heal): no append
    cells, no baselines.  A cheap way to measure convergence (seconds, not minutes)."""
    plan.validate()
    if plan.members is not None:
        raise BenchError("--faults-only needs our own local chain (not --members)")
    mode = plan.sync_modes[0]
    if plan.data_dir is not None:
        plan.data_dir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="machi-bench-chain-", dir=plan.data_dir))
    started = time.time()
    chain = LocalChain(root / "chain", plan.nodes, mode, plan.node_toml)
    try:
        chain.start()
        out: dict[str, Any] = _run_async(_faults_run, chain, progress,
                                         use_uvloop=plan.uvloop)
        out["daemons"] = {"sync": mode, "exit_codes": chain.stop_all()}
    except BaseException:
        progress(f"daemon log tails:\n{chain.logs()}")
        raise
    finally:
        chain.kill_all()
        shutil.rmtree(root, ignore_errors=True)
    conv = {"sync": mode, **out["convergence"]}
    heal = conv.get("partition", {}).get("heal_converged_s")
    return {
        "bench": "chain", "faults_only": True, "version": __version__,
        "started_unix_s": round(started, 3), "elapsed_s": round(time.time() - started, 3),
        "host": {"cpus": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2)},
        "plan": {"nodes": plan.nodes, "mode": "ap", "sync": mode,
                 "timers": chain_timers(plan.node_toml)},
        "bootstrap_s": out["bootstrap_s"], "daemons": out["daemons"], "convergence": conv,
        "heal_convergence_s": {
            "value": heal, "target": TARGET_HEAL_CONVERGENCE_S, "nodes": plan.nodes,
            "met": False if "error" in conv else None if heal is None
            else heal < TARGET_HEAL_CONVERGENCE_S},
    }


async def _faults_run(chain: LocalChain, progress: Progress) -> dict[str, Any]:
    seeds = chain.seeds
    t0 = time.monotonic()
    await chain_bootstrap(seeds, "bench")
    _, boot_s = await wait_converged(seeds, list(seeds), set(seeds), t0)
    progress(f"chain of {len(seeds)} bootstrapped and confirmed in {boot_s:.2f} s")
    return {"bootstrap_s": _r(boot_s), "convergence": await fault_phases(chain, progress)}


def format_table(result: dict[str, Any]) -> str:
    """A short human-readable table of a result object."""
    lines = [f"{'sync':<7}{'size':>7}{'conc':>5} | {'append op/s':>11}{'MB/s':>9}"
             f"{'p50 ms':>8}{'p99 ms':>8}{'err':>5}{'vs 1-FLU':>9}{'chunks/req':>11}"
             f"{'srv us/op':>10}{'cli us/op':>10}"]
    for c in result["cells"]:
        a = c["append"]
        lines.append(
            f"{c['sync']:<7}{c['size_label']:>7}{c['concurrency']:>5} | "
            f"{a['ops_per_s']:>11.1f}{a['mb_per_s']:>9.1f}{a['latency_ms_p50']:>8.2f}"
            f"{a['latency_ms_p99']:>8.2f}{a['errors']:>5}{c.get('vs_single_flu', '-'):>9}"
            f"{a.get('chunks_per_request') or '-':>11}"
            f"{a.get('servers_cpu_us_per_op', '-'):>10}{a.get('client_cpu_us_per_op', '-'):>10}")
    b = result["baseline"]
    lines.append(f"raw disk: 4KiB write+fdatasync {b['fdatasync_4k']['ops_per_s']:.1f} op/s, "
                 f"1MiB sequential write {b['seq_write_1m']['mb_per_s']:.1f} MB/s")
    conv = result["convergence"]
    if "error" in conv:
        lines.append(f"convergence FAILED in phase {conv['failed_phase']}: {conv['error']}")
    if "partition" in conv:
        lines.append(
            f"kill {conv['kill']['node']}: confirmed {conv['kill']['confirmed_s']} s, appends "
            f"ok {conv['kill']['appends_ok_s']} s; restart: back in UPI "
            f"{conv['restart']['back_in_upi_s']} s; SIGSTOP/SIGCONT heal: "
            f"{conv['partition']['heal_converged_s']} s")
    for name, r in result["ratios"].items():
        met = {True: "met", False: "MISSED", None: "n/a"}[r["met"]]
        lines.append(f"{name}: {r['value']} (target {r['target']}) {met}")
    return "\n".join(lines)
