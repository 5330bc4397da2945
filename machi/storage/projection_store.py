"""The projection store of one FLU (reference sections 2.5 and 3.3): public and private
halves, each a write-once register per epoch number.

Owns: the in-memory copy of both halves (loaded at start-up, so chain-manager reads never
touch SQL) and the write rules.  Must not: persist anything itself (``flu_store`` commits
the record through the metadata plane, then calls :meth:`ProjectionCache.put`) or decide
wedge state (``machi.core.wedge``).

Write rules: a projection whose stored checksum does not match its recomputed one is
BAD_ARG.  Public: a second write at an epoch is WRITTEN, even if identical.  Private: a
rewrite with the same epoch id (same checksum) is allowed and replaces the stored record
(new ``dbg2``); a different projection at that epoch is WRITTEN -- except under the TEST
ONLY canary "epoch-reuse" (``reuse_epochs``), which accepts it and replaces the record.
"""

from __future__ import annotations

from typing import Literal

from machi.core.epoch import DUMMY_EPOCH_ID, EpochId
from machi.core.errors import BadArg, NotWritten, Written
from machi.core.projection import Projection, projection_from_bytes

Kind = Literal["public", "private"]
KINDS: tuple[Kind, ...] = ("public", "private")


def check_kind(kind: object) -> Kind:
    if kind == "public":
        return "public"
    if kind == "private":
        return "private"
    raise BadArg(f"projection kind must be 'public' or 'private', got {kind!r}")


class ProjectionCache:
    def __init__(self, *, reuse_epochs: bool = False) -> None:
        self._halves: dict[Kind, dict[int, Projection]] = {k: {} for k in KINDS}
        #: TEST ONLY canary "epoch-reuse": a different projection may replace a written one
        self.reuse_epochs = reuse_epochs

    def load(self, kind: str, epoch_number: int, body: bytes) -> None:
        """Load one stored record; raises ``ValueError`` if it does not verify."""
        p = projection_from_bytes(body, verify_csum=True)
        if p.epoch_number != epoch_number:
            raise ValueError(f"row epoch {epoch_number} holds projection {p.epoch_number}")
        self._halves[check_kind(kind)][epoch_number] = p

    def check_write(self, kind: Kind, p: Projection) -> None:
        """Raise BadArg / Written when ``p`` may not be written to ``kind``."""
        if not isinstance(p, Projection):
            raise BadArg(f"not a projection: {type(p).__name__}")
        if not p.csum_is_valid():
            raise BadArg(f"projection epoch {p.epoch_number}: checksum does not verify")
        old = self._halves[kind].get(p.epoch_number)
        if old is None:
            return
        if kind == "private" and old.epoch_csum == p.epoch_csum:
            return
        if self.reuse_epochs and old.epoch_csum != p.epoch_csum:
            return  # TEST ONLY canary epoch-reuse: breaks the write-once register
        raise Written(f"{kind} projection epoch {p.epoch_number} is already written")

    def put(self, kind: Kind, p: Projection) -> None:
        self._halves[kind][p.epoch_number] = p

    def read(self, kind: Kind, epoch_number: int) -> Projection:
        p = self._halves[kind].get(epoch_number)
        if p is None:
            raise NotWritten(f"no {kind} projection at epoch {epoch_number}")
        return p

    def read_latest(self, kind: Kind) -> Projection:
        half = self._halves[kind]
        if not half:
            raise NotWritten(f"the {kind} projection store is empty")
        return half[max(half)]

    def latest_epoch_id(self, kind: Kind) -> EpochId:
        half = self._halves[kind]
        return half[max(half)].epoch_id if half else DUMMY_EPOCH_ID

    def epochs(self, kind: Kind) -> list[int]:
        return sorted(self._halves[kind])

    def get_all(self, kind: Kind) -> list[Projection]:
        half = self._halves[kind]
        return [half[n] for n in sorted(half)]
