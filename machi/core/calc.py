"""calc_projection (reference 5.6): the projection a server would propose now.

Owns the pure computation from (basis projection, up set, repair status, me) to a new
projection.  Must not: choose the basis (the chain manager does: its current projection
in AP mode, the zerf basis in CP mode), read anything, or check transition safety.

Steps: up/down/newly-up; UPI := basis UPI n up (order kept, witnesses removed); AP:
UPI members that restarted since the basis was adopted (``restarted``, see
chain_manager.restart_needs_new_epoch) leave the UPI for the front of repairing, in UPI
order; repairing := those ++ basis repairing n up; if nobody is newly up or restarted and
the last repair of the basis epoch succeeded and I am the basis UPI tail, all repairing
members move to the UPI tail; newly-up members join at the end of repairing; AP: an
empty UPI takes the first repairing member; CP: no real server in the UPI -> none
projection, otherwise prepend just enough up witnesses to reach a majority of
UPI+repairing, or -> none projection.
"""

from __future__ import annotations

from collections.abc import Iterable

from .projection import JSON, Projection, make_projection
from .rank import none_projection
from .transition import majority


def calc_projection(
    basis: Projection,
    *,
    me: str,
    up: Iterable[str],
    epoch_number: int,
    repair_ok: bool = False,
    creation_time_ms: int = 0,
    dbg: dict[str, JSON] | None = None,
    restarted: Iterable[str] = (),
) -> Projection:
    """The new proposal from ``basis`` (see the module docstring)."""
    members = basis.all_members
    wit = set(basis.witnesses)
    upset = set(up) & set(members)
    extra = dict(dbg or {})
    again = set(restarted) if basis.mode == "ap" else set()
    upi = [m for m in basis.upi if m in upset and m not in wit and m not in again]
    back = [m for m in basis.upi if m in upset and m not in wit and m in again]
    rep = back + [m for m in basis.repairing if m in upset and m not in wit]
    if back:
        extra["restarted"] = list(back)
    known = set(basis.upi) | set(basis.repairing)
    new_up = [m for m in members if m in upset and m not in known and m not in wit]
    basis_real = basis.upi_non_witnesses
    if (
        not new_up and not back and rep and repair_ok and basis_real
        and basis_real[-1] == me and upi and upi[-1] == me
    ):
        upi, rep = upi + rep, []
        extra["promoted"] = True
    rep += new_up
    if basis.mode == "ap" and not upi and rep:
        upi, rep = [rep[0]], rep[1:]
    if basis.mode == "cp":
        reason = None
        if not upi:
            reason = "no real server left in the upi"
        else:
            need = majority(len(members)) - (len(upi) + len(rep))
            wit_up = [w for w in basis.witnesses if w in upset]
            if need > len(wit_up):
                reason = f"no quorum: {len(upi) + len(rep)} of {len(members)} + witnesses"
            elif need > 0:
                upi = wit_up[:need] + upi
        if reason is not None:
            extra["none_reason"] = reason
            return none_projection(
                epoch_number=epoch_number, author=me, chain_name=basis.chain_name,
                all_members=members, witnesses=basis.witnesses, mode="cp", dbg=extra,
            )
    down = [m for m in members if m not in upset]
    return make_projection(
        epoch_number=epoch_number, author_server=me, chain_name=basis.chain_name,
        all_members=members, witnesses=basis.witnesses, mode=basis.mode, upi=upi,
        repairing=rep, down=down, members_dict=basis.members_dict, dbg=extra,
        creation_time_ms=creation_time_ms,
    )
