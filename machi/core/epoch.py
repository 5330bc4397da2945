"""Epoch ids: (epoch number, 32-byte blake3 projection checksum), reference section 3.

Owns the type and its ordering; must not know how projections are stored.
"""

from __future__ import annotations

from typing import NamedTuple

EPOCH_CSUM_SIZE = 32
MAX_EPOCH = 2**63 - 1


class EpochId(NamedTuple):
    number: int
    csum: bytes

    def short(self) -> str:
        """Human form used in logs: ``12:ab34cd56``."""
        return f"{self.number}:{self.csum[:4].hex()}"

    def to_json(self) -> list[object]:
        return [self.number, self.csum.hex()]

    @classmethod
    def from_json(cls, value: object) -> EpochId:
        if (
            not isinstance(value, (list, tuple))
            or len(value) != 2
            or not isinstance(value[0], int)
            or isinstance(value[0], bool)
            or not isinstance(value[1], str)
        ):
            raise ValueError(f"bad epoch id {value!r}: want [number, hex checksum]")
        csum = bytes.fromhex(value[1])
        return make_epoch_id(value[0], csum)


def make_epoch_id(number: int, csum: bytes) -> EpochId:
    """Validated constructor; raises ``ValueError`` on a malformed epoch id."""
    if not 0 <= number <= MAX_EPOCH:
        raise ValueError(f"epoch number {number} out of range")
    if len(csum) != EPOCH_CSUM_SIZE:
        raise ValueError(f"epoch checksum must be {EPOCH_CSUM_SIZE} bytes, got {len(csum)}")
    return EpochId(number, bytes(csum))


#: Epoch 0 with an all-zero checksum: what an empty projection store reports.
DUMMY_EPOCH_ID = EpochId(0, bytes(EPOCH_CSUM_SIZE))
