"""The checksum-list summary (``machi.core.list_summary``): equal for equal entry
sequences, different when any one entry differs in any field, is missing or is extra;
built in steps it is the same; the wire form parses back and malformed ones are refused."""

from __future__ import annotations

import pytest

from machi.core.checksum import NO_CSUM, CsumTag, TaggedCsum, digest
from machi.core.list_summary import Summarizer, parse_summary
from machi.core.list_summary import summarize as _summarize
from machi.core.ranges import Entry

B = 1024


def summarize(entries: list) -> tuple[int, str]:
    return _summarize(Entry(*e) for e in entries)


def _c(data: bytes, tag: CsumTag = CsumTag.CLIENT) -> TaggedCsum:
    return TaggedCsum(tag, digest(data))


BASE = [(B, 4, _c(b"aaaa")), (B + 4, 10, None), (2 * B, 3, _c(b"bbb", CsumTag.SERVER)),
        (3 * B, 2, NO_CSUM)]


def test_equal_lists_equal_summaries_and_steps_do_not_matter() -> None:
    assert summarize(BASE) == summarize(list(BASE))
    s = Summarizer()
    s.add([Entry(*e) for e in BASE[:1]])
    s.add([])
    s.add([Entry(*e) for e in BASE[1:]])
    assert s.value() == summarize(BASE)
    n, h = summarize(BASE)
    assert n == 4 and len(h) == 64
    assert summarize([]) == (0, summarize([])[1]) != summarize(BASE[:1])


@pytest.mark.parametrize("changed", [
    [(B + 1, 4, _c(b"aaaa")), *BASE[1:]],  # offset
    [(B, 5, _c(b"aaaa")), *BASE[1:]],  # size
    [(B, 4, _c(b"aaab")), *BASE[1:]],  # digest
    [(B, 4, _c(b"aaaa", CsumTag.SERVER)), *BASE[1:]],  # tag
    [(B, 4, None), *BASE[1:]],  # trimmed instead of written
    [BASE[0], (B + 4, 10, _c(b"x" * 10)), *BASE[2:]],  # written instead of trimmed
    [BASE[0], (B + 4, 9, None), *BASE[2:]],  # a shorter trim
    BASE[:-1],  # one missing
    [*BASE, (4 * B, 1, _c(b"z"))],  # one extra
    [BASE[0], BASE[2], BASE[1], BASE[3]],  # another order (lists are sorted: never)
    [BASE[0], (B + 4, 5, None), (B + 9, 5, None), *BASE[2:]],  # a trim in two pieces
])
def test_any_difference_changes_the_summary(changed: list) -> None:
    assert summarize(changed) != summarize(BASE)


def test_the_encoding_is_the_documented_one() -> None:
    """docs/protocol.md: offset, size (8-byte big-endian), 0 | 1, tag byte + digest."""
    import hashlib
    raw = b"".join(
        e[0].to_bytes(8, "big") + e[1].to_bytes(8, "big")
        + (b"\0" if e[2] is None else b"\1" + e[2].to_bytes()) for e in BASE)
    want = hashlib.blake2b(raw, digest_size=32, person=b"machi-csl-sum1").hexdigest()
    assert summarize(BASE) == (len(BASE), want)


def test_wire_form() -> None:
    s = summarize(BASE)
    assert parse_summary(list(s)) == s
    assert parse_summary([s[0], s[1].upper()]) == s
    assert parse_summary(None) is None
    for bad in ([1], [-1, s[1]], [True, s[1]], [1, s[1][:-1]], [1, "g" * 64], "x",
                [1, 2]):
        with pytest.raises(ValueError):
            parse_summary(bad)
