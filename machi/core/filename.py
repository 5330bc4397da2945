"""Machi data file names (reference section 1.2) and prefix validation.

A name is ``prefix^namespace^locator^uuid^seq``: locator as 8 lowercase hex digits
(parsed as HEX, unlike the original which parsed it as decimal), a UUID in its canonical
36-character lowercase form (passed in by the caller: no randomness here) and a decimal
sequence number.  Owns building, parsing and validating names; must not generate UUIDs,
touch the file system or keep counters.

Limits (so that a name always fits one 255-byte file-system component):
prefix 1..128 bytes of UTF-8, namespace 0..48 bytes, locator 0..2**32-1,
sequence number 0..2**63-1.  Forbidden in prefix and namespace: ``/``, ``\\``, ``^``,
NUL and every control character (C0, DEL, C1), lone surrogates, ``..`` anywhere, and a
leading ``.``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_PREFIX_BYTES = 128
MAX_NAMESPACE_BYTES = 48
MAX_LOCATOR = 2**32 - 1
MAX_SEQ = 2**63 - 1
SEP = "^"

_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_LOCATOR_RE = re.compile(r"^[0-9a-f]{8}$")
_SEQ_RE = re.compile(r"^(0|[1-9][0-9]{0,18})$")


@dataclass(frozen=True, slots=True)
class FileName:
    prefix: str
    namespace: str
    locator: int
    uuid: str
    seq: int

    def __str__(self) -> str:
        return make_filename(self.prefix, self.namespace, self.locator, self.uuid, self.seq)


def _bad_component(text: object, what: str, max_bytes: int, *, allow_empty: bool) -> str | None:
    if not isinstance(text, str):
        return f"{what} must be a string, got {type(text).__name__}"
    if not text:
        return None if allow_empty else f"{what} must not be empty"
    try:
        n = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return f"{what} is not valid UTF-8 text"
    if n > max_bytes:
        return f"{what} is {n} bytes of UTF-8, more than the maximum {max_bytes}"
    for ch in text:
        o = ord(ch)
        if ch in "/\\^" or o < 0x20 or 0x7F <= o <= 0x9F:
            return f"{what} {text!r} contains the forbidden character {ch!r}"
    if ".." in text or text.startswith("."):
        return f"{what} {text!r} looks like a path ('..' or a leading '.')"
    return None


def prefix_error(prefix: object) -> str | None:
    """Why ``prefix`` is not a valid prefix, or None when it is."""
    return _bad_component(prefix, "prefix", MAX_PREFIX_BYTES, allow_empty=False)


def namespace_error(namespace: object) -> str | None:
    return _bad_component(namespace, "namespace", MAX_NAMESPACE_BYTES, allow_empty=True)


def valid_prefix(prefix: object) -> bool:
    return prefix_error(prefix) is None


def make_filename(prefix: str, namespace: str, locator: int, uuid: str, seq: int) -> str:
    """Build a name; raises ``ValueError`` when any component is invalid."""
    err = prefix_error(prefix) or namespace_error(namespace)
    if err:
        raise ValueError(err)
    if isinstance(locator, bool) or not isinstance(locator, int):
        raise ValueError(f"locator must be an integer, got {locator!r}")
    if not 0 <= locator <= MAX_LOCATOR:
        raise ValueError(f"locator {locator} is outside 0..{MAX_LOCATOR}")
    if not isinstance(uuid, str) or not _UUID_RE.match(uuid):
        raise ValueError(f"uuid {uuid!r} is not a canonical lowercase UUID")
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= MAX_SEQ:
        raise ValueError(f"sequence number {seq!r} is outside 0..{MAX_SEQ}")
    return SEP.join((prefix, namespace, f"{locator:08x}", uuid, str(seq)))


def parse_filename(name: object) -> FileName:
    """Parse a data file name; raises ``ValueError`` naming what is wrong."""
    if not isinstance(name, str):
        raise ValueError(f"file name must be a string, got {type(name).__name__}")
    parts = name.split(SEP)
    if len(parts) != 5:
        raise ValueError(f"file name {name!r} does not have 5 '^'-separated parts")
    prefix, namespace, loc, uuid, seq = parts
    err = prefix_error(prefix) or namespace_error(namespace)
    if err:
        raise ValueError(f"file name {name!r}: {err}")
    if not _LOCATOR_RE.match(loc):
        raise ValueError(f"file name {name!r}: locator {loc!r} is not 8 lowercase hex digits")
    if not _UUID_RE.match(uuid):
        raise ValueError(f"file name {name!r}: {uuid!r} is not a canonical lowercase UUID")
    if not _SEQ_RE.match(seq) or int(seq) > MAX_SEQ:
        raise ValueError(f"file name {name!r}: bad sequence number {seq!r}")
    return FileName(prefix, namespace, int(loc, 16), uuid, int(seq))


def filename_error(name: object) -> str | None:
    """Why ``name`` is not a valid data file name, or None when it is."""
    try:
        parse_filename(name)
    except ValueError as exc:
        return str(exc)
    return None
