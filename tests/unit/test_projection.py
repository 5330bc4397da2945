"""Goal: the projection record's canonical encoding and blake3 checksum are fixed forever."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from machi.core.projection import (
    MemberSpec,
    canonical_json,
    make_projection,
    projection_from_bytes,
    projection_from_json,
)

MEMBERS = {
    n: MemberSpec(n, "127.0.0.1", 20400 + i) for i, n in enumerate(["a", "b", "c"], start=1)
}


def sample(**kw):
    args = dict(
        epoch_number=7, author_server="b", chain_name="c1", all_members=["a", "b", "c"],
        mode="ap", upi=["a", "b"], repairing=["c"], down=[], members_dict=MEMBERS,
        dbg={"why": "test", "n": 3}, creation_time_ms=1234,
    )
    args.update(kw)
    return make_projection(**args)


def test_checksum_is_pinned() -> None:
    """A fixed record has fixed canonical bytes and a fixed checksum (wire-spec vector)."""
    p = sample()
    assert p.canonical_bytes() == (
        b'{"all_members":["a","b","c"],"author_server":"b","chain_name":"c1",'
        b'"dbg":{"n":3,"why":"test"},"down":[],"epoch_number":7,'
        b'"members_dict":{"a":{"address":"127.0.0.1","port":20401,"props":{}},'
        b'"b":{"address":"127.0.0.1","port":20402,"props":{}},'
        b'"c":{"address":"127.0.0.1","port":20403,"props":{}}},'
        b'"mode":"ap","repairing":["c"],"upi":["a","b"],"witnesses":[]}'
    )
    assert p.epoch_csum.hex() == PINNED_CSUM


PINNED_CSUM = "6b36103be414d4fbf696c7bc066e57cd3c1739732ac92eb55c1e078505363a54"


def test_excluded_fields_do_not_change_checksum() -> None:
    """creation_time_ms and dbg2 are outside the checksum; dbg is inside."""
    p = sample()
    assert sample(creation_time_ms=99).epoch_csum == p.epoch_csum
    assert p.with_dbg2({"confirmed": [7, "x"]}).epoch_id == p.epoch_id
    assert sample(dbg={"why": "other"}).epoch_csum != p.epoch_csum


def test_field_and_key_order_irrelevant() -> None:
    """The same record given with keys in another order has the same bytes and checksum."""
    p = sample()
    d = p.to_json()
    reordered = dict(reversed(list(d.items())))
    reordered["dbg"] = dict(reversed(list(d["dbg"].items())))
    q = projection_from_json(reordered)
    assert q.canonical_bytes() == p.canonical_bytes() and q.epoch_id == p.epoch_id
    assert sample(down=[]).epoch_csum == p.epoch_csum


def test_down_is_a_set() -> None:
    """down is stored sorted, so two authors listing it differently agree."""
    p1 = sample(upi=["a"], repairing=[], down=["c", "b"])
    p2 = sample(upi=["a"], repairing=[], down=["b", "c"])
    assert p1.epoch_id == p2.epoch_id and p1.down == ("b", "c")


def test_round_trip_and_tamper_detection() -> None:
    """to_bytes/from_bytes round-trips; a tampered field is caught by the checksum."""
    p = sample()
    q = projection_from_bytes(p.to_bytes())
    assert q == p and q.dbg == p.dbg and q.creation_time_ms == 1234
    d = p.to_json()
    d["upi"] = ["b", "a"]
    with pytest.raises(ValueError, match="checksum"):
        projection_from_json(d)


@pytest.mark.parametrize(
    "kw, msg",
    [
        ({"upi": ["a", "a"]}, "duplicate"),
        ({"upi": ["a"], "repairing": ["a"]}, "disjoint"),
        ({"upi": ["z"]}, "non-members"),
        ({"author_server": "z"}, "author"),
        ({"mode": "xx"}, "mode"),
        ({"witnesses": ["a"]}, "cp mode"),
        ({"dbg": {"f": 1.5}}, "float"),
        ({"all_members": ["a/b"], "upi": [], "repairing": [], "author_server": "a/b"}, "name"),
        ({"chain_name": "../x"}, "chain name"),
        ({"epoch_number": -1}, "epoch"),
    ],
)
def test_invariants_rejected(kw, msg) -> None:
    """Every structural invariant of reference 3.1 is enforced at construction."""
    with pytest.raises(ValueError, match=msg):
        sample(**kw)


names = st.lists(st.sampled_from("abcdefg"), unique=True, max_size=7)


@given(names, st.data())
def test_checksum_deterministic(all_members, data) -> None:
    """Same record -> same bytes -> same checksum, for arbitrary valid records."""
    if not all_members:
        all_members = ["a"]
    upi = data.draw(st.lists(st.sampled_from(all_members), unique=True))
    rest = [m for m in all_members if m not in upi]
    rep = data.draw(st.lists(st.sampled_from(rest), unique=True)) if rest else []
    kw = dict(epoch_number=data.draw(st.integers(0, 2**40)), author_server=all_members[0],
              chain_name="ch", all_members=all_members, upi=upi, repairing=rep)
    p1, p2 = make_projection(**kw), make_projection(**kw)
    assert p1.canonical_bytes() == p2.canonical_bytes() and p1.epoch_csum == p2.epoch_csum
    assert projection_from_bytes(p1.to_bytes()).epoch_id == p1.epoch_id


def test_canonical_json_rejects_non_json() -> None:
    """Bytes, sets and floats are refused rather than silently encoded."""
    for bad in ({"x": b"1"}, {"x": {1, 2}}, {"x": 0.5}):
        with pytest.raises(ValueError):
            canonical_json(bad)
