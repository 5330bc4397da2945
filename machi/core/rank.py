"""Ranking of projections, the ranked timer interval and the none/all builders (5.3, 5.4).

Owns: ``rank`` (which of several projections at one epoch is best), the tie-break order
used to pick P_latest, the per-server timer stagger, and the special projections of
reference 3.4.  Must not: decide adoption (``machi.core.chain_manager``) or safety
(``machi.core.transition``).  The rng is a parameter (anything with ``randrange``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from .projection import JSON, MAX_CHAIN_LENGTH, Mode, Projection, make_projection

RANK_CP_MINORITY_QUORUM = -99
_N = MAX_CHAIN_LENGTH + 1


class Rng(Protocol):
    def random(self) -> float: ...
    def randrange(self, start: int, stop: int | None = ..., step: int = ...) -> int: ...


def rank(p: Projection) -> int:
    """N*|repairing| + N^2*|UPI witnesses| + N^3*|UPI real servers|; -99 if no real server.

    A UPI without a real server cannot serve data (-99 in both modes, as the original).
    """
    real = len(p.upi_non_witnesses)
    if real == 0:
        return RANK_CP_MINORITY_QUORUM
    wit = len(p.upi) - real
    return _N * len(p.repairing) + _N * _N * wit + _N * _N * _N * real


def best_key(p: Projection) -> tuple[int, int, bytes]:
    """Sort key for picking P_latest: epoch, then rank, then checksum bytes (deterministic)."""
    return (p.epoch_number, rank(p), p.epoch_csum)


def timer_interval_ms(
    me: str,
    members: tuple[str, ...],
    rng: Rng,
    *,
    base_ms: int,
    spread_ms: int,
    jitter_ms: int,
) -> int:
    """Ranked timer (5.4): base + spread/|members| per member name sorting after mine,
    plus 1..jitter random milliseconds.  The largest name runs most often."""
    n = max(1, len(members))
    after = sum(1 for m in members if m > me)
    return base_ms + (spread_ms // n) * after + rng.randrange(1, max(2, jitter_ms + 1))


def none_projection(
    *,
    epoch_number: int,
    author: str,
    chain_name: str,
    all_members: tuple[str, ...],
    witnesses: tuple[str, ...],
    mode: Mode,
    dbg: Mapping[str, JSON] | None = None,
) -> Projection:
    """Nobody serving: empty UPI and repairing, everyone down."""
    return make_projection(
        epoch_number=epoch_number, author_server=author, chain_name=chain_name,
        all_members=all_members, witnesses=witnesses,
        mode=mode,
        upi=(), repairing=(), down=all_members, dbg=dict(dbg or {}),
    )


def all_projection(
    *,
    epoch_number: int,
    author: str,
    chain_name: str,
    all_members: tuple[str, ...],
    witnesses: tuple[str, ...],
    mode: Mode,
    dbg: Mapping[str, JSON] | None = None,
) -> Projection:
    """Every real server in the UPI (bootstrap, and the CP fallback with no history)."""
    upi = tuple(m for m in all_members if m not in witnesses)
    return make_projection(
        epoch_number=epoch_number, author_server=author, chain_name=chain_name,
        all_members=all_members, witnesses=witnesses,
        mode=mode,
        upi=upi, repairing=(), down=(), dbg=dict(dbg or {}),
    )
