"""Goal: the epoch rule and the wedge/unwedge effects follow reference section 2.3."""

from __future__ import annotations

from machi.core.epoch import DUMMY_EPOCH_ID, EpochId
from machi.core.projection import make_projection
from machi.core.status import Status
from machi.core.wedge import (
    after_confirm,
    after_projection_write,
    check_epoch,
    initial_state,
    recheck_epoch,
)


def proj(epoch, mode="ap", upi=("a", "b"), witnesses=()):
    return make_projection(epoch_number=epoch, author_server="a", chain_name="c",
                           all_members=["a", "b", "c"], mode=mode, upi=upi,
                           witnesses=witnesses)


def test_start_states() -> None:
    """No private -> wedged at dummy; AP private -> unwedged; CP or none -> wedged."""
    assert initial_state(None).wedged and initial_state(None).epoch_id == DUMMY_EPOCH_ID
    assert not initial_state(proj(3)).wedged
    assert initial_state(proj(3, "cp")).wedged
    assert initial_state(proj(3, upi=())).wedged
    assert initial_state(proj(3), initial_wedged=True).wedged


def test_epoch_rule() -> None:
    """Same epoch ok; older -> BAD_EPOCH; newer or same number other csum -> wedge."""
    s = initial_state(proj(5))
    assert check_epoch(s, proj(5).epoch_id) == (s, Status.OK)
    assert check_epoch(s, proj(4).epoch_id)[1] is Status.BAD_EPOCH
    s2, st = check_epoch(s, proj(6).epoch_id)
    assert st is Status.WEDGED and s2.wedged and s2.epoch_id == s.epoch_id
    s3, st = check_epoch(s, EpochId(5, b"\x01" * 32))
    assert st is Status.WEDGED and s3.wedged
    assert check_epoch(s2, proj(5).epoch_id)[1] is Status.WEDGED


def test_append_recheck() -> None:
    """The append path's re-check (2.3 step 6): the same epoch passes; a FLU that moved
    on answers BAD_EPOCH, a wedged one WEDGED; the state never changes."""
    s = initial_state(proj(5))
    assert recheck_epoch(s, proj(5).epoch_id) is Status.OK
    moved = after_projection_write(s, "private", proj(6))
    assert recheck_epoch(moved, proj(5).epoch_id) is Status.BAD_EPOCH
    wedged = after_projection_write(s, "public", proj(6))
    assert recheck_epoch(wedged, proj(5).epoch_id) is Status.WEDGED


def test_projection_writes() -> None:
    """Newer public wedges; newer private unwedges in AP; CP waits for confirmation."""
    s = initial_state(proj(5))
    s = after_projection_write(s, "public", proj(6))
    assert s.wedged and s.public_epoch_number == 6
    assert after_projection_write(s, "public", proj(6)) == s
    s = after_projection_write(s, "private", proj(6))
    assert not s.wedged and s.epoch_id == proj(6).epoch_id
    assert after_projection_write(s, "private", proj(4)) == s
    c = after_projection_write(s, "private", proj(7, "cp"))
    assert c.wedged and c.epoch_id == proj(7, "cp").epoch_id
    assert after_confirm(c, proj(6).epoch_id).wedged
    assert not after_confirm(c, proj(7, "cp").epoch_id).wedged
