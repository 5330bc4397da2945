"""Tests of the per-file interval index: write decisions, read plans, trims, EOF."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from machi.core.checksum import CsumTag, TaggedCsum
from machi.core.ranges import (
    MAX_OFFSET,
    MIN_OFFSET,
    Entry,
    FileIndex,
    WriteCheck,
    check_range,
)

B = MIN_OFFSET


def cs(n: int) -> TaggedCsum:
    return TaggedCsum(CsumTag.SERVER, bytes([n % 256]) * 32)


def regen(e: Entry, off: int, size: int) -> TaggedCsum:
    return TaggedCsum(CsumTag.SERVER_REGEN, bytes([off % 256, size % 256]) * 16)


def test_check_range_rules() -> None:
    """Offsets below the header, non-positive or huge sizes and non-ints are refused."""
    assert check_range(B, 1) is None
    assert check_range(B - 1, 1)
    assert check_range(B, 0)
    assert check_range(B, 0, allow_empty=True) is None
    assert check_range(B, -5)
    assert check_range(B, MAX_OFFSET)
    assert check_range(True, 1)  # type: ignore[arg-type]
    assert check_range(B, 1.5)  # type: ignore[arg-type]


def test_write_decisions() -> None:
    """Free, exact replay, written overlap and trimmed overlap are told apart."""
    ix = FileIndex()
    ix.add_written(B, 10, cs(1))
    assert ix.check_write(B + 10, 5) == (WriteCheck.FREE, None)
    kind, e = ix.check_write(B, 10)
    assert kind is WriteCheck.REPLAY and e == Entry(B, 10, cs(1))
    assert ix.check_write(B, 9)[0] is WriteCheck.WRITTEN
    assert ix.check_write(B + 5, 10)[0] is WriteCheck.WRITTEN
    ix.trim(B + 20, 5, regen)
    assert ix.check_write(B + 18, 4)[0] is WriteCheck.TRIMMED
    # trimmed takes precedence over written
    assert ix.check_write(B + 5, 20)[0] is WriteCheck.TRIMMED


def test_eof_grows_with_reserve_write_and_trim() -> None:
    """EOF starts at the header end and grows with appends, writes and trims, never shrinks."""
    ix = FileIndex()
    assert ix.eof == B
    assert ix.reserve(30) == B
    assert ix.eof == B + 30
    ix.add_written(B + 100, 5, cs(0))
    assert ix.eof == B + 105
    ix.trim(B + 200, 10, regen)
    assert ix.eof == B + 210
    ix.trim(B, 5, regen)
    assert ix.eof == B + 210


def test_read_plan_clips_and_reports_partial() -> None:
    """A read returns overlapping chunks clipped to the range, trimmed parts and partial."""
    ix = FileIndex()
    ix.add_written(B, 10, cs(1))
    ix.add_written(B + 20, 10, cs(2))
    plan = ix.plan_read(B + 5, 20)
    assert [(p.offset, p.size, p.clipped) for p in plan.pieces] == [
        (B + 5, 5, True), (B + 20, 5, True)
    ]
    assert plan.partial
    full = ix.plan_read(B, 10)
    assert not full.partial and not full.pieces[0].clipped
    ix.trim(B + 22, 3, regen)
    plan = ix.plan_read(B + 20, 10)
    assert plan.trimmed == [(B + 22, 3)]
    assert [(p.offset, p.size) for p in plan.pieces] == [(B + 20, 2), (B + 25, 5)]


def test_trim_splits_and_regenerates_neighbours() -> None:
    """Partially covered chunks keep their outer parts with SERVER_REGEN checksums."""
    ix = FileIndex()
    ix.add_written(B, 10, cs(1))
    res = ix.trim(B + 3, 4, regen)
    assert Entry(B, 10, cs(1)) in res.removed
    offsets = sorted((e.offset, e.size, e.trimmed) for e in res.added)
    assert offsets == [(B, 3, False), (B + 3, 4, True), (B + 7, 3, False)]
    for e in res.added:
        if not e.trimmed:
            assert e.csum is not None and e.csum.tag is CsumTag.SERVER_REGEN


def test_trims_merge_and_retrim_is_noop() -> None:
    """Touching trimmed ranges merge; trimming inside a trimmed range changes nothing."""
    ix = FileIndex()
    ix.trim(B, 10, regen)
    ix.trim(B + 10, 10, regen)
    assert [(e.offset, e.size) for e in ix.entries()] == [(B, 20)]
    res = ix.trim(B + 2, 5, regen)
    assert res.removed == [] and res.added == []


def test_trim_regen_failure_changes_nothing() -> None:
    """If regenerating a checksum raises, the index is unchanged."""
    ix = FileIndex()
    ix.add_written(B, 10, cs(1))

    def boom(e: Entry, off: int, size: int) -> TaggedCsum:
        raise RuntimeError("corrupt")

    with pytest.raises(RuntimeError):
        ix.trim(B + 2, 2, boom)
    assert list(ix.entries()) == [Entry(B, 10, cs(1))]


def test_fully_trimmed() -> None:
    """A file is fully trimmed only when one trimmed range covers header end to EOF."""
    ix = FileIndex()
    assert not ix.fully_trimmed()
    ix.add_written(B, 10, cs(1))
    ix.trim(B + 5, 5, regen)
    assert not ix.fully_trimmed()
    ix.trim(B, 5, regen)
    assert ix.fully_trimmed()
    ix.reserve(4)
    assert not ix.fully_trimmed()


def test_remove_undoes_add() -> None:
    """remove() takes back an entry (used when a pwrite fails)."""
    ix = FileIndex()
    e = ix.add_written(B, 3, cs(1))
    ix.remove(e)
    assert len(ix) == 0
    assert ix.check_write(B, 3)[0] is WriteCheck.FREE


# ---- property test against a per-byte model ------------------------------------------
SPAN = 64
op = st.tuples(
    st.sampled_from(["write", "trim"]), st.integers(0, SPAN - 1), st.integers(1, 16)
)


@given(st.lists(op, max_size=40))
def test_index_matches_byte_model(ops: list[tuple[str, int, int]]) -> None:
    """Random writes and trims agree with a byte-state model; entries never overlap."""
    ix = FileIndex()
    model: dict[int, object] = {}  # byte -> chunk id | "T"
    for n, (kind, rel, size) in enumerate(ops):
        off = B + rel
        states = [model.get(b) for b in range(off, off + size)]
        if kind == "write":
            decision, _ = ix.check_write(off, size)
            if "T" in states:
                assert decision is WriteCheck.TRIMMED
            elif all(s is None for s in states):
                assert decision is WriteCheck.FREE
                ix.add_written(off, size, cs(n))
                for b in range(off, off + size):
                    model[b] = n
            else:
                assert decision in (WriteCheck.WRITTEN, WriteCheck.REPLAY)
        else:
            ix.trim(off, size, regen)
            for b in range(off, off + size):
                model[b] = "T"
        entries = list(ix.entries())
        for a, b in itertools.pairwise(entries):
            assert a.end <= b.offset
            assert not (a.trimmed and b.trimmed and a.end == b.offset), "unmerged trims"
        covered: dict[int, object] = {}
        for e in entries:
            for b in range(e.offset, e.end):
                covered[b] = "T" if e.trimmed else "W"
        assert covered == {b: ("T" if s == "T" else "W") for b, s in model.items()}
        plan = ix.plan_read(B, SPAN + 16)
        assert plan.written_bytes == sum(1 for s in model.values() if s != "T")
        assert plan.trimmed_bytes == sum(1 for s in model.values() if s == "T")
