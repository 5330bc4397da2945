"""Client planning for Chain Replication (reference section 4): pure decisions only.

Owns: which projection a client adopts (largest private epoch id; an empty UPI is "not
available yet"), the mutation chain (UPI ++ repairing, witnesses left out), the read
target (UPI tail), which witnesses to check in CP mode, what remains of a mutation after
a projection change (continue on the new chain, or restart an append when none of the
members that wrote it is still in the chain), read-repair plans (AP: any mutation member
that has the bytes; CP: the UPI tail only, never a non-UPI member), and the bounded
backoff schedule.

Must not: do I/O, sleep, read a clock or draw randomness (time and jitter are parameters).
Data never goes to a witness: every member list this module returns excludes them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .epoch import EpochId
from .outcome import OpKind
from .projection import Projection


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

