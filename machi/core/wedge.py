"""A FLU's wedge state and the epoch rule for data operations (reference section 2.3).

Owns: the decision "may this data request run at this epoch?" and how projection-store
writes, confirmation and start-up change the wedge state.  Must not: store anything or
talk to anyone; the node (and the simulator's in-memory FLU) apply the results.

State: ``(wedged, epoch_id)`` where ``epoch_id`` is the FLU's current epoch (the latest
private projection it has adopted).  Being wedged by a newer *public* projection does not
change ``epoch_id``: the FLU keeps serving nothing until it adopts a newer private one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from .epoch import DUMMY_EPOCH_ID, EpochId
from .projection import Projection
from .status import Status

Kind = Literal["public", "private"]


@dataclass(frozen=True, slots=True)
class WedgeState:
    wedged: bool
    epoch_id: EpochId
    mode: Literal["ap", "cp"] = "ap"
    #: largest public epoch number written to this FLU's store
    public_epoch_number: int = 0


def initial_state(
    latest_private: Projection | None,
    latest_public_epoch_number: int = 0,
    *,
    initial_wedged: bool = False,
) -> WedgeState:
    """The wedge state of a FLU that just started.

    No private projection -> wedged at the dummy epoch.  AP -> unwedged at the latest
    private epoch (as the original).  CP -> always wedged: the chain manager unwedges only
    after the UPI has confirmed the epoch again (the original restarted CP FLUs unwedged,
    which could serve a stale epoch after a long sleep).  A "none" projection is wedged.
    With a chain manager, an AP node restarting inside its UPI is wedged right after this,
    before it listens (chain_manager.restart_needs_new_epoch, the AP restart rule); a FLU
    without one (projections written by hand) serves its AP epoch again.
    """
    if latest_private is None:
        return WedgeState(True, DUMMY_EPOCH_ID, "ap", latest_public_epoch_number)
    wedged = initial_wedged or latest_private.mode == "cp" or latest_private.is_none()
    return WedgeState(
        wedged, latest_private.epoch_id, latest_private.mode, latest_public_epoch_number
    )


def check_epoch(state: WedgeState, request: EpochId) -> tuple[WedgeState, Status]:
    """Apply the epoch rule to one data request.

    Returns the new state and ``Status.OK`` (go ahead), ``WEDGED`` or ``BAD_EPOCH``.  A
    request with a newer epoch, or the same number with another checksum, wedges the FLU
    (the caller should also poke its chain manager: a new projection is in the air).
    """
    if state.wedged:
        return state, Status.WEDGED
    if request == state.epoch_id:
        return state, Status.OK
    if request.number < state.epoch_id.number:
        return state, Status.BAD_EPOCH
    return replace(state, wedged=True), Status.WEDGED


def recheck_epoch(state: WedgeState, request: EpochId) -> Status:
    """Step 6 of reference 2.3: the append path re-checks a request that already passed
    :func:`check_epoch`, right before it reserves space in a file or mints one (it may
    have waited for its key's lock or a file creation since the first check, and a
    projection write may have moved the FLU on meanwhile).  Changes nothing: wedged ->
    ``WEDGED``; another epoch id -> ``BAD_EPOCH`` (the FLU's epoch only grows, so it moved
    past the request: the client refetches); the same -> ``OK``.
    """
    if state.wedged:
        return Status.WEDGED
    if request != state.epoch_id:
        return Status.BAD_EPOCH
    return Status.OK


def after_projection_write(state: WedgeState, kind: Kind, p: Projection) -> WedgeState:
    """The wedge state after ``p`` was stored in the ``kind`` half of the projection store.

    Public, newer than any public seen -> wedged (a proposal is in the air).  Private,
    newer than the current epoch -> current epoch := p; AP unwedges (unless p is the none
    projection), CP stays wedged until :func:`after_confirm`.  Older writes change nothing.
    """
    if kind == "public":
        if p.epoch_number > state.public_epoch_number:
            return replace(state, wedged=True, public_epoch_number=p.epoch_number)
        return state
    if p.epoch_number < state.epoch_id.number or (
        p.epoch_number == state.epoch_id.number and p.epoch_id == state.epoch_id
    ):
        return state
    wedged = p.mode == "cp" or p.is_none()
    return replace(state, wedged=wedged, epoch_id=p.epoch_id, mode=p.mode)


def after_confirm(state: WedgeState, epoch_id: EpochId) -> WedgeState:
    """The chain manager confirmed that every UPI member uses ``epoch_id``: unwedge.

    Ignored unless ``epoch_id`` is still the current epoch (a late confirmation of an
    older epoch must not unwedge a newer one).
    """
    if epoch_id != state.epoch_id:
        return state
    return replace(state, wedged=False)


def wedge(state: WedgeState) -> WedgeState:
    """Wedge on request (admin, chain manager adopting the none projection, removal)."""
    return replace(state, wedged=True)
