"""The append-order decision for kv keys of appends and reads agrees with the general
search on small histories (valid ones and ones with a changed read), decides hot keys with
many concurrent appends that the search could not, and leaves other keys to the search."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from harness.checker.append_order import check_append_order
from harness.checker.lin_gen import generate_appends
from harness.checker.linear import Budget, check_linearizable
from harness.checker.models import Item, KVModel
from harness.history import Event, Op, pair_ops


class _AppendOrderKV(KVModel):
    """The kv model without the constructed linearization or the sweep, so the
    append-order decision takes every key."""

    sweeps = False

    def finds_linearization(self, items: Sequence[Item], ops: Sequence[Op]) -> bool:
        return False


class _SearchOnlyKV(_AppendOrderKV):
    """The kv model without the append-order decision, the constructed linearization or the
    sweep: the reference."""

    appends_concatenate = False


def _mutate(events: list[Event], rng: random.Random, how: int) -> list[Event]:
    """Change one ok read's value: another read's value, a reordering of its appends, a
    value with one append more or fewer, or an append's value twice."""
    reads = [e for e in events if e.type == "ok" and e.f == "read"]
    if not reads or how == 0:
        return events
    target = rng.choice(reads)
    appended = [e.value for e in events if e.type == "invoke" and e.f == "append"]
    tokens = [t + "." for t in target.value.split(".") if t]
    if how == 1:
        new = rng.choice(reads).value
    elif how == 2:
        rng.shuffle(tokens)
        new = "".join(tokens)
    elif how == 3 and appended:
        new = target.value + rng.choice(appended)
    elif how == 4:
        new = "".join(tokens[:-1])
    else:
        new = target.value + (tokens[0] if tokens else "a1.")
    out = list(events)
    out[target.index] = Event(
        target.index, target.time, target.process, "ok", "read", new, target.key
    )
    return out


def _verdicts(ops: list[Op]) -> tuple[Any, Any]:
    fast = check_linearizable(ops, _AppendOrderKV(), Budget(max_steps=2_000_000))
    slow = check_linearizable(ops, _SearchOnlyKV(), Budget(max_steps=2_000_000))
    assert fast.stats.get("append_order_keys", 0) == fast.stats["keys_checked"]
    both = check_linearizable(ops, KVModel(), Budget(max_steps=2_000_000))  # sweep first
    assert both.valid == fast.valid
    return fast.valid, slow.valid


@settings(max_examples=300, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 14),
    procs=st.integers(1, 5),
    crash=st.sampled_from([0.0, 0.2]),
    how=st.integers(0, 5),
)
def test_agrees_with_the_search(seed: int, n: int, procs: int, crash: float, how: int) -> None:
    """Same verdict as the general search, on valid histories and on changed reads."""
    events = generate_appends(seed=seed, ops=n, processes=procs, crash_p=crash)
    events = _mutate(events, random.Random(seed), how)
    fast, slow = _verdicts(pair_ops(events))
    assert fast == slow, (seed, n, procs, crash, how)


def test_hot_key_with_many_processes_is_decided() -> None:
    """1000 ops by 50 processes on one key: valid, and a changed read is invalid with a
    witness naming it."""
    events = generate_appends(seed=1, ops=1000, processes=50, crash_p=0.05)
    budget = Budget(max_steps=100_000)
    assert check_linearizable(pair_ops(events), KVModel(), budget).valid is True
    reads = [e for e in events if e.type == "ok" and e.f == "read" and e.value.count(".") > 5]
    r = reads[len(reads) // 2]
    tokens = r.value.split(".")
    tokens[1], tokens[2] = tokens[2], tokens[1]
    events[r.index] = Event(r.index, r.time, r.process, "ok", "read", ".".join(tokens), r.key)
    res = check_linearizable(pair_ops(events), KVModel(), budget)
    assert res.valid is False
    assert res.witness is not None and "appends" in res.witness["explanation"]
    assert res.witness["op"]["f"] in ("read", "append")


def test_other_shapes_are_left_to_the_search() -> None:
    """A write on the key, or append values that are prefixes of each other, are not
    decided here."""

    def op(i: int, f: str, v: Any, res: Any = None) -> Op:
        return Op(0, f, "k", v, res if f == "read" else v, "ok", 2 * i, 2 * i + 1, 0, 0)

    appends = [op(0, "append", "x"), op(1, "read", None, "x")]
    items = KVModel().partition(appends)["k"]
    assert check_append_order(items, appends) is not None
    with_write = [*appends, op(2, "write", "y")]
    assert check_append_order(KVModel().partition(with_write)["k"], with_write) is None
    prefixed = [op(0, "append", "x"), op(1, "append", "xy"), op(2, "read", None, "xxy")]
    assert check_append_order(KVModel().partition(prefixed)["k"], prefixed) is None
