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

from .checksum import TaggedCsum

PERSON = b"machi-csl-sum1"
_HEAD = struct.Struct(">QQB")

#: ``[count, hex digest]`` as the wire carries it
Summary = tuple[int, str]


class Summarizer:
    """The summary built in steps: ``add`` entries (in list order) as often as needed,
    then ``value()``."""

    __slots__ = ("_h", "_n")

    def __init__(self) -> None:
        self._h = hashlib.blake2b(digest_size=32, person=PERSON)
        self._n = 0

    def add(self, entries: Iterable[tuple[int, int, TaggedCsum | None]]) -> None:
        parts: list[bytes] = []
        pack = _HEAD.pack
        for off, size, csum in entries:
            self._n += 1
            if csum is None:
                parts.append(pack(off, size, 0))
            else:
                parts.append(pack(off, size, 1))
                parts.append(csum.to_bytes())
        self._h.update(b"".join(parts))

    def value(self) -> Summary:
        return self._n, self._h.hexdigest()


def summarize(entries: Iterable[tuple[int, int, TaggedCsum | None]]) -> Summary:
    """The summary of ``(offset, size, csum or None for trimmed)`` entries in list order
    (sorted by offset, as checksum lists are)."""
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
