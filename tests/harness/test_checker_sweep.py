"""The segment sweep (harness/checker/sweep.py) proves exactly the linearizable keys: it
answers True only where the plain search (and brute force) does, and does answer True on
every valid low-concurrency key it is given enough room for; the checker's verdicts with
and without it are the same."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise, permutations
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from harness.checker.lin_gen import LIN_ANOMALIES, generate, inject
from harness.checker.linear import Budget, _search, check_linearizable
from harness.checker.models import Item, KVModel, Model, columns, get_model
from harness.checker.sweep import (
    _solve_one,
    _solve_plain,
    _solve_segment,
    _solve_three,
    sweep_linearizable,
)
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
    without it (the sweep only ever shortcuts valid keys). The constructed linearization
    that comes before the sweep is off in both (``test_checker_construction`` covers it)."""
    evs = generate("kv", seed=seed, ops=300, processes=6, crash_p=crash_p, keys=4)
    if anomaly is not None:
        evs = inject(evs, anomaly, seed=seed, model="kv")
    ops = pair_ops(evs)
    sweep_model = _NotConstructingKV()
    with_sweep = check_linearizable(ops, sweep_model, Budget())
    no_sweep_model = _NotConstructingKV()
    no_sweep_model.sweeps = False
    without = check_linearizable(ops, no_sweep_model, Budget())
    assert with_sweep.valid is without.valid is (anomaly is None)
    assert (with_sweep.witness or {}).get("key") == (without.witness or {}).get("key")
    if anomaly is None:
        assert with_sweep.stats.get("sweep_keys", 0) >= 1


class _NotConstructingKV(KVModel):
    """The kv model without ``finds_linearization`` (so keys reach the sweep)."""

    def finds_linearization(self, items: Sequence[Item], ops: Sequence[Op]) -> bool:
        return False


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


_KV_COPS = [("r", ""), ("r", "x"), ("r", "y"), ("r", "xy"), ("w", "x"), ("w", "y")]
_KV_COPS += [("c", "x", "y"), ("c", "", "x"), ("c", "y", "y"), ("a", "y"), ("a", "")]


def _end_states(start: set[str], invs: list[int], dones: list[int], cops: list[Any]) -> set[str]:
    """Brute force: every state some order of all the ops reaches from a start state, where
    op a goes before op b whenever a completed before b was invoked."""
    n = len(cops)
    model = KVModel()
    out: set[str] = set()
    for order in permutations(range(n)):
        if any(dones[a] < invs[b] for x, b in enumerate(order) for a in order[x + 1 :]):
            continue
        for s0 in start:
            s: Any = s0
            for a in order:
                s = model.step(s, cops[a])
                if s is None:
                    break
            if s is not None:
                out.add(s)
    return out


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_a_segment_search_reaches_exactly_the_brute_force_end_states(
    data: st.DataObject,
) -> None:
    """``_solve_plain`` (one segment of ok ops, Lowe's candidates by completion order, legal
    reads forced) returns exactly the states that some real-time-respecting order of the
    ops reaches, from a set of start states.  The ops form one segment as the sweep cuts
    them: no real-time cut inside (each op after the first is invoked before some earlier
    one completes), which the two-op shortcut relies on."""
    n = data.draw(st.integers(1, 6))
    # 2n distinct event indexes; op a's invocation before op a+1's, each before its end.
    times = sorted(
        data.draw(st.lists(st.integers(0, 40), min_size=2 * n, max_size=2 * n, unique=True))
    )
    invs = sorted(data.draw(st.lists(st.sampled_from(times), min_size=n, max_size=n, unique=True)))
    dones = [data.draw(st.sampled_from([t for t in times if t > i] or [i + 100])) for i in invs]
    assume(all(max(dones[:a]) > invs[a] for a in range(1, n)))
    cops = data.draw(st.lists(st.sampled_from(_KV_COPS), min_size=n, max_size=n))
    start = data.draw(st.sets(st.sampled_from(["", "x", "y", "xy"]), min_size=1, max_size=3))
    model = KVModel()
    ro = model.read_only_list(cops)
    got = _solve_plain(set(start), 0, n, invs, dones, cops, ro, model.step, 1 << 20)
    assert got == _end_states(start, invs, dones, cops)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    crash_p=st.sampled_from([0.0, 0.1, 0.3]),
    anomaly=st.sampled_from([None, *LIN_ANOMALIES]),
)
def test_the_partition_columns_match_the_ops(
    seed: int, crash_p: float, anomaly: str | None
) -> None:
    """The kv partition's columns (``KeyItems``) are what the ops say, and the sweep gives
    the same answer with them as on a plain copy of the items (read from the ops)."""
    evs = generate("kv", seed=seed, ops=200, processes=6, crash_p=crash_p, keys=3)
    if anomaly is not None:
        evs = inject(evs, anomaly, seed=seed, model="kv")
    ops = pair_ops(evs)
    model = KVModel()
    for items in model.partition(ops).values():
        cols = columns(items)
        assert cols is not None
        invs, ends = cols
        for (i, _cop), inv, end in zip(items, invs, ends, strict=True):
            op = ops[i]
            assert inv == op.invoke_index
            assert end == (op.complete_index if op.type == "ok" else -1)
        assert columns(list(items)) is None
        got = sweep_linearizable(items, ops, model, **ROOMY)
        assert got is sweep_linearizable(list(items), ops, model, **ROOMY)


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_three_op_segments_reach_exactly_the_brute_force_end_states(
    data: st.DataObject,
) -> None:
    """The three-op shortcut (``_solve_three``: every order real time allows, written
    out) returns exactly the brute-force end states, for every way real time can constrain
    three ops of one segment (c after a, c after b, or free), from one or more states.
    Cases the sweep cannot cut (a completed before b was invoked) go to the general search
    and must agree too."""
    times = sorted(data.draw(st.lists(st.integers(0, 30), min_size=6, max_size=6, unique=True)))
    invs = sorted(data.draw(st.lists(st.sampled_from(times), min_size=3, max_size=3, unique=True)))
    dones = [data.draw(st.sampled_from([t for t in times if t > i] or [i + 100])) for i in invs]
    cops = data.draw(st.lists(st.sampled_from(_KV_COPS), min_size=3, max_size=3))
    start = data.draw(st.sets(st.sampled_from(["", "x", "y", "xy"]), min_size=1, max_size=3))
    model = KVModel()
    ro = model.read_only_list(cops)
    # Padding ops before and after: the segment is j..j+3 of longer columns.
    invs_p = [-10, *invs, 200]
    dones_p = [-5, *dones, 300]
    cops_p = [("w", "z"), *cops, ("r", "z")]
    ro_p = [False, *ro, True]
    got = _solve_plain(set(start), 1, 4, invs_p, dones_p, cops_p, ro_p, model.step, 1 << 20)
    assert got == _end_states(start, invs, dones, cops)
    if invs[1] <= dones[0] and invs[2] <= max(dones[0], dones[1]):
        assert got == _solve_three(set(start), 1, invs_p, dones_p, cops_p, model.step)


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_one_op_segments_with_pending_crashed_ops_match_the_segment_search(
    data: st.DataObject,
) -> None:
    """``_solve_one`` (a one-op segment while crashed ops are pending) gives exactly the
    configurations of the general ``_solve_segment``, whose results the brute-force and
    search comparisons above check, from several configurations."""
    n = data.draw(st.integers(2, 6))  # positions 0..n-2 crashed (pending), n-1 the ok op
    inv_x = data.draw(st.integers(0, 20))
    done_x = data.draw(st.integers(inv_x + 1, 30))
    # A pending crashed op may have been invoked before x, while x ran, or after it.
    invs = [*data.draw(st.lists(st.integers(0, 40), min_size=n - 1, max_size=n - 1)), inv_x]
    dones = [-1] * (n - 1) + [done_x]
    cops = data.draw(st.lists(st.sampled_from(_KV_COPS), min_size=n, max_size=n))
    pend = st.frozensets(st.integers(0, n - 2), max_size=n - 1)
    configs = data.draw(
        st.lists(st.tuples(st.sampled_from(["", "x", "y", "xy"]), pend), min_size=1, max_size=4)
    )
    model = KVModel()
    ro = model.read_only_list(cops)
    b1, b2 = [1 << 20], [1 << 20]
    got = _solve_one(configs, n - 1, cops, invs, dones, ro, model.step, b1)
    want = _solve_segment(configs, [n - 1], [], cops, invs, dones, ro, model.step, b2)
    assert sorted(got, key=repr) == sorted(want, key=repr)
    assert len(got) == len(set(got))


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    model_name=st.sampled_from(["kv", "register", "cas-register"]),
    crash_p=st.sampled_from([0.0, 0.1, 0.3]),
    fail_p=st.sampled_from([0.0, 0.2]),
)
def test_the_inlined_partitions_compile_every_op_as_compile_op_does(
    seed: int, model_name: str, crash_p: float, fail_p: float
) -> None:
    """The kv and register partitions (one inlined loop over the ops) give the items that
    ``compile_op`` gives op by op, per key in op order (fail ops and crashed reads left
    out); the register partition then drops only crashed writes nothing observes."""
    evs = generate(
        model_name, seed=seed, ops=150, processes=5, crash_p=crash_p, fail_p=fail_p, keys=4
    )
    ops = pair_ops(evs)
    model = get_model(model_name)
    want: dict[Any, list[Any]] = {}
    for i, op in enumerate(ops):
        if op.type == "fail":
            continue
        for key, cop in model.compile_op(op):
            want.setdefault(key, []).append((i, cop))
    got = model.partition(ops)
    if model_name == "kv":
        assert {k: list(v) for k, v in got.items()} == want
    else:
        (items,) = got.values() if got else ([],)
        full = want.get(None, [])
        assert set(items) <= set(full)
        assert [it for it in full if it not in set(items)] == [
            (i, cop)
            for i, cop in full
            if ops[i].type != "ok"
            and cop[-1 if cop[0] == "c" else 1] not in {c[1] for _j, c in full if c[0] != "w"}
        ]
