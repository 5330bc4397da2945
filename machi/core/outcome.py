"""The one table that classifies every outcome of every chain operation.

Owns two decisions, both pure:
  * **reaction**: what the chain client does with the status of one request, by the
    operation (append, write, read, trim, checksum_list, list_files) and the *role* of
    the request inside it (head of the mutation chain, a downstream member, the read
    target at the UPI tail, a read-repair request).  Retry with a projection refresh,
    restart an append, verify a WRITTEN downstream, read-repair, or give up.
  * **outcome**: what a finished operation means for a history (Jepsen's ok / fail /
    info): ``ok``; ``fail`` = the operation cannot have taken effect; ``info`` = it may
    have.  Decided from the final status and the operation's *progress* (did any replica
    acknowledge our bytes; was any request sent whose effect is unknown).

Must not: do I/O, sleep or retry (``machi.client.chain_client`` does, driven by this
table), or know about sockets.  ``docs/client.md`` carries :func:`render_markdown`'s
output verbatim (a test checks that it is current).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from .status import Status


class Outcome(enum.Enum):
    OK = "ok"
    FAIL = "fail"  # the operation cannot have taken effect
    INFO = "info"  # unknown: it may have taken effect


class OpKind(enum.Enum):
    APPEND = "append"
    WRITE = "write"
    READ = "read"
    TRIM = "trim"
    CHECKSUM_LIST = "checksum_list"
    LIST_FILES = "list_files"


#: Operations that change replicas.
MUTATIONS = frozenset({OpKind.APPEND, OpKind.WRITE, OpKind.TRIM})


class Role(enum.Enum):
    """Which request of an operation received the status."""

    HEAD = "head"  # the first mutation request (append/write/trim at the chain head)
    DOWNSTREAM = "downstream"  # write/trim to a later member of the mutation chain
    TAIL = "tail"  # read / checksum_list / list_files at the UPI tail
    REPAIR_READ = "repair_read"  # read repair: reading a candidate source
    REPAIR_WRITE = "repair_write"  # read repair: writing the bytes to another member


class Reaction(enum.Enum):
    DONE = "done"  # this request did its part: go on with the plan
    RETRY = "retry"  # back off, refresh the projection, re-plan (bounded by the deadline)
    RESTART = "restart"  # append: the sequencer slot was lost; ask the head again
    VERIFY = "verify"  # WRITTEN downstream: read there; identical bytes = done, else conflict
    REPAIR = "repair"  # read: not written at the tail; try read repair
    SKIP = "skip"  # read repair: this member cannot help (or needs no help); go on
    RETURN = "return"  # give up and raise this status


#: Statuses after which the request *may* have changed the replica (unknown effect).
#: Every other non-OK status is a rejection made before anything was written.
MAYBE_EFFECT = frozenset({Status.PARTITION, Status.BAD_JOSS, Status.PROTOCOL_ERROR})

#: Statuses that mean "this epoch is not (or no longer) the right one / the node is gone".
_REFRESH = {Status.WEDGED: Reaction.RETRY, Status.BAD_EPOCH: Reaction.RETRY,
            Status.PARTITION: Reaction.RETRY}

_M = OpKind
_R = Role
_TABLE: dict[tuple[OpKind, Role], dict[Status, Reaction]] = {
    (_M.APPEND, _R.HEAD): {Status.OK: Reaction.DONE, **_REFRESH, Status.WRITTEN: Reaction.RESTART},
    (_M.APPEND, _R.DOWNSTREAM): {Status.OK: Reaction.DONE, **_REFRESH,
                                 Status.WRITTEN: Reaction.VERIFY},
    (_M.WRITE, _R.HEAD): {Status.OK: Reaction.DONE, **_REFRESH},
    (_M.WRITE, _R.DOWNSTREAM): {Status.OK: Reaction.DONE, **_REFRESH,
                                Status.WRITTEN: Reaction.VERIFY},
    # a previous trim may have stopped midway: TRIMMED is success so far
    (_M.TRIM, _R.HEAD): {Status.OK: Reaction.DONE, Status.TRIMMED: Reaction.DONE, **_REFRESH},
    (_M.TRIM, _R.DOWNSTREAM): {Status.OK: Reaction.DONE, Status.TRIMMED: Reaction.DONE,
                               **_REFRESH},
    (_M.READ, _R.TAIL): {Status.OK: Reaction.DONE, **_REFRESH,
                         Status.NOT_WRITTEN: Reaction.REPAIR},
    (_M.READ, _R.REPAIR_READ): {Status.OK: Reaction.DONE, Status.NOT_WRITTEN: Reaction.SKIP,
                                Status.PARTITION: Reaction.SKIP, Status.WEDGED: Reaction.SKIP,
                                Status.BAD_EPOCH: Reaction.SKIP,
                                Status.BAD_CHECKSUM: Reaction.SKIP,
                                Status.TRIMMED: Reaction.SKIP},
    # a member that already has identical bytes answers OK (exact replay); WRITTEN there
    # means other bytes: the client verifies and reports a conflict, never overwrites
    (_M.READ, _R.REPAIR_WRITE): {Status.OK: Reaction.DONE, Status.WRITTEN: Reaction.VERIFY,
                                 Status.PARTITION: Reaction.SKIP, Status.WEDGED: Reaction.SKIP,
                                 Status.BAD_EPOCH: Reaction.SKIP, Status.TRIMMED: Reaction.SKIP},
    (_M.CHECKSUM_LIST, _R.TAIL): {Status.OK: Reaction.DONE, **_REFRESH},
    (_M.LIST_FILES, _R.TAIL): {Status.OK: Reaction.DONE, **_REFRESH},
}


def reaction(op: OpKind, role: Role, status: Status) -> Reaction:
    """What the client does when one request of ``op`` in ``role`` got ``status``.

    Anything not in the table (BAD_ARG, BAD_CHECKSUM from our own checksum, TRIMMED on a
    write, NO_SUCH_FILE, TOO_LARGE, AUTH_*, ...) is RETURN: retrying cannot help.
    """
    row = _TABLE.get((op, role))
    if row is None:
        raise ValueError(f"{op.value} has no {role.value} requests")
    return row.get(status, Reaction.RETURN)


def may_have_effect(status: Status) -> bool:
    """True when a *mutation* request that ended with ``status`` may have changed the replica."""
    return status is Status.OK or status in MAYBE_EFFECT


@dataclass(frozen=True, slots=True)
class Progress:
    """How far a mutation got before it ended.

    ``acked``: members that acknowledged our bytes (at the current position for an
    append).  ``maybe_written``: some request (in any attempt) got an unknown-effect answer
    (``MAYBE_EFFECT``), or an append's position was abandoned after some member wrote it.
    """

    acked: frozenset[str] = frozenset()
    maybe_written: bool = False

    @property
    def stage(self) -> str:
        """``not_sent`` (nothing can have been written), ``sent`` (may have), ``partial``."""
        if self.acked:
            return "partial"
        return "sent" if self.maybe_written else "not_sent"

    def with_ack(self, member: str) -> Progress:
        return Progress(self.acked | {member}, self.maybe_written)

    def after(self, status: Status) -> Progress:
        """Progress after a request answered ``status`` (OK is recorded with with_ack)."""
        if status in MAYBE_EFFECT:
            return Progress(self.acked, True)
        return self

    def abandoned(self) -> Progress:
        """An append restarts at a new position: what was written at the old one stays."""
        return Progress(frozenset(), self.maybe_written or bool(self.acked))


def classify(op: OpKind, status: Status, progress: Progress = Progress()) -> Outcome:
    """The history outcome of an operation that finished with ``status``.

    Reads, checksum lists and file listings change nothing: any error is ``fail``, and an
    unwritten read (NOT_WRITTEN) is an ``ok`` read of nothing.  A mutation is ``fail``
    only when no request of it can have written anything (every request was rejected
    before writing: WEDGED, BAD_EPOCH, BAD_CHECKSUM of our own checksum, WRITTEN at the
    head, BAD_ARG, ...); once a replica acknowledged or a request's effect is unknown
    (PARTITION, a timeout, an internal error), the outcome is ``info`` unless the
    operation was re-driven to success.
    """
    if status is Status.OK:
        return Outcome.OK
    if op not in MUTATIONS:
        return Outcome.OK if (op is OpKind.READ and status is Status.NOT_WRITTEN) \
            else Outcome.FAIL
    if progress.acked or progress.maybe_written or status in MAYBE_EFFECT:
        return Outcome.INFO
    return Outcome.FAIL


def classify_gave_up(op: OpKind, progress: Progress) -> Outcome:
    """The outcome of an operation the client gave up on (retries or deadline exhausted;
    raised as PARTITION): decided by its progress alone, since every request's answer is
    already recorded there.  Reads are ``fail`` (no answer)."""
    if op not in MUTATIONS:
        return Outcome.FAIL
    return Outcome.INFO if progress.acked or progress.maybe_written else Outcome.FAIL


# ---- documentation ------------------------------------------------------------------------
_SHOWN = (Status.OK, Status.PARTITION, Status.WEDGED, Status.BAD_EPOCH, Status.WRITTEN,
          Status.NOT_WRITTEN, Status.TRIMMED, Status.BAD_CHECKSUM, Status.BAD_ARG)


def table_rows() -> Iterable[tuple[OpKind, Role, dict[Status, Reaction]]]:
    for (op, role), row in _TABLE.items():
        yield op, role, {st: row.get(st, Reaction.RETURN) for st in _SHOWN}


def render_markdown() -> str:
    """The reaction table and the outcome rules as Markdown (embedded in docs/client.md)."""
    lines = ["| op | role | " + " | ".join(s.name for s in _SHOWN) + " |",
             "|---|---|" + "---|" * len(_SHOWN)]
    for op, role, row in table_rows():
        cells = " | ".join(row[s].value for s in _SHOWN)
        lines.append(f"| {op.value} | {role.value} | {cells} |")
    lines.append("")
    lines.append("Any other status: `return`. Outcome of a finished operation:")
    lines.append("")
    lines.append("| op | final status | progress stage | outcome |")
    lines.append("|---|---|---|---|")
    lines.append("| any | OK | any | ok |")
    lines.append("| read | NOT_WRITTEN | — | ok (value null) |")
    lines.append("| read, checksum_list, list_files | any other | — | fail |")
    for stage, example in (("not_sent", "WEDGED"), ("sent", "WEDGED"), ("partial", "WEDGED")):
        prog = {"not_sent": Progress(), "sent": Progress(maybe_written=True),
                "partial": Progress(frozenset({"a"}))}[stage]
        oc = classify(OpKind.APPEND, Status[example], prog).value
        lines.append(f"| append, write, trim | any but PARTITION/BAD_JOSS/PROTOCOL_ERROR "
                     f"| {stage} | {oc} |")
    oc = classify(OpKind.APPEND, Status.PARTITION, Progress()).value
    lines.append(f"| append, write, trim | PARTITION, BAD_JOSS, PROTOCOL_ERROR | any | {oc} |")
    for stage, prog in (("not_sent", Progress()), ("sent", Progress(maybe_written=True)),
                        ("partial", Progress(frozenset({"a"})))):
        oc = classify_gave_up(OpKind.APPEND, prog).value
        lines.append(f"| append, write, trim | gave up (PARTITION) | {stage} | {oc} |")
    oc = classify_gave_up(OpKind.READ, Progress()).value
    lines.append(f"| read, checksum_list, list_files | gave up (PARTITION) | — | {oc} |")
    return "\n".join(lines) + "\n"
