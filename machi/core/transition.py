"""Transition safety (reference 5.7): may a server move from projection P1 to P2?

Owns the one rule set used by the chain manager before it adopts, by the simulator's
invariant checks, by the harness's projection-safety checker and by the tests.  Must not:
decide what to propose (``machi.core.calc``) or look at anything but the two projections
(and, for CP recovery from the none projection, the zerf basis the caller names or
that P2's author recorded in its ``dbg``).

Rules, in order (first problem found is reported):
  * structure: P2's checksum is valid; same chain name and mode;
  * identity: P1 == P2 (same epoch id) is no transition (a dbg2 rewrite): safe;
  * epochs strictly increase; the only same-epoch move is none -> none;
  * P1 at epoch 0 (a fresh store) may move to anything structurally valid;
  * CP quorum: a non-empty P2 UPI needs |UPI u repairing| >= majority(all_members);
  * chain rule (witnesses removed from both UPIs): P2's UPI is only its author -> safe;
    else disjoint UPIs -> safe only if ``relative_to`` is not in UPI2 (CP: never, see
    below); else UPI2 = (subsequence of UPI1) ++ (subsequence of repairing1), and a
    non-empty repaired suffix needs P2's author to be UPI1's tail (it ran the repair);
  * CP data rule: non-empty UPI1 and UPI2 share a real (non-witness) server.
  * CP zerf: a P2 computed from a zerf basis B (the newest confirmed majority projection
    of an up majority, recorded in P2's dbg) is checked against B instead of P1 when P1
    is unconfirmed (no data can have been written at an unconfirmed CP epoch) or not
    newer than B.  Leaving the none projection with ``relative_to`` in UPI2 needs such
    a basis.  Why this is safe: every epoch where a CP write landed was confirmed by all
    of its UPI+repairing members (a majority), so any up majority holds a confirmed
    projection at least that new; B's UPI therefore holds every acknowledged write.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .projection import JSON, Projection, make_projection


def majority(n_members: int) -> int:
    """Smallest majority of ``n_members`` (CP quorum)."""
    return n_members // 2 + 1


def is_subsequence(sub: Sequence[str], seq: Sequence[str]) -> bool:
    """True iff ``sub`` is an order-preserving (not necessarily contiguous) subsequence."""
    it = iter(seq)
    return all(any(x == y for y in it) for x in sub)


def chain_rule_problem(
    upi1: Sequence[str],
    repairing1: Sequence[str],
    upi2: Sequence[str],
    *,
    promoter_is_tail: bool,
) -> str | None:
    """The keep-prefix-subsequence + repaired-suffix rule on witness-free lists.

    UPI2 must be a subsequence of UPI1 followed by a subsequence of repairing1; a
    non-empty repaired part is allowed only when the promoter is UPI1's tail.
    """
    in_upi1 = set(upi1)
    split = 0
    while split < len(upi2) and upi2[split] in in_upi1:
        split += 1
    kept, promoted = upi2[:split], upi2[split:]
    if not is_subsequence(kept, upi1):
        return f"upi {list(upi2)} re-orders the old upi {list(upi1)}"
    if not promoted:
        return None
    if not is_subsequence(promoted, repairing1):
        return (
            f"upi {list(upi2)} adds {list(promoted)} that is not an in-order part of "
            f"repairing {list(repairing1)}"
        )
    if not promoter_is_tail:
        return f"promotion of {list(promoted)} not authored by the old upi tail"
    return None


def zerf_basis_of(p: Projection) -> Projection | None:
    """The zerf basis recorded in ``p.dbg["zerf_basis"]`` by its author, if any.

    The record keeps the basis epoch number, UPI and repairing (enough for the chain and
    shared-server rules); the rebuilt projection has ``p``'s members and witnesses.
    """
    raw = p.dbg.get("zerf_basis")
    if not isinstance(raw, Mapping):
        return None
    try:
        return make_projection(
            epoch_number=int(raw["epoch_number"]), author_server=str(raw["author"]),
            chain_name=p.chain_name, all_members=p.all_members, witnesses=p.witnesses,
            mode=p.mode, upi=raw["upi"], repairing=raw["repairing"],
        )
    except (KeyError, TypeError, ValueError):
        return None


def zerf_basis_record(basis: Projection) -> dict[str, JSON]:
    """What :func:`zerf_basis_of` reads back (stored in the new projection's ``dbg``)."""
    return {
        "epoch_number": basis.epoch_number, "author": basis.author_server,
        "upi": list(basis.upi), "repairing": list(basis.repairing),
    }


def is_confirmed(p: Projection) -> bool:
    """True iff ``p`` carries the UPI-unanimity confirmation annotation (5.8) in dbg2."""
    return bool(p.dbg2.get("confirmed"))


def _real(p: Projection) -> tuple[str, ...]:
    return p.upi_non_witnesses


def _cp_shared_server_problem(base: Projection, p2: Projection, what: str) -> str | None:
    u1, u2 = _real(base), _real(p2)
    if u1 and u2 and not set(u1) & set(u2):
        return f"cp: {what} upi {list(u1)} and new upi {list(u2)} share no real server"
    return None


def _chain_problem(base: Projection, p2: Projection, relative_to: str) -> str | None:
    u1, u2 = _real(base), _real(p2)
    if list(u2) == [p2.author_server]:
        return None  # shrinking to the author alone (reference 5.7)
    if not u2:
        return None
    if not set(u1) & set(u2):
        if relative_to in u2:
            return f"disjoint upis {list(u1)} -> {list(u2)} with {relative_to} in the new upi"
        return None
    rep1 = [m for m in base.repairing if m not in base.witnesses]
    tail1 = u1[-1] if u1 else None
    return chain_rule_problem(u1, rep1, u2, promoter_is_tail=p2.author_server == tail1)


def transition_problem(
    p1: Projection,
    p2: Projection,
    *,
    relative_to: str,
    basis: Projection | None = None,
) -> str | None:
    """None if moving from ``p1`` (current) to ``p2`` is safe for ``relative_to``,
    else a human-readable reason.  ``basis``: see the module docstring (CP only)."""
    if not p2.csum_is_valid():
        return f"epoch {p2.epoch_number}: checksum does not match the record"
    if p1.chain_name != p2.chain_name:
        return f"chain name changes {p1.chain_name!r} -> {p2.chain_name!r}"
    if p1.mode != p2.mode:
        return f"mode changes {p1.mode} -> {p2.mode}"
    if p1 == p2:
        return None
    if p2.epoch_number < p1.epoch_number:
        return f"epoch goes back {p1.epoch_number} -> {p2.epoch_number}"
    if p2.epoch_number == p1.epoch_number and not (p1.is_none() and p2.is_none()):
        return f"same epoch {p1.epoch_number} with a different checksum"
    if p1.epoch_number == 0:
        return None
    if p2.mode == "cp" and p2.upi:
        need = majority(len(p2.all_members))
        have = len(set(p2.upi) | set(p2.repairing))
        if have < need:
            return f"cp: upi+repairing has {have} members, majority is {need}"
    base = p1
    if p2.mode == "cp":
        if basis is None:
            basis = zerf_basis_of(p2)
        if basis is not None and (
            basis.chain_name != p2.chain_name or basis.epoch_number >= p2.epoch_number
        ):
            return "cp: the zerf basis is not older than the new projection"
        if not _real(p1) and relative_to in _real(p2) and basis is None:
            return "cp: leaving the none projection into the upi needs a zerf basis"
        if basis is not None and (
            not is_confirmed(p1) or basis.epoch_number >= p1.epoch_number
        ):
            base = basis
    problem = _chain_problem(base, p2, relative_to)
    if problem is not None:
        return problem
    if p2.mode == "cp":
        return _cp_shared_server_problem(base, p2, "old" if base is p1 else "zerf basis")
    return None


def is_sane(
    p1: Projection, p2: Projection, *, relative_to: str, basis: Projection | None = None
) -> bool:
    """True iff :func:`transition_problem` finds nothing."""
    return transition_problem(p1, p2, relative_to=relative_to, basis=basis) is None
