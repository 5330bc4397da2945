"""The general checker's fast paths (forced stretches, the lean first search, inlined
partitions, per-model fact tables, the fused kv step, dropped crashed kv ops) give the
same verdicts as the plain search (on the unpruned items) and the per-op model methods
they replace."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.checker.lin_gen import LIN_ANOMALIES, generate, inject
from harness.checker.linear import Budget, _mean_in_flight, _search
from harness.checker.models import (
    KVModel,
    Model,
    _drop_unobserved_crashed_writes,
    _maximal_expected,
    get_model,
    item_ok,
)
from harness.history import Op, pair_ops
from tests.harness.test_checker_linear import brute_force, tiny_histories

VARIANTS = [(True, True), (True, False), (False, True)]  # (fast, lean); plain = (False, False)


def _assert_variants_agree(ops: Sequence[Op], model: Model) -> bool | str:
    """Every key: each fast variant's verdict equals the plain search's; their witness
    prefixes replay legally. Returns the combined plain verdict."""
    overall: bool | str = True
    for key, items in model.partition(ops).items():
        plain = _search(items, ops, model, Budget(), fast=False, lean=False)
        assert plain.verdict != "unknown"
        pruned = model.prune(items, ops)  # what the checker searches (kv: fewer crashed ops)
        for fast, lean in VARIANTS:
            got = _search(pruned, ops, model, Budget(), fast=fast, lean=lean)
            assert got.verdict is plain.verdict, (key, fast, lean, [o.to_json() for o in ops])
            _assert_prefix_replays(items, ops, model, got.prefix)
        if plain.verdict is False:
            overall = False
    return overall


def _assert_prefix_replays(
    items: Sequence[tuple[int, Any]], ops: Sequence[Op], model: Model, prefix: list[int]
) -> None:
    cops = dict(items)
    state = model.init()
    for n, i in enumerate(prefix):
        state = model.step(state, cops[i])
        assert state is not None, ("prefix op illegal", n, ops[i])
        for j in prefix[n + 1 :]:
            done = ops[j].complete_index
            assert done is None or ops[j].type != "ok" or done > ops[i].invoke_index


@pytest.mark.parametrize(
    "model_name", ["register", "cas-register", "kv", "mutex", "multi-register"]
)
@settings(max_examples=100)
@given(data=st.data())
def test_variants_agree_with_brute_force_on_tiny_histories(
    model_name: str, data: st.DataObject
) -> None:
    """On tiny histories (crashed, failed, pending ops) every search variant == brute force."""
    ops = data.draw(tiny_histories(model_name))
    model = get_model(model_name)
    assert _assert_variants_agree(ops, model) is brute_force(ops, model)


@pytest.mark.parametrize("model_name", ["register", "cas-register", "kv"])
@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 120),
    processes=st.integers(1, 6),
    crash_p=st.sampled_from([0.0, 0.1, 0.3]),
    anomaly=st.sampled_from([None, *LIN_ANOMALIES]),
)
def test_variants_agree_on_generated_histories(
    model_name: str, seed: int, n: int, processes: int, crash_p: float, anomaly: str | None
) -> None:
    """Generated histories, valid or with one injected anomaly: the variants agree, and the
    verdict is the expected one."""
    evs = generate(model_name, seed=seed, ops=n, processes=processes, crash_p=crash_p, keys=2)
    if anomaly is not None:
        evs = inject(evs, anomaly, seed=seed, model=model_name)
    assert _assert_variants_agree(pair_ops(evs), get_model(model_name)) is (anomaly is None)


@pytest.mark.parametrize("model_name", ["register", "cas-register", "kv"])
@settings(max_examples=30)
@given(seed=st.integers(0, 2**32 - 1), crash_p=st.sampled_from([0.0, 0.2]))
def test_inlined_partition_matches_compile_op(model_name: str, seed: int, crash_p: float) -> None:
    """The inlined partitions give compile_op's cops; kv's prune only drops crashed ops
    and its refine only poisons appends (same op, ("a!",)); registers drop what they
    dropped before."""
    ops = pair_ops(generate(model_name, seed=seed, ops=80, processes=4, crash_p=crash_p, keys=3))
    model = get_model(model_name)
    raw = Model.partition(model, ops)  # the generic, per-op compile_op partition
    got = model.partition(ops)
    if model_name != "kv":
        assert got == {k: _drop_unobserved_crashed_writes(v, ops) for k, v in raw.items()}
        return
    assert set(got) == set(raw)
    for key, items in raw.items():
        assert got[key] == items
        kept = dict(model.prune(got[key], ops))
        for i, cop in items:
            if i not in kept:
                assert not item_ok(ops, i, cop), (key, i, cop)  # only crashed ops are dropped
            else:
                assert kept[i] == cop
        refined = model.refine(got[key])  # the same ops in order; appends may be poisoned
        assert [i for i, _c in refined] == [i for i, _c in got[key]]
        for (_i, a), (_j, b) in zip(got[key], refined, strict=True):
            assert a == b or (a[0] == "a" and b == ("a!",)), (a, b)


_KV_VALUES = st.sampled_from(["", "a", "b", "ab", "ba", "abc"])
_KV_COPS = st.one_of(
    st.tuples(st.sampled_from(["r", "w", "a"]), _KV_VALUES),
    st.tuples(st.just("c"), _KV_VALUES, _KV_VALUES),
    st.just(("a!",)),
)


@settings(max_examples=100)
@given(cops=st.lists(_KV_COPS, min_size=1, max_size=8))
def test_fact_tables_and_fused_step_match_the_per_cop_methods(cops: list[Any]) -> None:
    """``facts`` == (read_only, produces, requires) per cop for kv and registers, and kv's
    fused stepper == step then canonicalizer."""
    kv = KVModel()
    reg = get_model("cas-register")
    for model, mine in ((kv, cops), (reg, [c for c in cops if c[0] in ("r", "w", "c")])):
        ro, prod, req = model.facts(mine)
        assert ro == [model.read_only(c) for c in mine]
        assert prod == [model.produces(c) for c in mine]
        assert req == [model.requires(c) for c in mine]
    items = [(n, c) for n, c in enumerate(cops)]
    canon = kv.canonicalizer(items)
    fused = kv.stepper(items)
    states = {kv.init(), *(c[1] for c in cops if c[0] in ("r", "w"))}
    for state in states:
        for c in cops:
            after = kv.step(state, c)
            want = after if after is None or canon is None else canon(after)
            assert fused(state, c) == want, (state, c)


def test_maximal_expected_keeps_every_substring() -> None:
    """Dropping expected values that prefix another loses no substring and no prefix."""
    items = [(0, ("r", "ab")), (1, ("r", "a")), (2, ("c", "abc", "x")), (3, ("r", "b"))]
    assert _maximal_expected(items) == ["abc", "b"]


def test_kv_drops_only_crashed_ops_that_nothing_can_observe() -> None:
    """A crashed kv write of a value that is a prefix of no read goes; one that a later
    append could extend into a read value stays."""
    from harness.history import Event

    evs = [
        Event(0, 0, 0, "invoke", "write", "zz", "k"),  # crashed, prefix of nothing: dropped
        Event(1, 0, 1, "invoke", "write", "x", "k"),  # crashed, "x" + "y" is read: kept
        Event(2, 0, 2, "invoke", "append", "y", "k"),
        Event(3, 0, 2, "ok", "append", "y", "k"),
        Event(4, 0, 3, "invoke", "read", None, "k"),
        Event(5, 0, 3, "ok", "read", "xy", "k"),
    ]
    ops = pair_ops(evs)
    model = get_model("kv")
    items = model.prune(model.partition(ops)["k"], ops)
    assert [ops[i].value for i, _c in items] == ["x", "y", None]
    assert _assert_variants_agree(ops, get_model("kv")) is True


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(2, 1500),
    crash_p=st.sampled_from([0.0, 0.0, 0.1]),
)
def test_in_flight_estimate_from_columns_matches_the_ops(seed: int, n: int, crash_p: float) -> None:
    """``_mean_in_flight`` on the partition's columns (a C-level sum when every op is
    sampled and none crashed) equals the estimate read from the op objects."""
    ops = pair_ops(generate("kv", seed=seed, ops=n, processes=10, crash_p=crash_p, keys=3))
    for items in get_model("kv").partition(ops).values():
        assert _mean_in_flight(items, ops) == _mean_in_flight(list(items), ops)
