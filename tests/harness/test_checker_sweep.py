"""The segment sweep (harness/checker/sweep.py) proves exactly the linearizable keys: it
answers True only where the plain search (and brute force) does, and does answer True on
every valid low-concurrency key it is given enough room for; the checker's verdicts with
and without it are the same."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.checker.lin_gen import LIN_ANOMALIES, generate, inject
from harness.checker.linear import Budget, _search, check_linearizable
from harness.checker.models import KVModel, Model, get_model
from harness.checker.sweep import sweep_linearizable
from harness.history import Event, Op, pair_ops
from tests.harness.test_checker_linear import brute_force, tiny_histories

ROOMY = {"nodes_max": 1 << 20, "configs_max": 1 << 20}  # caps no test history reaches


def _sweep_matches_search(ops: Sequence[Op], model: Model) -> bool:
    """Per key: the sweep's answer (with room) is True exactly when the plain search says
    linearizable, None otherwise. Returns the combined verdict."""
    overall = True
    for key, items in model.partition(ops).items():
        plain = _search(items, ops, model, Budget(), fast=False, lean=False)
        assert plain.verdict in (True, False)
        got = sweep_linearizable(items, ops, model, **ROOMY)
        want = True if plain.verdict is True else None
        assert got is want, (key, [o.to_json() for o in ops])
        overall = overall and plain.verdict is True
    return overall


@pytest.mark.parametrize("model_name", ["kv", "register", "cas-register", "mutex"])
@settings(max_examples=100)
@given(data=st.data())
def test_sweep_agrees_with_brute_force_on_tiny_histories(
    model_name: str, data: st.DataObject
) -> None:
    """Tiny histories (crashed, failed, pending ops, any interleaving): the sweep proves a
    key exactly when brute force finds a linearization (models without
    ``crashed_expiry`` give up on keys with crashed ops, and out-of-order op lists give
    up: never a wrong True)."""
    ops = data.draw(tiny_histories(model_name))
    model = get_model(model_name)
    parts = model.partition(ops)
    expected = brute_force(ops, model)
    got = [sweep_linearizable(items, ops, model, **ROOMY) for items in parts.values()]
    if not expected:
        assert True not in got or len(got) > 1
    in_order = all(a.invoke_index < b.invoke_index for a, b in pairwise(ops))
    crashed = any(op.type != "ok" for op in ops)
    if expected and in_order and (model_name == "kv" or not crashed):
        assert got == [True] * len(got)
    if len(got) == 1 and got[0] is True:
        assert expected


@pytest.mark.parametrize("model_name", ["kv", "register", "cas-register"])
@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 150),
    processes=st.integers(1, 5),
    crash_p=st.sampled_from([0.0, 0.1, 0.3]),
    keys=st.integers(1, 3),
    anomaly=st.sampled_from([None, *LIN_ANOMALIES]),
)
def test_sweep_agrees_with_the_search_on_generated_histories(
    model_name: str,
    seed: int,
    n: int,
    processes: int,
    crash_p: float,
    keys: int,
    anomaly: str | None,
) -> None:
    """Generated histories, valid or with one injected anomaly, with crashed ops: per key
    the sweep is True exactly when the plain search is (registers: keys without crashed
    ops only, they have no ``crashed_expiry``)."""
    evs = generate(model_name, seed=seed, ops=n, processes=processes, crash_p=crash_p, keys=keys)
    if anomaly is not None:
        evs = inject(evs, anomaly, seed=seed, model=model_name)
    ops = pair_ops(evs)
    model = get_model(model_name)
    if model_name != "kv" and any(op.type == "info" for op in ops):
        for items in model.partition(ops).values():
            if any(ops[i].type != "ok" for i, _c in items):
                assert sweep_linearizable(items, ops, model, **ROOMY) is None
        return
    assert _sweep_matches_search(ops, model) is (anomaly is None)


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    crash_p=st.sampled_from([0.0, 0.05, 0.3]),
    anomaly=st.sampled_from([None, *LIN_ANOMALIES]),
)
def test_checker_verdict_is_the_same_with_and_without_the_sweep(
    seed: int, crash_p: float, anomaly: str | None
) -> None:
    """check_linearizable on kv gives the same verdict and witness key with the sweep as
    without it (the sweep only ever shortcuts valid keys)."""
    evs = generate("kv", seed=seed, ops=300, processes=6, crash_p=crash_p, keys=4)
    if anomaly is not None:
        evs = inject(evs, anomaly, seed=seed, model="kv")
    ops = pair_ops(evs)
    with_sweep = check_linearizable(ops, KVModel(), Budget())
    no_sweep_model = KVModel()
    no_sweep_model.sweeps = False
    without = check_linearizable(ops, no_sweep_model, Budget())
    assert with_sweep.valid is without.valid is (anomaly is None)
    assert (with_sweep.witness or {}).get("key") == (without.witness or {}).get("key")
    if anomaly is None:
        assert with_sweep.stats.get("sweep_keys", 0) >= 1


def _ev(idx: int, proc: int, typ: str, f: str, value: object) -> Event:
    return Event(idx, 0, proc, typ, f, value, "k")


def test_a_crashed_write_observed_only_through_a_crashed_cas_is_kept() -> None:
    """A crashed write of x, a crashed cas x -> y, then reads of y: both crashed ops must
    stay pending until the reads (the cas's expiry carries over to the write)."""
    evs = [
        _ev(0, 0, "invoke", "write", "x"),
        _ev(1, 0, "info", "write", "x"),
        _ev(2, 1, "invoke", "cas", ["x", "y"]),
        _ev(3, 1, "info", "cas", ["x", "y"]),
        _ev(4, 2, "invoke", "read", None),
        _ev(5, 2, "ok", "read", "y"),
        _ev(6, 3, "invoke", "read", None),
        _ev(7, 3, "ok", "read", "y"),
    ]
    ops = pair_ops(evs)
    model = KVModel()
    (items,) = model.partition(ops).values()
    assert len(items) == 4
    assert sweep_linearizable(items, ops, model) is True
    stale = pair_ops([*evs, _ev(8, 4, "invoke", "read", None), _ev(9, 4, "ok", "read", "x")])
    (items,) = model.partition(stale).values()
    assert sweep_linearizable(items, stale, model) is None  # x after y: not linearizable
    assert check_linearizable(stale, model, Budget()).valid is False


def test_concurrent_writes_leave_two_states_and_a_read_picks_one() -> None:
    """Two overlapping writes leave either value; a later read of the first one written
    is fine, and a read of a third value is not."""
    evs = [
        _ev(0, 0, "invoke", "write", "a"),
        _ev(1, 1, "invoke", "write", "b"),
        _ev(2, 0, "ok", "write", "a"),
        _ev(3, 1, "ok", "write", "b"),
        _ev(4, 2, "invoke", "read", None),
        _ev(5, 2, "ok", "read", "a"),
    ]
    ops = pair_ops(evs)
    model = KVModel()
    (items,) = model.partition(ops).values()
    assert sweep_linearizable(items, ops, model) is True
    bad = pair_ops([*evs[:4], _ev(4, 2, "invoke", "read", None), _ev(5, 2, "ok", "read", "c")])
    (items,) = model.partition(bad).values()
    assert sweep_linearizable(items, bad, model) is None


def test_the_sweep_gives_up_past_its_caps() -> None:
    """A segment that needs more configurations than allowed gives None, not a guess."""
    evs = generate("kv", seed=3, ops=200, processes=8, keys=1)
    ops = pair_ops(evs)
    model = KVModel()
    (items,) = model.partition(ops).values()
    assert sweep_linearizable(items, ops, model, nodes_max=1, configs_max=1) is None
    assert sweep_linearizable(items, ops, model, **ROOMY) is True
