"""Interval maths for one data file: which bytes are written (and by which chunk), which
are trimmed, and where the end of file is (reference sections 1.1, 1.5, 1.7).

Owns: the in-memory index of a file (sorted, non-overlapping entries), the write-once
decision for a write (free / exact replay / WRITTEN / TRIMMED), read planning (clipping,
partial flag, trimmed sub-ranges) and trim planning (splitting partially covered chunks,
merging trimmed ranges).  Must not: read or write bytes, compute checksums itself (trim
takes a ``regen`` callback from the caller), know about SQL or files on disk.

Every byte moves unwritten -> written -> trimmed or unwritten -> trimmed, never back.
Rules fixed here (documented in docs/storage.md):
- A write overlapping trimmed bytes is TRIMMED (even if it also overlaps written bytes);
  else overlapping written bytes is WRITTEN, unless it is an exact replay: exactly one
  written entry with the same offset and size (the caller then compares the bytes).
- EOF is the first byte after every written, reserved or trimmed byte; it never shrinks.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .checksum import TaggedCsum

#: The first 1024 bytes of every data file are a reserved header (as the original).
MIN_OFFSET = 1024
#: Largest end offset we accept (2**48 bytes = 256 TiB): bounds bad input, not real files.
MAX_OFFSET = 2**48


@dataclass(frozen=True, slots=True)
class Entry:
    """A written chunk (``csum`` set) or a trimmed range (``csum`` is None)."""

    offset: int
    size: int
    csum: TaggedCsum | None

    @property
    def end(self) -> int:
        return self.offset + self.size

    @property
    def trimmed(self) -> bool:
        return self.csum is None


class WriteCheck(enum.Enum):
    FREE = "free"
    REPLAY = "replay"  # same offset and size as one written entry: caller compares bytes
    WRITTEN = "written"
    TRIMMED = "trimmed"


@dataclass(frozen=True, slots=True)
class ReadPiece:
    """The part ``[offset, offset+size)`` of written ``entry`` that falls in a read range."""

    entry: Entry
    offset: int
    size: int

    @property
    def clipped(self) -> bool:
        return self.offset != self.entry.offset or self.size != self.entry.size


@dataclass(frozen=True, slots=True)
class ReadPlan:
    pieces: list[ReadPiece]
    trimmed: list[tuple[int, int]]  # (offset, size) clipped to the range
    written_bytes: int
    trimmed_bytes: int
    size: int  # the requested size

    @property
    def partial(self) -> bool:
        return self.written_bytes < self.size


@dataclass(frozen=True, slots=True)
class TrimResult:
    removed: list[Entry]
    added: list[Entry]


def check_range(offset: int, size: int, *, allow_empty: bool = False) -> str | None:
    """Why ``(offset, size)`` is not a valid data range, or None when it is."""
    if isinstance(offset, bool) or not isinstance(offset, int):
        return f"offset must be an integer, got {offset!r}"
    if isinstance(size, bool) or not isinstance(size, int):
        return f"size must be an integer, got {size!r}"
    if offset < MIN_OFFSET:
        return f"offset {offset} is below the minimum offset {MIN_OFFSET}"
    if size < 0 or (size == 0 and not allow_empty):
        return f"size {size} must be positive"
    if offset + size > MAX_OFFSET:
        return f"range end {offset + size} is past the maximum offset {MAX_OFFSET}"
    return None


class FileIndex:
    """Sorted, non-overlapping entries of one file plus its EOF.

    Change marks (AP anti-entropy, docs/repair.md): ``tokens`` is a list shared by every
    index of a store (``FluStore`` sets it): the live *change tokens*.  Every change of
    the entries, and every ``touch``, lowers ``lows[t]`` for each live token t to the
    changed offset, so ``low_since(t)`` is the lowest offset whose checksum-list entry
    changed since t was issued (None: nothing changed).  At most len(tokens) numbers per
    file."""

    __slots__ = ("_entries", "_starts", "eof", "lows", "tokens")

    def __init__(self, eof: int = MIN_OFFSET) -> None:
        assert eof >= MIN_OFFSET
        self._starts: list[int] = []
        self._entries: list[Entry] = []
        self.eof = eof
        self.tokens: list[int] = []
        self.lows: dict[int, int] = {}

    def touch(self, offset: int) -> None:
        """Something a checksum list shows at ``offset`` changed without an entry change
        (a pending chunk became durable, a copy was found corrupt or healed)."""
        if len(self.lows) > len(self.tokens):  # forget expired tokens
            self.lows = {t: o for t, o in self.lows.items() if t in self.tokens}
        for t in self.tokens:
            low = self.lows.get(t)
            if low is None or offset < low:
                self.lows[t] = offset

    def low_since(self, token: int) -> int | None:
        """The lowest changed offset since live token ``token`` was issued, None when
        nothing changed (the caller checks that ``token`` is live)."""
        return self.lows.get(token)

    @classmethod
    def from_entries(cls, eof: int, entries: list[Entry]) -> FileIndex:
        """Bulk load (start-up): sorts once and checks in one pass; raises ``ValueError``
        on entries that overlap, sit below MIN_OFFSET or are empty."""
        ix = cls(max(eof, MIN_OFFSET))
        ordered = sorted(entries, key=lambda e: e.offset)
        prev_end = MIN_OFFSET
        for e in ordered:
            if e.size <= 0 or e.offset < prev_end:
                raise ValueError(f"entry [{e.offset}, +{e.size}) overlaps or is misplaced")
            prev_end = e.end
        ix._entries = ordered
        ix._starts = [e.offset for e in ordered]
        ix.eof = max(ix.eof, prev_end)
        return ix

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> Iterator[Entry]:
        return iter(list(self._entries))

    def entries_from(self, offset: int) -> Iterator[Entry]:
        """The entries that end after ``offset`` (a snapshot), in offset order."""
        return iter(self._entries[self._first_overlap(offset):])

    def entries_between(self, offset: int, stop: int | None) -> list[Entry]:
        """The entries that end after ``offset`` and start below ``stop`` (None: no
        bound), in offset order (a new list)."""
        lo = self._first_overlap(offset)
        hi = len(self._entries) if stop is None else bisect.bisect_left(self._starts, stop)
        return self._entries[lo:max(lo, hi)]

    # ---- queries ------------------------------------------------------------------
    def _first_overlap(self, offset: int) -> int:
        i = bisect.bisect_right(self._starts, offset) - 1
        if i >= 0 and self._entries[i].end > offset:
            return i
        return i + 1

    def overlapping(self, offset: int, size: int) -> list[Entry]:
        end = offset + size
        out: list[Entry] = []
        i = self._first_overlap(offset)
        while i < len(self._entries) and self._entries[i].offset < end:
            out.append(self._entries[i])
            i += 1
        return out

    def check_write(self, offset: int, size: int) -> tuple[WriteCheck, Entry | None]:
        hits = self.overlapping(offset, size)
        if not hits:
            return WriteCheck.FREE, None
        if any(e.trimmed for e in hits):
            return WriteCheck.TRIMMED, None
        if len(hits) == 1 and hits[0].offset == offset and hits[0].size == size:
            return WriteCheck.REPLAY, hits[0]
        return WriteCheck.WRITTEN, None

    def plan_read(self, offset: int, size: int) -> ReadPlan:
        end = offset + size
        pieces: list[ReadPiece] = []
        trimmed: list[tuple[int, int]] = []
        written = trimmed_n = 0
        for e in self.overlapping(offset, size):
            lo, hi = max(e.offset, offset), min(e.end, end)
            if e.trimmed:
                trimmed.append((lo, hi - lo))
                trimmed_n += hi - lo
            else:
                pieces.append(ReadPiece(e, lo, hi - lo))
                written += hi - lo
        return ReadPlan(pieces, trimmed, written, trimmed_n, size)

    def fully_trimmed(self) -> bool:
        """Every byte from MIN_OFFSET to EOF is trimmed (and there is at least one)."""
        if self.eof <= MIN_OFFSET or len(self._entries) != 1:
            return False
        e = self._entries[0]
        return e.trimmed and e.offset <= MIN_OFFSET and e.end >= self.eof

    # ---- changes ------------------------------------------------------------------
    def reserve(self, size: int) -> int:
        """Append: the offset for ``size`` bytes (chunk plus extra) at EOF."""
        assert size > 0
        offset = self.eof
        self.eof += size
        return offset

    def add_written(self, offset: int, size: int, csum: TaggedCsum) -> Entry:
        entry = Entry(offset, size, csum)
        self._insert(entry)
        self.eof = max(self.eof, entry.end)
        return entry

    def add_trimmed_raw(self, offset: int, size: int) -> Entry:
        """Load a trimmed range as stored (start-up); no merging."""
        entry = Entry(offset, size, None)
        self._insert(entry)
        self.eof = max(self.eof, entry.end)
        return entry

    def remove(self, entry: Entry) -> None:
        i = bisect.bisect_left(self._starts, entry.offset)
        assert i < len(self._entries) and self._entries[i] == entry, "removing unknown entry"
        del self._starts[i]
        del self._entries[i]
        self.touch(entry.offset)

    def _insert(self, entry: Entry) -> None:
        assert entry.offset >= MIN_OFFSET and entry.size > 0
        i = bisect.bisect_left(self._starts, entry.offset)
        assert i == 0 or self._entries[i - 1].end <= entry.offset, "overlapping insert"
        assert i == len(self._entries) or entry.end <= self._starts[i], "overlapping insert"
        self._starts.insert(i, entry.offset)
        self._entries.insert(i, entry)
        self.touch(entry.offset)

    def trim(
        self, offset: int, size: int, regen: Callable[[Entry, int, int], TaggedCsum]
    ) -> TrimResult:
        """Mark ``[offset, offset+size)`` trimmed.

        Written entries partially covered keep their uncovered parts, re-checksummed by
        ``regen(entry, piece_offset, piece_size)`` (which may raise; then nothing changed).
        Touching or overlapping trimmed ranges merge into one entry.
        """
        end = offset + size
        # include neighbours that touch the range so trimmed ranges merge
        lo_i = self._first_overlap(offset)
        if lo_i > 0 and self._entries[lo_i - 1].end == offset:
            lo_i -= 1
        hi_i = lo_i
        while hi_i < len(self._entries) and self._entries[hi_i].offset <= end:
            hi_i += 1
        touched = self._entries[lo_i:hi_i]
        new_lo, new_hi = offset, end
        removed: list[Entry] = []
        added: list[Entry] = []
        for e in touched:
            if e.trimmed:
                new_lo, new_hi = min(new_lo, e.offset), max(new_hi, e.end)
                removed.append(e)
                continue
            if e.end <= offset or e.offset >= end:
                continue  # a written neighbour that only touches the range
            removed.append(e)
            if e.offset < offset:
                left = offset - e.offset
                added.append(Entry(e.offset, left, regen(e, e.offset, left)))
            if e.end > end:
                added.append(Entry(end, e.end - end, regen(e, end, e.end - end)))
        if len(removed) == 1 and removed[0].trimmed and (new_lo, new_hi) == (
            removed[0].offset,
            removed[0].end,
        ):
            self.eof = max(self.eof, end)
            return TrimResult([], [])  # already trimmed: nothing changes
        added.append(Entry(new_lo, new_hi - new_lo, None))
        for e in removed:
            self.remove(e)
        for e in added:
            self._insert(e)
        self.eof = max(self.eof, end)
        return TrimResult(removed, added)
