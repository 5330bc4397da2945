"""The summary of part of a checksum list (AP anti-entropy, docs/repair.md and
docs/protocol.md, ``checksum_list`` with ``summary``).

Owns: the one definition of the summary, shared by the FLU (which answers it), the
anti-entropy runner and the simulator (which compare it): ``[count, hex]``, ``count`` the
number of entries and ``hex`` the BLAKE2b-256 digest (personalised ``machi-csl-sum1``) of
the entries in list order, each encoded with fixed-size fields, so that two summaries
are equal exactly when the two entry sequences are equal (up to a BLAKE2b-256
collision).  Must not: do I/O, or summarise a list in which some entry is flagged
corrupt (the FLU answers no summary then: a flagged copy needs a rewrite that equal
lists would hide).

Entry encoding: ``offset`` and ``size`` as 8-byte big-endian, then one byte 0 (trimmed)
or 1 (written) and, for written, the tagged checksum (tag byte + digest; a NONE tag has
an empty digest, so the tag byte also fixes the length).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable

from .repair_plan import EntryLike

PERSON = b"machi-csl-sum1"
_TRIMMED = struct.Struct(">QQB")
_WRITTEN = struct.Struct(">QQBB")  # ..., 1, tag; the digest follows

#: ``[count, hex digest]`` as the wire carries it
Summary = tuple[int, str]


class Summarizer:
    """The summary built in steps: ``add`` entries (in list order) as often as needed,
    then ``value()``."""

    __slots__ = ("_h", "_n")

    def __init__(self) -> None:
        self._h = hashlib.blake2b(digest_size=32, person=PERSON)
        self._n = 0

    def add(self, entries: Iterable[EntryLike]) -> None:
        """Entries with ``offset``, ``size`` and ``csum`` (None: trimmed)."""
        parts: list[bytes] = []
        app = parts.append
        trimmed, written = _TRIMMED.pack, _WRITTEN.pack
        n = 0
        for e in entries:
            n += 1
            c = e.csum
            if c is None:
                app(trimmed(e.offset, e.size, 0))
            else:
                app(written(e.offset, e.size, 1, c.tag))
                app(c.digest)
        self._n += n
        self._h.update(b"".join(parts))

    def value(self) -> Summary:
        return self._n, self._h.hexdigest()


def summarize(entries: Iterable[EntryLike]) -> Summary:
    """The summary of entries (``offset``, ``size``, ``csum``: None for trimmed) in list
    order (sorted by offset, as checksum lists are)."""
    s = Summarizer()
    s.add(entries)
    return s.value()


def parse_summary(value: object) -> Summary | None:
    """A summary from the wire (``[count, 64 hex digits]``), None for null; ValueError
    when malformed."""
    if value is None:
        return None
    if (not isinstance(value, list | tuple) or len(value) != 2
            or isinstance(value[0], bool) or not isinstance(value[0], int) or value[0] < 0
            or not isinstance(value[1], str) or len(value[1]) != 64):
        raise ValueError(f"bad checksum-list summary {value!r}")
    int(value[1], 16)
    return int(value[0]), value[1].lower()
