"""The chain manager inside the daemon: one driver task per node that owns the Humming
Consensus state (``machi.core.chain_manager``) and performs its effects over the network.

Owns: starting the manager (a stored projection names this node, a public projection
naming it arrives, or an admin bootstrap), the one timer, feeding events to ``step`` one
at a time (a lock), performing effects the way ``machi.sim.cluster`` does -- reads of
every member (the local one straight from the store, peers with CHAIN_VIEW, in parallel,
each bounded by ``read_timeout_ms``), public writes (local inline, peers in parallel),
private writes and wedge changes on the local FLU (``machi.core.wedge`` rules only), kicks,
fitness publication (served by CHAIN_VIEW), repair (``machi.node.repair.run_repair`` in a
task, answered with ``RepairDone``), the CP UPI sync after each confirmation as UPI tail
(``run_upi_sync``, docs/repair.md) -- plus the admin ops, the adoption log lines ("adopted
projection" / "CONFIRM epoch") and ``<data-dir>/projection-log.jsonl``.
Must not: decide anything about chains (only ``step`` does), block the node's request
handling, or let a peer's failure escape a task (a member that does not answer is simply
unreachable this round).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from machi.client.flu_client import FluClient, parse_server
from machi.core import chain_manager as cm
from machi.core.chain_manager import (
    AdminBootstrap,
    AdminSetMembers,
    Config,
    Effect,
    Event,
    ManagerState,
    MemberView,
)
from machi.core.errors import BadArg, ConfigError, MachiError, NotWritten
from machi.core.projection import JSON, MemberSpec, Projection, valid_name
from machi.core.repair_plan import ChangeMemory
from machi.core.status import Status
from machi.core.wedge import after_confirm, wedge
from machi.core.wire import Op

from .config import NodeConfig
from .log import JsonLog
from .server import FluNode

PROJECTION_LOG_NAME = "projection-log.jsonl"
#: written when an admin op starts the manager: it restarts with the node from then on
ENABLED_NAME = "chain-manager.json"
#: per-request timeout of the repair's clients (chunks of up to 64 MiB)
REPAIR_REQUEST_TIMEOUT_MS = 30_000
#: CP UPI sync after a confirmation: attempts, and the delay step between them
UPI_SYNC_ATTEMPTS = 5
UPI_SYNC_DELAY_MS = 200
#: network effect tasks (reads, writes, kicks, repair) running at once, at most
MAX_EFFECT_TASKS = 64
#: trace events logged at info level (the rest at debug)
_INFO_TRACES = frozenset({
    "start", "propose", "bootstrap", "set_members", "loop_breaker", "removed", "insane",
    "repair_start", "repair_done", "rejoin", "bootstrap_refused", "set_members_refused",
    "own_store_unreadable",
})


@dataclass(frozen=True, slots=True)
class DriverSettings:
    """Timers of the manager and the driver (node config keys ``chain_*``)."""

    tick_base_ms: int = 200
    tick_spread_ms: int = 400
    tick_jitter_ms: int = 50
    reread_ms: int = 25
    kick_wait_ms: int = 100
    read_timeout_ms: int = 500
    round_timeout_ms: int = 2_000
    stability_time_ms: int = 1_000
    loop_hold_ms: int = 5_000
    fitness_stale_ms: int = 60_000
    unreachable_misses: int = 3
    ap_anti_entropy_interval_ms: int = 5_000
    projection_log_max_bytes: int = 16 * 1024 * 1024
    #: start on any stored projection naming this node (reference 7.1.1), not only after
    #: an admin op enabled the manager on this node
    auto_join: bool = False
    #: TEST ONLY canary (node key ``test_canary``): "skip-repair" answers StartRepair with
    #: RepairDone(ok) without copying and skips the CP UPI sync; "epoch-reuse" writes
    #: proposals at the current epoch number instead of a higher one.  Anything else: off.
    test_canary: str = ""

    @classmethod
    def from_node_config(cls, cfg: NodeConfig) -> DriverSettings:
        return cls(
            tick_base_ms=cfg.chain_tick_base_ms, tick_spread_ms=cfg.chain_tick_spread_ms,
            tick_jitter_ms=cfg.chain_tick_jitter_ms, reread_ms=cfg.chain_reread_ms,
            kick_wait_ms=cfg.chain_kick_wait_ms, read_timeout_ms=cfg.chain_read_timeout_ms,
            round_timeout_ms=cfg.chain_round_timeout_ms,
            stability_time_ms=cfg.chain_stability_time_ms,
            loop_hold_ms=cfg.chain_loop_hold_ms, fitness_stale_ms=cfg.chain_fitness_stale_ms,
            unreachable_misses=cfg.chain_unreachable_misses,
            ap_anti_entropy_interval_ms=cfg.chain_ap_anti_entropy_interval_ms,
            projection_log_max_bytes=cfg.projection_log_max_bytes,
            auto_join=cfg.chain_auto_join, test_canary=cfg.test_canary,
        )

    def manager_config(self, name: str, chain: str, mode: Any, incarnation: int = 0) -> Config:
        return Config(
            name=name, chain_name=chain, mode=mode, tick_base_ms=self.tick_base_ms,
            tick_spread_ms=self.tick_spread_ms, tick_jitter_ms=self.tick_jitter_ms,
            reread_ms=self.reread_ms, kick_wait_ms=self.kick_wait_ms,
            round_timeout_ms=self.round_timeout_ms, stability_time_ms=self.stability_time_ms,
            loop_hold_ms=self.loop_hold_ms, fitness_stale_ms=self.fitness_stale_ms,
            fitness_refresh_ms=max(1, self.fitness_stale_ms // 6),
            unreachable_misses=self.unreachable_misses,
            unreachable_after_ms=2 * self.read_timeout_ms, incarnation=incarnation,
            ap_anti_entropy_interval_ms=self.ap_anti_entropy_interval_ms,
        )


def projection_record(
    node: str, p: Projection, *, confirmed: bool, time_ms: int,
    time_unix_ms: int | None = None,
) -> dict[str, JSON]:
    """One line of the projection log (docs/history-write-once.md, "Projection logs").
    `time_ms` is the daemon's monotonic clock (comparable only on one kernel);
    `time_unix_ms`, the wall clock, lets a harness on another machine place the line."""
    rec: dict[str, JSON] = {
        "node": node, "epoch": p.epoch_number, "epoch_csum": p.epoch_csum.hex(),
        "author": p.author_server, "chain": p.chain_name, "mode": p.mode,
        "upi": list(p.upi), "repairing": list(p.repairing), "down": list(p.down),
        "witnesses": list(p.witnesses), "all_members": list(p.all_members),
        "confirmed": confirmed, "time_ms": time_ms, "projection": p.to_json(),
    }
    if time_unix_ms is not None:
        rec["time_unix_ms"] = time_unix_ms
    return rec


class ProjectionLog:
    """``projection-log.jsonl``: append-only JSON lines, rotated to ``.1`` (replacing the
    previous one) when it would pass ``max_bytes`` -- at most twice that on disk."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes

    def append(self, record: Mapping[str, JSON]) -> None:
        line = (json.dumps(record, separators=(",", ":"), sort_keys=True) + "\n").encode()
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size and size + len(line) > self.max_bytes:
            self.path.replace(self.path.with_name(self.path.name + ".1"))
        with self.path.open("ab") as fh:
            fh.write(line)


def parse_members_meta(raw: Any) -> dict[str, MemberSpec]:
    """``{name: "HOST:PORT"}`` from an admin request -> member specs (``BadArg``)."""
    if not isinstance(raw, dict) or not raw:
        raise BadArg("members: want a non-empty object {name: \"HOST:PORT\"}")
    out: dict[str, MemberSpec] = {}
    for name, addr in raw.items():
        if not isinstance(name, str) or not valid_name(name):
            raise BadArg(f"members: bad member name {name!r}")
        if not isinstance(addr, str):
            raise BadArg(f"members.{name}: want \"HOST:PORT\"")
        host, port = parse_server(addr)
        out[name] = MemberSpec(name, host, port)
    return out


def _witnesses_meta(raw: Any, members: Mapping[str, MemberSpec]) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(w, str) for w in raw):
        raise BadArg("witnesses: want a list of member names")
    bad = [w for w in raw if w not in members]
    if bad:
        raise BadArg(f"witnesses {bad} are not members")
    if len(set(raw)) >= len(members):
        raise BadArg("at least one member must not be a witness")
    return tuple(dict.fromkeys(raw))


class ChainDriver:
    """Runs one node's chain manager (see the module docstring)."""

    def __init__(
        self,
        node: FluNode,
        *,
        settings: DriverSettings,
        log: JsonLog,
        data_dir: Path,
        secret: bytes | None = None,
        seed: int | str | None = None,
        now_ms: Callable[[], int] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        tls_hostname: str | None = None,
    ) -> None:
        self.node = node
        self.name = node.name
        self.settings = settings
        self.log = log
        self.secret = secret
        #: TLS for every connection to a peer (reads, writes, kicks, repair)
        self.ssl_context = ssl_context
        self.tls_hostname = tls_hostname
        self.rng = random.Random(seed if seed is not None else f"machi-chain/{node.name}")
        self._now_ms = now_ms or (lambda: int(anyio.current_time() * 1000))
        self.plog = ProjectionLog(Path(data_dir) / PROJECTION_LOG_NAME,
                                  settings.projection_log_max_bytes)
        self.enabled_path = Path(data_dir) / ENABLED_NAME
        self.state: ManagerState | None = None
        self.addrs: dict[str, tuple[str, int]] = {}
        self._clients: dict[str, tuple[tuple[str, int], FluClient, anyio.Event]] = {}
        self._clients_lock = anyio.Lock()
        self._lock = anyio.Lock()
        self._tick_at_ms: int | None = None
        self._wake = anyio.Event()
        self._kicked = False
        self._start_hint: Projection | None = None
        self._limiter = anyio.CapacityLimiter(MAX_EFFECT_TASKS)
        self._tg: anyio.abc.TaskGroup | None = None
        #: what AP anti-entropy passes saw of each file (planned only when changed)
        self._ae_memory = ChangeMemory()
        #: the last anti-entropy pass's result and counters (chain status)
        self.ae_last: dict[str, Any] | None = None
        #: counters for tests and status
        self.rounds = 0
        self.adoptions = 0

    # ---- hooks (synchronous, called by the server) -------------------------------------
    def kick(self) -> None:
        self._kicked = True
        self._wake.set()

    def public_written(self, p: Projection) -> None:
        if self.state is None:
            if self.name in p.all_members and self._may_start():
                self._start_hint = p
                self._wake.set()
        elif p.epoch_number > self.state.current.epoch_number:
            self.kick()  # a proposal for me to look at: don't wait for the timer

    def attach(self) -> None:
        self.node.on_kick = self.kick
        self.node.on_public_write = self.public_written
        self.node.chain_admin = self.admin

    async def prepare(self) -> None:
        """Before the node serves: an AP node that restarts inside the UPI of its latest
        private projection stays wedged until its manager adopts a newer epoch
        (``chain_manager.restart_needs_new_epoch``; the manager starts a moment later, and
        until then the FLU must not serve its pre-restart epoch)."""
        if not self._may_start():
            return
        private = await self._latest("private")
        if cm.restart_needs_new_epoch(private, self.name):
            assert private is not None
            self.node.restarted = True
            self.node.set_wedge_state(wedge(self.node.state),
                                      f"restarted inside epoch {private.epoch_number}: "
                                      "waiting for a new epoch and repair")

    # ---- main loop ---------------------------------------------------------------------
    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            try:
                await self._start_from_store()
                while True:
                    await self._next()
            finally:
                tg.cancel_scope.cancel()

    async def _next(self) -> None:
        if self._start_hint is not None:
            self._start_hint = None
            await self._start_from_store()
            return
        if self._kicked:
            self._kicked = False
            if self.state is None:
                await self._start_from_store()
            else:
                await self.feed(cm.Kick("local"))
            return
        now = self._now_ms()
        if self._tick_at_ms is not None and now >= self._tick_at_ms:
            self._tick_at_ms = None
            await self.feed(cm.Tick())
            return
        self._wake = anyio.Event()
        if self._pending():  # set between the checks above and the new Event
            return
        delay = math.inf if self._tick_at_ms is None else (self._tick_at_ms - now) / 1000
        with anyio.move_on_after(delay):
            await self._wake.wait()

    def _may_start(self) -> bool:
        return self.settings.auto_join or self.enabled_path.exists()

    def _enable(self, chain: str, mode: str) -> None:
        try:
            self.enabled_path.write_text(json.dumps({"chain": chain, "mode": mode}) + "\n")
        except OSError as err:
            self.log.error("cannot record that the chain manager is enabled", error=str(err))

    def _pending(self) -> bool:
        return self._kicked or self._start_hint is not None

    async def _start_from_store(self) -> None:
        """Start the manager when the local store holds a projection naming this node."""
        async with self._lock:
            if self.state is not None or not self._may_start():
                return
            private = await self._latest("private")
            if private is not None and private.epoch_number > 0:
                self._start_locked(private.chain_name, private.mode, private)
                return
            public = await self._latest("public")
            if public is not None and self.name in public.all_members:
                self._learn(public)
                self._start_locked(public.chain_name, public.mode, private)

    def _start_locked(self, chain: str, mode: Any, private: Projection | None) -> None:
        config = self.settings.manager_config(self.name, chain, mode,
                                              incarnation=self.node.store.incarnation)
        if private is not None:
            self._learn(private)
        # Every manager start in this process is a start after the daemon (re)started:
        # a stored private projection predates this process.
        st, effects = cm.initial_state(config, private, now_ms=self._now_ms(),
                                       restarted=True)
        self.state = st
        self.node.restarted = st.restarted
        self.log.info("chain manager started", chain=chain, mode=mode,
                      epoch=st.current.epoch_number)
        self._perform_sync(effects)

    async def _latest(self, kind: str) -> Projection | None:
        try:
            p: Projection = await self.node.store.projection_read_latest(kind)
        except NotWritten:
            return None
        return p

    # ---- feeding events ----------------------------------------------------------------
    async def feed(self, event: Event) -> list[Effect]:
        """Apply one event and perform its effects (one event at a time)."""
        async with self._lock:
            return await self._feed_locked(event)

    async def _feed_locked(self, event: Event) -> list[Effect]:
        if self.state is None:
            return []
        st, effects = cm.step(self.state, event, now_ms=self._now_ms(), rng=self.rng)
        self.state = st
        self.node.restarted = st.restarted
        for e in effects:
            try:
                await self._perform(e)
            except MachiError as err:
                self.log.error("chain effect failed", effect=type(e).__name__,
                               status=err.status.name, error=err.message)
        return effects

    def _perform_sync(self, effects: list[Effect]) -> None:
        """Effects of ``initial_state`` (a timer, a trace, a wedge after a restart)."""
        for e in effects:
            if isinstance(e, cm.ScheduleTick):
                self._schedule(e.at_ms)
            elif isinstance(e, cm.SetWedge) and e.wedged:
                self.node.set_wedge_state(wedge(self.node.state),
                                          "restarted inside my upi: waiting for a new epoch")
            elif isinstance(e, cm.Trace):
                self._trace(e)

    def _schedule(self, at_ms: int) -> None:
        self._tick_at_ms = at_ms  # one timer: a new one replaces the old
        self._wake.set()

    def _spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        assert self._tg is not None
        self._tg.start_soon(self._limited, fn, *args)

    async def _limited(self, fn: Callable[..., Any], *args: Any) -> None:
        async with self._limiter:
            try:
                await fn(*args)
            except Exception as e:  # an effect task must never take the node down
                self.log.error("chain effect task failed", task=getattr(fn, "__name__", "?"),
                               error=repr(e))

    async def _perform(self, e: Effect) -> None:
        if isinstance(e, cm.ScheduleTick):
            self._schedule(e.at_ms)
        elif isinstance(e, cm.ReadMembers):
            self.rounds += 1
            self._spawn(self._read_members, e)
        elif isinstance(e, cm.WritePublic):
            await self._write_public(self._canary_epoch_reuse(e))
        elif isinstance(e, cm.WritePrivate):
            await self._write_private(e.projection)
        elif isinstance(e, cm.SetWedge):
            await self._set_wedge(e)
        elif isinstance(e, cm.StartRepair):
            self._spawn(self._repair, e.projection)
        elif isinstance(e, cm.StartAntiEntropy):
            self._spawn(self._anti_entropy, e.projection)
        elif isinstance(e, cm.KickPeer):
            self._spawn(self._kick_peer, e.name)
        elif isinstance(e, cm.PublishFitness):
            self._publish_fitness(e)
        elif isinstance(e, cm.Trace):
            self._trace(e)
        else:  # pragma: no cover - a new effect type needs a driver line
            raise TypeError(f"unhandled effect {e!r}")

    def _publish_fitness(self, e: cm.PublishFitness) -> None:
        """CHAIN_VIEW serves the reports with their ages on my clock at serving time
        (never a birth time: clocks of different hosts have unrelated origins)."""
        reports = [(r.to_json(), e.born_ms.get(o)) for o, r in e.reports.items()]

        def view() -> list[dict[str, Any]]:
            now = self._now_ms()
            return [{**d, "age_ms": 0 if born is None else max(0, now - born)}
                    for d, born in reports]

        self.node.fitness_view = view

    def _trace(self, e: cm.Trace) -> None:
        what = str(e.fields.get("event", "trace"))
        level = "info" if what in _INFO_TRACES else "debug"
        self.log.log(level, f"chain {what}", **dict(e.fields))

    # ---- members -----------------------------------------------------------------------
    def _learn(self, p: Projection) -> None:
        for name, spec in p.members_dict.items():
            if name != self.name and spec.address and spec.port:
                self.addrs[name] = (spec.address, spec.port)

    async def _client(self, name: str) -> FluClient | None:
        addr = self.addrs.get(name)
        if addr is None or self._tg is None:
            return None
        async with self._clients_lock:
            have = self._clients.get(name)
            if have is not None and have[0] == addr:
                return have[1]
            if have is not None:
                have[2].set()  # address changed: close the old client
            c = FluClient(addr[0], addr[1], secret=self.secret, name=f"chain-{self.name}",
                          ssl_context=self.ssl_context, tls_hostname=self.tls_hostname,
                          timeout_ms=self.settings.read_timeout_ms,
                          connect_timeout_ms=self.settings.read_timeout_ms)
            done = anyio.Event()
            await self._tg.start(self._hold_client, c, done)
            self._clients[name] = (addr, c, done)
            return c

    @staticmethod
    async def _hold_client(
        c: FluClient, done: anyio.Event, *, task_status: anyio.abc.TaskStatus[None]
    ) -> None:
        async with c:
            task_status.started()
            await done.wait()

    async def _local_view(self, want_confirmed: bool) -> MemberView:
        return MemberView(
            public=await self._latest("public"), private=await self._latest("private"),
            private_confirmed=self.node.confirmed_private if want_confirmed else None,
            fitness=dict(self.state.fitness) if self.state is not None else {},
            wedged=self.node.state.wedged,
            fitness_age_ms={} if self.state is None else {
                o: max(0, self._now_ms() - b) for o, b in self.state.fitness_born_ms.items()},
        )

    async def _read_members(self, e: cm.ReadMembers) -> None:
        views: dict[str, MemberView | Status] = {}
        timeout_ms = self.settings.read_timeout_ms

        async def one(m: str) -> None:
            try:
                if m == self.name:
                    views[m] = await self._local_view(e.want_confirmed)
                    return
                c = await self._client(m)
                if c is None:
                    views[m] = Status.PARTITION
                    return
                with anyio.fail_after(timeout_ms / 1000):
                    views[m] = await c.chain_view(want_confirmed=e.want_confirmed,
                                                  timeout_ms=timeout_ms)
            except (MachiError, TimeoutError, OSError) as err:
                views[m] = getattr(err, "status", Status.PARTITION)

        async with anyio.create_task_group() as tg:
            for m in e.members:
                tg.start_soon(one, m)
        for v in views.values():
            if isinstance(v, MemberView) and v.public is not None:
                self._learn(v.public)
        await self.feed(cm.MembersRead(e.round_id, {m: views[m] for m in e.members}))

    def _canary_epoch_reuse(self, e: cm.WritePublic) -> cm.WritePublic:
        """TEST ONLY canary epoch-reuse: the proposal is rewritten to the current epoch
        number (checksum recomputed), so two different projections share one number.  Done
        here, not in ``machi.core``: the core's proposal logic stays untouched."""
        cur = self.state.current.epoch_number if self.state is not None else 0
        if self.settings.test_canary != "epoch-reuse" or not 0 < cur < e.projection.epoch_number:
            return e
        p = e.projection.evolve(epoch_number=cur)
        self.log.warning("CANARY epoch-reuse: proposal rewritten to a used epoch number",
                         proposed=e.projection.epoch_number, epoch=cur)
        return cm.WritePublic(e.round_id, p, e.members)

    async def _write_public(self, e: cm.WritePublic) -> None:
        self._learn(e.projection)
        results: dict[str, Status] = {}
        remote = [m for m in e.members if m != self.name]
        if self.name in e.members:
            try:
                await self.node.write_projection("public", e.projection)
                results[self.name] = Status.OK
            except MachiError as err:
                results[self.name] = err.status
        if remote:
            self._spawn(self._write_remote, e, remote, results)
        else:
            self._spawn(self.feed, cm.PublicWritten(e.round_id, e.projection.epoch_number,
                                                    results))

    async def _write_remote(
        self, e: cm.WritePublic, remote: list[str], results: dict[str, Status]
    ) -> None:
        async def one(m: str) -> None:
            try:
                c = await self._client(m)
                if c is None:
                    results[m] = Status.PARTITION
                    return
                with anyio.fail_after(self.settings.read_timeout_ms / 1000):
                    await c.projection_write("public", e.projection)
                results[m] = Status.OK
            except (MachiError, TimeoutError, OSError) as err:
                results[m] = getattr(err, "status", Status.PARTITION)

        async with anyio.create_task_group() as tg:
            for m in remote:
                tg.start_soon(one, m)
        await self.feed(cm.PublicWritten(e.round_id, e.projection.epoch_number, results))

    async def _write_private(self, p: Projection) -> None:
        prev = await self._latest("private")
        await self.node.write_projection("private", p)
        self._learn(p)
        now = self._now_ms()
        if prev is None or prev.epoch_id != p.epoch_id:
            self.adoptions += 1
            self._log_adoption("adopted projection", p, confirmed=False, now=now)
        elif p.dbg2.get("confirmed") and not prev.dbg2.get("confirmed"):
            self._log_adoption(f"CONFIRM epoch {p.epoch_number}", p, confirmed=True, now=now)
            if p.mode == "cp" and p.tail == self.name and len(p.upi_non_witnesses) > 1:
                self._spawn(self._upi_sync, p)

    def _log_adoption(self, msg: str, p: Projection, *, confirmed: bool, now: int) -> None:
        rec = projection_record(self.name, p, confirmed=confirmed, time_ms=now,
                                time_unix_ms=int(time.time() * 1000))
        short = {k: v for k, v in rec.items() if k != "projection"}
        self.log.info(msg, **short)
        try:
            self.plog.append(rec)
        except OSError as err:
            self.log.error("projection log write failed", error=str(err))

    async def _set_wedge(self, e: cm.SetWedge) -> None:
        if e.wedged:
            self.node.set_wedge_state(wedge(self.node.state), "chain manager wedged the node")
            return
        cur = await self._latest("private")
        if cur is not None and not cur.is_none():
            self.node.set_wedge_state(after_confirm(self.node.state, e.epoch_id),
                                      f"epoch {e.epoch_id.short()} confirmed")

    async def _kick_peer(self, name: str) -> None:
        with contextlib.suppress(MachiError, TimeoutError, OSError):
            c = await self._client(name)
            if c is not None:
                with anyio.fail_after(self.settings.read_timeout_ms / 1000):
                    await c.kick()

    async def _repair(self, p: Projection) -> None:
        if self.settings.test_canary == "skip-repair":  # TEST ONLY canary
            self.log.warning("CANARY skip-repair: repair answered ok without copying",
                             epoch=p.epoch_number, repairing=list(p.repairing))
            await self.feed(cm.RepairDone(p.epoch_id, True, "CANARY skip-repair: nothing copied"))
            return
        from machi.node.repair import RepairStats, run_repair

        stats = RepairStats()
        token = self.node.metrics.repair.started("repair", stats)
        ok = False
        try:
            # own clients: repair moves big chunks, the manager's clients have short
            # timeouts meant for projection reads
            async with contextlib.AsyncExitStack() as stack:
                clients = await self._member_clients(
                    stack, [m for m in (*p.upi, *p.repairing) if m not in p.witnesses],
                    "repair")
                res = await run_repair(p, local_name=self.name, store=self.node.store,
                                       clients=clients, log=self.log, stats=stats)
                ok, detail = res.ok, res.detail
        except Exception as err:  # repair must answer, whatever happened
            ok, detail = False, f"repair raised {err!r}"
        finally:
            self.node.metrics.repair.finished(token, ok)
        await self.feed(cm.RepairDone(p.epoch_id, ok, detail))

    async def _anti_entropy(self, p: Projection) -> None:
        """AP, as the UPI tail of a stable chain: one anti-entropy pass
        (machi.node.repair.run_anti_entropy; docs/repair.md), answered with
        AntiEntropyDone whatever happens."""
        from machi.node.repair import RepairStats, run_anti_entropy

        if self.settings.test_canary == "skip-repair":  # TEST ONLY canary: no copies
            await self.feed(cm.AntiEntropyDone(p.epoch_id, True, "CANARY skip-repair"))
            return
        stats = RepairStats()
        token = self.node.metrics.repair.started("anti_entropy", stats)
        ok, detail = False, ""
        try:
            async with contextlib.AsyncExitStack() as stack:
                clients = await self._member_clients(stack, p.upi_non_witnesses, "ae")
                res = await run_anti_entropy(p, local_name=self.name, store=self.node.store,
                                             clients=clients, log=self.log,
                                             memory=self._ae_memory, stats=stats)
                ok, detail = res.ok, res.detail
        except Exception as err:  # the manager must get its answer, whatever happened
            ok, detail = False, f"anti-entropy raised {err!r}"
        finally:
            self.node.metrics.repair.finished(token, ok)
        self.ae_last = {"epoch": p.epoch_number, "ok": ok, "detail": detail[:500],
                        **stats.to_json()}
        await self.feed(cm.AntiEntropyDone(p.epoch_id, ok, detail))

    async def _member_clients(self, stack: contextlib.AsyncExitStack, members: Iterable[str],
                              purpose: str) -> dict[str, FluClient]:
        """Repair-timeout clients to ``members`` other than this node (those with a known
        address), closed with ``stack``; ``purpose`` names them (``repair-n1``...)."""
        clients: dict[str, FluClient] = {}
        for m in members:
            addr = self.addrs.get(m)
            if m != self.name and addr is not None:
                clients[m] = await stack.enter_async_context(FluClient(
                    addr[0], addr[1], secret=self.secret, name=f"{purpose}-{self.name}",
                    ssl_context=self.ssl_context, tls_hostname=self.tls_hostname,
                    timeout_ms=REPAIR_REQUEST_TIMEOUT_MS,
                    connect_timeout_ms=self.settings.read_timeout_ms))
        return clients

    async def _upi_sync(self, p: Projection) -> None:
        """CP, as the UPI tail of a newly confirmed epoch: make the UPI members agree
        (machi.node.repair.run_upi_sync; docs/repair.md).  Bounded retries while the
        epoch stays current (the other members unwedge when they confirm it too)."""
        from machi.node.repair import RepairStats, run_upi_sync

        if self.settings.test_canary == "skip-repair":  # TEST ONLY canary: no repair at all
            self.log.warning("CANARY skip-repair: UPI sync skipped", epoch=p.epoch_number)
            return
        for attempt in range(UPI_SYNC_ATTEMPTS):
            await anyio.sleep(UPI_SYNC_DELAY_MS * (attempt + 1) / 1000)
            cur = await self._latest("private")
            if cur is None or cur.epoch_id != p.epoch_id:
                return  # a newer epoch: its own confirmation syncs again
            stats = RepairStats()
            token = self.node.metrics.repair.started("upi_sync", stats)
            ok = False
            try:
                async with contextlib.AsyncExitStack() as stack:
                    clients = await self._member_clients(stack, p.upi_non_witnesses, "sync")
                    res = await run_upi_sync(p, local_name=self.name, store=self.node.store,
                                             clients=clients, log=self.log, stats=stats)
                ok = res.ok
                if ok:
                    return
            except (MachiError, OSError, TimeoutError) as err:
                self.log.warning("upi sync attempt failed", epoch=p.epoch_number,
                                 error=repr(err))
            finally:
                self.node.metrics.repair.finished(token, ok)
        self.log.error("upi sync gave up", epoch=p.epoch_number, attempts=UPI_SYNC_ATTEMPTS)

    # ---- admin -------------------------------------------------------------------------
    async def admin(self, op: Op, meta: dict[str, Any]) -> dict[str, Any]:
        if op is Op.CHAIN_STATUS:
            return await self.status()
        members = parse_members_meta(meta.get("members"))
        if self.name not in members:
            raise BadArg(f"{self.name} is not among the members {sorted(members)}")
        wit_raw = meta.get("witnesses")
        witnesses = None if wit_raw is None else _witnesses_meta(wit_raw, members)
        for spec in members.values():
            if spec.name != self.name:
                self.addrs[spec.name] = (spec.address, spec.port)
        async with self._lock:
            if op is Op.CHAIN_BOOTSTRAP:
                chain, mode = meta.get("chain"), meta.get("mode")
                if not isinstance(chain, str) or not valid_name(chain):
                    raise BadArg(f"chain: bad chain name {chain!r}")
                if mode not in ("ap", "cp"):
                    raise BadArg(f"mode: want 'ap' or 'cp', got {mode!r}")
                propose = meta.get("propose", True)
                if self.state is None:
                    private = await self._latest("private")
                    if private is not None and private.epoch_number > 0:
                        self._start_locked(private.chain_name, private.mode, private)
                    else:
                        self._start_locked(chain, mode, private)
                assert self.state is not None
                c = self.state.config
                if (c.chain_name, c.mode) != (chain, mode):
                    raise BadArg(f"this node runs chain {c.chain_name!r} in {c.mode} mode")
                self._enable(chain, mode)
                if not propose:
                    return await self.status()
                event: Event = AdminBootstrap(tuple(members), witnesses or (), members)
            else:
                if self.state is None:
                    raise BadArg("no chain is configured on this node (bootstrap first)")
                event = AdminSetMembers(tuple(members), witnesses, members)
            effects = await self._feed_locked(event)
        for e in effects:
            if isinstance(e, cm.Trace) and str(e.fields.get("event", "")).endswith("_refused"):
                raise BadArg(f"refused: {e.fields.get('reason')}")
        return await self.status()

    async def status(self) -> dict[str, Any]:
        st = self.state
        p = st.current if st is not None else await self._latest("private")
        out: dict[str, Any] = {
            "node": self.name, "running": st is not None, "wedged": self.node.state.wedged,
            "confirmed": bool(st is not None and st.confirmed),
        }
        if p is not None:
            out.update({
                "chain": p.chain_name, "mode": p.mode, "epoch": p.epoch_number,
                "epoch_csum": p.epoch_csum.hex(), "author": p.author_server,
                "upi": list(p.upi), "repairing": list(p.repairing), "down": list(p.down),
                "witnesses": list(p.witnesses), "all_members": list(p.all_members),
            })
        if st is not None:
            out["repair"] = st.repair_status
            if st.current.mode == "ap":
                out["anti_entropy"] = {
                    "passes": st.ae_passes, "running": st.ae_epoch is not None,
                    "status": st.ae_status, "last": self.ae_last}
        return out


def peer_ssl_context(cfg: NodeConfig) -> ssl.SSLContext | None:
    """The client context for peer connections: a TLS node talks TLS to its peers,
    verifying them with ``tls_ca`` (default: its own ``tls_cert``); a plain node, plain."""
    if cfg.tls_cert is None:
        return None
    ca = cfg.tls_ca or cfg.tls_cert
    try:
        return ssl.create_default_context(cafile=str(ca))
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"tls_ca: cannot load {ca}: {e}") from None


def attacher(cfg: NodeConfig, log: JsonLog | None = None) -> Any:
    """An ``attach`` for ``run_node``: a chain driver in the node's task group."""

    ctx = peer_ssl_context(cfg)  # a bad CA file stops the start-up, not a task

    async def attach(node: FluNode, tg: anyio.abc.TaskGroup) -> None:
        driver = ChainDriver(node, settings=DriverSettings.from_node_config(cfg),
                             log=log or node.log, data_dir=cfg.data_dir, secret=cfg.secret(),
                             ssl_context=ctx, tls_hostname=cfg.tls_server_hostname)
        driver.attach()
        await driver.prepare()
        tg.start_soon(driver.run)

    return attach


__all__ = ["ChainDriver", "DriverSettings", "ProjectionLog", "attacher", "peer_ssl_context",
           "projection_record"]
