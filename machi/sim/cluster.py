"""The deterministic cluster: N chain managers, in-memory FLUs, one-way links, clients.

Owns the discrete-event loop (integer milliseconds, one heap, one seed), the directed
network (a cut link ``(a, b)`` loses every message from a to b: a's requests to b, and
b's replies to a's requests travel b->a, so a cut a->b alone lets b's writes land on a
while b never hears the answer -- Machi's one-way partitions at message level), the
driver of ``machi.core.chain_manager.step`` (feed events, perform effects), the
simulated Chain Replication client, the simulated repair and the invariant checks after
every event.  Must not: make any decision that belongs to the chain manager.

Invariants (violations are collected as strings, never raised):
  * each node's adopted (private) epochs strictly increase (none -> none may repeat);
  * every adopted transition is safe (machi.core.transition, relative to the adopter);
  * at one epoch number no node sits in two different UPIs;
  * CP: no two different projections with non-empty UPIs are confirmed (serving data)
    at one epoch; a read of an acknowledged chunk from a serving tail returns its bytes;
  * any mode: one place (file, offset) never holds two different values on two FLUs;
  * AP, after healing and convergence (``replica_divergence``, checked by the scenario
    runner): every replica holds the same set of chunks.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from machi.core import chain_manager as cm
from machi.core import cr_plan
from machi.core.chain_manager import (
    AdminBootstrap,
    AntiEntropyDone,
    Config,
    Effect,
    Event,
    ManagerState,
    MembersRead,
    MemberView,
    RepairDone,
)
from machi.core.checksum import CsumTag, TaggedCsum, digest
from machi.core.epoch import EpochId
from machi.core.list_summary import summarize
from machi.core.projection import Mode, Projection
from machi.core.repair_plan import (
    ChangeMemory,
    Copy,
    Listing,
    Problem,
    anti_entropy_roles,
    plan_file,
)
from machi.core.status import Status
from machi.core.transition import transition_problem

from .flu import SimFlu

#: the default read timeout of the simulated driver
READ_TIMEOUT_MS = 25
#: AP client: retries of an append's propagation after a failure, and the first delay
CONTINUE_TRIES = 6
CONTINUE_FIRST_MS = 20
#: queued events that are messages over a link (``deliver`` may take any of them early)
MESSAGE_KINDS = frozenset({"read_req", "read_reply", "write_req", "kick"})
#: the AP anti-entropy period in the simulator (the daemon's 5 s scaled like its other
#: timers, stability 1000 -> 300 ms)
AP_ANTI_ENTROPY_INTERVAL_MS = 1_500


def sim_config(name: str, chain: str, mode: Mode, incarnation: int = 0) -> Config:
    """Chain-manager timing scaled for the simulator (same ratios as the daemon)."""
    return Config(
        name=name, chain_name=chain, mode=mode, tick_base_ms=100, tick_spread_ms=200,
        tick_jitter_ms=20, reread_ms=10, kick_wait_ms=40, round_timeout_ms=200,
        stability_time_ms=300, loop_hold_ms=1500, fitness_stale_ms=20_000,
        fitness_refresh_ms=3_000, unreachable_after_ms=2 * READ_TIMEOUT_MS,
        unreachable_strike_decay_ms=120_000, incarnation=incarnation,
        ap_anti_entropy_interval_ms=AP_ANTI_ENTROPY_INTERVAL_MS,
    )


@dataclass(frozen=True, slots=True)
class _SimEntry:
    """A checksum-list entry of an in-memory FLU (``repair_plan.EntryLike``)."""

    offset: int
    size: int
    csum: TaggedCsum


@dataclass
class _Batch:
    members: tuple[str, ...]
    views: dict[str, MemberView] = field(default_factory=dict)
    done: bool = False


@dataclass
class Stats:
    appends_ok: int = 0
    appends_fail: int = 0
    appends_info: int = 0
    reads_ok: int = 0
    reads_fail: int = 0
    repairs_ok: int = 0
    repairs_failed: int = 0
    anti_entropy_ok: int = 0
    anti_entropy_failed: int = 0
    #: chunk copies anti-entropy made (one per destination) and files it skipped as
    #: unchanged since they last agreed
    anti_entropy_copies: int = 0
    anti_entropy_unchanged: int = 0
    anti_entropy_planned: int = 0
    #: planned files whose part to plan had the same summary on every member (not planned)
    anti_entropy_equal: int = 0
    events: int = 0


class Cluster:
    def __init__(
        self,
        names: list[str],
        *,
        mode: Mode,
        seed: int,
        witnesses: tuple[str, ...] = (),
        chain: str = "c1",
        delay_ms_max: int = 5,
        read_timeout_ms: int = READ_TIMEOUT_MS,
        repair_ms: int = 20,
        client_interval_ms: int = 0,
        on_adopt: Callable[[dict[str, Any]], None] | None = None,
        on_change: Callable[[str], None] | None = None,
        on_trace: Callable[[Any], None] | None = None,
        loss_ppm: int = 0,
        slow_ppm: int = 0,
        cp_read_check: bool = True,
        slow_nodes: Mapping[str, int] | None = None,
        clock_skew_ms: Mapping[str, int] | None = None,
        timers: Mapping[str, int] | None = None,
        slow_delay_ms: tuple[int, int] = (30, 300),
    ) -> None:
        #: chain-manager Config fields replacing sim_config's (e.g. the daemon's defaults)
        self.timers = dict(timers or {})
        #: how late a slow message arrives (slow_ppm, slow_nodes), in ms
        self.slow_delay_ms = slow_delay_ms
        #: per node, how far its clock (the ``now_ms`` its manager sees) is ahead of the
        #: simulation's: hosts' monotonic clocks have unrelated origins (>= 0 each)
        self.clock_skew_ms = dict(clock_skew_ms or {})
        if any(v < 0 for v in self.clock_skew_ms.values()):
            raise ValueError("clock_skew_ms: offsets must be >= 0")
        #: the CP quorum epoch check on reads that find nothing (cr_plan.absence_verdict);
        #: False only to show in a test what goes wrong without it
        self.cp_read_check = cp_read_check
        self.on_trace = on_trace
        #: fault point: each message (request or reply) is lost with this probability
        #: (parts per million), and each repair fails with it too
        self.loss_ppm = loss_ppm
        #: fault point: each message is delayed by 30-300 ms (past the read timeout, so
        #: it arrives after newer messages) with this probability (parts per million)
        self.slow_ppm = slow_ppm
        #: the same per node (a member slow for good: every message from or to it)
        self.slow_nodes = dict(slow_nodes or {})
        self.names = list(names)
        self.mode: Mode = mode
        self.witnesses = tuple(witnesses)
        self.chain = chain
        self.seed = seed
        self.rng = random.Random(seed)
        self.delay_ms_max = delay_ms_max
        self.read_timeout_ms = read_timeout_ms
        self.repair_ms = repair_ms
        self.client_interval_ms = client_interval_ms
        self.on_adopt = on_adopt
        self.on_change = on_change
        self.now = 0
        self._seq = 0
        self._queue: list[tuple[int, int, str, tuple[Any, ...]]] = []
        self.flus = {n: SimFlu(n, witness=n in self.witnesses) for n in names}
        #: per node, what its anti-entropy passes saw (the driver's memory: lost at a crash)
        self.ae_memory: dict[str, ChangeMemory] = {n: ChangeMemory() for n in names}
        self.mgr: dict[str, ManagerState | None] = {n: None for n in names}
        self.mgr_rng = {n: random.Random(f"{seed}/{n}") for n in names}
        self.incarnation = {n: 0 for n in names}
        self.tick_gen = {n: 0 for n in names}
        self.batches: dict[tuple[str, int, int], _Batch] = {}
        self.cut: set[tuple[str, str]] = set()
        self.violations: list[str] = []
        self.acked: dict[tuple[str, int], bytes] = {}
        #: appends with an unknown outcome (info) whose place the client learnt
        self.maybe: dict[tuple[str, int], bytes] = {}
        #: places a client has read as written (must never read unwritten again, CP)
        self.observed: set[tuple[str, int]] = set()
        self.stats = Stats()
        self.adoptions: list[dict[str, Any]] = []
        self._by_epoch_upi: dict[tuple[int, str], EpochId] = {}
        self._confirmed: dict[int, EpochId] = {}
        self._client_seq = 0
        #: AP appends whose propagation a client is still retrying (bounded)
        self._continuing = 0
        for n in names:
            self._start(n)
        if client_interval_ms:
            self._push(client_interval_ms, "client", ())

    # ---- event queue ------------------------------------------------------------------
    def _push(self, at: int, kind: str, payload: tuple[Any, ...]) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (max(at, self.now), self._seq, kind, payload))

    def _delay(self) -> int:
        return self.rng.randint(1, self.delay_ms_max)

    def _fault(self) -> bool:
        """A fault point: fires with probability ``loss_ppm`` / 10^6 (seeded)."""
        return self.loss_ppm > 0 and self.rng.randrange(1_000_000) < self.loss_ppm

    def _send(self, src: str, dst: str, at: int, kind: str, payload: tuple[Any, ...]) -> None:
        """One message over the directed link src -> dst: lost if cut or a fault fires."""
        if dst in self.flus and self.link_ok(src, dst) and not self._fault():
            ppm = max(self.slow_ppm, self.slow_nodes.get(src, 0), self.slow_nodes.get(dst, 0))
            if ppm and self.rng.randrange(1_000_000) < ppm:
                at += self.rng.randint(*self.slow_delay_ms)  # fault point: slow, reordered
            self._push(at, kind, payload)

    def run_until(self, t_end: int) -> None:
        while self._queue and self._queue[0][0] <= t_end:
            at, _, kind, payload = heapq.heappop(self._queue)
            self.now = at
            self.stats.events += 1
            getattr(self, "_ev_" + kind)(*payload)
        self.now = max(self.now, t_end)

    def pending_messages(self) -> list[tuple[int, str]]:
        """(due time, kind) of every message in flight, in delivery order."""
        return [(e[0], e[2]) for e in sorted(self._queue, key=lambda e: (e[0], e[1]))
                if e[2] in MESSAGE_KINDS]

    def deliver(self, pick: int) -> str | None:
        """Deliver the ``pick``-th (modulo their number) message in flight now, ahead of
        everything queued before it: a reordering chosen by a test (Hypothesis), which
        is a shorter delay on that link, so every guarantee must hold.  Returns its kind,
        or None when nothing is in flight."""
        msgs = sorted((e for e in self._queue if e[2] in MESSAGE_KINDS),
                      key=lambda e: (e[0], e[1]))
        if not msgs:
            return None
        entry = msgs[pick % len(msgs)]
        self._queue.remove(entry)
        heapq.heapify(self._queue)
        self.stats.events += 1
        getattr(self, "_ev_" + entry[2])(*entry[3])
        return entry[2]

    # ---- network ----------------------------------------------------------------------
    def link_ok(self, src: str, dst: str) -> bool:
        return src == dst or (src, dst) not in self.cut

    def alive(self, n: str) -> bool:
        return self.mgr[n] is not None

    def set_partitions(self, pairs: set[tuple[str, str]]) -> None:
        self.cut = set(pairs)
        self._change(f"partitions {sorted(self.cut)}")

    def _change(self, what: str, node: str = "-") -> None:
        if self.on_change is not None:
            self.on_change(f"{self.now:>8} {node:<6} {what}")

    # ---- node lifecycle ---------------------------------------------------------------
    def clock(self, n: str) -> int:
        """Node ``n``'s own clock now (the simulation's plus its skew)."""
        return self.now + self.clock_skew_ms.get(n, 0)

    def _start(self, n: str) -> None:
        self.incarnation[n] += 1
        self.flus[n].restart()
        st, effects = cm.initial_state(
            replace(sim_config(n, self.chain, self.mode, self.incarnation[n]), **self.timers),
            self.flus[n].latest("private"),
            now_ms=self.clock(n), restarted=True,
        )
        self.mgr[n] = st
        self.flus[n].restarted = st.restarted
        self._perform_all(n, effects)

    def crash(self, n: str) -> None:
        if self.mgr[n] is not None:
            self.mgr[n] = None
            self.ae_memory[n] = ChangeMemory()
            self._change("crash", n)

    def restart(self, n: str, *, clock_skew_ms: int | None = None) -> None:
        """Start a crashed node again (its next incarnation).  ``clock_skew_ms``: a host
        reboot, its clock restarts at this new offset (e.g. lower than before)."""
        if clock_skew_ms is not None:
            if clock_skew_ms < 0:
                raise ValueError("clock_skew_ms: offsets must be >= 0")
            if self.mgr[n] is None:
                self.clock_skew_ms[n] = clock_skew_ms
        if self.mgr[n] is None:
            self._start(n)
            self._change("restart", n)

    def admin(self, n: str, event: Event) -> None:
        self._feed(n, event)

    def bootstrap(self, via: str | None = None) -> None:
        self.admin(via or self.names[0], AdminBootstrap(tuple(self.names), self.witnesses))

    # ---- driver -----------------------------------------------------------------------
    def _feed(self, n: str, event: Event) -> None:
        st = self.mgr[n]
        if st is None:
            return
        st, effects = cm.step(st, event, now_ms=self.clock(n), rng=self.mgr_rng[n])
        self.mgr[n] = st
        self.flus[n].restarted = st.restarted
        self._perform_all(n, effects)

    def _perform_all(self, n: str, effects: list[Effect]) -> None:
        for e in effects:
            self._perform(n, e)

    def _perform(self, n: str, e: Effect) -> None:
        inc = self.incarnation[n]
        flu = self.flus[n]
        if isinstance(e, cm.ScheduleTick):
            self.tick_gen[n] += 1
            at = e.at_ms - self.clock_skew_ms.get(n, 0)  # the node's clock -> simulation's
            self._push(at, "tick", (n, inc, self.tick_gen[n]))
        elif isinstance(e, cm.ReadMembers):
            self._read_members(n, inc, e)
        elif isinstance(e, cm.WritePublic):
            for m in e.members:
                if m == n:
                    flu.write_projection("public", e.projection)
                else:
                    self._send(n, m, self.now + self._delay(), "write_req", (m, e.projection))
        elif isinstance(e, cm.WritePrivate):
            self._adopt(n, e.projection)
        elif isinstance(e, cm.SetWedge):
            flu.set_wedge(e.wedged, e.epoch_id)
            if not e.wedged:
                self._check_confirmed(n, e.epoch_id)
        elif isinstance(e, cm.StartRepair):
            self._push(self.now + self.repair_ms, "repair", (n, inc, e.projection))
        elif isinstance(e, cm.StartAntiEntropy):
            self._push(self.now + self.repair_ms, "anti_entropy", (n, inc, e.projection))
        elif isinstance(e, cm.KickPeer):
            self._send(n, e.name, self.now + self._delay(), "kick", (e.name, n))
        elif isinstance(e, cm.PublishFitness):
            flu.fitness = dict(e.reports)
            flu.fitness_born_ms = dict(e.born_ms)
        elif isinstance(e, cm.Trace):
            if self.on_trace is not None:
                self.on_trace(e.fields)
        else:  # pragma: no cover - a new effect type needs a driver line
            raise TypeError(f"unhandled effect {e!r}")

    def _read_members(self, n: str, inc: int, e: cm.ReadMembers) -> None:
        key = (n, inc, e.round_id)
        batch = _Batch(e.members)
        self.batches[key] = batch
        for m in e.members:
            if m == n:
                batch.views[m] = self.flus[m].view(want_confirmed=e.want_confirmed,
                                                   now_ms=self.clock(m))
            else:
                self._send(n, m, self.now + self._delay(), "read_req", (key, m, e.want_confirmed))
        self._push(self.now + self.read_timeout_ms, "read_done", (key,))
        self._maybe_finish(key)

    def _ev_read_req(self, key: tuple[str, int, int], m: str, want: bool) -> None:
        if not self.alive(m):
            return
        view = self.flus[m].view(want_confirmed=want, now_ms=self.clock(m))
        self._send(m, key[0], self.now + self._delay(), "read_reply", (key, m, view))

    def _ev_read_reply(self, key: tuple[str, int, int], m: str, view: MemberView) -> None:
        batch = self.batches.get(key)
        if batch is not None and not batch.done:
            batch.views[m] = view
            self._maybe_finish(key)

    def _maybe_finish(self, key: tuple[str, int, int]) -> None:
        batch = self.batches[key]
        if len(batch.views) == len(batch.members):
            self._ev_read_done(key)

    def _ev_read_done(self, key: tuple[str, int, int]) -> None:
        batch = self.batches.pop(key, None)
        if batch is None or batch.done:
            return
        batch.done = True
        n, inc, round_id = key
        if self.incarnation[n] != inc:
            return
        views: dict[str, MemberView | Status] = {
            m: batch.views.get(m, Status.PARTITION) for m in batch.members
        }
        self._feed(n, MembersRead(round_id, views))

    def _ev_write_req(self, m: str, p: Projection) -> None:
        if self.alive(m):
            ok = self.flus[m].write_projection("public", p) == Status.OK
            st = self.mgr[m]
            if ok and st is not None and p.epoch_number > st.current.epoch_number:
                self._feed(m, cm.Kick("public_write"))  # as the daemon driver does

    def _ev_tick(self, n: str, inc: int, gen: int) -> None:
        if self.incarnation[n] == inc and self.tick_gen[n] == gen:
            self._feed(n, cm.Tick())

    def _ev_kick(self, n: str, src: str) -> None:
        self._feed(n, cm.Kick(src))

    # ---- adoption invariants ----------------------------------------------------------
    def _violation(self, what: str) -> None:
        self.violations.append(f"t={self.now} {what}")
        self._change(f"VIOLATION {what}")

    def _adopt(self, n: str, p: Projection) -> None:
        flu = self.flus[n]
        prev = flu.latest("private")
        st = flu.write_projection("private", p)
        if st != Status.OK:
            self._violation(f"{n}: private write of epoch {p.epoch_number} -> {st.name}")
            return
        if prev is not None and prev.epoch_id == p.epoch_id:
            return  # a dbg2 rewrite (confirmation annotation)
        if prev is not None:
            if p.epoch_number < prev.epoch_number or (
                p.epoch_number == prev.epoch_number and not (prev.is_none() and p.is_none())
            ):
                self._violation(f"{n}: epoch {prev.epoch_number} -> {p.epoch_number}")
            problem = transition_problem(prev, p, relative_to=n)
            if problem is not None:
                self._violation(f"{n}: unsafe transition {prev.epoch_number} -> "
                                f"{p.epoch_number}: {problem}")
        for u in p.upi:
            seen = self._by_epoch_upi.setdefault((p.epoch_number, u), p.epoch_id)
            if seen != p.epoch_id:
                self._violation(f"{u} in two different upis at epoch {p.epoch_number}")
        rec = {
            "node": n, "epoch": p.epoch_number, "epoch_csum": p.epoch_csum.hex(),
            "author": p.author_server, "upi": list(p.upi), "repairing": list(p.repairing),
            "down": list(p.down), "witnesses": list(p.witnesses), "tick": self.now,
        }
        self.adoptions.append(rec)
        if len(self.adoptions) > 100_000:
            del self.adoptions[:50_000]
        if self.on_adopt is not None:
            self.on_adopt(rec)

    def _check_confirmed(self, n: str, epoch_id: EpochId) -> None:
        flu = self.flus[n]
        p = flu.private.get(epoch_id.number)
        if p is None or flu.state.wedged or not p.upi:
            return
        self._change(f"confirm epoch={epoch_id.number:<6} {epoch_id.csum[:4].hex()} "
                     f"upi={list(p.upi)}", n)
        if self.mode != "cp":
            return
        seen = self._confirmed.setdefault(epoch_id.number, epoch_id)
        if seen != epoch_id:
            self._violation(f"two confirmed projections at epoch {epoch_id.number}")

    # ---- repair -----------------------------------------------------------------------
    def _ev_repair(self, n: str, inc: int, p: Projection) -> None:
        if self.incarnation[n] != inc or not self.alive(n):
            return
        ok, detail = self._repair(n, p)
        if ok:
            self.stats.repairs_ok += 1
        else:
            self.stats.repairs_failed += 1
        self._feed(n, RepairDone(p.epoch_id, ok, detail))

    def _repair(self, n: str, p: Projection) -> tuple[bool, str]:
        cur = self.flus[n].latest("private")
        if cur is None or cur.epoch_id != p.epoch_id:
            return False, "tail moved to another epoch"
        if self._fault():
            return False, "fault point: repair failed"
        parts = [m for m in p.upi + p.repairing if m not in p.witnesses]
        for m in parts:
            if m == n:
                continue
            if not (self.alive(m) and self.link_ok(n, m) and self.link_ok(m, n)):
                return False, f"{m} unreachable"
            mp = self.flus[m].latest("private")
            if mp is None or mp.epoch_id != p.epoch_id:
                return False, f"{m} not in the same epoch"
        if p.mode == "ap":
            return self._repair_union(parts)
        return self._repair_from_tail(n, [m for m in p.repairing if m not in p.witnesses])

    def _repair_union(self, parts: list[str]) -> tuple[bool, str]:
        union: dict[tuple[str, int], bytes] = {}
        for m in parts:
            for f, chunks in self.flus[m].chunks.items():
                for off, data in chunks.items():
                    old = union.setdefault((f, off), data)
                    if old != data:
                        self._violation(f"repair: two values at {f}@{off}")
                        return False, "conflict"
        for m in parts:
            store = self.flus[m].chunks
            for (f, off), data in union.items():
                if off not in store.setdefault(f, {}):
                    store[f][off] = data
                    self.flus[m].changed(f, off)
        return True, f"union of {len(union)} chunks"

    def _repair_from_tail(self, tail: str, repairing: list[str]) -> tuple[bool, str]:
        src = self.flus[tail].chunks
        for m in repairing:
            dst = self.flus[m].chunks
            for f, chunks in src.items():
                for off, data in chunks.items():
                    have = dst.get(f, {}).get(off)
                    if have is not None and have != data:
                        self._violation(f"repair: {m} holds other bytes at {f}@{off}")
                        return False, "conflict"
            # make the repairing copy match the tail: add missing, un-write extra bytes
            for f in set(dst) | set(src):
                if dst.get(f) != src.get(f):
                    self.flus[m].changed(f, 1024)
            self.flus[m].chunks = {f: dict(c) for f, c in src.items()}
        return True, f"{len(repairing)} copies match the tail"

    # ---- AP anti-entropy --------------------------------------------------------------
    def _ev_anti_entropy(self, n: str, inc: int, p: Projection) -> None:
        if self.incarnation[n] != inc or not self.alive(n):
            return
        ok, detail = self._anti_entropy(n, p)
        if ok:
            self.stats.anti_entropy_ok += 1
        else:
            self.stats.anti_entropy_failed += 1
        self._feed(n, AntiEntropyDone(p.epoch_id, ok, detail))

    def _anti_entropy(self, n: str, p: Projection) -> tuple[bool, str]:
        """One pass as ``machi.node.repair.run_anti_entropy`` makes it, over the in-memory
        FLUs and with the same planner (``repair_plan``: the union rule, ``ChangeMemory``
        to skip files unchanged since they last agreed)."""
        cur = self.flus[n].latest("private")
        if cur is None or cur.epoch_id != p.epoch_id:
            return False, "tail moved to another epoch"
        roles = anti_entropy_roles(p)
        if roles is None:
            return False, "not a stable AP chain"
        if self._fault():
            return False, "fault point: anti-entropy failed"
        parts = roles.participants
        for m in parts:
            if m == n:
                continue
            if not (self.alive(m) and self.link_ok(n, m) and self.link_ok(m, n)):
                return False, f"{m} unreachable"
            mp = self.flus[m].latest("private")
            if mp is None or mp.epoch_id != p.epoch_id:
                return False, f"{m} not in the same epoch"
        memory = self.ae_memory[n]
        listings = {}
        for m in parts:
            since = memory.since(m)
            token, lows = self.flus[m].list_file_changes(since)
            listings[m] = Listing(since, token, lows)
        eofs: dict[str, int] = {}
        for m in parts:
            for f, chunks in self.flus[m].chunks.items():
                eofs[f] = max(eofs.get(f, 1024),
                              max((o + len(b) for o, b in chunks.items()), default=1024))
        files = memory.select(listings, eofs)
        self.stats.anti_entropy_unchanged += len(eofs) - len(files)
        self.stats.anti_entropy_planned += len(files)
        copies = 0
        for f, start, stop in files:
            entries = {m: [_SimEntry(off, len(data), TaggedCsum(CsumTag.CLIENT, digest(data)))
                           for off, data in sorted(self.flus[m].chunks.get(f, {}).items())
                           if off + len(data) > start and (stop is None or off < stop)]
                       for m in parts}
            # as the daemon's pass: equal summaries of the part on every member (the FLU's
            # ``checksum_list`` with ``summary``) mean equal lists there: nothing to plan
            if len({summarize(entries[m])
                    for m in parts}) == 1:
                self.stats.anti_entropy_equal += 1
                memory.done(f)
                continue
            plan = list(plan_file(f, roles, entries))
            problems = [x for x in plan if isinstance(x, Problem)]
            if problems:
                self._violation(f"anti-entropy: {problems[0]}")
                return False, str(problems[0])
            for d in plan:
                if not isinstance(d, Copy):  # the simulator never trims
                    return False, f"unexpected directive {d!r}"
                data = self.flus[d.source].chunks[f][d.offset]
                for m in d.destinations:
                    self.flus[m].chunks.setdefault(f, {})[d.offset] = data
                    self.flus[m].changed(f, d.offset)
                    copies += 1
            memory.done(f)
        self.stats.anti_entropy_copies += copies
        return True, f"{len(files)} files planned, {copies} chunk copies"

    # ---- clients ----------------------------------------------------------------------
    def _ev_client(self) -> None:
        live = [n for n in self.names if self.alive(n) and n not in self.witnesses]
        if live:
            loc = self.rng.choice(live)
            if (self.acked or self.maybe) and self.rng.random() < 0.3:
                self.client_read(loc)
            else:
                self.client_append(loc)
        self._push(self.now + self.client_interval_ms, "client", ())

    def _req(self, loc: str, m: str) -> bool:
        return self.alive(m) and self.link_ok(loc, m)

    def _discover(self, loc: str) -> Projection | None:
        best: Projection | None = None
        for m in self.names:
            if self._req(loc, m) and self.link_ok(m, loc):
                p = self.flus[m].latest("private")
                if p is not None and p.upi_non_witnesses and (
                    best is None or (p.epoch_number, p.epoch_csum)
                    > (best.epoch_number, best.epoch_csum)
                ):
                    best = p
        return best

    def _witnesses_ok(self, loc: str, p: Projection) -> bool:
        for w in p.upi:
            if w in p.witnesses:
                st = self.flus[w].state
                if not (self._req(loc, w) and self.link_ok(w, loc)) or st.wedged or (
                    st.epoch_id != p.epoch_id
                ):
                    return False
        return True

    def client_append(self, loc: str, prefix: str = "p") -> str:
        """Append through the chain from ``loc``; returns "ok", "fail" or "info"."""
        self._client_seq += 1
        data = f"{self.seed}:{self._client_seq}".encode()
        outcome = "fail"
        for _attempt in range(3):
            p = self._discover(loc)
            if p is None or not self._witnesses_ok(loc, p):
                continue
            chain = p.mutation_chain
            head = chain[0]
            if not self._req(loc, head):
                continue
            st, fname, off = self.flus[head].append(p.epoch_id, prefix, data)
            if st != Status.OK:
                continue
            if not self.link_ok(head, loc):
                # the head wrote it, its reply is lost: no client knows its place (an
                # orphan chunk); AP anti-entropy (or a repair) brings it to every replica
                outcome = "info"
                continue
            if self._propagate(loc, p, chain[1:], fname, off, data):
                self.acked[(fname, off)] = data
                self.maybe.pop((fname, off), None)
                self.stats.appends_ok += 1
                return "ok"
            outcome = "info"
            if len(self.maybe) < 10_000:
                self.maybe[(fname, off)] = data
            self._continue_later(loc, fname, off, data, 0)
        if outcome == "fail":
            self.stats.appends_fail += 1
        else:
            self.stats.appends_info += 1
        return outcome

    def _propagate(
        self, loc: str, p: Projection, rest: tuple[str, ...], fname: str, off: int, data: bytes
    ) -> bool:
        for m in rest:
            if not self._req(loc, m):
                return False
            st = self.flus[m].write(p.epoch_id, fname, off, data)
            if st == Status.WRITTEN:
                _, got = self.flus[m].read(p.epoch_id, fname, off)
                if got != data:
                    self._violation(f"two values at {fname}@{off} ({m})")
                    return False
                st = Status.OK
            if not self.link_ok(m, loc) or st != Status.OK:
                return False
        return True

    def _continue_later(self, loc: str, fname: str, off: int, data: bytes, tries: int) -> None:
        """AP: the real chain client keeps propagating an append that reached the head
        (backoff, projection refresh, ``cr_plan.replan``) instead of giving up at once;
        the simulated client's append returned at its first failure, so its chunk stays
        on the members it reached.  Model the retries as later events (at most
        ``CONTINUE_TRIES``, doubling from ``CONTINUE_FIRST_MS``); the op's outcome stays
        what ``client_append`` returned (info).  CP keeps the one-shot client."""
        if self.mode != "ap" or tries >= CONTINUE_TRIES or self._continuing >= 1_000:
            return
        self._continuing += 1
        self._push(self.now + CONTINUE_FIRST_MS * 2 ** tries, "continue",
                   (loc, fname, off, data, tries + 1))

    def _ev_continue(self, loc: str, fname: str, off: int, data: bytes, tries: int) -> None:
        self._continuing -= 1
        if not self.alive(loc):
            return
        p = self._discover(loc)
        if p is not None:
            holders = [m for m in self.names if self.flus[m].chunks.get(fname, {}).get(off)
                       == data]
            plan = cr_plan.replan(cr_plan.OpKind.APPEND, p, holders)
            if isinstance(plan, cr_plan.Restart):
                return  # nobody in the new chain holds it: the real client re-appends
            if self._propagate(loc, p, plan.members, fname, off, data):
                return
        self._continue_later(loc, fname, off, data, tries)

    def client_read(self, loc: str) -> str:
        """Read one acknowledged (or unknown-outcome) chunk from the UPI tail.

        Checks: an acknowledged chunk never reads different bytes, and in CP mode never
        reads unwritten at a serving tail; in CP mode a chunk once read as written never
        reads unwritten later (write-once linearizability)."""
        pool = sorted(self.acked) + (sorted(self.maybe) if self.maybe else [])
        key = self.rng.choice(pool)
        data = self.acked.get(key, self.maybe.get(key, b""))
        acked = key in self.acked
        for _attempt in range(3):
            p = self._discover(loc)
            if p is None or p.tail is None or not self._witnesses_ok(loc, p):
                continue
            tail = p.tail
            if not (self._req(loc, tail) and self.link_ok(tail, loc)):
                continue
            st, got = self.flus[tail].read(p.epoch_id, key[0], key[1])
            if st == Status.OK:
                if got != data:
                    self._violation(f"chunk {key} holds other bytes at {tail}")
                self.observed.add(key)
                self.stats.reads_ok += 1
                return "ok"
            if st == Status.NOT_WRITTEN:
                if self.cp_read_check and cr_plan.absence_needs_check(p):
                    # the real client's rule: absence only after a quorum epoch check
                    answers = {m: self.flus[m].state.epoch_id
                               for m in cr_plan.absence_quorum_members(p)
                               if self._req(loc, m) and self.link_ok(m, loc)}
                    if cr_plan.absence_verdict(p, answers) is not cr_plan.Absence.STANDS:
                        continue
                if self.mode == "cp" and (acked or key in self.observed):
                    what = "acked" if acked else "once-read"
                    self._violation(f"{what} chunk {key} unwritten at serving tail {tail} "
                                    f"epoch {p.epoch_number}")
                self.stats.reads_fail += 1
                return "fail"
        self.stats.reads_fail += 1
        return "fail"

    # ---- convergence and final checks ---------------------------------------------------
    def converged(self) -> bool:
        first: Projection | None = None
        real = {n for n in self.names if n not in self.witnesses}
        for n in self.names:
            st = self.mgr[n]
            if st is None:
                return False
            p = self.flus[n].latest("private")
            if p is None or not st.confirmed or st.current.epoch_id != p.epoch_id:
                return False
            if first is None:
                first = p
            elif p.epoch_id != first.epoch_id:
                return False
        return (
            first is not None and not first.repairing
            and set(first.upi_non_witnesses) == real
        )

    def lost_acked_writes(self) -> int:
        """Acknowledged chunks missing or different on some UPI member (call when
        converged)."""
        some = self.flus[self.names[0]].latest("private")
        if some is None:
            return len(self.acked)
        lost = 0
        for (f, off), data in self.acked.items():
            for m in some.upi_non_witnesses:
                if self.flus[m].chunks.get(f, {}).get(off) != data:
                    lost += 1
                    break
        return lost

    def replica_divergence(self) -> list[str]:
        """AP, after healing and convergence: every replica holds the same set of chunks
        (AP repair merges everything any replica has, reference 6.2, and in a stable
        chain AP anti-entropy copies what an append left on some replicas only, e.g. a
        head's chunk whose append reply was lost).  One line per member that lacks
        chunks another member holds; empty in CP mode (CP repairing
        copies match the tail, and an unacknowledged chunk may stay on the head only
        until the next UPI sync) and while not converged."""
        if self.mode != "ap" or not self.converged():
            return []
        real = [n for n in self.names if n not in self.witnesses]
        held = {n: {(f, off) for f, c in self.flus[n].chunks.items() for off in c}
                for n in real}
        union = set().union(*held.values())
        out = []
        for n in real:
            missing = union - held[n]
            if missing:
                eg = sorted(missing)[0]
                out.append(f"ap replicas differ after heal: {n} lacks {len(missing)} of "
                           f"{len(union)} chunks (e.g. {eg[0]}@{eg[1]})")
        return out

    def manager(self, n: str) -> ManagerState | None:
        return self.mgr[n]

    def force_state(self, n: str, **changes: Any) -> None:
        """Test hook: replace fields of a manager's state (e.g. to shorten a timer)."""
        st = self.mgr[n]
        if st is not None:
            self.mgr[n] = replace(st, **changes)
