"""Step-level tests of the chain manager decision core (machi.core.chain_manager)."""

from __future__ import annotations

import random
from dataclasses import replace

from machi.core import chain_manager as cm
from machi.core.fitness import Report
from machi.core.projection import Projection, make_projection
from machi.core.status import Status

RNG = random.Random(0)


def _cfg(name: str, mode: str = "ap") -> cm.Config:
    return cm.Config(name=name, chain_name="c1", mode=mode,  # type: ignore[arg-type]
                     stability_time_ms=100)


def _p(upi: str, repairing: str = "", *, epoch: int = 5, author: str = "a",
       mode: str = "ap", members: str = "abc", witnesses: str = "") -> Projection:
    return make_projection(
        epoch_number=epoch, author_server=author, chain_name="c1", all_members=list(members),
        mode=mode,  # type: ignore[arg-type]
        upi=list(upi), repairing=list(repairing), witnesses=list(witnesses),
        down=[m for m in members if m not in upi and m not in repairing],
    )


def _of(effects: list[cm.Effect], kind: type) -> list:  # type: ignore[type-arg]
    return [e for e in effects if isinstance(e, kind)]


def _round(st: cm.ManagerState, now: int,
           views: dict[str, cm.MemberView | Status]) -> tuple[cm.ManagerState, list[cm.Effect]]:
    st, eff = cm.step(st, cm.Tick(), now_ms=now, rng=RNG)
    reads = _of(eff, cm.ReadMembers)
    assert reads, eff
    return cm.step(st, cm.MembersRead(reads[0].round_id, views), now_ms=now + 1, rng=RNG)


def _views(pub: Projection | None, priv: Projection | None, names: str = "abc",
           **fitness: Report) -> dict[str, cm.MemberView | Status]:
    return {n: cm.MemberView(pub, priv, None, dict(fitness)) for n in names}


def test_bootstrap_adopt_then_confirm_and_unwedge() -> None:
    """Bootstrap writes the all-members projection everywhere; a unanimous read adopts
    it; a read showing every UPI member using it confirms and unwedges."""
    st, _ = cm.initial_state(_cfg("a"), None, now_ms=0)
    st, eff = cm.step(st, cm.AdminBootstrap(("a", "b", "c")), now_ms=0, rng=RNG)
    (w,) = _of(eff, cm.WritePublic)
    p = w.projection
    assert w.members == ("a", "b", "c") and p.upi == ("a", "b", "c")
    st, eff = _round(st, 10, _views(p, None))
    assert _of(eff, cm.WritePrivate)[0].projection == p
    st, eff = _round(st, 20, _views(p, p))
    (wedge,) = _of(eff, cm.SetWedge)
    assert not wedge.wedged and wedge.epoch_id == p.epoch_id
    assert _of(eff, cm.WritePrivate)[0].projection.dbg2["confirmed"] is True
    assert st.confirmed


def test_stale_round_results_are_ignored() -> None:
    """A read answer for an older round changes nothing."""
    p = _p("abc", epoch=1)
    st, _ = cm.initial_state(_cfg("a"), p, now_ms=0)
    st, _ = cm.step(st, cm.Tick(), now_ms=0, rng=RNG)
    st2, eff = cm.step(st, cm.MembersRead(st.round_id - 1, _views(p, p)), now_ms=1, rng=RNG)
    assert st2 == st and not _of(eff, cm.WritePrivate)


def test_unsafe_unanimous_candidate_is_not_adopted() -> None:
    """A unanimous projection that re-orders my UPI is refused (and counted)."""
    cur = _p("abc", epoch=1)
    st, _ = cm.initial_state(_cfg("b"), cur, now_ms=0)
    bad = _p("cba", epoch=2, author="c")
    st, eff = _round(st, 10, _views(bad, cur))
    assert all(w.projection.epoch_id == cur.epoch_id for w in _of(eff, cm.WritePrivate))
    assert st.not_sane == 1
    assert any(t.fields["event"] == "insane" for t in _of(eff, cm.Trace))


def test_ap_hosed_node_suggests_itself_on_its_own_store() -> None:
    """AP: when the shared reports exclude me I write a chain of just me to my own
    public store only."""
    cur = _p("abc", epoch=1)
    st, _ = cm.initial_state(_cfg("b"), cur, now_ms=0)
    views = _views(cur, cur, "abc", a=Report("a", 5, frozenset("b")))
    st, eff = _round(st, 10, views)
    (w,) = _of(eff, cm.WritePublic)
    assert w.members == ("b",) and w.projection.upi == ("b",)


def test_cp_minority_proposes_none() -> None:
    """CP: alone, I cannot form a majority and propose the none projection."""
    cur = _p("abc", epoch=1, mode="cp")
    st, _ = cm.initial_state(_cfg("a", "cp"), cur, now_ms=0)
    views = _views(cur, cur, "a")
    views.update(b=Status.PARTITION, c=Status.PARTITION)
    for now in (10, 1000):  # not yet unreachable (too few misses, too short)
        st, eff = _round(st, now, views)
        assert not _of(eff, cm.WritePublic)
    st, eff = _round(st, 2010, views)
    (w,) = _of(eff, cm.WritePublic)
    assert w.projection.is_none()


def test_removed_member_wedges_itself() -> None:
    """A newer projection that no longer lists me: wedge and adopt the none projection."""
    cur = _p("abc", epoch=1)
    st, _ = cm.initial_state(_cfg("c"), cur, now_ms=0)
    new = _p("ab", epoch=1112, members="ab")
    st, eff = _round(st, 10, _views(new, cur, "abc"))
    assert _of(eff, cm.SetWedge)[0].wedged
    assert _of(eff, cm.WritePrivate)[0].projection.is_none()
    assert st.removed


def test_loop_breaker_after_identical_adoptions() -> None:
    """The eighth identical (UPI, repairing) adoption in a row adopts nothing more and
    declares me down for a while (C103)."""
    cur = _p("abc", epoch=1)
    st, _ = cm.initial_state(_cfg("a"), cur, now_ms=0)
    st = replace(st, history=((("a", "b", "c"), ()),) * 7)
    nxt = _p("abc", epoch=2, author="b")
    st, eff = _round(st, 10, _views(nxt, cur))
    assert any(t.fields["event"] == "loop_breaker" for t in _of(eff, cm.Trace))
    assert st.loop_hold_until_ms > 10


def test_tail_repairs_then_promotes() -> None:
    """The UPI tail starts repair once the confirmed projection is stable, and a
    successful repair lets it propose the promotion."""
    cur = _p("ac", "b", epoch=3).with_dbg2({"confirmed": True})
    st, _ = cm.initial_state(_cfg("c"), cur, now_ms=0)
    st = replace(st, confirmed=True)
    st, eff = _round(st, 500, _views(cur, cur))
    (rep,) = _of(eff, cm.StartRepair)
    st, eff = cm.step(st, cm.RepairDone(rep.projection.epoch_id, True), now_ms=600, rng=RNG)
    st, eff = _round(st, 700, _views(cur, cur))
    (w,) = _of(eff, cm.WritePublic)
    assert w.projection.upi == ("a", "c", "b") and w.projection.author_server == "c"


def test_foreign_chain_projections_are_ignored() -> None:
    """A store holding another chain's (or mode's) projection neither steers nor gets
    adopted."""
    cur = _p("abc", epoch=1)
    st, _ = cm.initial_state(_cfg("a"), cur, now_ms=0)
    foreign = make_projection(epoch_number=9, author_server="a", chain_name="other",
                              all_members=["a", "b", "c"], upi=["c", "b", "a"])
    st2, eff = _round(st, 10, _views(foreign, cur))
    assert all(w.projection.chain_name == "c1" and w.projection.upi == ("a", "b", "c")
               for w in _of(eff, cm.WritePublic))
    assert all(w.projection.epoch_id == cur.epoch_id for w in _of(eff, cm.WritePrivate))
    assert st2.latest_epoch_seen < 9


def test_confirmed_manager_unwedges_its_flu_wedged_by_a_stray_epoch() -> None:
    """A confirmed manager whose FLU reports itself wedged (a stray data request) unwedges
    it again at the same epoch when every chain store still holds that epoch -- but not
    while a newer public projection is in the air, nor before confirmation."""
    for mode in ("ap", "cp"):
        p = _p("abc", epoch=5, mode=mode)
        st, _ = cm.initial_state(_cfg("a", mode), p, now_ms=0)
        views = _views(p, p)
        wedged = dict(views, a=replace(views["a"], wedged=True))  # type: ignore[arg-type]
        st, eff = _round(st, 10, wedged)  # confirms (and unwedges) once
        assert st.confirmed and len(_of(eff, cm.SetWedge)) == 1
        st, eff = _round(st, 6000, wedged)
        (w,) = _of(eff, cm.SetWedge)
        assert not w.wedged and w.epoch_id == p.epoch_id
        _, eff = _round(st, 12000, views)  # not wedged: nothing to do
        assert not _of(eff, cm.SetWedge)
        newer = _p("abc", epoch=6, mode=mode, author="b")
        in_air = dict(wedged, b=replace(views["b"], public=newer))  # type: ignore[arg-type]
        _, eff = _round(st, 18000, in_air)
        assert not [e for e in _of(eff, cm.SetWedge) if not e.wedged]
        old = _p("abc", epoch=4, mode=mode)
        lagging = dict(wedged, c=replace(views["c"], private=old))  # type: ignore[arg-type]
        _, eff = _round(st, 24000, lagging)
        assert not _of(eff, cm.SetWedge)


def test_missed_rounds_become_a_conflict_only_after_misses_and_time() -> None:
    """A peer is reported unreachable only after unreachable_misses rounds in a row and
    unreachable_after_ms without an answer (no proposal before that); one answer clears
    it."""
    cur = _p("abc", epoch=1)
    st, _ = cm.initial_state(replace(_cfg("a"), unreachable_after_ms=2000), cur, now_ms=0)
    views = _views(cur, cur, "a")
    views.update(b=cm.MemberView(cur, cur), c=Status.PARTITION)
    for now in (10, 20, 30, 1990):
        st, eff = _round(st, now, views)
        assert st.fitness["a"].unreachable == frozenset()
        assert not _of(eff, cm.WritePublic)
    st, eff = _round(st, 2010, views)
    assert st.fitness["a"].unreachable == frozenset({"c"})
    assert _of(eff, cm.WritePublic)[0].projection.upi == ("a", "b")
    assert st.fitness["a"].strikes == (("c", 1),)
    views.update(c=cm.MemberView(cur, cur))
    st, _ = _round(st, 2030, views)
    assert st.fitness["a"].unreachable == frozenset()


def test_kick_during_an_outstanding_round_hurries_the_next_one() -> None:
    """A kick that arrives while a read round is outstanding makes the next round follow
    right after it (reread_ms) instead of after the ranked interval."""
    p = _p("abc", epoch=1)
    st, _ = cm.initial_state(_cfg("a"), p, now_ms=0)
    st = replace(st, confirmed=True)
    st, eff = cm.step(st, cm.Tick(), now_ms=0, rng=RNG)
    (read,) = _of(eff, cm.ReadMembers)
    st, _ = cm.step(st, cm.Kick("b"), now_ms=5, rng=RNG)
    assert st.kick_pending
    st, eff = cm.step(st, cm.MembersRead(read.round_id, _views(p, p)), now_ms=6, rng=RNG)
    assert _of(eff, cm.ScheduleTick)[-1].at_ms == 6 + st.config.reread_ms
    assert not st.kick_pending
    # without the kick the same read waits for the ranked interval
    st, eff = _round(st, 100, _views(p, p))
    assert _of(eff, cm.ScheduleTick)[-1].at_ms >= 101 + st.config.tick_base_ms


def test_unconfirmed_adoption_polls_with_backoff() -> None:
    """While my adopted projection is not confirmed, I look again after a delay that
    starts at reread_ms and doubles with the time since adoption, never past the
    ranked interval."""
    p = _p("abc", epoch=2)
    old = _p("abc", epoch=1)
    st, _ = cm.initial_state(_cfg("a"), p, now_ms=0)
    waits = []
    now = 0
    for _ in range(6):
        st, eff = _round(st, now, _views(p, old))  # peers still on the old private
        assert not st.confirmed
        nxt = _of(eff, cm.ScheduleTick)[-1].at_ms
        waits.append(nxt - (now + 1))
        now = nxt
    assert waits[0] == st.config.reread_ms
    assert waits == sorted(waits) and waits[-1] <= st.config.tick_base_ms + \
        st.config.tick_spread_ms + st.config.tick_jitter_ms


def _tail_repair_start(prev_held_ms: int) -> int | None:
    """The time the tail c of a confirmed [a,b,c]+[d] chain starts repair."""
    cur = _p("abc", "d", epoch=3, author="c", members="abcd")
    st, _ = cm.initial_state(_cfg("c"), cur, now_ms=0)
    st = replace(st, confirmed=True, adopted_at_ms=0, prev_held_ms=prev_held_ms)
    for now in range(0, 200, 10):
        st, eff = _round(st, now, _views(cur, cur, "abcd"))
        if _of(eff, cm.StartRepair):
            return now
    return None


def test_repair_waits_for_stability_only_when_the_chain_churns() -> None:
    """A confirmed change after a quiet chain (the previous projection lasted the
    stability time) repairs at once; after a short-lived previous projection the tail
    waits until the current one is stability_time_ms old."""
    assert _tail_repair_start(prev_held_ms=10_000) == 0
    assert _tail_repair_start(prev_held_ms=50) == 100


def test_my_report_of_an_earlier_start_is_replaced_at_once() -> None:
    """After a restart (incarnation 2, clock restarted lower) a peer still gossips my
    report of the previous start, newer by its clock: my first round publishes a report
    of this start (which every merge prefers), not the old one back."""
    cur = _p("abc", epoch=1)
    st, _ = cm.initial_state(replace(_cfg("c"), incarnation=2), cur, now_ms=100)
    old = Report("c", 36_000_000, frozenset(), incarnation=1)  # same set: only its start differs
    views = _views(cur, cur, "abc", c=old)
    st, eff = _round(st, 110, views)
    mine = st.fitness["c"]
    assert (mine.incarnation, mine.time_ms, mine.unreachable) == (2, 111, frozenset())
    (pub,) = _of(eff, cm.PublishFitness)
    assert pub.reports["c"] == mine


def test_ap_restart_inside_the_upi_wedges_and_waits_for_a_new_epoch() -> None:
    """AP, a node restarting inside the UPI of its stored projection: wedged at start,
    never confirms that projection again, proposes (as the new UPI head) a new epoch with
    every restarted member repairing; a UPI that keeps it among others is refused; the
    new epoch clears the flag.  Without ``restarted`` (a manager started on a running
    FLU) and in CP nothing changes."""
    cur = _p("abc", epoch=1)
    assert cm.restart_needs_new_epoch(cur, "a") and not cm.restart_needs_new_epoch(cur, "d")
    assert not cm.restart_needs_new_epoch(_p("abc", epoch=1, mode="cp"), "a")
    assert not cm.restart_needs_new_epoch(_p("ab", "c", epoch=1), "c")
    st, eff = cm.initial_state(_cfg("a"), cur, now_ms=0, restarted=True)
    assert st.restarted and _of(eff, cm.SetWedge)[0].wedged
    views = {n: cm.MemberView(cur, cur, None, {}, restarted=n != "a") for n in "abc"}
    st, eff = _round(st, 10, views)
    assert not st.confirmed and not any(not w.wedged for w in _of(eff, cm.SetWedge))
    (w,) = _of(eff, cm.WritePublic)
    new = w.projection
    assert (new.upi, new.repairing, new.epoch_number) == (("a",), ("b", "c"), 2)
    # b, restarted too: refuses a chain that keeps it in a longer UPI, adopts the new one
    stb, _ = cm.initial_state(_cfg("b"), cur, now_ms=0, restarted=True)
    longer = _p("ab", epoch=2, author="a")
    refused, eff = _round(stb, 10, {n: cm.MemberView(longer, cur, None, {}, restarted=True)
                                    for n in "abc"})
    assert not any(p.projection == longer for p in _of(eff, cm.WritePrivate))
    assert refused.restarted and refused.not_sane == 1
    assert any(t.fields["event"] == "insane" for t in _of(eff, cm.Trace))
    stb, eff = _round(stb, 10, {n: cm.MemberView(new, cur, None, {}, restarted=True)
                                for n in "abc"})
    assert _of(eff, cm.WritePrivate)[0].projection == new and not stb.restarted
    # not a restart (manager started on a running FLU), or CP: the old behaviour
    st, eff = cm.initial_state(_cfg("a"), cur, now_ms=0)
    assert not st.restarted and not _of(eff, cm.SetWedge)
    cpc = _p("abc", epoch=1, mode="cp")
    st, _ = cm.initial_state(_cfg("a", "cp"), cpc, now_ms=0, restarted=True)
    assert not st.restarted


def _stable_tail(name: str = "c", mode: str = "ap", upi: str = "abc", repairing: str = "",
                 witnesses: str = "", interval_ms: int = 1_000) -> cm.ManagerState:
    cur = _p(upi, repairing, epoch=3, mode=mode, witnesses=witnesses).with_dbg2(
        {"confirmed": True})
    cfg = replace(_cfg(name, mode), ap_anti_entropy_interval_ms=interval_ms)
    st, _ = cm.initial_state(cfg, cur, now_ms=0)
    return replace(st, confirmed=True)


def test_ap_anti_entropy_runs_on_the_stable_tail_then_every_interval() -> None:
    """AP, UPI tail of a confirmed chain with every member in the UPI: the first pass
    once the projection stood stability_time_ms, none while it runs, the next one
    ap_anti_entropy_interval_ms after it ended."""
    st = _stable_tail()
    cur = st.current
    assert cm.anti_entropy_due_ms(st) == 100  # stability_time_ms after adoption
    st, eff = _round(st, 50, _views(cur, cur))
    assert not _of(eff, cm.StartAntiEntropy)
    st, eff = _round(st, 200, _views(cur, cur))
    (ae,) = _of(eff, cm.StartAntiEntropy)
    assert ae.projection == cur and st.ae_epoch == cur.epoch_id and st.ae_passes == 1
    assert cm.anti_entropy_due_ms(st) is None
    st, eff = _round(st, 5_000, _views(cur, cur))  # still running: no second pass
    assert not _of(eff, cm.StartAntiEntropy)
    st, _ = cm.step(st, cm.AntiEntropyDone(cur.epoch_id, True, "x"), now_ms=5_100, rng=RNG)
    assert st.ae_epoch is None and st.ae_status == "ok" and st.ae_ended_ms == 5_100
    assert cm.anti_entropy_due_ms(st) == 6_100
    st, eff = _round(st, 6_000, _views(cur, cur))
    assert not _of(eff, cm.StartAntiEntropy)
    assert _of(eff, cm.ScheduleTick)[-1].at_ms <= 6_100  # the timer wakes me in time
    st, eff = _round(st, 6_200, _views(cur, cur))
    assert len(_of(eff, cm.StartAntiEntropy)) == 1 and st.ae_passes == 2


def test_ap_anti_entropy_answer_of_another_epoch_is_stale() -> None:
    st = _stable_tail()
    st, eff = _round(st, 200, _views(st.current, st.current))
    assert _of(eff, cm.StartAntiEntropy)
    other = _p("abc", epoch=9)
    st2, eff = cm.step(st, cm.AntiEntropyDone(other.epoch_id, True), now_ms=300, rng=RNG)
    assert st2.ae_epoch == st.ae_epoch
    assert [t.fields["event"] for t in _of(eff, cm.Trace)] == ["anti_entropy_stale"]


def test_no_anti_entropy_in_cp_off_off_tail_or_unstable_chains() -> None:
    """Never in CP (its repair rules differ), never with interval 0, only on the UPI
    tail, never while a member is repairing or down (repair's job), never unconfirmed."""
    cases = {
        "cp": _stable_tail(mode="cp"),
        "cp with a witness": _stable_tail(name="c", mode="cp", witnesses="a"),
        "off": _stable_tail(interval_ms=0),
        "not the tail": _stable_tail(name="b"),
        "repairing": _stable_tail(upi="ac", repairing="b"),
        "down": _stable_tail(upi="ac"),
    }
    assert cm.anti_entropy_due_ms(replace(_stable_tail(), confirmed=False)) is None
    for what, st in cases.items():
        assert cm.anti_entropy_due_ms(st) is None, what
        for now in (500, 50_000):
            st, eff = _round(st, now, _views(st.current, st.current))
            assert not _of(eff, cm.StartAntiEntropy), what


def test_admin_change_voids_the_round_in_flight() -> None:
    """A round that read the stores before set_members (or bootstrap) was written must not
    author: its proposal would carry a higher epoch than the admin projection and undo it
    (CI: the removal of c came back as UPI [a, c, b] one epoch later)."""
    cur = _p("abc", epoch=21)
    st, _ = cm.initial_state(_cfg("a"), cur, now_ms=0)
    st, eff = cm.step(st, cm.Tick(), now_ms=0, rng=RNG)
    (read,) = _of(eff, cm.ReadMembers)
    st, eff = cm.step(st, cm.AdminSetMembers(("a", "b")), now_ms=1, rng=RNG)
    (admin,) = _of(eff, cm.WritePublic)
    assert admin.projection.all_members == ("a", "b")
    # the old round's answer (stores as they were before the admin write) arrives late
    st, eff = cm.step(st, cm.MembersRead(read.round_id, _views(cur, cur)), now_ms=2, rng=RNG)
    assert not _of(eff, cm.WritePublic) and not _of(eff, cm.WritePrivate), eff
    # the next round starts at once and builds on the admin projection
    st, eff = cm.step(st, cm.Tick(), now_ms=3, rng=RNG)
    (read2,) = _of(eff, cm.ReadMembers)
    views: dict[str, cm.MemberView | Status] = {
        "a": cm.MemberView(admin.projection, cur, None, {}),
        "b": cm.MemberView(admin.projection, cur, None, {}),
        "c": Status.PARTITION,
    }
    st, eff = cm.step(st, cm.MembersRead(read2.round_id, views), now_ms=4, rng=RNG)
    for w in _of(eff, cm.WritePublic):
        assert w.projection.all_members == ("a", "b"), w.projection


def test_set_members_refuses_to_remove_every_full_replica() -> None:
    """Removing the only UPI member while the other is still repairing would leave a chain
    of partial copies (CP: stuck in the none projection; AP: chunks lost): refused with a
    reason; once the staying member is in the UPI, the same request is accepted."""
    for mode in ("cp", "ap"):
        wit = "c" if mode == "cp" else ""
        cur = _p("a", "b", epoch=8, mode=mode, witnesses=wit)
        st, _ = cm.initial_state(_cfg("b", mode), cur, now_ms=0)
        st2, eff = cm.step(st, cm.AdminSetMembers(("b", "c")), now_ms=1, rng=RNG)
        (refused,) = [e for e in eff if isinstance(e, cm.Trace)]
        assert refused.fields["event"] == "set_members_refused", eff
        assert "no member of the current UPI ['a']" in str(refused.fields["reason"])
        assert not _of(eff, cm.WritePublic) and st2 == st
        promoted = _p("ab", epoch=9, mode=mode, witnesses=wit)
        st, _ = cm.initial_state(_cfg("b", mode), promoted, now_ms=0)
        st, eff = cm.step(st, cm.AdminSetMembers(("b", "c")), now_ms=1, rng=RNG)
        (w,) = _of(eff, cm.WritePublic)
        assert w.projection.upi == ("b",) and w.projection.all_members == ("b", "c")
