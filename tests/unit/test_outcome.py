"""Tests of the one outcome table (machi.core.outcome): reactions and ok/fail/info."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from machi.core.outcome import (
    MAYBE_EFFECT,
    MUTATIONS,
    OpKind,
    Outcome,
    Progress,
    Reaction,
    Role,
    classify,
    classify_gave_up,
    may_have_effect,
    reaction,
    render_markdown,
)
from machi.core.status import Status

DOCS = Path(__file__).resolve().parents[2] / "docs" / "client.md"
REJECTIONS = [s for s in Status if s is not Status.OK and s not in MAYBE_EFFECT]
PROGRESSES = st.builds(
    Progress, st.frozensets(st.sampled_from("abc"), max_size=3), st.booleans()
)


def test_append_head_reactions() -> None:
    """At the head of an append: WRITTEN restarts, epoch trouble and PARTITION retry,
    BAD_CHECKSUM and TRIMMED give up."""
    r = lambda s: reaction(OpKind.APPEND, Role.HEAD, s)  # noqa: E731
    assert r(Status.OK) is Reaction.DONE
    assert r(Status.WRITTEN) is Reaction.RESTART
    for s in (Status.WEDGED, Status.BAD_EPOCH, Status.PARTITION):
        assert r(s) is Reaction.RETRY
    for s in (Status.BAD_CHECKSUM, Status.TRIMMED, Status.BAD_ARG, Status.NOT_WRITTEN):
        assert r(s) is Reaction.RETURN


def test_downstream_written_is_verified_and_write_head_written_is_returned() -> None:
    """WRITTEN downstream means someone may have read-repaired: compare; at the head of
    an explicit write it is the caller's answer."""
    assert reaction(OpKind.APPEND, Role.DOWNSTREAM, Status.WRITTEN) is Reaction.VERIFY
    assert reaction(OpKind.WRITE, Role.DOWNSTREAM, Status.WRITTEN) is Reaction.VERIFY
    assert reaction(OpKind.WRITE, Role.HEAD, Status.WRITTEN) is Reaction.RETURN
    assert reaction(OpKind.WRITE, Role.HEAD, Status.TRIMMED) is Reaction.RETURN


def test_trim_treats_trimmed_as_done() -> None:
    """A trim that stopped midway before is continued: TRIMMED anywhere is done."""
    for role in (Role.HEAD, Role.DOWNSTREAM):
        assert reaction(OpKind.TRIM, role, Status.TRIMMED) is Reaction.DONE


def test_read_reactions() -> None:
    """Reads repair on NOT_WRITTEN at the tail, and repair skips members that cannot help."""
    assert reaction(OpKind.READ, Role.TAIL, Status.NOT_WRITTEN) is Reaction.REPAIR
    assert reaction(OpKind.READ, Role.TAIL, Status.BAD_CHECKSUM) is Reaction.RETURN
    assert reaction(OpKind.READ, Role.REPAIR_READ, Status.PARTITION) is Reaction.SKIP
    assert reaction(OpKind.READ, Role.REPAIR_WRITE, Status.WRITTEN) is Reaction.VERIFY
    assert reaction(OpKind.LIST_FILES, Role.TAIL, Status.WEDGED) is Reaction.RETRY


def test_roles_that_an_op_does_not_have_are_errors() -> None:
    """Asking for a role the operation never uses is a programming error."""
    with pytest.raises(ValueError):
        reaction(OpKind.LIST_FILES, Role.HEAD, Status.OK)


@pytest.mark.parametrize("op", list(MUTATIONS))
def test_rejection_before_any_write_is_definite(op: OpKind) -> None:
    """WEDGED/BAD_EPOCH/BAD_CHECKSUM/WRITTEN with nothing possibly written: fail."""
    for s in REJECTIONS:
        assert classify(op, s, Progress()) is Outcome.FAIL


@pytest.mark.parametrize("op", list(MUTATIONS))
def test_rejection_after_a_replica_wrote_is_unknown(op: OpKind) -> None:
    """The same statuses after an ack (or an unknown-effect request) are info."""
    for s in REJECTIONS:
        assert classify(op, s, Progress(frozenset({"a"}))) is Outcome.INFO
        assert classify(op, s, Progress(maybe_written=True)) is Outcome.INFO


@given(st.sampled_from(sorted(MUTATIONS, key=lambda o: o.value)), PROGRESSES)
def test_partition_of_a_mutation_is_never_fail(op: OpKind, progress: Progress) -> None:
    """A timeout or lost connection may have written: never fail."""
    for s in MAYBE_EFFECT:
        assert classify(op, s, progress) is Outcome.INFO


@given(st.sampled_from(list(OpKind)), st.sampled_from(list(Status)), PROGRESSES)
def test_reads_never_info_and_ok_always_ok(
    op: OpKind, status: Status, progress: Progress
) -> None:
    """OK is ok; reads and listings change nothing, so they are never info."""
    oc = classify(op, status, progress)
    if status is Status.OK:
        assert oc is Outcome.OK
    if op not in MUTATIONS:
        assert oc is not Outcome.INFO
        assert (oc is Outcome.OK) == (
            status is Status.OK or (op is OpKind.READ and status is Status.NOT_WRITTEN))


@given(PROGRESSES, st.sampled_from(list(Status)))
def test_progress_only_grows_uncertain(progress: Progress, status: Status) -> None:
    """Recording an answer never forgets an ack or an unknown effect."""
    after = progress.after(status)
    assert after.acked == progress.acked
    assert after.maybe_written == (progress.maybe_written or status in MAYBE_EFFECT)
    assert may_have_effect(status) == (status is Status.OK or status in MAYBE_EFFECT)
    ab = progress.abandoned()
    assert not ab.acked and ab.maybe_written == (progress.maybe_written or bool(progress.acked))


def test_stages() -> None:
    """Stages name the three progress classes."""
    assert Progress().stage == "not_sent"
    assert Progress(maybe_written=True).stage == "sent"
    assert Progress().with_ack("a").stage == "partial"


def test_docs_carry_the_current_table() -> None:
    """docs/client.md embeds render_markdown() verbatim, so docs and code agree."""
    assert render_markdown() in DOCS.read_text()


@given(st.sampled_from(list(OpKind)), PROGRESSES)
def test_giving_up_is_decided_by_progress(op: OpKind, progress: Progress) -> None:
    """A call given up on is info only when some mutation request may have written."""
    oc = classify_gave_up(op, progress)
    if op not in MUTATIONS:
        assert oc is Outcome.FAIL
    else:
        assert (oc is Outcome.INFO) == (bool(progress.acked) or progress.maybe_written)
    assert classify_gave_up(OpKind.APPEND, Progress()) is Outcome.FAIL
