"""Tests of Machi file names: build, parse (locator as hex) and prefix validation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from machi.core.filename import (
    MAX_LOCATOR,
    MAX_PREFIX_BYTES,
    FileName,
    filename_error,
    make_filename,
    parse_filename,
    prefix_error,
    valid_prefix,
)

UUID = "b144ef13-db4d-4c9f-96e7-caff02dc754f"


def test_make_matches_reference_shape() -> None:
    """The default namespace gives the reference's ``pre^^00000000^uuid^1`` shape."""
    assert make_filename("pre", "", 0, UUID, 1) == f"pre^^00000000^{UUID}^1"


def test_locator_is_parsed_as_hex() -> None:
    """A locator whose hex form has letters round-trips (the original parsed it as decimal)."""
    name = make_filename("p", "ns", 0xDEADBEEF, UUID, 7)
    assert name == f"p^ns^deadbeef^{UUID}^7"
    assert parse_filename(name) == FileName("p", "ns", 0xDEADBEEF, UUID, 7)
    assert parse_filename(make_filename("p", "", 10, UUID, 1)).locator == 10


@pytest.mark.parametrize(
    "prefix",
    ["", "a/b", "a\\b", "a^b", "a\x00b", "a\nb", "a\x7fb", "a\x85b", "..", "a..b", ".hidden",
     "x" * (MAX_PREFIX_BYTES + 1), "é" * 65, "bad\ud800"],
)
def test_bad_prefixes_are_refused(prefix: str) -> None:
    """Path-like, empty, control-character, over-long or non-UTF-8 prefixes are invalid."""
    assert not valid_prefix(prefix)
    assert prefix_error(prefix)
    with pytest.raises(ValueError):
        make_filename(prefix, "", 0, UUID, 1)


@pytest.mark.parametrize("prefix", ["a", "pre", "x" * MAX_PREFIX_BYTES, "é" * 64, "a.b", "a-b_c"])
def test_good_prefixes_are_accepted(prefix: str) -> None:
    """Ordinary prefixes up to the byte limit are valid."""
    assert valid_prefix(prefix)


def test_non_string_prefix_is_refused() -> None:
    """A prefix that is not a string is invalid, not a crash."""
    assert prefix_error(b"abc")
    assert prefix_error(None)


@pytest.mark.parametrize(
    "name",
    ["", "a^b", f"p^^0000000^{UUID}^1", f"p^^0000000g^{UUID}^1", f"p^^00000000^{UUID.upper()}^1",
     f"p^^00000000^{UUID}^01", f"p^^00000000^{UUID}^-1", f"p^^00000000^{UUID}^x",
     f"../x^^00000000^{UUID}^1", f"p^^00000000^{UUID}^1^", f"p^a/b^00000000^{UUID}^1",
     f"p^^00000000^{UUID}^99999999999999999999", 42],
)
def test_bad_file_names_are_refused(name: object) -> None:
    """Malformed names (parts, hex, uuid, seq, path characters, type) are refused."""
    assert filename_error(name)
    with pytest.raises(ValueError):
        parse_filename(name)


def test_make_refuses_bad_components() -> None:
    """Out-of-range locator or seq and non-canonical uuids are refused when building."""
    for args in [(MAX_LOCATOR + 1, UUID, 1), (-1, UUID, 1), (0, "nope", 1), (0, UUID, -1),
                 (True, UUID, 1)]:
        with pytest.raises(ValueError):
            make_filename("p", "", *args)  # type: ignore[arg-type]


_prefix_chars = st.characters(blacklist_characters="/\\^.", blacklist_categories=("Cc", "Cs"))


@given(
    prefix=st.text(_prefix_chars, min_size=1, max_size=30),
    namespace=st.text(_prefix_chars, max_size=12),
    locator=st.integers(0, MAX_LOCATOR),
    uuid=st.uuids().map(str),
    seq=st.integers(0, 2**63 - 1),
)
def test_round_trip(prefix: str, namespace: str, locator: int, uuid: str, seq: int) -> None:
    """Every valid component tuple survives make -> parse unchanged."""
    name = make_filename(prefix, namespace, locator, uuid, seq)
    assert parse_filename(name) == FileName(prefix, namespace, locator, uuid, seq)
    assert str(parse_filename(name)) == name
    assert len(name.encode()) <= 255


@given(st.text(max_size=40))
def test_parse_never_crashes(text: str) -> None:
    """Arbitrary text either parses to a name that rebuilds identically or raises ValueError."""
    try:
        fn = parse_filename(text)
    except ValueError:
        return
    assert str(fn) == text
