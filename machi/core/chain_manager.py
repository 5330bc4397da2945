"""The Humming Consensus chain manager as a pure function (reference section 5).

Owns the decision core: ``step(state, event, *, now_ms, rng) -> (state, effects)`` and
``initial_state``.  Must not: do I/O, read a clock, sleep or use global randomness.  The
driver (daemon or simulator) is a thin loop: feed events, perform effects in order.

Stages (names from Machi):
  * monitor   -- a round reads every member's latest public and private projection (and,
                 in CP mode, its newest confirmed private one) plus its fitness reports;
                 a member that does not answer is unreachable this round;
  * fitness   -- merge reports, publish mine (members unreachable by fitness.observe),
                 compute the shared up set (fitness.py);
  * confirm   -- every UPI+repairing member uses my epoch -> annotate dbg2 ("CONFIRM
                 epoch") and unwedge (CP: the only way to become writable);
  * adopt     -- P_latest (best projection at the highest public epoch) is adopted when it
                 concerns me, every store that has that epoch has the same one, every
                 UPI+repairing member holds it, and the transition is safe;
  * calculate -- calc.py from the basis (AP: current; CP: current if it is P_latest,
                 otherwise the zerf basis: newest confirmed majority projection of the up
                 servers), or the quiet projection when I am hosed;
  * rank      -- same shape as P_latest: only read-repair it; a better or needed proposal
                 is written (C300); a better-ranked live author is kicked and waited for
                 (C200/C210), at most ``max_waits`` times;
  * write     -- my proposal to every member's public store (hosed: my own store only);
  * repair    -- the UPI tail starts repair of repairing members once the projection is
                 confirmed and either it or the one before it lasted ``stability_time_ms``
                 (a churning chain waits; a quiet one repairs at once); success lets
                 calc promote them.
  * anti-entropy -- AP only: the UPI tail of a stable chain (confirmed, held
                 ``stability_time_ms``, nothing repairing, every real member in the UPI)
                 starts a pass every ``ap_anti_entropy_interval_ms`` (``StartAntiEntropy``
                 / ``AntiEntropyDone``): chunks an append left on some replicas only
                 (its reply was lost, so no client propagates it) reach every replica
                 without waiting for an epoch change.
The loop breaker (``loop_limit`` identical adoptions, or too many unsafe candidates)
adopts the none projection and declares me admin-down for ``loop_hold_ms``.
AP restart rule (``restart_needs_new_epoch``): a manager started after its node restarted
inside its UPI keeps the FLU wedged, never confirms that projection again, and every
manager's calculation moves restarted UPI members to repairing, so a new epoch and AP
repair come before they serve again.

Driver contract: ``ScheduleTick(at_ms)`` replaces any earlier timer; ``ReadMembers``
answers with one ``MembersRead`` (a ``Status`` for members that did not answer);
``WritePublic`` answers with ``PublicWritten``; ``WritePrivate`` and ``SetWedge`` act on
the local FLU (the projection store applies machi.core.wedge rules); ``StartRepair``
answers with ``RepairDone``, ``StartAntiEntropy`` with ``AntiEntropyDone``.  ``KickPeer``
delivers a ``Kick`` to that member's manager.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from .calc import calc_projection
from .epoch import EpochId
from .fitness import (
    Liveness,
    LivenessRule,
    Report,
    born_of,
    choose_up,
    merge,
    observe,
    strikes_of,
    unreachable_of,
)
from .projection import JSON, MemberSpec, Mode, Projection, make_projection
from .rank import Rng, best_key, none_projection, rank, timer_interval_ms
from .status import Status
from .transition import majority, transition_problem, zerf_basis_record

# ---------------------------------------------------------------------------- config


@dataclass(frozen=True, slots=True)
class Config:
    name: str
    chain_name: str
    mode: Mode = "ap"
    tick_base_ms: int = 200
    tick_spread_ms: int = 400
    tick_jitter_ms: int = 50
    reread_ms: int = 25
    kick_wait_ms: int = 100
    round_timeout_ms: int = 2_000
    stability_time_ms: int = 1_000
    max_waits: int = 3
    loop_limit: int = 8
    loop_hold_ms: int = 5000
    not_sane_limit: int = 13
    fitness_stale_ms: int = 60_000
    fitness_refresh_ms: int = 10_000
    set_members_epoch_skip: int = 1111
    #: when missed reads make a member unreachable (fitness.LivenessRule)
    unreachable_misses: int = 3
    unreachable_after_ms: int = 1_000
    unreachable_strikes_max: int = 3
    unreachable_strike_decay_ms: int = 600_000
    #: AP anti-entropy (docs/repair.md): the UPI tail of a stable AP chain (nothing
    #: repairing, every real member in the UPI) compares the replicas and copies what
    #: some lack, first once the projection has been held ``stability_time_ms``, then
    #: every this many ms after the previous pass ended; 0 = never.  Never in CP.
    ap_anti_entropy_interval_ms: int = 5_000
    #: this process start of the node (persisted counter, raised at every start): my
    #: fitness reports carry it, so they beat those of my earlier starts (fitness.Report)
    incarnation: int = 0

    def liveness_rule(self) -> LivenessRule:
        return LivenessRule(self.unreachable_misses, self.unreachable_after_ms,
                            self.unreachable_strikes_max, self.unreachable_strike_decay_ms)


# ---------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Tick:
    """The timer fired."""


@dataclass(frozen=True, slots=True)
class Kick:
    """A peer (or the local FLU after wedging itself) asks for an iteration now."""

    source: str = ""


@dataclass(frozen=True, slots=True)
class MemberView:
    """What one member's FLU answered to a read."""

    public: Projection | None
    private: Projection | None
    private_confirmed: Projection | None = None
    fitness: Mapping[str, Report] = field(default_factory=dict)
    #: per observer, the age in ms of its report as this member holds it (served with it)
    fitness_age_ms: Mapping[str, int] = field(default_factory=dict)
    #: the FLU is wedged (filled for the local member; peers may leave it False)
    wedged: bool = False
    #: AP: the member restarted inside the UPI of the projection it still holds and has
    #: not adopted a newer one since (its content may miss in-flight chunks, see
    #: ``restart_needs_new_epoch``); served by CHAIN_VIEW
    restarted: bool = False


@dataclass(frozen=True, slots=True)
class MembersRead:
    round_id: int
    views: Mapping[str, MemberView | Status]


@dataclass(frozen=True, slots=True)
class PublicWritten:
    round_id: int
    epoch_number: int
    results: Mapping[str, Status]


@dataclass(frozen=True, slots=True)
class RepairDone:
    epoch_id: EpochId
    ok: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class AntiEntropyDone:
    epoch_id: EpochId
    ok: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class AdminBootstrap:
    members: tuple[str, ...]
    witnesses: tuple[str, ...] = ()
    members_dict: Mapping[str, MemberSpec] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AdminSetMembers:
    members: tuple[str, ...]
    witnesses: tuple[str, ...] | None = None
    members_dict: Mapping[str, MemberSpec] | None = None


Event = (
    Tick | Kick | MembersRead | PublicWritten | RepairDone | AntiEntropyDone | AdminBootstrap
    | AdminSetMembers
)

# ---------------------------------------------------------------------------- effects


@dataclass(frozen=True, slots=True)
class ReadMembers:
    round_id: int
    members: tuple[str, ...]
    want_confirmed: bool


@dataclass(frozen=True, slots=True)
class WritePublic:
    round_id: int
    projection: Projection
    members: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class WritePrivate:
    projection: Projection


@dataclass(frozen=True, slots=True)
class SetWedge:
    wedged: bool
    epoch_id: EpochId


@dataclass(frozen=True, slots=True)
class StartRepair:
    projection: Projection


@dataclass(frozen=True, slots=True)
class StartAntiEntropy:
    """AP, on the UPI tail of a stable chain: one anti-entropy pass over ``projection``'s
    UPI members (``machi.node.repair.run_anti_entropy``); answered by AntiEntropyDone."""

    projection: Projection


@dataclass(frozen=True, slots=True)
class ScheduleTick:
    at_ms: int


@dataclass(frozen=True, slots=True)
class KickPeer:
    name: str


@dataclass(frozen=True, slots=True)
class PublishFitness:
    reports: Mapping[str, Report]
    #: per observer, the report's birth time on my clock: the driver serves each report
    #: with its age (its clock now minus this), never the birth time itself
    born_ms: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Trace:
    fields: Mapping[str, JSON]


Effect = (
    ReadMembers | WritePublic | WritePrivate | SetWedge | StartRepair | StartAntiEntropy
    | ScheduleTick | KickPeer | PublishFitness | Trace
)

# ---------------------------------------------------------------------------- state

Shape = tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...],
              tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class ManagerState:
    config: Config
    current: Projection
    confirmed: bool = False
    adopted_at_ms: int = 0
    round_id: int = 0
    round_started_ms: int | None = None
    history: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = ()
    waits: int = 0
    not_sane: int = 0
    sane_streak: int = 0
    fitness: Mapping[str, Report] = field(default_factory=dict)
    #: per observer, its report's birth time on my clock (fitness.born_of)
    fitness_born_ms: Mapping[str, int] = field(default_factory=dict)
    loop_hold_until_ms: int = 0
    repair_epoch: EpochId | None = None
    repair_status: str = ""
    repair_changed_ms: int = 0
    #: AP anti-entropy: the epoch of the running pass (None: none running), when the last
    #: pass ended (my clock; None: none yet), its result, and the passes started
    ae_epoch: EpochId | None = None
    ae_ended_ms: int | None = None
    ae_status: str = ""
    ae_passes: int = 0
    removed: bool = False
    latest_epoch_seen: int = 0
    members_hint: tuple[str, ...] = ()
    #: per member: missed rounds, last answer, strikes (fitness.observe)
    liveness: Mapping[str, Liveness] = field(default_factory=dict)
    #: a Kick arrived while a round was outstanding: look again right after it
    kick_pending: bool = False
    #: how long the projection before ``current`` was held (repair's stability rule)
    prev_held_ms: int = 0
    #: AP: I restarted inside the UPI of ``current`` (restart_needs_new_epoch): I must
    #: not confirm or serve it again; cleared when I adopt a newer epoch
    restarted: bool = False


def restart_needs_new_epoch(latest_private: Projection | None, me: str) -> bool:
    """AP restart rule: a FLU that starts on a stored projection naming it in the UPI must
    not serve that projection again; the chain moves to a new epoch first, in which it is
    repairing (or, when every UPI member restarted, the sole UPI member of a chain whose
    other members are repairing), and AP repair merges every replica before it is back in
    the UPI.  Why: appends in flight when the node stopped (never acknowledged) may sit on
    only some replicas; with a whole-chain restart into the same epoch nothing would ever
    repair them, and AP promises every replica everything any replica has after healing.
    CP keeps its own rule (FLUs restart wedged and the UPI confirms again, then syncs).
    """
    return (
        latest_private is not None and latest_private.mode == "ap"
        and latest_private.epoch_number > 0 and not latest_private.is_none()
        and me in latest_private.upi
    )


def initial_state(
    config: Config, latest_private: Projection | None, *, now_ms: int,
    restarted: bool = False,
) -> tuple[ManagerState, list[Effect]]:
    """A manager starting on top of its FLU's latest private projection (or nothing).

    ``restarted``: the node (daemon or simulated FLU) restarted under this manager, as
    opposed to a manager started on a running FLU; with ``restart_needs_new_epoch`` the
    FLU stays wedged and the manager moves the chain to a new epoch (see there)."""
    cur = latest_private
    if cur is None:
        cur = none_projection(
            epoch_number=0, author=config.name, chain_name=config.chain_name,
            all_members=(config.name,), witnesses=(), mode=config.mode,
        )
    again = restarted and restart_needs_new_epoch(latest_private, config.name)
    st = ManagerState(config=config, current=cur, adopted_at_ms=now_ms,
                      latest_epoch_seen=cur.epoch_number, restarted=again)
    effects: list[Effect] = [ScheduleTick(now_ms), _trace(st, "start", now_ms,
                                                           restarted=again)]
    if again:
        effects.insert(0, SetWedge(True, cur.epoch_id))
    return st, effects


# ---------------------------------------------------------------------------- helpers


def _trace(st: ManagerState, what: str, now_ms: int, **extra: JSON) -> Trace:
    p = st.current
    d: dict[str, JSON] = {
        "event": what, "node": st.config.name, "time_ms": now_ms,
        "epoch": p.epoch_number, "epoch_csum": p.epoch_csum.hex()[:8],
    }
    d.update(extra)
    return Trace(d)


def _proj_fields(p: Projection) -> dict[str, JSON]:
    return {
        "epoch": p.epoch_number, "epoch_csum": p.epoch_csum.hex(), "author": p.author_server,
        "upi": list(p.upi), "repairing": list(p.repairing), "down": list(p.down),
        "witnesses": list(p.witnesses),
    }


def shape(p: Projection) -> Shape:
    return (p.upi, p.repairing, p.down, p.all_members, p.witnesses)


def _relevant(p: Projection, me: str) -> bool:
    """B10: the projection is mine, names me in the chain, or names me as a witness."""
    return p.author_server == me or me in p.upi or me in p.repairing or (
        me in p.witnesses and bool(p.upi)
    )


def _members(st: ManagerState) -> tuple[str, ...]:
    me = st.config.name
    if st.removed:
        return (me,)
    out = list(st.current.all_members)
    out += [m for m in st.members_hint if m not in out]
    if me not in out:
        out.append(me)
    return tuple(out)


def _interval(st: ManagerState, rng: Rng) -> int:
    c = st.config
    return timer_interval_ms(
        c.name, _members(st), rng,
        base_ms=c.tick_base_ms, spread_ms=c.tick_spread_ms, jitter_ms=c.tick_jitter_ms,
    )


def _quiet(st: ManagerState, epoch_number: int, *, force_none: bool) -> Projection:
    """Hosed: AP suggests a chain of just me; CP (and the loop breaker) the none one."""
    cur, me = st.current, st.config.name
    if cur.mode == "ap" and not force_none and me not in cur.witnesses:
        return make_projection(
            epoch_number=epoch_number, author_server=me, chain_name=cur.chain_name,
            all_members=cur.all_members, witnesses=cur.witnesses, mode=cur.mode,
            upi=(me,), repairing=(), down=[m for m in cur.all_members if m != me],
            members_dict=cur.members_dict, dbg={"hosed": True},
        )
    return none_projection(
        epoch_number=epoch_number, author=me, chain_name=cur.chain_name,
        all_members=cur.all_members, witnesses=cur.witnesses, mode=cur.mode,
        dbg={"hosed": True},
    )


def _ours(c: Config, v: MemberView) -> MemberView:
    """Drop projections of another chain or mode (a misconfigured or foreign store):
    they can never be adopted and must not steer proposals."""
    def keep(p: Projection | None) -> Projection | None:
        return p if p is not None and p.chain_name == c.chain_name and p.mode == c.mode else None
    if all(p is keep(p) for p in (v.public, v.private, v.private_confirmed)):
        return v
    return replace(v, public=keep(v.public), private=keep(v.private),
                   private_confirmed=keep(v.private_confirmed))


def _is_my_quiet(p: Projection, me: str) -> bool:
    """My own hosed suggestion: none, or (AP) a chain of just me."""
    return p.author_server == me and not p.repairing and p.upi in ((), (me,))


def _lacking(p: Projection, views: Mapping[str, MemberView]) -> tuple[str, ...]:
    """Members whose public store (as far as I know) has nothing at p's epoch yet."""
    out = []
    for n in p.all_members:
        v = views.get(n)
        if v is None or v.public is None or v.public.epoch_number < p.epoch_number:
            out.append(n)
    return tuple(out)


def _split_epoch(p: Projection, views: Mapping[str, MemberView]) -> bool:
    """Some store holds a different projection at p's epoch."""
    return any(
        v.public is not None and v.public.epoch_number == p.epoch_number and v.public != p
        for v in views.values()
    )


def _unanimous(p: Projection, views: Mapping[str, MemberView]) -> bool:
    """A21: every store at p's epoch holds p, and every UPI+repairing member holds it."""
    for v in views.values():
        if v.public is not None and v.public.epoch_number == p.epoch_number and v.public != p:
            return False
    holders = {n for n, v in views.items() if v.public is not None and v.public == p}
    return (set(p.upi) | set(p.repairing)) <= holders


# ---------------------------------------------------------------------------- step


def step(
    state: ManagerState, event: Event, *, now_ms: int, rng: Rng
) -> tuple[ManagerState, list[Effect]]:
    """Apply one event; returns the new state and the effects to perform in order."""
    if isinstance(event, (Tick, Kick)):
        return _start_round(state, now_ms, rng, kicked=isinstance(event, Kick))
    if isinstance(event, MembersRead):
        return _on_read(state, event, now_ms, rng)
    if isinstance(event, PublicWritten):
        bad = sorted(n for n, s in event.results.items() if s != Status.OK)
        return state, [_trace(state, "public_written", now_ms, written=event.epoch_number,
                              failed=bad)]
    if isinstance(event, RepairDone):
        return _on_repair_done(state, event, now_ms)
    if isinstance(event, AntiEntropyDone):
        return _on_anti_entropy_done(state, event, now_ms)
    if isinstance(event, AdminBootstrap):
        return _on_bootstrap(state, event, now_ms)
    if isinstance(event, AdminSetMembers):
        return _on_set_members(state, event, now_ms)
    raise TypeError(f"unknown chain manager event {event!r}")


def _start_round(
    st: ManagerState, now: int, rng: Rng, *, kicked: bool
) -> tuple[ManagerState, list[Effect]]:
    c = st.config
    started = st.round_started_ms
    if started is not None and now - started < c.round_timeout_ms:
        # The outstanding round may have read the stores before what the kick is about:
        # remember it, so that the next round follows right after this one.
        st = replace(st, kick_pending=st.kick_pending or kicked)
        return st, [ScheduleTick(started + c.round_timeout_ms)]
    st = replace(st, round_id=st.round_id + 1, round_started_ms=now, kick_pending=False)
    return st, [
        ReadMembers(st.round_id, _members(st), want_confirmed=st.current.mode == "cp"),
        ScheduleTick(now + c.round_timeout_ms),
    ]


def _on_read(
    st: ManagerState, ev: MembersRead, now: int, rng: Rng
) -> tuple[ManagerState, list[Effect]]:
    if ev.round_id != st.round_id or st.round_started_ms is None:
        return st, [_trace(st, "stale_read", now, round=ev.round_id)]
    st = replace(st, round_started_ms=None)
    me = st.config.name
    views = {n: _ours(st.config, v) for n, v in ev.views.items() if isinstance(v, MemberView)}
    if me not in views:
        return st, [_trace(st, "own_store_unreadable", now), ScheduleTick(now + _interval(st, rng))]
    # A member is reported unreachable only after several missed rounds over a while,
    # and harder each time it was dropped lately: one slow read (load) would otherwise
    # drop it from the up set, send it through repairing and restart the stability time
    # of every repair - under sporadic timeouts the chain never settled (bench "chain"
    # run 2; tests/sim/test_slow_reads.py), and a member slow for good made the chain
    # churn forever (tests/sim/test_slow_member.py).
    live = observe(st.liveness, ev.views, frozenset(views), now_ms=now,
                   rule=st.config.liveness_rule())
    unreachable = unreachable_of(live)
    st = replace(st, liveness=live)
    st, effects = _update_fitness(st, views, unreachable, now)
    publics = [v.public for v in views.values() if v.public is not None]
    latest = max(publics, key=best_key) if publics else None
    if latest is not None:
        hint: tuple[str, ...] = ()
        if me in latest.all_members:
            hint = tuple(m for m in latest.all_members if m not in st.current.all_members)
        st = replace(st, latest_epoch_seen=max(st.latest_epoch_seen, latest.epoch_number),
                     members_hint=hint)
        if (
            latest.epoch_number > st.current.epoch_number and latest.all_members
            and me not in latest.all_members
        ):
            if not st.removed:
                return _self_remove(st, latest, now, rng, effects)
        elif (
            st.removed and me in latest.all_members
            and latest.epoch_number > st.current.epoch_number
        ):
            # Only a projection newer than my removal can take me back (an admin re-add,
            # or the chain's proposals after it): my own store's, or a slow member's, older
            # projections still list me, and rejoining on them re-proposed the old
            # membership above the removal (sim: the removed c, healed, undid it).
            st = replace(st, removed=False)
            effects.append(_trace(st, "rejoin", now, latest=latest.epoch_number))
    if st.removed:
        return st, [*effects, ScheduleTick(now + _interval(st, rng))]
    effects += _maybe_unwedge_again(st, views, now)
    st, more = _maybe_confirm(st, views, now)
    effects += more
    # Members that missed this round but are not (yet) unreachable: their stores may
    # hold what decides the next proposal, so this round may adopt but not author.
    pending = frozenset(ev.views) - frozenset(views) - unreachable
    st, more = _decide(st, views, latest, now, rng, pending)
    effects += more
    if st.kick_pending:
        st = replace(st, kick_pending=False)
        effects = _hurry(effects, now + st.config.reread_ms)
    return st, effects


def _hurry(effects: list[Effect], at_ms: int) -> list[Effect]:
    """The timer of ``effects`` (the last ScheduleTick wins) fires no later than ``at_ms``."""
    ticks = [e.at_ms for e in effects if isinstance(e, ScheduleTick)]
    if ticks and ticks[-1] <= at_ms:
        return effects
    return [*effects, ScheduleTick(at_ms)]


def _next_tick_ms(st: ManagerState, now: int, rng: Rng) -> int:
    """When to look again while nothing needs writing: the ranked interval, but sooner
    (a) while my adopted projection is not confirmed yet (a backoff from ``reread_ms``
    doubling with the time since adoption: the peers' private writes usually follow
    mine within a few milliseconds, and confirmation gates unwedging and repair), and
    (b) when I am the tail waiting for the stability time before repair."""
    c, cur = st.config, st.current
    at = now + _interval(st, rng)
    if not st.confirmed and not cur.is_none() and cur.epoch_number > 0:
        at = min(at, now + max(c.reread_ms, now - st.adopted_at_ms))
    elif (
        st.confirmed and cur.repairing and cur.tail == c.name
        and st.repair_epoch != cur.epoch_id and st.prev_held_ms < c.stability_time_ms
    ):
        at = min(at, max(now + 1, st.adopted_at_ms + c.stability_time_ms))
    due = anti_entropy_due_ms(st)
    if due is not None:
        at = min(at, max(now + 1, due))
    return at


def _update_fitness(
    st: ManagerState, views: Mapping[str, MemberView], unreachable: frozenset[str], now: int
) -> tuple[ManagerState, list[Effect]]:
    c = st.config
    mine_aged = {o: now - b for o, b in st.fitness_born_ms.items()}
    sources = [(st.fitness, mine_aged),
               *((v.fitness, v.fitness_age_ms) for v in views.values())]
    merged = merge(*(reports for reports, _ in sources))
    mine = merged.get(c.name)
    strikes = strikes_of(st.liveness)
    if (
        mine is None or mine.incarnation != c.incarnation or mine.unreachable != unreachable
        or mine.admin_down_until_ms != st.loop_hold_until_ms or mine.strikes != strikes
        or now - mine.time_ms >= c.fitness_refresh_ms
    ):
        # (a report of an earlier start of mine, gossiped back to me, is replaced at once)
        merged[c.name] = Report(c.name, now, unreachable, st.loop_hold_until_ms, strikes,
                                c.incarnation)
    # Ages on my clock, never the observers' (their clocks have unrelated origins).
    born = born_of(merged, sources, now_ms=now)
    keep = set(_members(st))
    merged = {o: r for o, r in merged.items()
              if o in keep and now - born[o] <= 2 * c.fitness_stale_ms}
    born = {o: born[o] for o in merged}
    effects: list[Effect] = []
    if merged != dict(st.fitness) or born != dict(st.fitness_born_ms):
        effects.append(PublishFitness(merged, born))
    if mine is not None and mine.unreachable != unreachable:
        # Gossip is by pull: kick the members I can read so that they fetch my changed
        # report now instead of on their next timer (a heal is noticed one round sooner).
        effects += [KickPeer(n) for n in sorted(views) if n != c.name]
    return replace(st, fitness=merged, fitness_born_ms=born), effects


def _self_remove(
    st: ManagerState, latest: Projection, now: int, rng: Rng, effects: list[Effect]
) -> tuple[ManagerState, list[Effect]]:
    """A20: the administrator removed me: wedge and adopt the none projection."""
    cur = st.current
    none = none_projection(
        epoch_number=latest.epoch_number, author=st.config.name, chain_name=cur.chain_name,
        all_members=cur.all_members, witnesses=cur.witnesses, mode=cur.mode,
        dbg={"removed_at": latest.epoch_number},
    )
    st = replace(st, current=none, confirmed=False, adopted_at_ms=now, removed=True)
    return st, [
        *effects, SetWedge(True, cur.epoch_id), WritePrivate(none),
        _trace(st, "removed", now, **_proj_fields(none)),
        ScheduleTick(now + _interval(st, rng)),
    ]


def _maybe_confirm(
    st: ManagerState, views: Mapping[str, MemberView], now: int
) -> tuple[ManagerState, list[Effect]]:
    """5.8: every UPI+repairing member uses my epoch -> annotate and unwedge."""
    cur = st.current
    if st.confirmed or cur.is_none() or cur.epoch_number == 0 or st.restarted:
        return st, []
    for n in set(cur.upi) | set(cur.repairing):
        v = views.get(n)
        if v is None or v.private is None or v.private.epoch_id != cur.epoch_id:
            return st, []
    dbg2 = dict(cur.dbg2)
    dbg2.update({"confirmed": True, "confirmed_by": st.config.name, "confirmed_ms": now})
    annotated = cur.with_dbg2(dbg2)
    st = replace(st, current=annotated, confirmed=True)
    return st, [
        WritePrivate(annotated), SetWedge(False, cur.epoch_id),
        _trace(st, "confirm", now, **_proj_fields(cur)),
    ]


def _maybe_unwedge_again(
    st: ManagerState, views: Mapping[str, MemberView], now: int
) -> list[Effect]:
    """My FLU wedged itself after confirmation (a data request named a newer epoch, or
    the same number with another checksum) but no projection change followed: when my
    confirmed projection is still the latest in every chain member's public store (and
    mine) and every UPI+repairing member still uses it, unwedge again at that epoch.
    A real newer proposal reaches one of those stores, which keeps the FLU wedged."""
    cur, me = st.current, st.config.name
    mine = views.get(me)
    if not st.confirmed or mine is None or not mine.wedged or cur.is_none():
        return []
    chain = set(cur.upi) | set(cur.repairing)
    for n in chain | {me}:
        v = views.get(n)
        if v is None or v.public is None or v.public.epoch_id != cur.epoch_id:
            return []
        if n in chain and (v.private is None or v.private.epoch_id != cur.epoch_id):
            return []
    if mine.private is None or mine.private.epoch_id != cur.epoch_id:
        return []
    return [SetWedge(False, cur.epoch_id), _trace(st, "unwedge_stable", now)]


def _basis(
    st: ManagerState, views: Mapping[str, MemberView], latest: Projection | None,
    up: frozenset[str], frame: Projection,
) -> tuple[Projection | None, bool]:
    """(basis, is_zerf).  CP: don't trust a local current that is not P_latest (A29).
    ``frame`` gives the members and witnesses (current, or a newer set_members)."""
    cur = st.current
    if cur.mode == "ap":
        if (
            latest is not None and latest.epoch_number > cur.epoch_number
            and latest.upi and not latest.dbg.get("hosed")
            and not _relevant(latest, st.config.name) and _unanimous(latest, views)
        ):
            # The chain went on without me (I was dropped): start from where it is, so
            # that I propose to rejoin it as repairing instead of re-asserting my old
            # chain at a higher rank (which the others cannot adopt: churn).  Not from
            # a hosed member's own quiet chain, which is nobody else's chain.
            return latest, False
        return cur, False
    if latest is not None and latest == cur and cur.upi_non_witnesses:
        return cur, False
    members = frame.all_members
    if len(up) < majority(len(members)):
        return None, True
    cands = [v.private_confirmed for n, v in views.items()
             if n in up and v.private_confirmed is not None]
    if st.confirmed:
        cands.append(cur)
    good = [
        p for p in cands
        if p.chain_name == cur.chain_name and p.mode == "cp" and p.upi_non_witnesses
        and len(set(p.upi) | set(p.repairing)) >= majority(len(p.all_members))
    ]
    if good:
        best = max(good, key=best_key)
        if best.all_members != members or best.witnesses != frame.witnesses:
            best = _reframe(best, frame)
        return best, True
    # Nobody in an up majority ever confirmed anything: no data can exist (CP writes
    # need a confirmed epoch), so every real server may form the chain.
    return make_projection(
        epoch_number=cur.epoch_number, author_server=st.config.name,
        chain_name=cur.chain_name, all_members=members, witnesses=frame.witnesses,
        mode="cp", upi=[m for m in members if m not in frame.witnesses], repairing=(),
        members_dict=frame.members_dict, dbg={"all_projection": True},
    ), True


def _reframe(p: Projection, frame: Projection) -> Projection:
    """``p``'s chain restricted to ``frame``'s members; newcomers join repairing."""
    members, wit = frame.all_members, frame.witnesses
    upi = [m for m in p.upi if m in members]
    rep = [m for m in p.repairing if m in members and m not in wit]
    rep += [m for m in frame.repairing if m not in upi and m not in rep]
    return p.evolve(
        all_members=members, witnesses=wit, upi=upi, repairing=rep,
        down=[m for m in members if m not in upi and m not in rep],
        members_dict=frame.members_dict,
        author_server=p.author_server if p.author_server in members else frame.author_server,
    )


def _decide(
    st: ManagerState, views: Mapping[str, MemberView], latest: Projection | None, now: int,
    rng: Rng, pending: frozenset[str] = frozenset(),
) -> tuple[ManagerState, list[Effect]]:
    c, cur, me = st.config, st.current, st.config.name
    effects: list[Effect] = []
    if cur.epoch_number == 0 and (
        latest is None or not _relevant(latest, me) or not _unanimous(latest, views)
    ):
        # Not configured yet: never propose; help a bootstrap/admin projection along.
        if latest is None or not _relevant(latest, me):
            return st, [ScheduleTick(now + _interval(st, rng))]
        if _split_epoch(latest, views):
            return _resolve_split_bootstrap(st, latest, now)
        lacking = _lacking(latest, views)
        return st, [WritePublic(st.round_id, latest, lacking), ScheduleTick(now + c.reread_ms)]
    # An admin membership change (set_members) that lists me is the basis for members.
    moved = (
        latest is not None and latest.epoch_number > cur.epoch_number
        and me in latest.all_members and latest.all_members != cur.all_members
    )
    frame = latest if moved and latest is not None else cur
    up = choose_up(frame.all_members, st.fitness, now_ms=now, stale_ms=c.fitness_stale_ms,
                   born_ms=st.fitness_born_ms)
    holding = now < st.loop_hold_until_ms
    hosed = me not in up or holding
    unsafe = False
    if not hosed:
        # P_latest among the stores of the shared up set: a hosed member's own-store
        # epochs must not hide the chain's proposals (it is outside the chain anyway).
        ups = [v.public for n, v in views.items() if n in up and v.public is not None]
        latest = max(ups, key=best_key) if ups else latest
    # ---- adopt
    if (
        latest is not None and latest != cur and latest.epoch_number >= cur.epoch_number
        and _relevant(latest, me) and _unanimous(latest, views)
        and (not hosed or _is_my_quiet(latest, me))
    ):
        problem = transition_problem(cur, latest, relative_to=me) or _restart_problem(
            st, latest)
        if problem is None:
            return _adopt(st, latest, now, rng)
        unsafe = True
        st = replace(st, not_sane=st.not_sane + 1, sane_streak=0)
        effects.append(_trace(st, "insane", now, problem=problem, candidate=latest.epoch_number))
        if st.not_sane > c.not_sane_limit:
            return _loop_break(st, latest, now, rng, effects, "not_sane")
    # ---- calculate
    epoch = max(cur.epoch_number, st.latest_epoch_seen) + 1
    own = views[me].public
    wedged_by_public = own is not None and own.epoch_number > cur.epoch_number
    if hosed:
        newprop = _quiet(st, epoch, force_none=holding)
        if (newprop.upi, newprop.repairing) == (cur.upi, cur.repairing) and not (
            wedged_by_public and cur.mode == "ap"
        ):
            return st, [*effects, ScheduleTick(now + _interval(st, rng))]
    else:
        basis, zerf = (frame, False) if moved and frame.mode == "ap" else _basis(
            st, views, latest, up, frame)
        if basis is None:
            newprop = none_projection(
                epoch_number=epoch, author=me, chain_name=cur.chain_name,
                all_members=cur.all_members, witnesses=cur.witnesses, mode=cur.mode,
                dbg={"none_reason": "no majority up"},
            )
        else:
            dbg: dict[str, JSON] = {"zerf_basis": zerf_basis_record(basis)} if zerf else {}
            repair_ok = st.repair_epoch == basis.epoch_id and st.repair_status == "ok"
            newprop = calc_projection(basis, me=me, up=up, epoch_number=epoch,
                                      repair_ok=repair_ok, creation_time_ms=now, dbg=dbg,
                                      restarted=_restarted(st, views))
    # ---- rank / write
    # I restarted inside my UPI and nothing newer exists: the chain must move to a new
    # epoch even when it keeps its shape (I am its sole UPI member, the others repairing):
    # else nobody proposes, I never confirm, and repair never starts (Hypothesis, CI).
    renew = st.restarted and latest is not None and latest.epoch_number <= cur.epoch_number
    if latest is not None and shape(latest) == shape(newprop) and not unsafe and not renew:
        if latest == cur:
            st, more = _maybe_repair(st, now)
            st, ae = _maybe_anti_entropy(st, now)
            more += ae
            return replace(st, waits=0), [*effects, *more,
                                          ScheduleTick(_next_tick_ms(st, now, rng))]
        lacking = tuple(n for n in _lacking(latest, views) if n in views)
        if lacking and not hosed:
            effects.append(WritePublic(st.round_id, latest, lacking))
            effects.append(_trace(st, "read_repair", now, to=list(lacking),
                                  latest=latest.epoch_number))
            return st, [*effects, ScheduleTick(now + c.reread_ms)]
        if hosed or _unanimous(latest, views) or not _split_epoch(latest, views):
            return st, [*effects, ScheduleTick(now + _interval(st, rng))]
        # Two different projections at the latest epoch: only a newer epoch resolves it.
    if (
        not hosed and latest is not None and not _relevant(latest, me)
        and shape(newprop) == shape(cur) and not cur.is_none() and not wedged_by_public
    ):
        st, more = _maybe_repair(st, now)
        st, ae = _maybe_anti_entropy(st, now)
        return st, [*effects, *more, *ae, ScheduleTick(_next_tick_ms(st, now, rng))]
    must_write = (
        latest is None or hosed or unsafe or rank(newprop) > rank(latest)
        or latest.author_server == me or latest.author_server not in up
        or latest.epoch_number < cur.epoch_number or st.waits >= c.max_waits
        # Nobody proposed anything newer than my current projection and I am the one
        # member everybody else defers to for this change (_lead): waiting for the
        # current projection's author would wait for someone who waits for me -- both
        # gave up after max_waits at the same moment and split the epoch (CP a,b + witness
        # c, kill b: c waited for a, a for c, then both proposed).
        or (latest.epoch_id == cur.epoch_id and _designated(st, newprop, up) == me)
    )
    if not must_write:
        assert latest is not None
        st = replace(st, waits=st.waits + 1)
        return st, [
            *effects, KickPeer(latest.author_server),
            _trace(st, "wait", now, author=latest.author_server, latest=latest.epoch_number),
            ScheduleTick(now + c.kick_wait_ms),
        ]
    lead = _lead(st, views, newprop, up, hosed or unsafe)
    if lead is not None:
        # Somebody else should author this change: everybody who saw the same reports
        # computes the same shape, and kicks make them look at the same moment, so
        # several authors would split the epoch and cost a round.  Kick it and wait
        # (at most max_waits times, then write it myself).
        st = replace(st, waits=st.waits + 1)
        return st, [
            *effects, KickPeer(lead),
            _trace(st, "wait", now, author=lead, latest=newprop.epoch_number),
            ScheduleTick(now + c.kick_wait_ms),
        ]
    if pending & up:
        # A member I count as up did not answer: this view of the stores is partial (a
        # slow member's rounds would otherwise author proposals from stale stores and
        # make the chain churn).  Look again; a member that stays silent becomes
        # unreachable (fitness.observe) and leaves the up set.
        return st, [*effects, _trace(st, "partial_round", now, missing=sorted(pending & up)),
                    ScheduleTick(now + _interval(st, rng))]
    targets = _targets(newprop, me, hosed)
    st = replace(st, waits=0, latest_epoch_seen=newprop.epoch_number)
    return st, [
        *effects, WritePublic(st.round_id, newprop, targets),
        _trace(st, "propose", now, **_proj_fields(newprop)),
        ScheduleTick(now + c.reread_ms),
    ]


def _restarted(st: ManagerState, views: Mapping[str, MemberView]) -> frozenset[str]:
    """AP: members that restarted inside their UPI and wait for a new epoch (me from my
    state, the others from what their CHAIN_VIEW said this round)."""
    me = st.config.name
    if st.current.mode != "ap":
        return frozenset()
    out = {n for n, v in views.items() if n != me and v.restarted}
    if st.restarted:
        out.add(me)
    return frozenset(out)


def _restart_problem(st: ManagerState, p: Projection) -> str | None:
    """Why I, restarted inside my UPI (restart_needs_new_epoch), must not adopt ``p``, or
    None.  A new epoch may keep me in the UPI only as its sole real member (every UPI
    member restarted: my content is the reference the repair merges everybody into); a
    longer UPI with me in it was computed without knowing that I restarted (a view read
    before my restart) and would let my possibly incomplete replica serve unrepaired."""
    me = st.config.name
    if not st.restarted or me not in p.upi:
        return None
    if p.epoch_number > st.current.epoch_number and p.upi_non_witnesses == (me,):
        return None
    return f"{me} restarted and is not repaired yet: it may not be in upi {list(p.upi)}"


def _resolve_split_bootstrap(
    st: ManagerState, latest: Projection, now: int
) -> tuple[ManagerState, list[Effect]]:
    """Two admins (or a bootstrap and a set_members) wrote different projections at one
    epoch while every manager was still at epoch 0: no store can take the other one
    (write-once), so neither becomes unanimous and nobody configured would ever write a
    newer one.  Copy the best-ranked of them (``latest``: epoch, rank, checksum) to the
    next epoch, keeping its author and creation time, so that every epoch-0 manager that
    sees the same candidates writes byte-identical copies (no new split).  Safe: nobody
    adopted either (epoch 0 everywhere we can see; an adopter at that epoch goes on with
    normal rounds and the transition rules), so no data was written under them."""
    dbg = dict(latest.dbg)
    dbg["resolves_split"] = latest.epoch_number
    p = latest.evolve(epoch_number=latest.epoch_number + 1, dbg=dbg)
    st = replace(st, latest_epoch_seen=max(st.latest_epoch_seen, p.epoch_number))
    return st, [
        WritePublic(st.round_id, p, p.all_members),
        _trace(st, "resolve_split", now, split=latest.epoch_number, **_proj_fields(p)),
        ScheduleTick(now + st.config.reread_ms),
    ]


def _lead(
    st: ManagerState, views: Mapping[str, MemberView], newprop: Projection,
    up: frozenset[str], urgent: bool,
) -> str | None:
    """Who should write ``newprop`` instead of me, or None (write it myself).

    * A change every up member computes alike (same reports): the head of its UPI.  Not
      a promotion (only the tail that repaired may author it).
    * I hold my own quiet chain (I was hosed) and an up member serves a better-ranked
      chain without me: its author, who will add me as repairing; proposing my solo
      chain plus everybody repairing would only compete with it."""
    c, cur, me = st.config, st.current, st.config.name
    if urgent or st.waits >= c.max_waits or not newprop.upi:
        return None
    if cur.dbg.get("hosed") and _is_my_quiet(cur, me):
        chains = [v.private for n, v in views.items()
                  if n != me and n in up and v.private is not None
                  and v.private.upi_non_witnesses and me not in v.private.upi]
        best = max(chains, key=best_key) if chains else None
        if best is not None and rank(best) > rank(newprop) and best.author_server in up:
            return best.author_server
        return None
    head = _designated(st, newprop, up)
    return head if head is not None and head != me and head in views else None


def _designated(st: ManagerState, newprop: Projection, up: frozenset[str]) -> str | None:
    """The one member that should author ``newprop`` when every up member computes it
    alike: the head of its UPI if up; None for a promotion (only the tail that repaired
    may author it) or an empty chain.  Deterministic: the same on every member."""
    if not newprop.upi or (set(newprop.upi) - set(st.current.upi)) & set(st.current.repairing):
        return None
    head = newprop.upi[0]
    return head if head in up else None


def _targets(p: Projection, me: str, hosed: bool) -> tuple[str, ...]:
    """Whose public stores get my proposal.  Hosed: only mine.  CP: every member (a
    public write wedges a FLU, fencing stale readers).  AP: the new chain (plus me), so
    that excluded members are not wedged and do not have to re-assert their own chain."""
    if hosed:
        return (me,)
    if p.mode == "cp":
        return p.all_members
    return tuple(m for m in p.all_members if m in p.upi or m in p.repairing or m == me)


def _adopt(
    st: ManagerState, p: Projection, now: int, rng: Rng
) -> tuple[ManagerState, list[Effect]]:
    """C110/C120: write p to my private store; count the history for the loop breaker."""
    c, me = st.config, st.config.name
    hist = (*st.history, (p.upi, p.repairing))[-c.loop_limit:]
    streak = st.sane_streak + 1
    st = replace(
        st, current=p, confirmed=False, adopted_at_ms=now, history=hist, waits=0,
        sane_streak=streak, not_sane=0 if streak > 3 else st.not_sane,
        prev_held_ms=now - st.adopted_at_ms,
        restarted=st.restarted and p.epoch_number <= st.current.epoch_number,
    )
    effects: list[Effect] = [WritePrivate(p), _trace(st, "adopt", now, **_proj_fields(p))]
    trivial = (p.upi, p.repairing) in (((), ()), ((me,), ()))
    if len(hist) == c.loop_limit and len(set(hist)) == 1 and not trivial:
        return _loop_break(st, p, now, rng, effects, "loop")
    return st, [*effects, ScheduleTick(now + c.reread_ms)]


def _loop_break(
    st: ManagerState, latest: Projection, now: int, rng: Rng, effects: list[Effect],
    why: str,
) -> tuple[ManagerState, list[Effect]]:
    """C103: adopt the none projection and declare myself down for a while."""
    c, cur = st.config, st.current
    epoch = max(cur.epoch_number, latest.epoch_number, st.latest_epoch_seen) + 1
    none = none_projection(
        epoch_number=epoch, author=c.name, chain_name=cur.chain_name,
        all_members=cur.all_members, witnesses=cur.witnesses, mode=cur.mode,
        dbg={"loop_breaker": why},
    )
    st = replace(
        st, loop_hold_until_ms=now + c.loop_hold_ms, history=(), not_sane=0,
        latest_epoch_seen=epoch,
    )
    return st, [
        *effects, WritePublic(st.round_id, none, (c.name,)),
        _trace(st, "loop_breaker", now, why=why, hold_ms=c.loop_hold_ms),
        ScheduleTick(now + c.reread_ms),
    ]


def _maybe_repair(st: ManagerState, now: int) -> tuple[ManagerState, list[Effect]]:
    """6.1: the UPI tail repairs once the confirmed projection has been stable a while."""
    cur, c = st.current, st.config
    if not st.confirmed or not cur.repairing or cur.tail != c.name:
        return st, []
    if st.repair_epoch == cur.epoch_id and (
        st.repair_status in ("running", "ok")
        or now - st.repair_changed_ms < c.stability_time_ms
    ):
        return st, []
    if now - st.adopted_at_ms < c.stability_time_ms and st.prev_held_ms < c.stability_time_ms:
        # Churning (the previous projection did not last the stability time either):
        # wait until this one has.  One change after a quiet chain (a member is back)
        # repairs as soon as it is confirmed.
        return st, []
    st = replace(st, repair_epoch=cur.epoch_id, repair_status="running",
                 repair_changed_ms=now)
    return st, [StartRepair(cur), _trace(st, "repair_start", now,
                                          repairing=list(cur.repairing))]


def anti_entropy_due_ms(st: ManagerState) -> int | None:
    """When my next AP anti-entropy pass is due (my clock), or None: not in AP, off
    (``ap_anti_entropy_interval_ms`` 0), a pass is running, or I am not the UPI tail of a
    confirmed, stable chain (nothing repairing, every real member in the UPI; witnesses
    aside).  Due once the projection has been held ``stability_time_ms`` and, after a
    pass, ``ap_anti_entropy_interval_ms`` after it ended (whatever its epoch or result)."""
    cur, c = st.current, st.config
    if (
        cur.mode != "ap" or c.ap_anti_entropy_interval_ms <= 0 or st.ae_epoch is not None
        or not st.confirmed or st.restarted or cur.is_none() or cur.tail != c.name
        or any(m not in cur.witnesses for m in cur.repairing)
        or set(cur.upi_non_witnesses) != {m for m in cur.all_members
                                          if m not in cur.witnesses}
        or len(cur.upi_non_witnesses) < 2
    ):
        return None
    due = st.adopted_at_ms + c.stability_time_ms
    if st.ae_ended_ms is not None:
        due = max(due, st.ae_ended_ms + c.ap_anti_entropy_interval_ms)
    return due


def _maybe_anti_entropy(st: ManagerState, now: int) -> tuple[ManagerState, list[Effect]]:
    due = anti_entropy_due_ms(st)
    if due is None or now < due:
        return st, []
    st = replace(st, ae_epoch=st.current.epoch_id, ae_passes=st.ae_passes + 1)
    return st, [StartAntiEntropy(st.current),
                _trace(st, "anti_entropy_start", now, passes=st.ae_passes)]


def _on_anti_entropy_done(
    st: ManagerState, ev: AntiEntropyDone, now: int
) -> tuple[ManagerState, list[Effect]]:
    if st.ae_epoch is None or ev.epoch_id != st.ae_epoch:
        return st, [_trace(st, "anti_entropy_stale", now, ok=ev.ok)]
    st = replace(st, ae_epoch=None, ae_ended_ms=now, ae_status="ok" if ev.ok else "failed")
    return st, [_trace(st, "anti_entropy_done", now, ok=ev.ok, detail=ev.detail)]


def _on_repair_done(
    st: ManagerState, ev: RepairDone, now: int
) -> tuple[ManagerState, list[Effect]]:
    if ev.epoch_id != st.repair_epoch:
        return st, [_trace(st, "repair_stale", now, ok=ev.ok)]
    st = replace(st, repair_status="ok" if ev.ok else "failed", repair_changed_ms=now)
    return st, [_trace(st, "repair_done", now, ok=ev.ok, detail=ev.detail),
                ScheduleTick(now + st.config.reread_ms)]


def _on_bootstrap(
    st: ManagerState, ev: AdminBootstrap, now: int
) -> tuple[ManagerState, list[Effect]]:
    c = st.config
    if st.current.epoch_number != 0 or c.name not in ev.members:
        return st, [_trace(st, "bootstrap_refused", now,
                           reason="already configured" if st.current.epoch_number
                           else "I am not a member")]
    p = make_projection(
        epoch_number=max(1, st.latest_epoch_seen + 1), author_server=c.name,
        chain_name=c.chain_name, all_members=ev.members, witnesses=ev.witnesses,
        mode=c.mode, upi=[m for m in ev.members if m not in ev.witnesses],
        members_dict=ev.members_dict, creation_time_ms=now, dbg={"bootstrap": True},
    )
    st = _void_round(replace(st, latest_epoch_seen=p.epoch_number,
                             members_hint=tuple(ev.members)))
    return st, [WritePublic(st.round_id, p, tuple(ev.members)),
                _trace(st, "bootstrap", now, **_proj_fields(p)), ScheduleTick(now)]


def _void_round(st: ManagerState) -> ManagerState:
    """An admin projection was just written: the round in flight read the stores before
    it, and a proposal from that read would carry a higher epoch number than the admin
    projection (``latest_epoch_seen`` already counts it) and so undo it.  Its answer is
    now stale; the admin's ScheduleTick(now) starts a fresh round at once."""
    return replace(st, round_id=st.round_id + 1, round_started_ms=None, kick_pending=False)


def _on_set_members(
    st: ManagerState, ev: AdminSetMembers, now: int
) -> tuple[ManagerState, list[Effect]]:
    c, cur = st.config, st.current
    if c.name not in ev.members or cur.epoch_number == 0:
        return st, [_trace(st, "set_members_refused", now,
                           reason="send it to a configured member that stays")]
    wit = cur.witnesses if ev.witnesses is None else ev.witnesses
    md = dict(cur.members_dict if ev.members_dict is None else ev.members_dict)
    md = {n: s for n, s in md.items() if n in ev.members}
    upi = [m for m in cur.upi if m in ev.members]
    if cur.upi_non_witnesses and not [m for m in upi if m not in wit]:
        # Every member that holds all the data (the UPI's real servers) would go: the
        # chain would be left with repairing copies only, which nobody can complete
        # (CP: none projection for good; AP: the removed members' chunks lost).
        return st, [_trace(st, "set_members_refused", now, reason=(
            f"no member of the current UPI {list(cur.upi_non_witnesses)} (epoch "
            f"{cur.epoch_number}) would stay: retry once a staying member is in the UPI"))]
    rep = [m for m in cur.repairing if m in ev.members and m not in wit]
    rep += [m for m in ev.members if m not in upi and m not in rep and m not in wit]
    p = make_projection(
        epoch_number=max(cur.epoch_number, st.latest_epoch_seen) + c.set_members_epoch_skip,
        author_server=c.name, chain_name=cur.chain_name, all_members=ev.members,
        witnesses=wit, mode=cur.mode, upi=upi, repairing=rep, members_dict=md,
        creation_time_ms=now, dbg={"set_members": True},
    )
    targets = tuple(dict.fromkeys((*cur.all_members, *ev.members)))
    st = _void_round(replace(st, latest_epoch_seen=p.epoch_number,
                             members_hint=tuple(ev.members)))
    return st, [WritePublic(st.round_id, p, targets),
                _trace(st, "set_members", now, **_proj_fields(p)), ScheduleTick(now)]
