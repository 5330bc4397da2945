"""Client planning for Chain Replication (reference section 4): pure decisions only.

Owns: which projection a client adopts (largest private epoch id; an empty UPI is "not
available yet"), the mutation chain (UPI ++ repairing, witnesses left out), the read
target (UPI tail), which witnesses to check in CP mode, what remains of a mutation after
a projection change (continue on the new chain, or restart an append when none of the
members that wrote it is still in the chain), read-repair plans (AP: any mutation member
that has the bytes; CP: the UPI tail only, never a non-UPI member), the CP rule for
answers that claim absence (the quorum epoch check, :func:`absence_verdict`), where a
reader takes good bytes after BAD_CHECKSUM at the tail, and the bounded backoff
schedule.

Must not: do I/O, sleep, read a clock or draw randomness (time and jitter are parameters).
Data never goes to a witness: every member list this module returns excludes them.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .epoch import EpochId
from .outcome import OpKind
from .projection import Projection
from .transition import majority


# ---- projections -----------------------------------------------------------------------
def proj_key(p: Projection) -> tuple[int, bytes]:
    """Order of projections for discovery: epoch number, then checksum bytes."""
    return (p.epoch_number, p.epoch_csum)


def pick_latest(candidates: Iterable[Projection | None]) -> Projection | None:
    """The largest projection by (epoch number, checksum); None when there is none."""
    best: Projection | None = None
    for p in candidates:
        if p is not None and (best is None or proj_key(p) > proj_key(best)):
            best = p
    return best


def available(p: Projection | None) -> bool:
    """A projection clients can use: a real (non-witness) server in its UPI."""
    return p is not None and bool(p.upi_non_witnesses)


def mutation_chain(p: Projection) -> tuple[str, ...]:
    """Where data goes, in order: UPI ++ repairing, witnesses left out."""
    return p.mutation_chain


def read_target(p: Projection) -> str | None:
    """The UPI tail (last non-witness of the UPI): where reads and listings go."""
    return p.tail


def witnesses_to_check(p: Projection) -> tuple[str, ...]:
    """CP witnesses in the UPI: each must report our epoch, unwedged, before an ack."""
    if p.mode != "cp":
        return ()
    return tuple(m for m in p.upi if m in p.witnesses)


def witness_ok(p: Projection, wedged: bool, epoch_id: EpochId) -> bool:
    return not wedged and epoch_id == p.epoch_id


# ---- mutations after a projection change ---------------------------------------------------
@dataclass(frozen=True, slots=True)
class Continue:
    """Send to these members, in order (they have not acknowledged yet)."""

    members: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Restart:
    """Append anew at the head (new sequencer assignment); the old position is abandoned."""


Plan = Continue | Restart


def replan(op: OpKind, p: Projection, acked: Iterable[str]) -> Plan:
    """What remains of a mutation (append, write or trim) under projection ``p``.

    ``acked``: members that already hold our bytes (at the assigned position, for an
    append).  An append whose position nobody in the new mutation chain holds restarts;
    otherwise the not-yet-written members of the new chain are written in chain order.
    """
    chain = mutation_chain(p)
    done = set(acked)
    if op is OpKind.APPEND and not done & set(chain):
        return Restart()
    return Continue(tuple(m for m in chain if m not in done))


# ---- read repair ------------------------------------------------------------------------------
def repair_sources(p: Projection) -> tuple[str, ...]:
    """Members a reader may take the bytes from when the tail had none.

    AP: every mutation member (head first), the tail last (it is re-read in case a write
    just landed).  CP: only the UPI tail (re-read): bytes on other members may belong to a
    write that was never acknowledged, and a non-UPI member is never a source.
    """
    tail = read_target(p)
    if tail is None:
        return ()
    if p.mode == "cp":
        return (tail,)
    return (*(m for m in mutation_chain(p) if m != tail), tail)


def repair_targets(p: Projection, source: str, have: Iterable[str] = ()) -> tuple[str, ...]:
    """Members to write the repaired bytes to: the mutation chain minus the source and
    the members known to hold them, in chain order (never a witness)."""
    skip = {source, *have}
    return tuple(m for m in mutation_chain(p) if m not in skip)


def checksum_sources(p: Projection, bad: str) -> tuple[str, ...]:
    """Where a reader takes the bytes after ``bad`` (the UPI tail) answered BAD_CHECKSUM
    (its stored bytes fail their stored checksum): the other real UPI members, tail side
    first.  Only the UPI: a UPI member holds every acknowledged chunk the tail holds
    (chain order), while a repairing member may not be complete yet."""
    return tuple(reversed([m for m in p.upi_non_witnesses if m != bad]))


# ---- CP: answers that claim absence -----------------------------------------------------------
#
# There are no leases.  A tail cut off on the minority side keeps serving its old epoch e
# until its own chain manager notices, while the majority may already have acknowledged
# writes at a newer epoch e'.  Its data answers are still true (write-once: the tail
# holds only bytes every UPI member of e held), but an answer that claims *absence*
# (NOT_WRITTEN, a partial range) may be stale.  So in CP such an answer is returned only
# after a quorum epoch check that starts after the answer arrived: every member asked
# reports its FLU's current epoch (``wedge_status``), and a majority of ``all_members``
# (witnesses count) must answer with nothing newer than e.
#
# Why that suffices: a write acknowledged at e' was accepted at e' by every real member
# of UPI ++ repairing of e' (a FLU accepts data only at exactly its current epoch) and
# every witness of that UPI reported e' before the ack; CP requires |UPI + repairing| >=
# majority(all_members), and a FLU's current epoch never decreases.  Any majority that
# answered "< e' after the read's answer" intersects that set in a member that had not
# reached e' yet, so the write was acknowledged after the read answered: NOT_WRITTEN is a
# linearizable answer (the read takes effect when the tail answered).  Writes at e and
# before are at the tail of e already (Chain Replication and repair before promotion).


class Absence(enum.Enum):
    STANDS = "stands"  # a majority is at the read's epoch or older: return the answer
    REFRESH = "refresh"  # some member is at a newer epoch: refresh and read again
    NO_QUORUM = "no_quorum"  # too few answers to decide: retry (and maybe give up)


def absence_needs_check(p: Projection) -> bool:
    """CP answers that claim absence need the quorum epoch check; AP answers do not (AP
    reads may be stale by design)."""
    return p.mode == "cp"


def absence_quorum_members(p: Projection) -> tuple[str, ...]:
    """Whom the check asks: every member of the chain, witnesses included."""
    return p.all_members


def absence_quorum(p: Projection) -> int:
    """How many fresh answers the check needs."""
    return majority(len(p.all_members))


def absence_verdict(p: Projection, answers: Mapping[str, EpochId]) -> Absence:
    """Decide an absence answer read at ``p``'s epoch, given the current epochs that
    members reported *after* the answer arrived (members that did not answer are left
    out).  Any member at a newer epoch (or another projection at the same number) ->
    REFRESH; else a majority of ``all_members`` answered -> STANDS; else NO_QUORUM.
    A caller may stop waiting for answers as soon as the verdict is not NO_QUORUM: a
    majority at e or older suffices whatever the others say.  Not asked at all in AP
    (:func:`absence_needs_check`)."""
    members = set(absence_quorum_members(p))
    fresh = 0
    for m, e in answers.items():
        if m not in members:
            continue
        if e.number > p.epoch_number or (e.number == p.epoch_number and e != p.epoch_id):
            return Absence.REFRESH
        fresh += 1
    return Absence.STANDS if fresh >= absence_quorum(p) else Absence.NO_QUORUM


# ---- backoff ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before retry ``n`` (0-based): ``base_ms + factor**n`` ms, capped, plus jitter
    drawn by the caller in ``[0, jitter_ms]``; at most ``max_attempts`` attempts and never
    past the operation's deadline (reference 4.8: 30 ms + 1.9^n ms)."""

    base_ms: int = 30
    factor: float = 1.9
    cap_ms: int = 1_000
    jitter_ms: int = 10
    max_attempts: int = 40

    def delay_ms(self, attempt: int, jitter_ms: int = 0) -> int:
        if attempt < 0:
            raise ValueError("attempt must be >= 0")
        grow = self.factor ** min(attempt, 64)
        return int(min(self.cap_ms, self.base_ms + grow)) + max(0, min(jitter_ms, self.jitter_ms))

    def next_delay_ms(
        self, attempt: int, now_ms: int, deadline_ms: int, jitter_ms: int = 0
    ) -> int | None:
        """Delay before attempt ``attempt + 1``; None = give up (attempts or deadline)."""
        if attempt + 1 >= self.max_attempts:
            return None
        delay = self.delay_ms(attempt, jitter_ms)
        if now_ms + delay >= deadline_ms:
            return None
        return delay

