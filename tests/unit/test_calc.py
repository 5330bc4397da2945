"""Tests of calc_projection (reference 5.6), ranking and the special projections."""

from __future__ import annotations

import random

from machi.core.calc import calc_projection
from machi.core.projection import Projection, make_projection
from machi.core.rank import (
    RANK_CP_MINORITY_QUORUM,
    all_projection,
    best_key,
    none_projection,
    rank,
    timer_interval_ms,
)
from machi.core.transition import transition_problem


def _p(upi: str, repairing: str = "", *, mode: str = "ap", members: str = "abc",
       witnesses: str = "", epoch: int = 5, author: str = "a") -> Projection:
    return make_projection(
        epoch_number=epoch, author_server=author, chain_name="c1", all_members=list(members),
        mode=mode,  # type: ignore[arg-type]
        upi=list(upi), repairing=list(repairing), witnesses=list(witnesses),
        down=[m for m in members if m not in upi and m not in repairing],
    )


def test_down_member_leaves_upi_and_returns_via_repairing() -> None:
    """A member that goes down leaves the UPI; when it is up again it joins the end of
    repairing, never the UPI directly."""
    p = calc_projection(_p("abc"), me="a", up={"a", "c"}, epoch_number=6)
    assert (p.upi, p.repairing, p.down) == (("a", "c"), (), ("b",))
    q = calc_projection(p, me="a", up={"a", "b", "c"}, epoch_number=7)
    assert (q.upi, q.repairing) == (("a", "c"), ("b",))
    assert transition_problem(p, q, relative_to="b") is None


def test_only_the_tail_promotes_after_a_successful_repair() -> None:
    """All repairing members move to the UPI tail only when I am the tail and my repair
    of this epoch succeeded."""
    base = _p("ac", "b")
    assert calc_projection(base, me="c", up=set("abc"), epoch_number=6, repair_ok=True).upi \
        == ("a", "c", "b")
    assert calc_projection(base, me="a", up=set("abc"), epoch_number=6, repair_ok=True).upi \
        == ("a", "c")
    assert calc_projection(base, me="c", up=set("abc"), epoch_number=6).upi == ("a", "c")
    newcomer = calc_projection(_p("ac", "b", members="abcd"), me="c", up=set("abcd"),
                               epoch_number=6, repair_ok=True)
    assert (newcomer.upi, newcomer.repairing) == (("a", "c"), ("b", "d"))


def test_ap_empty_upi_takes_first_repairing() -> None:
    """AP: when every UPI member is down the first repairing member serves alone."""
    p = calc_projection(_p("a", "bc"), me="b", up={"b", "c"}, epoch_number=6)
    assert (p.upi, p.repairing) == (("b",), ("c",))


def test_cp_minority_falls_to_none_and_witnesses_fill_quorum() -> None:
    """CP: a minority gets the none projection; up witnesses are prepended only as
    needed to reach a majority."""
    base = _p("bc", mode="cp", witnesses="a")
    assert calc_projection(base, me="b", up={"b"}, epoch_number=6).is_none()
    q = calc_projection(base, me="b", up={"a", "b"}, epoch_number=6)
    assert q.upi == ("a", "b")
    full = calc_projection(base, me="b", up={"a", "b", "c"}, epoch_number=6)
    assert full.upi == ("b", "c")
    lost = calc_projection(_p("b", "c", mode="cp", witnesses="a"), me="c", up={"a", "c"},
                           epoch_number=6)
    assert lost.is_none() and "none_reason" in lost.dbg


def test_rank_orders_by_real_upi_then_witnesses_then_repairing() -> None:
    """Rank: real UPI servers dominate, then witnesses, then repairing; -99 without a
    real server; P_latest ties break by checksum."""
    assert rank(_p("ab")) > rank(_p("a", "bc"))
    assert rank(_p("ab", mode="cp", witnesses="a")) > rank(_p("b", "c", mode="cp",
                                                             witnesses="a"))
    assert rank(_p("")) == RANK_CP_MINORITY_QUORUM
    x, y = _p("ab", author="a"), _p("ab", author="b")
    assert best_key(x) != best_key(y)


def test_timer_interval_is_ranked_and_uses_the_given_rng() -> None:
    """The largest name gets the shortest interval; the jitter comes from the rng."""
    rng = random.Random(1)
    members = ("a", "b", "c")
    ia = timer_interval_ms("a", members, rng, base_ms=400, spread_ms=1100, jitter_ms=100)
    ic = timer_interval_ms("c", members, rng, base_ms=400, spread_ms=1100, jitter_ms=100)
    assert 400 + 2 * 366 < ia <= 400 + 2 * 366 + 100
    assert 400 < ic <= 500


def test_none_and_all_projections() -> None:
    """none: nobody serving, everyone down; all: every real server in the UPI."""
    n = none_projection(epoch_number=3, author="a", chain_name="c1",
                        all_members=("a", "b"), witnesses=(), mode="ap")
    assert n.is_none() and n.down == ("a", "b")
    a = all_projection(epoch_number=3, author="a", chain_name="c1",
                       all_members=("a", "b", "c"), witnesses=("a",), mode="cp")
    assert a.upi == ("b", "c")


def test_ap_restarted_upi_members_go_repairing_first() -> None:
    """AP: UPI members that restarted inside the basis leave the UPI for the front of
    repairing (UPI order); all of them restarted -> the first is the sole UPI member;
    a repair of the basis epoch promotes nobody while a restarted member is waiting; CP
    ignores the restart set (its own rule applies)."""
    p = calc_projection(_p("abc"), me="a", up="abc", epoch_number=6, restarted={"b"})
    assert (p.upi, p.repairing) == (("a", "c"), ("b",))
    assert p.dbg["restarted"] == ["b"]
    assert transition_problem(_p("abc"), p, relative_to="b") is None
    q = calc_projection(_p("abc"), me="c", up="abc", epoch_number=6, restarted="cab")
    assert (q.upi, q.repairing) == (("a",), ("b", "c"))
    assert transition_problem(_p("abc"), q, relative_to="c") is None
    basis = _p("ac", "d", members="abcd")
    r = calc_projection(basis, me="c", up="abcd", epoch_number=6, repair_ok=True,
                        restarted={"a"})
    assert (r.upi, r.repairing) == (("c",), ("a", "d", "b"))
    cp = calc_projection(_p("abc", mode="cp"), me="a", up="abc", epoch_number=6,
                         restarted={"b"})
    assert (cp.upi, cp.repairing) == (("a", "b", "c"), ())
