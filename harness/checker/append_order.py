"""Linear-time (after a sort) check of one key whose ops are only appends and reads.

Owns ``check_append_order``: for a kv key with no write or cas, where append values are
unique, non-empty and prefix-free (no value is a prefix of another), every state is the
concatenation of the appends linearized so far, so the longest read reveals the order of
every append it contains and each read its place in that order. What is left is a
schedule with no choice: the appends in that order, between them the reads of each
length, then the appends no read observed (an acknowledged one must still fit its
interval; a crashed one may never have happened). Placing every op at its earliest legal
point decides linearizability exactly, so hot keys with many concurrent appends, where
the search would try many orders, take O(n log n).

It answers None (the caller searches) when the key does not have that shape. It must
not search, read files or clocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any

from harness.checker.models import Item, item_ok
from harness.history import Op

# (verdict True/False, item positions of a linearization (prefix), failing item or None,
# explanation)
AppendOrderResult = tuple[bool, list[int], int | None, str]


def check_append_order(items: Sequence[Item], ops: Sequence[Op]) -> AppendOrderResult | None:
    """Decide a key of appends ("a", v) / ("a!",) and reads ("r", v), or None."""
    append_of: dict[str, int] = {}  # value -> item position
    unobserved: list[int] = []  # poisoned appends: no read contains their value
    reads: list[int] = []
    for j, (_i, cop) in enumerate(items):
        kind = cop[0]
        if kind == "a" and len(cop) == 2:
            v = cop[1]
            if type(v) is not str or not v or v in append_of:
                return None
            append_of[v] = j
        elif kind == "a!":
            unobserved.append(j)
        elif kind == "r" and len(cop) == 2 and type(cop[1]) is str:
            reads.append(j)
        else:
            return None  # a write, a cas, or a crashed marker: not this shape
    values = sorted(append_of)
    for a, b in pairwise(values):
        if b.startswith(a):
            return None  # not prefix-free: a read could parse in two ways
    lengths = sorted({len(v) for v in values}, reverse=True)

    # The longest read, parsed into appends; every read must be a prefix of it.
    longest = max(reads, key=lambda j: len(items[j][1][1]), default=None)
    text = "" if longest is None else items[longest][1][1]
    order: list[int] = []  # item positions of the observed appends, in order
    boundary: dict[int, int] = {0: 0}  # string offset -> appends before it
    seen: set[int] = set()
    p = 0
    while p < len(text):
        for n in lengths:
            j = append_of.get(text[p : p + n])
            if j is not None:
                break
        else:
            return False, [], longest, _why_read(ops, items, longest, "no appended values make it")
        if j in seen:
            why = f"it holds the value {items[j][1][1]!r} twice"
            return False, [], longest, _why_read(ops, items, longest, why)
        seen.add(j)
        order.append(j)
        p += len(items[j][1][1])
        boundary[p] = len(order)
    groups: list[list[int]] = [[] for _ in range(len(order) + 1)]
    for j in reads:
        v = items[j][1][1]
        k = boundary.get(len(v))
        if k is None or not text.startswith(v):
            other = _op_text(ops, items, longest) if longest is not None else ""
            why = f"no state can be both it and {other} (appends only extend the value)"
            return False, [], j, _why_read(ops, items, j, why)
        groups[k].append(j)
    unobserved += [j for j in append_of.values() if j not in seen]

    # Earliest-point schedule: t = the latest invocation among the ops placed so far; op j
    # fits when it completes after max(t, its invocation). Reads of one length, and the
    # unobserved appends, may go in any order among themselves.
    t = -1
    placed: list[int] = []

    def place(group: list[int], must: bool) -> int | None:
        nonlocal t
        group.sort(key=lambda j: ops[items[j][0]].invoke_index)
        top = t
        for j in group:
            op = ops[items[j][0]]
            ok = item_ok(ops, items[j][0], items[j][1])
            if not ok and not must:
                continue  # a crashed append nobody observed: it may never have happened
            if (
                ok
                and op.complete_index is not None
                and max(t, op.invoke_index) >= op.complete_index
            ):
                return j
            top = max(top, op.invoke_index)
            placed.append(j)
        t = top
        return None

    for k in range(len(order) + 1):
        if k:
            bad = place([order[k - 1]], True)
            if bad is not None:
                return False, placed, bad, _why_late(ops, items, bad, t, k, len(order))
        bad = place(groups[k], True)
        if bad is not None:
            return False, placed, bad, _why_late(ops, items, bad, t, k, len(order))
    bad = place(unobserved, False)
    if bad is not None:
        return False, placed, bad, _why_late(ops, items, bad, t, len(order), len(order))
    return True, placed, None, ""


def _op_text(ops: Sequence[Op], items: Sequence[Item], j: int) -> str:
    op = ops[items[j][0]]
    cop: Any = items[j][1]
    what = f"{op.f} {cop[1]!r}" if len(cop) > 1 else f"{op.f}"
    return f"the {what} by process {op.process!r} (events {op.invoke_index}-{op.complete_index})"


def _why_read(ops: Sequence[Op], items: Sequence[Item], j: int, why: str) -> str:
    return f"{_op_text(ops, items, j)} returned a value the appends cannot build: {why}"


def _why_late(ops: Sequence[Op], items: Sequence[Item], j: int, t: int, k: int, n: int) -> str:
    return (
        f"the reads reveal the order of the {n} observed appends; in that order "
        f"{_op_text(ops, items, j)} can take effect only after event {t} (after {k} of the "
        "observed appends and every op they must follow), but it completed before"
    )
