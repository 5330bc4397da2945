"""Repair planning (reference section 6.2, plus CP repair as the design paper asks):
from every participant's checksum list of one file, the directives that make the
replicas agree, and the problems that must stop the repair.

Owns: who takes part (``repair_roles``), the merge-walk over per-member entry streams
sorted by offset, the AP union rule, the CP "match the UPI tail" rule (including the reset
of bytes a failed write left on a repairing replica that the tail never wrote), and the
conflict policy: conflicting checksums at one place, chunks of different extents that
overlap, trimmed bytes the tail does not have trimmed (CP), and chunks partly trimmed
elsewhere are *problems*, never silently resolved.  Must not: do I/O, read clocks or
randomness, or hold more than one overlap cluster of one file at a time (the input
streams are consumed lazily, see ``FilePlanner``; ``max_cluster_entries`` bounds a
cluster).

AP anti-entropy (``anti_entropy_roles``, ``ChangeMemory``): in a stable AP chain the
tail periodically runs the same union rule over the UPI members, planning only files that
changed since its last pass (docs/repair.md).

CP UPI sync (the design paper's CP repair step 3, ``upi_sync_roles``): at an epoch
change the real UPI members are made to agree by the *union* rule over them (the AP
rule): a chunk that an append left on the head (or head and middle) but that never
reached the tail is copied forward to the tail, never reset.  Why forward and not a reset:
a client whose append reached the head keeps propagating it in the new epoch while the
head is still in the chain (``cr_plan.replan``), so a reset could race with that write
and leave an acknowledged chunk missing on the head; a copy of the same bytes is an exact
replay for the client.  Nothing acknowledged is un-written, and the unacknowledged append
(outcome ``info`` for its client) simply takes effect.

Directives, applied in the order given (within a file):
- ``Trim``: trim the range on ``members`` (trimmed bytes win over written ones; AP merges
  trims like everything else, CP copies the tail's trims).
- ``Reset``: CP only; forget the written chunk on ``members`` (``repair_reset``).
- ``Copy``: read the chunk from ``source``, write it with ``csum`` to ``destinations``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from .checksum import TaggedCsum
from .projection import Projection
from .ranges import MIN_OFFSET

Mode = Literal["ap", "cp"]
MAX_CLUSTER_ENTRIES = 10_000


class EntryLike(Protocol):
    """One checksum-list entry (``csum`` None = trimmed), as storage and client give."""

    @property
    def offset(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def csum(self) -> TaggedCsum | None: ...

    # optional ``corrupt: bool`` (read with getattr, default False): the member's stored
    # copy is known to fail ``csum``; the planner then rewrites it from a good copy


@dataclass(frozen=True, slots=True)
class Roles:
    """Who takes part: the source (UPI tail, runs the repair), the repairing members and
    the other UPI members (witnesses never appear here).  ``mode`` picks the rule: "ap"
    is the union rule (AP repair, and the CP UPI sync), "cp" makes the repairing members
    match the tail."""

    mode: Mode
    source: str
    repairing: tuple[str, ...]
    upi_others: tuple[str, ...] = ()

    @property
    def participants(self) -> tuple[str, ...]:
        """AP: everyone (source first).  CP: the source and the repairing members; other
        UPI members already match the tail (they acknowledged every write)."""
        if self.mode == "cp":
            return (self.source, *self.repairing)
        return (self.source, *self.upi_others, *self.repairing)


def repair_roles(p: Projection) -> Roles | None:
    """The roles for ``p``, or None when there is nothing to repair (no tail, or no
    repairing member)."""
    tail = p.tail
    repairing = tuple(m for m in p.repairing if m not in p.witnesses)
    if tail is None or not repairing:
        return None
    others = tuple(m for m in p.upi_non_witnesses if m != tail)
    return Roles(p.mode, tail, repairing, others)


def upi_sync_roles(p: Projection) -> Roles | None:
    """CP: the roles that make the real UPI members agree (union rule, source = tail), or
    None when there is nothing to sync (AP, or fewer than two real UPI members)."""
    upi = p.upi_non_witnesses
    if p.mode != "cp" or len(upi) < 2:
        return None
    return Roles("ap", upi[-1], (), upi[:-1])


def anti_entropy_roles(p: Projection) -> Roles | None:
    """AP anti-entropy (docs/repair.md): the union rule over the real UPI members of a
    stable AP projection -- nothing repairing and every real member in the UPI (witnesses
    aside) -- with the tail as source; None otherwise, and always in CP (CP repairing
    replicas match the tail and the UPI members agree by the UPI sync: a union pass there
    is not the CP rule)."""
    if p.mode != "ap" or p.is_none():
        return None
    upi = p.upi_non_witnesses
    real = {m for m in p.all_members if m not in p.witnesses}
    if any(m not in p.witnesses for m in p.repairing) or set(upi) != real or len(upi) < 2:
        return None
    return Roles("ap", upi[-1], (), upi[:-1])


@dataclass(frozen=True, slots=True)
class Listing:
    """One member's answer to an anti-entropy listing (list_files with ``changes``):
    ``since`` the change token sent with the request (None: none), ``token`` the one it
    issued with this listing, and per file it lists the lowest offset whose checksum-list
    entry changed since ``since`` (None: unchanged; ``MIN_OFFSET`` when the member does not
    know ``since``)."""

    since: int | None
    token: int
    lows: Mapping[str, int | None]


class ChangeMemory:
    """Which files an anti-entropy pass plans, and which part of each.

    A file *agrees below D* at a listing when, in the state of that listing, every
    member's entries below offset D are equal (D None: everywhere).  Then, if nothing
    below offset L changed on any member since, it still agrees below min(L, D) now, and
    the pass plans only from there (L: the lowest changed offset any member reports).
    It plans up to the largest EOF any member listed at the previous listing (``stop``;
    nothing of a file no member listed then): entries above it are younger than one
    period and may still be on their way down the chain, so copying them would only race
    their clients; they are planned by the next pass (an orphan appended last is merged
    within two periods).  After a plan ran
    without a problem the file agrees below ``stop``; a file whose part to plan is empty
    is recorded at once.  Why sound: a pass's copies are changes after its listing, so
    the next pass plans their places again; a plan with a problem is not remembered.
    Anything unknown (a member's token expired or restarted, another member set, a file
    that appeared or vanished on a member, the first pass) plans the whole file.  Pure;
    the runner keeps one per chain between passes.  Memory: a few numbers per file for
    the files the members list now (pruned each pass)."""

    def __init__(self) -> None:
        #: file -> (member -> token of the listing it agreed at, members that listed it,
        #: the offset it agrees below (None: everywhere))
        self._agreed: dict[str, tuple[Mapping[str, int], frozenset[str], int | None]] = {}
        #: member -> the token it issued with my last listing (``since`` next time)
        self._tokens: dict[str, int] = {}
        #: file -> the largest EOF any member listed at my last listing
        self._eofs: dict[str, int] = {}
        #: a listing was made before (files it did not list are younger than it)
        self._listed_before = False
        self._listed: dict[str, tuple[Mapping[str, int], frozenset[str], int | None]] = {}

    def __len__(self) -> int:
        return len(self._agreed)

    def since(self, member: str) -> int | None:
        """The token to send to ``member`` with the next listing."""
        return self._tokens.get(member)

    def select(self, listings: Mapping[str, Listing] | None,
               eofs: Mapping[str, int]) -> list[tuple[str, int, int | None]]:
        """(file, plan from, plan entries starting below (None: all)) for the files that
        must be planned now, sorted by name; ``eofs``: every file any member lists, with
        the largest EOF listed.  ``listings`` None (a member could not list changes)
        plans every file whole and forgets the tokens."""
        names = sorted(eofs)
        prev_eofs, self._eofs = self._eofs, dict(eofs)
        # a file no member listed at my previous listing is younger than it: all of it
        # waits for the next pass, like the part of a file past its previous EOF
        young = MIN_OFFSET if self._listed_before else None
        self._listed_before = True
        if listings is None:
            self._listed, self._tokens = {}, {}
            return [(f, MIN_OFFSET, None) for f in names]
        members = frozenset(listings)
        tokens = {m: listings[m].token for m in sorted(members)}
        known = all(listings[m].since is not None for m in members)
        self._tokens = dict(tokens)
        out: list[tuple[str, int, int | None]] = []
        self._listed = {}
        for f in names:
            present = frozenset(m for m in members if f in listings[m].lows)
            prev = self._agreed.get(f)
            start = MIN_OFFSET
            if (
                known and prev is not None and prev[1] == present
                and frozenset(prev[0]) == members
                and all(prev[0][m] == listings[m].since for m in members)
            ):
                lows = [low for m in present if (low := listings[m].lows[f]) is not None]
                if prev[2] is not None:
                    lows.append(prev[2])
                if not lows:
                    self._agreed[f] = (tokens, present, None)  # unchanged: agrees now too
                    continue
                start = min(lows)
            stop = prev_eofs.get(f, young)
            if stop is not None and stop <= start:  # nothing old enough to plan yet
                self._agreed[f] = (tokens, present, start)
                continue
            self._listed[f] = (tokens, present, stop)
            out.append((f, start, stop))
        self._agreed = {f: a for f, a in self._agreed.items() if f in eofs}
        return out

    def done(self, file: str) -> None:
        """``file`` was planned (as selected) and executed without a problem."""
        st = self._listed.get(file)
        if st is not None:
            self._agreed[file] = st


@dataclass(frozen=True, slots=True)
class Copy:
    """Read the chunk from ``source`` (else from ``fallbacks``, in order, when a source's
    bytes fail the checksum) and write it to ``destinations``."""

    file: str
    offset: int
    size: int
    csum: TaggedCsum
    source: str
    destinations: tuple[str, ...]
    fallbacks: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Reset:
    file: str
    offset: int
    size: int
    members: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Trim:
    file: str
    offset: int
    size: int
    members: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    offset: int
    size: int
    members: tuple[str, ...]
    reason: str

    def __str__(self) -> str:
        return (f"{self.reason}: {self.file} @{self.offset}+{self.size} "
                f"on {','.join(self.members)}")


Directive = Copy | Reset | Trim


@dataclass(frozen=True, slots=True)
class _E:
    member: str
    offset: int
    size: int
    csum: TaggedCsum | None
    corrupt: bool = False  # the member's stored copy is known bad: it needs a rewrite

    @property
    def end(self) -> int:
        return self.offset + self.size


class FilePlanner:
    """Push-style planner for one file, for callers that stream checksum lists in
    batches (bounded memory: at most one pending batch per member plus one cluster).

    Loop: ``m = needs()``; if ``m`` is None the plan is complete, else ``feed(m, batch)``
    (or ``end(m)`` when m's list is exhausted) and collect ``take()``.
    """

    def __init__(self, file: str, roles: Roles, *,
                 max_cluster_entries: int = MAX_CLUSTER_ENTRIES) -> None:
        self.file = file
        self.roles = roles
        self.max_cluster_entries = max_cluster_entries
        self._parts = roles.participants
        self._buf: dict[str, deque[_E]] = {m: deque() for m in self._parts}
        self._open = set(self._parts)
        self._prev_end = dict.fromkeys(self._parts, 0)
        self._bad: list[str] = []
        self._out: list[Directive | Problem] = []
        self._cluster: list[_E] = []
        self._cluster_end = 0
        self._overflow = False
        self._finished = False

    def needs(self) -> str | None:
        """The member whose next entries are needed to go on, or None once complete."""
        for m in self._parts:
            if m in self._open and not self._buf[m]:
                return m
        return None

    def feed(self, member: str, entries: Iterable[EntryLike]) -> None:
        """The next entries of ``member``'s list (sorted by offset, non-overlapping; a
        list that breaks this is a problem and is not read further)."""
        if member not in self._open:
            raise ValueError(f"{member} is not an open participant")
        buf = self._buf[member]
        for e in entries:
            if e.size <= 0 or e.offset < self._prev_end[member]:
                self._bad.append(member)
                self._open.discard(member)
                break
            self._prev_end[member] = e.offset + e.size
            buf.append(_E(member, e.offset, e.size, e.csum,
                          e.csum is not None and getattr(e, "corrupt", False)))
        self._advance()

    def end(self, member: str) -> None:
        """``member``'s list has no more entries."""
        self._open.discard(member)
        self._advance()

    def take(self) -> list[Directive | Problem]:
        out, self._out = self._out, []
        return out

    def _advance(self) -> None:
        while self.needs() is None:
            heads = [(b[0].offset, b[0].size, i, m)
                     for i, (m, b) in enumerate(self._buf.items()) if b]
            if not heads:
                self._finish()
                return
            e = self._buf[min(heads)[3]].popleft()
            if self._cluster and e.offset >= self._cluster_end:
                self._out.extend(_close(self.file, self.roles, self._cluster, self._overflow))
                self._cluster, self._overflow = [], False
            self._cluster_end = max(self._cluster_end, e.end) if self._cluster else e.end
            if len(self._cluster) < self.max_cluster_entries:
                self._cluster.append(e)
            else:
                self._overflow = True

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        if self._cluster:
            self._out.extend(_close(self.file, self.roles, self._cluster, self._overflow))
            self._cluster = []
        for m in self._bad:
            self._out.append(Problem(self.file, 0, 0, (m,),
                                     "checksum list not sorted or overlapping"))


def plan_file(
    file: str,
    roles: Roles,
    entries: Mapping[str, Iterable[EntryLike]],
    *,
    max_cluster_entries: int = MAX_CLUSTER_ENTRIES,
) -> Iterator[Directive | Problem]:
    """Directives and problems for one file.  ``entries[m]``: member m's checksum list in
    offset order (a missing member or file = no entries); consumed lazily."""
    planner = FilePlanner(file, roles, max_cluster_entries=max_cluster_entries)
    its = {m: iter(entries.get(m, ())) for m in roles.participants}
    while (m := planner.needs()) is not None:
        e = next(its[m], None)
        if e is None:
            planner.end(m)
        else:
            planner.feed(m, (e,))
        yield from planner.take()
    yield from planner.take()


def _close(file: str, roles: Roles, cluster: list[_E],
           overflow: bool) -> Iterator[Directive | Problem]:
    if _in_sync(roles, cluster):
        return
    if overflow:
        lo = cluster[0].offset
        yield Problem(file, lo, max(e.end for e in cluster) - lo, _members(cluster),
                      "too many overlapping entries to plan")
        return
    if roles.mode == "cp":
        yield from _close_cp(file, roles, cluster)
    else:
        yield from _close_ap(file, roles, cluster)


def _in_sync(roles: Roles, cluster: list[_E]) -> bool:
    """The common case, decided cheaply: every participant holds the same written chunk
    (one extent, one digest, no copy known corrupt): nothing to do in either mode."""
    parts = roles.participants
    if len(cluster) != len(parts):
        return False
    first = cluster[0]
    if first.csum is None:
        return False
    d = first.csum.digest
    for e in cluster:
        if (e.offset != first.offset or e.size != first.size or e.csum is None
                or e.corrupt or e.csum.digest != d):
            return False
    return len({e.member for e in cluster}) == len(parts)


def _members(es: Iterable[_E]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(e.member for e in es))


def _union(es: Iterable[_E]) -> list[tuple[int, int]]:
    """Merged [start, end) intervals covered by ``es``."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted((e.offset, e.end) for e in es):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _covered(ivs: Sequence[tuple[int, int]], lo: int, hi: int) -> bool:
    return any(a <= lo and hi <= b for a, b in ivs)


def _touches(ivs: Sequence[tuple[int, int]], lo: int, hi: int) -> bool:
    return any(a < hi and lo < b for a, b in ivs)


def _close_ap(file: str, roles: Roles, cluster: list[_E]) -> Iterator[Directive | Problem]:
    parts = roles.participants
    trims = _union(e for e in cluster if e.csum is None)
    live: list[_E] = []
    for e in cluster:
        if e.csum is None or _covered(trims, e.offset, e.end):
            continue
        if _touches(trims, e.offset, e.end):
            yield Problem(file, e.offset, e.size, (e.member,),
                          "written chunk partly trimmed elsewhere")
            continue
        live.append(e)
    mine = {m: _union(e for e in cluster if e.member == m and e.csum is None) for m in parts}
    for lo, hi in trims:
        targets = tuple(m for m in parts if not _covered(mine[m], lo, hi))
        if targets:
            yield Trim(file, lo, hi - lo, targets)
    if not live:
        return
    extents = {(e.offset, e.size) for e in live}
    if len(extents) > 1:
        lo = min(e.offset for e in live)
        yield Problem(file, lo, max(e.end for e in live) - lo, _members(live),
                      "overlapping chunks of different extents")
        return
    yield from _group(file, parts, roles.source, live)


def _group(file: str, parts: tuple[str, ...], source: str,
           group: list[_E]) -> Iterator[Copy | Problem]:
    """One place, written on the members of ``group``: copy it to the other ``parts``."""
    first = group[0]
    assert first.csum is not None
    if len({e.csum.digest for e in group if e.csum is not None}) > 1:
        yield Problem(file, first.offset, first.size, _members(group),
                      "conflicting checksums at one place")
        return
    holders = {e.member: e for e in group}
    # a holder whose copy is known corrupt needs the exact rewrite (which heals it) like a
    # member without the chunk, and is the source only when no holder has a good copy
    # (then the copy finds no good bytes and the repair reports it, loudly)
    missing = tuple(m for m in parts if m not in holders or holders[m].corrupt)
    if not missing:
        return
    good = [e for e in group if not e.corrupt]
    src = ((holders.get(source) if source in holders and not holders[source].corrupt
            else None)
           or min(good or group, key=lambda e: parts.index(e.member)))
    assert src.csum is not None
    # fallbacks: the other good holders, then the flagged ones (a flag may be stale)
    others = tuple(sorted((m for m in parts if m in holders and m != src.member),
                          key=lambda m: holders[m].corrupt))
    yield Copy(file, src.offset, src.size, src.csum, src.member,
               tuple(m for m in missing if m != src.member), others)


def _close_cp(file: str, roles: Roles, cluster: list[_E]) -> Iterator[Directive | Problem]:
    tail = roles.source
    t_trims = _union(e for e in cluster if e.member == tail and e.csum is None)
    t_written = {(e.offset, e.size): e for e in cluster if e.member == tail and e.csum}
    resets: dict[tuple[int, int], list[str]] = {}
    copies: dict[tuple[int, int], list[str]] = {}
    problems: list[Problem] = []
    trims: list[Trim] = []
    for r in roles.repairing:
        mine = [e for e in cluster if e.member == r]
        r_trims = _union(e for e in mine if e.csum is None)
        for e in mine:
            if e.csum is None:
                if not _covered(t_trims, e.offset, e.end):
                    problems.append(Problem(file, e.offset, e.size, (r, tail),
                                            "trimmed on a repairing member, not at the tail"))
                continue
            if _covered(t_trims, e.offset, e.end):
                continue  # the tail's trim below covers it
            if _touches(t_trims, e.offset, e.end):
                problems.append(Problem(file, e.offset, e.size, (r, tail),
                                        "written chunk partly trimmed at the tail"))
                continue
            same = t_written.get((e.offset, e.size))
            if same is not None:
                assert same.csum is not None
                if same.csum.digest != e.csum.digest:
                    problems.append(Problem(file, e.offset, e.size, (tail, r),
                                            "conflicting checksums at one place"))
                elif e.corrupt:  # r's copy is known bad: rewrite it from the tail's
                    copies.setdefault((e.offset, e.size), []).append(r)
            elif any(t.offset < e.end and e.offset < t.end for t in t_written.values()):
                problems.append(Problem(file, e.offset, e.size, (tail, r),
                                        "overlapping chunks of different extents"))
            else:
                resets.setdefault((e.offset, e.size), []).append(r)  # never acknowledged
        for lo, hi in t_trims:
            if not _covered(r_trims, lo, hi):
                trims.append(Trim(file, lo, hi - lo, (r,)))
        for key, t in t_written.items():
            if _touches(r_trims, t.offset, t.end):
                continue  # reported above (trimmed on r, not at the tail)
            if not any(e.csum is not None and e.offset < t.end and t.offset < e.end
                       for e in mine):
                copies.setdefault(key, []).append(r)
    if problems:
        yield from problems
        return
    yield from trims
    for (off, size), ms in sorted(resets.items()):
        yield Reset(file, off, size, tuple(ms))
    for (off, size), ms in sorted(copies.items()):
        t = t_written[(off, size)]
        assert t.csum is not None
        # the other UPI members hold every chunk the tail holds (chain order)
        yield Copy(file, off, size, t.csum, tail, tuple(ms),
                   tuple(reversed(roles.upi_others)))
