"""Tests of Chain Replication client planning (machi.core.cr_plan, reference section 4)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from machi.core import cr_plan
from machi.core.epoch import EpochId
from machi.core.outcome import OpKind
from machi.core.projection import Projection, make_projection

NAMES = ("a", "b", "c", "d", "e")


def proj(upi: tuple[str, ...], repairing: tuple[str, ...] = (), *, epoch: int = 5,
         mode: str = "ap", witnesses: tuple[str, ...] = (),
         members: tuple[str, ...] = NAMES) -> Projection:
    down = tuple(m for m in members if m not in upi and m not in repairing)
    return make_projection(
        epoch_number=epoch, author_server=members[0], chain_name="c1",
        all_members=members, mode=mode, upi=upi, repairing=repairing, down=down,
        witnesses=witnesses,  # type: ignore[arg-type]
    )


@st.composite
def projections(draw: st.DrawFn) -> Projection:
    """Any valid projection over NAMES, AP or CP (CP with witnesses at the UPI front)."""
    order = draw(st.permutations(NAMES))
    n_upi = draw(st.integers(0, 5))
    n_rep = draw(st.integers(0, 5 - n_upi))
    upi, rep = tuple(order[:n_upi]), tuple(order[n_upi:n_upi + n_rep])
    mode = draw(st.sampled_from(["ap", "cp"]))
    wits: tuple[str, ...] = ()
    if mode == "cp":
        wits = tuple(draw(st.lists(st.sampled_from(NAMES), unique=True, max_size=2)))
        upi = tuple(w for w in wits if w in upi) + tuple(m for m in upi if m not in wits)
    return proj(upi, rep, mode=mode, witnesses=wits, epoch=draw(st.integers(1, 9)))


def test_chain_views() -> None:
    """Mutation chain is UPI ++ repairing; reads go to the UPI tail."""
    p = proj(("a", "b"), ("c",))
    assert cr_plan.mutation_chain(p) == ("a", "b", "c")
    assert cr_plan.read_target(p) == "b"
    assert cr_plan.available(p)
    assert not cr_plan.available(proj((), ("c",)))
    assert cr_plan.witnesses_to_check(p) == ()


def test_cp_witnesses_are_checked_never_written() -> None:
    """In CP the witness at the UPI front is checked by epoch and gets no data."""
    p = proj(("w", "a", "b"), mode="cp", witnesses=("w",), members=("w", "a", "b"))
    assert cr_plan.mutation_chain(p) == ("a", "b")
    assert cr_plan.read_target(p) == "b"
    assert p.head == "a"
    assert cr_plan.witnesses_to_check(p) == ("w",)
    assert cr_plan.witness_ok(p, False, p.epoch_id)
    assert not cr_plan.witness_ok(p, True, p.epoch_id)
    assert not cr_plan.witness_ok(p, False, EpochId(p.epoch_number, bytes(32)))
    only_witness = proj(("w",), mode="cp", witnesses=("w",), members=("w", "a", "b"))
    assert not cr_plan.available(only_witness)


@given(projections(), st.sets(st.sampled_from(NAMES)))
def test_no_plan_ever_names_a_witness(p: Projection, acked: set[str]) -> None:
    """Every member list the planner returns for data excludes witnesses."""
    lists = [cr_plan.mutation_chain(p), cr_plan.repair_sources(p)]
    for op in (OpKind.APPEND, OpKind.WRITE, OpKind.TRIM):
        plan = cr_plan.replan(op, p, acked)
        if isinstance(plan, cr_plan.Continue):
            lists.append(plan.members)
    for src in cr_plan.repair_sources(p):
        lists.append(cr_plan.repair_targets(p, src))
    tail = cr_plan.read_target(p)
    if tail is not None:
        lists.append((tail,))
    for lst in lists:
        assert not set(lst) & set(p.witnesses), (lst, p.summary())


def test_pick_latest_by_epoch_then_checksum() -> None:
    """Discovery picks the largest (epoch number, checksum bytes); None when empty."""
    p1, p2 = proj(("a",), epoch=3), proj(("a", "b"), epoch=3)
    p3 = proj(("b",), epoch=4)
    assert cr_plan.pick_latest([]) is None
    assert cr_plan.pick_latest([None, p1]) is p1
    hi = p1 if p1.epoch_csum > p2.epoch_csum else p2
    assert cr_plan.pick_latest([p1, p2]) is hi and cr_plan.pick_latest([p2, p1]) is hi
    assert cr_plan.pick_latest([p1, p3, p2]) is p3


def test_replan_continues_with_unwritten_members() -> None:
    """After a change, the not-yet-written members of the new chain are written in order."""
    p = proj(("a", "c"), ("d",))
    assert cr_plan.replan(OpKind.APPEND, p, {"a", "b"}) == cr_plan.Continue(("c", "d"))
    assert cr_plan.replan(OpKind.WRITE, p, set()) == cr_plan.Continue(("a", "c", "d"))
    assert cr_plan.replan(OpKind.WRITE, p, {"a", "c", "d"}) == cr_plan.Continue(())


def test_replan_restarts_an_append_when_no_writer_remains() -> None:
    """An append whose written members all left the chain restarts; a write continues."""
    p = proj(("c", "d"))
    assert cr_plan.replan(OpKind.APPEND, p, {"a", "b"}) == cr_plan.Restart()
    assert cr_plan.replan(OpKind.APPEND, p, set()) == cr_plan.Restart()
    assert cr_plan.replan(OpKind.WRITE, p, {"a", "b"}) == cr_plan.Continue(("c", "d"))


@given(projections(), st.sets(st.sampled_from(NAMES)))
def test_replan_properties(p: Projection, acked: set[str]) -> None:
    """Continue lists exactly the unwritten mutation members in chain order; Restart only
    for appends none of whose writers remain."""
    chain = cr_plan.mutation_chain(p)
    for op in (OpKind.APPEND, OpKind.WRITE, OpKind.TRIM):
        plan = cr_plan.replan(op, p, acked)
        if isinstance(plan, cr_plan.Restart):
            assert op is OpKind.APPEND and not acked & set(chain)
        else:
            assert plan.members == tuple(m for m in chain if m not in acked)


def test_read_repair_sources_by_mode() -> None:
    """AP may take the bytes from any mutation member (tail re-read last); CP only from
    the UPI tail, never from a repairing member."""
    ap = proj(("a", "b"), ("c",))
    assert cr_plan.repair_sources(ap) == ("a", "c", "b")
    cp = proj(("a", "b"), ("c",), mode="cp")
    assert cr_plan.repair_sources(cp) == ("b",)
    assert cr_plan.repair_targets(cp, "b") == ("a", "c")
    assert cr_plan.repair_targets(ap, "c", have={"a"}) == ("b",)
    assert cr_plan.repair_sources(proj((), ("c",))) == ()


@given(projections())
def test_cp_repair_source_is_always_in_the_upi(p: Projection) -> None:
    """CP read repair never sources from outside the UPI (nor from a witness)."""
    if p.mode == "cp":
        for s in cr_plan.repair_sources(p):
            assert s in p.upi and s not in p.witnesses


def test_backoff_schedule() -> None:
    """30 ms + 1.9^n ms, capped, plus bounded jitter."""
    b = cr_plan.Backoff()
    assert [b.delay_ms(n) for n in range(4)] == [31, 31, 33, 36]
    assert b.delay_ms(30) == b.cap_ms
    assert b.delay_ms(200) == b.cap_ms
    assert b.delay_ms(0, jitter_ms=5) == 36
    assert b.delay_ms(0, jitter_ms=10**6) == 31 + b.jitter_ms
    with pytest.raises(ValueError):
        b.delay_ms(-1)


@given(st.integers(0, 100), st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 50))
def test_backoff_is_bounded(attempt: int, now_ms: int, budget_ms: int, jitter: int) -> None:
    """No retry past the deadline or the attempt limit; delays never exceed cap + jitter."""
    b = cr_plan.Backoff(max_attempts=10)
    d = b.next_delay_ms(attempt, now_ms, now_ms + budget_ms, jitter)
    if d is not None:
        assert attempt + 1 < 10
        assert now_ms + d < now_ms + budget_ms
        assert 0 < d <= b.cap_ms + b.jitter_ms
    if attempt >= 9:
        assert d is None


def test_total_backoff_budget_is_bounded() -> None:
    """Summing every delay of the default schedule stays finite and modest (< 40 s)."""
    b = cr_plan.Backoff()
    total, n = 0, 0
    while (d := b.next_delay_ms(n, total, 10**9)) is not None:
        total += d
        n += 1
    assert n == b.max_attempts - 1 and total < 40_000


# ---- CP: answers that claim absence (quorum epoch check) ----------------------------------
def _eid(n: int, p: Projection | None = None) -> EpochId:
    return p.epoch_id if p is not None and p.epoch_number == n else EpochId(n, bytes([n]) * 32)


def test_absence_check_only_in_cp() -> None:
    """AP reads may be stale by design; CP answers that claim absence are checked."""
    assert not cr_plan.absence_needs_check(proj(("a", "b", "c")))
    assert cr_plan.absence_needs_check(proj(("a", "b", "c"), mode="cp"))


def test_absence_stands_with_a_majority_at_the_read_epoch_or_older() -> None:
    """3 of 5 members (witnesses count) at the read's epoch or older: the answer stands;
    2 of 5 is no quorum."""
    p = proj(("e", "a", "b"), ("c",), mode="cp", witnesses=("e",))
    assert cr_plan.absence_quorum(p) == 3
    assert set(cr_plan.absence_quorum_members(p)) == set(NAMES)
    two = {"e": p.epoch_id, "a": _eid(3)}
    assert cr_plan.absence_verdict(p, two) is cr_plan.Absence.NO_QUORUM
    three = {**two, "d": _eid(1)}
    assert cr_plan.absence_verdict(p, three) is cr_plan.Absence.STANDS
    outsider = {**two, "zz": p.epoch_id}  # not a member: does not count
    assert cr_plan.absence_verdict(p, outsider) is cr_plan.Absence.NO_QUORUM


def test_absence_refreshes_when_anyone_is_newer() -> None:
    """One member at a newer epoch (or another projection at the same number) means the
    chain may have acknowledged writes the tail has not seen: refresh, even without a
    quorum of answers and even with a majority at the read's epoch."""
    p = proj(("a", "b", "c"), mode="cp", epoch=5)
    newer = {"a": p.epoch_id, "b": p.epoch_id, "c": _eid(6)}
    assert cr_plan.absence_verdict(p, newer) is cr_plan.Absence.REFRESH
    assert cr_plan.absence_verdict(p, {"c": _eid(6)}) is cr_plan.Absence.REFRESH
    other = EpochId(5, bytes([9]) * 32)
    assert cr_plan.absence_verdict(p, {"a": other}) is cr_plan.Absence.REFRESH


@given(projections(), st.dictionaries(st.sampled_from(NAMES), st.integers(0, 12)))
def test_absence_stands_only_if_a_majority_is_not_newer(p: Projection,
                                                        seen: dict[str, int]) -> None:
    """STANDS implies that every majority of members contains one that answered at the
    read's epoch or older (so it intersects the UPI+repairing majority of any newer epoch
    with acknowledged writes)."""
    answers = {m: (p.epoch_id if n == p.epoch_number else _eid(n)) for m, n in seen.items()}
    v = cr_plan.absence_verdict(p, answers)
    old = [m for m, e in answers.items() if e.number <= p.epoch_number]
    if v is cr_plan.Absence.STANDS:
        assert len(old) == len(answers) >= len(NAMES) // 2 + 1


def test_checksum_sources_are_the_other_upi_members_tail_side_first() -> None:
    """After BAD_CHECKSUM at the tail, other real UPI members are asked, nearest first;
    never a witness or a repairing member."""
    p = proj(("e", "a", "b", "c"), ("d",), mode="cp", witnesses=("e",))
    assert cr_plan.checksum_sources(p, "c") == ("b", "a")
