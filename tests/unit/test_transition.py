"""Tests of the transition-safety rules (machi.core.transition, reference 5.7)."""

from __future__ import annotations

import itertools

import pytest

from machi.core.projection import Projection, make_projection
from machi.core.transition import (
    chain_rule_problem,
    is_sane,
    is_subsequence,
    majority,
    transition_problem,
    zerf_basis_of,
    zerf_basis_record,
)

SERVERS = ("a", "b", "c", "d")


def _ordered_subsets(items: tuple[str, ...]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for k in range(len(items) + 1):
        out.extend(itertools.permutations(items, k))
    return out


def _subsequences(seq: tuple[str, ...]) -> set[tuple[str, ...]]:
    return {
        tuple(x for x, keep in zip(seq, mask, strict=True) if keep)
        for mask in itertools.product((False, True), repeat=len(seq))
    }


def test_chain_rule_exhaustive_up_to_four_servers() -> None:
    """For every UPI/repairing/new-UPI combination of up to 4 servers the chain rule
    accepts exactly keep-prefix-subsequence ++ repaired-suffix (suffix only by the tail)."""
    checked = 0
    for upi1 in _ordered_subsets(SERVERS):
        rest = tuple(s for s in SERVERS if s not in upi1)
        for rep1 in _ordered_subsets(rest):
            kept_all = _subsequences(upi1)
            promoted_all = _subsequences(rep1)
            ok_no_promotion = kept_all
            ok_with_promotion = {k + p for k in kept_all for p in promoted_all}
            for upi2 in _ordered_subsets(SERVERS):
                for tail in (False, True):
                    want = upi2 in (ok_with_promotion if tail else ok_no_promotion)
                    got = chain_rule_problem(upi1, rep1, upi2, promoter_is_tail=tail) is None
                    assert got == want, (upi1, rep1, upi2, tail)
                    checked += 1
    assert checked > 10_000


def test_is_subsequence_and_majority() -> None:
    """Order-preserving subsequences and majorities are what the rules assume."""
    assert is_subsequence("ac", "abc")
    assert not is_subsequence("ca", "abc")
    assert is_subsequence("", "")
    assert [majority(n) for n in (1, 2, 3, 4, 5)] == [1, 2, 2, 3, 3]


def _p(
    epoch: int,
    upi: str,
    repairing: str = "",
    *,
    author: str = "a",
    mode: str = "ap",
    members: str = "abc",
    witnesses: str = "",
    dbg: dict[str, object] | None = None,
) -> Projection:
    down = [m for m in members if m not in upi and m not in repairing]
    return make_projection(
        epoch_number=epoch, author_server=author, chain_name="c1", all_members=list(members),
        mode=mode,  # type: ignore[arg-type]
        upi=list(upi), repairing=list(repairing), down=down, witnesses=list(witnesses),
        dbg=dbg or {},
    )


def test_epochs_strictly_increase_except_none_to_none() -> None:
    """A same-epoch or older candidate is unsafe unless both are none projections."""
    assert transition_problem(_p(5, "ab"), _p(5, "a", author="b"), relative_to="a")
    assert transition_problem(_p(5, "ab"), _p(4, "ab"), relative_to="a")
    assert transition_problem(_p(5, ""), _p(5, "", author="b"), relative_to="a") is None
    same = _p(5, "ab")
    assert transition_problem(same, same.with_dbg2({"x": 1}), relative_to="a") is None


def test_fresh_store_adopts_anything() -> None:
    """From epoch 0 any valid projection may be adopted (bootstrap)."""
    assert is_sane(_p(0, ""), _p(7, "cb", author="c"), relative_to="b")


def test_promotion_only_by_tail() -> None:
    """Repaired members join the UPI tail only in a projection authored by the old tail."""
    p1 = _p(3, "ab", "c")
    assert is_sane(p1, _p(4, "abc", author="b"), relative_to="a")
    problem = transition_problem(p1, _p(4, "abc", author="a"), relative_to="b")
    assert problem is not None and "tail" in problem
    assert not is_sane(p1, _p(4, "ba", "c", author="b"), relative_to="c")


def test_disjoint_upis_relative_to_reader() -> None:
    """AP: a disjoint new UPI is safe for outsiders, unsafe for members unless the author
    is the sole UPI member."""
    p1 = _p(3, "ab")
    assert is_sane(p1, _p(4, "c", author="a"), relative_to="a")
    assert not is_sane(p1, _p(4, "c", author="a"), relative_to="c")
    assert is_sane(p1, _p(4, "c", author="c"), relative_to="c")


def test_cp_majority_and_shared_server() -> None:
    """CP: a non-empty UPI needs a majority; old and new UPIs must share a real server."""
    p1 = _p(3, "abc", mode="cp")
    assert not is_sane(p1, _p(4, "a", mode="cp"), relative_to="b")
    assert is_sane(p1, _p(4, "ab", mode="cp"), relative_to="c")
    assert is_sane(p1, _p(4, "", mode="cp"), relative_to="a")
    q1 = _p(3, "ab", "c", mode="cp", members="abcde")
    problem = transition_problem(q1, _p(4, "cde", author="c", mode="cp", members="abcde"),
                                 relative_to="a")
    assert problem is not None and "share no real server" in problem


def test_cp_witnesses_count_for_quorum_not_for_data() -> None:
    """CP: a witness makes a quorum, but UPIs sharing only a witness are unsafe."""
    p1 = _p(3, "abc", mode="cp", witnesses="a")
    assert is_sane(p1, _p(4, "ab", mode="cp", witnesses="a"), relative_to="b")
    p2 = _p(5, "ac", author="c", mode="cp", witnesses="a")
    assert not is_sane(_p(4, "ab", mode="cp", witnesses="a"), p2, relative_to="a")


@pytest.mark.parametrize("in_upi", [True, False])
def test_cp_leaving_none_needs_zerf_basis(in_upi: bool) -> None:
    """CP: a UPI member may leave the none projection only from a confirmed basis that
    shares a real server; outsiders may follow freely."""
    none = _p(6, "", mode="cp")
    p2 = _p(7, "b", "c", author="b", mode="cp")
    reader = "b" if in_upi else "c"
    problem = transition_problem(none, p2, relative_to=reader)
    assert (problem is not None) == in_upi
    good_basis = _p(5, "ab", mode="cp")
    bad_basis = _p(5, "ca", author="c", mode="cp")
    assert is_sane(none, p2, relative_to="b", basis=good_basis)
    assert not is_sane(none, p2, relative_to="b", basis=bad_basis)
    assert not is_sane(none, _p(7, "c", "b", author="c", mode="cp"), relative_to="c",
                       basis=good_basis)


def test_structure_mismatch() -> None:
    """Mode or chain-name changes are never safe."""
    assert transition_problem(_p(3, "ab"), _p(4, "ab", mode="cp"), relative_to="a")
    other = make_projection(
        epoch_number=4, author_server="a", chain_name="c2", all_members=["a", "b", "c"],
        upi=["a", "b"], down=["c"],
    )
    assert transition_problem(_p(3, "ab"), other, relative_to="a")


def test_cp_zerf_basis_replaces_an_unconfirmed_current() -> None:
    """CP: a proposal built from a zerf basis is checked against the basis when my
    current is unconfirmed (no data there) or older; a newer confirmed current wins."""
    basis = _p(5, "abc", mode="cp")
    mine = _p(8, "ab", author="b", mode="cp")  # unconfirmed: c dropped, never served
    p2 = _p(9, "abc", author="a", mode="cp", dbg={"zerf_basis": zerf_basis_record(basis)})
    rebuilt = zerf_basis_of(p2)
    assert rebuilt is not None and rebuilt.upi == basis.upi
    assert transition_problem(mine, p2, relative_to="c") is None
    confirmed = mine.with_dbg2({"confirmed": True})
    assert transition_problem(confirmed, p2, relative_to="c") is not None
    late = _p(9, "abc", author="a", mode="cp",
              dbg={"zerf_basis": zerf_basis_record(_p(9, "abc", mode="cp"))})
    assert transition_problem(mine, late, relative_to="c") is not None
