"""Tagged blake3 chunk checksums (reference section 1.3, with blake3 instead of SHA-1).

A tagged checksum is one tag byte followed by a 32-byte blake3 digest (33 bytes), or the
single byte ``NONE`` when the client supplied none.  Owns the tags and the verification
rule applied on write; must not touch files or sockets.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import blake3

DIGEST_SIZE = 32


class CsumTag(enum.IntEnum):
    NONE = 0
    CLIENT = 1
    SERVER = 2
    SERVER_REGEN = 3


#: tag byte -> tag (an enum call per parsed checksum costs more than the rest of parsing)
_TAGS: dict[int, CsumTag] = {t.value: t for t in CsumTag}


@dataclass(frozen=True, slots=True)
class TaggedCsum:
    tag: CsumTag
    digest: bytes  # empty for NONE, else DIGEST_SIZE bytes

    def __post_init__(self) -> None:
        if self.tag is CsumTag.NONE:
            if self.digest:
                raise ValueError("a NONE checksum carries no digest")
        elif len(self.digest) != DIGEST_SIZE:
            raise ValueError(f"a {self.tag.name} checksum needs a {DIGEST_SIZE}-byte digest")

    def to_bytes(self) -> bytes:
        return bytes([self.tag]) + self.digest

    @classmethod
    def from_bytes(cls, raw: bytes) -> TaggedCsum:
        """Parse; raises ``ValueError`` on an unknown tag or a wrong length."""
        if not raw:
            raise ValueError("empty tagged checksum")
        tag = _TAGS.get(raw[0])
        if tag is None:
            raise ValueError(f"unknown checksum tag {raw[0]}")
        return cls(tag, bytes(raw[1:]))

    def hex(self) -> str:
        return self.to_bytes().hex()

    @classmethod
    def from_hex(cls, text: str) -> TaggedCsum:
        return cls.from_bytes(bytes.fromhex(text))


NO_CSUM = TaggedCsum(CsumTag.NONE, b"")


def digest(data: bytes | bytearray | memoryview) -> bytes:
    return blake3.blake3(data).digest()


def client_csum(data: bytes | bytearray | memoryview) -> TaggedCsum:
    """The checksum a client attaches to a chunk it sends."""
    return TaggedCsum(CsumTag.CLIENT, digest(data))


def server_csum(data: bytes | bytearray | memoryview) -> TaggedCsum:
    return TaggedCsum(CsumTag.SERVER, digest(data))


def csum_to_store(
    data: bytes | bytearray | memoryview, supplied: TaggedCsum
) -> TaggedCsum | None:
    """The checksum a server stores for ``data`` given the supplied one.

    Returns ``None`` when the supplied checksum does not match the bytes (the caller
    answers ``BAD_CHECKSUM`` and writes nothing).  NONE -> computed SERVER; CLIENT or
    SERVER -> verified, stored as SERVER; SERVER_REGEN -> verified, kept as SERVER_REGEN.
    """
    d = digest(data)
    if supplied.tag is CsumTag.NONE:
        return TaggedCsum(CsumTag.SERVER, d)
    if supplied.digest != d:
        return None
    if supplied.tag is CsumTag.SERVER_REGEN:
        return supplied
    return TaggedCsum(CsumTag.SERVER, d)


def verify(data: bytes | bytearray | memoryview, stored: TaggedCsum) -> bool:
    """True when ``data`` matches a stored checksum (NONE never matches: we always store one)."""
    return stored.tag is not CsumTag.NONE and digest(data) == stored.digest
