"""``Model.finds_linearization``: a cheap construction that may prove a key linearizable
before any search. It must never say True for a key that is not linearizable (it checks
the order it builds), and for registers whose writes write distinct values it is exact.
For kv it is a heuristic (values taken apart into appended suffixes): sound, not exact."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.checker.lin_gen import LIN_ANOMALIES, generate, inject
from harness.checker.linear import Budget, _search
from harness.checker.models import SINGLE_KEY, get_model
from harness.history import Event, Op, pair_ops
from tests.harness.test_checker_linear import brute_force, interleave, tiny_histories


@st.composite
def unique_register_histories(draw: st.DrawFn) -> list[Op]:
    """Up to 7 register ops, one process each, any interleaving and outcome; every write
    writes its own value (1, 2, ...), reads return nil or any of them."""
    n = draw(st.integers(1, 7))
    specs: list[tuple[str, Any, Any]] = []
    for k in range(n):
        if draw(st.booleans()):
            specs.append(("write", k + 1, k + 1))
        else:
            specs.append(("read", None, draw(st.one_of(st.none(), st.integers(1, n)))))
    outcomes = [draw(st.sampled_from(["ok", "ok", "ok", "info", "fail", "pending"])) for _ in specs]
    order = draw(st.permutations(list(range(2 * n))))
    return interleave(specs, outcomes, order, None)


def _constructed(ops: list[Op], model_name: str) -> bool:
    model = get_model(model_name)
    parts = model.partition(ops)
    return all(model.finds_linearization(items, ops) for items in parts.values())


@settings(max_examples=400)
@given(ops=unique_register_histories())
def test_register_construction_is_exact_with_distinct_writes(ops: list[Op]) -> None:
    """Distinct written values: the construction says True exactly when brute force does."""
    expected = brute_force(ops, get_model("register"))
    assert _constructed(ops, "register") is expected, [o.to_json() for o in ops]


@pytest.mark.parametrize("model_name", ["register", "cas-register", "kv"])
@settings(max_examples=200)
@given(data=st.data())
def test_construction_never_proves_a_non_linearizable_tiny_history(
    model_name: str, data: st.DataObject
) -> None:
    """Repeated values, cas, appends, crashed and pending ops: True only when brute force
    says True too."""
    ops = data.draw(tiny_histories(model_name))
    if _constructed(ops, model_name):
        assert brute_force(ops, get_model(model_name)), [o.to_json() for o in ops]


@pytest.mark.parametrize("model_name", ["register", "cas-register", "kv"])
@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(2, 400),
    processes=st.integers(1, 10),
    crash_p=st.sampled_from([0.0, 0.05, 0.3]),
)
def test_construction_agrees_with_the_search_on_generated_histories(
    model_name: str, seed: int, n: int, processes: int, crash_p: float
) -> None:
    """Generated histories (linearizable, distinct values), per key: where the construction
    says True the plain search does too; for registers (no cas) it always says True."""
    ops = pair_ops(
        generate(model_name, seed=seed, ops=n, processes=processes, crash_p=crash_p, keys=3)
    )
    model = get_model(model_name)
    for items in model.partition(ops).values():
        got = model.finds_linearization(items, ops)
        if model_name == "register":
            assert got, [o.to_json() for o in ops]
        if got:
            assert _search(items, ops, model, Budget()).verdict is True


@pytest.mark.parametrize("model_name", ["register", "cas-register", "kv"])
@pytest.mark.parametrize("anomaly", LIN_ANOMALIES)
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), crash_p=st.sampled_from([0.0, 0.05]))
def test_construction_never_proves_an_injected_anomaly(
    model_name: str, anomaly: str, seed: int, crash_p: float
) -> None:
    events = generate(model_name, seed=seed, ops=120, processes=4, crash_p=crash_p, keys=1)
    bad = pair_ops(inject(events, anomaly, seed=seed, model=model_name))
    model = get_model(model_name)
    for items in model.partition(bad).values():
        if model.finds_linearization(items, bad):
            assert _search(items, bad, model, Budget()).verdict is True


def test_register_construction_covers_the_initial_value_and_crashed_writes() -> None:
    """Reads of nil first, a crashed write that a read saw (it took effect, late), and a
    crashed write nothing read (left out)."""
    ev = [
        Event(0, 0, 0, "invoke", "read", None, None),
        Event(1, 0, 1, "invoke", "write", 1, None),
        Event(2, 0, 0, "ok", "read", None, None),
        Event(3, 0, 2, "invoke", "write", 2, None),
        Event(4, 0, 1, "info", "write", 1, None),
        Event(5, 0, 2, "info", "write", 2, None),
        Event(6, 0, 3, "invoke", "read", None, None),
        Event(7, 0, 3, "ok", "read", 1, None),
    ]
    ops = pair_ops(ev)
    model = get_model("register")
    items = model.partition(ops)[SINGLE_KEY]
    assert model.finds_linearization(items, ops)
    # The same with the read of 1 completed before the write of 1 was invoked: refuted.
    stale = [
        Event(0, 0, 3, "invoke", "read", None, None),
        Event(1, 0, 3, "ok", "read", 1, None),
        Event(2, 0, 1, "invoke", "write", 1, None),
        Event(3, 0, 1, "ok", "write", 1, None),
    ]
    ops2 = pair_ops(stale)
    assert not model.finds_linearization(model.partition(ops2)[SINGLE_KEY], ops2)


@st.composite
def distinct_kv_histories(draw: st.DrawFn) -> list[Op]:
    """Up to 7 kv ops on one key, one process each, any interleaving and outcome: writes
    and cas results of distinct values, appends of distinct suffixes, reads (and cas
    expectations) of "" or any concatenation of a written value and suffixes."""
    n = draw(st.integers(1, 7))
    pool = ["", "w1", "w2", "w1x3", "w2x3", "w1x4", "w1x3x4", "w1x4x3", "x3", "x4", "x3x4", "c5"]
    specs: list[tuple[str, Any, Any]] = []
    for k in range(n):
        kind = draw(st.sampled_from(["write", "append", "read", "read", "cas"]))
        if kind == "write":
            specs.append(("write", f"w{k + 1}", f"w{k + 1}"))
        elif kind == "append":
            specs.append(("append", f"x{k + 1}", f"x{k + 1}"))
        elif kind == "cas":
            old = draw(st.sampled_from(pool))
            specs.append(("cas", [old, f"c{k + 1}"], [old, f"c{k + 1}"]))
        else:
            specs.append(("read", None, draw(st.sampled_from(pool))))
    outcomes = [draw(st.sampled_from(["ok", "ok", "ok", "info", "pending"])) for _ in specs]
    order = draw(st.permutations(list(range(2 * n))))
    return interleave(specs, outcomes, order, "k")


@settings(max_examples=1000)
@given(ops=distinct_kv_histories())
def test_kv_construction_never_proves_a_non_linearizable_history(ops: list[Op]) -> None:
    """kv with distinct values and suffixes (the construction's own kind): True only when
    brute force says True too."""
    if _constructed(ops, "kv"):
        assert brute_force(ops, get_model("kv")), [o.to_json() for o in ops]


def test_kv_construction_takes_appended_values_apart() -> None:
    """A read of "w1x3x4" places the write of w1 and the appends x3, x4 in that order
    (the append of x4 was invoked first), and a crashed cas a read saw takes effect."""
    ev = [
        Event(0, 0, 0, "invoke", "write", "w1", "k"),
        Event(1, 0, 0, "ok", "write", "w1", "k"),
        Event(2, 0, 1, "invoke", "append", "x4", "k"),
        Event(3, 0, 2, "invoke", "append", "x3", "k"),
        Event(4, 0, 2, "ok", "append", "x3", "k"),
        Event(5, 0, 1, "ok", "append", "x4", "k"),
        Event(6, 0, 3, "invoke", "read", None, "k"),
        Event(7, 0, 3, "ok", "read", "w1x3x4", "k"),
        Event(8, 0, 4, "invoke", "cas", ["w1x3x4", "c5"], "k"),
        Event(9, 0, 4, "info", "cas", ["w1x3x4", "c5"], "k"),
        Event(10, 0, 5, "invoke", "read", None, "k"),
        Event(11, 0, 5, "ok", "read", "c5", "k"),
    ]
    ops = pair_ops(ev)
    model = get_model("kv")
    assert model.finds_linearization(model.partition(ops)["k"], ops)
    # A read of "w1x3" invoked after both appends completed: no order gives that.
    stale = [
        *ev[:6],
        Event(6, 0, 3, "invoke", "read", None, "k"),
        Event(7, 0, 3, "ok", "read", "w1x3", "k"),
    ]
    ops2 = pair_ops(stale)
    assert not model.finds_linearization(model.partition(ops2)["k"], ops2)
