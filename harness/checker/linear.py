"""General linearizability checker: Wing-Gong-Lowe just-in-time search, per key.

Owns the search. Given paired ops and a model it splits the history by key
(P-compositionality), then per key runs a short search first (most valid keys end
there), the cheap sound refutations (``Model.precheck``, ``stale_precheck``) only for keys
it did not show valid, then the full search: Lowe's just-in-time WGL search over a
doubly-linked list of call/return entries with a memo of (linearized set, model state).
Details that make it fast:
  - states are interned to ints and transitions are cached per distinct op and state
    (Knossos' state-space precomputation, done lazily so it never explodes up front);
  - the linearized set is keyed by a 128-bit Zobrist hash (XOR of per-op random words,
    updated in O(1)) instead of an O(n)-bit bitset, so a memo entry is ~100 bytes whatever
    the history length. A false "already visited" needs a 128-bit collision;
  - crashed items (info ops, and items ``models.item_ok`` says are crashed) have no
    return entry: they may linearize any time after their invocation or never; the
    search succeeds once every ok item is linearized;
  - crashed ops with the same compiled op are interchangeable, so only the earliest
    invoked unlinearized one of such a group is ever tried (symmetry reduction);
  - forced steps (a legal read-only candidate; the only candidate of a forced stretch,
    below) are taken with no memo entry, a stretch by a short loop with no pruning test;
  - the short first search of a key with few ops in flight (``LEAN_IN_FLIGHT_MAX``) is
    lean: no dead-configuration pruning tables, no state canonicalizer, no
    ``Model.refine`` (all three only make a search with real choices smaller, at a set-up
    cost per op); busier keys get them from the start.

Forced steps, and why they keep the search exact. In a configuration (linearized set L,
state s) the candidates of Lowe's search are the unlinearized ops whose call entry comes
before the first return entry left in the list. When the first entry is the call of an ok
op x and the next entry is x's own return, x is the only candidate: every other
unlinearized op (ok or crashed) was invoked after x completed, so in every linearization
extending L, x comes next (a forced stretch). A legal read-only candidate may be taken
next without loss of generality (any linearization placing it later can move it here). So
such a configuration has exactly the one child that matters, (L + x, step(s, x)), or none
when x is illegal in s, and the search may take that step without recording the
configuration in the memo (the memo only spares re-exploring a configuration; skipping it
can cost time, never change the answer: the configuration is re-entered only through its
parent, and the next real choice below it is still recorded) and without the
dead-configuration test (which only abandons a configuration earlier than the search
would). The step is pushed as forced, so backtracking passes through it to the last real
choice. Low-concurrency keys are mostly forced steps. ``_search(..., fast=False)`` takes
stretches one configuration at a time and records forced reads in the memo, as before;
the property tests compare the variants (tests/harness/test_checker_fast_paths.py).
Budgets: ``deadline()`` (a callable, no clock here), a step budget and a memory budget
(memo entries x estimated bytes, plus an optional ``memory_probe()`` of the process RSS).
Past any of them the verdict is "unknown" with the longest prefix found and counters.

It must not read files, look at clocks or use global randomness (the Zobrist words come
from a seeded ``random.Random`` instance).
"""

from __future__ import annotations

import bisect
import json
import random
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import count
from operator import itemgetter
from typing import Any

from harness.checker.append_order import check_append_order
from harness.checker.models import (
    ANY_STATE,
    CRASHED,
    DEPENDS,
    KEEPS,
    Item,
    Model,
    columns,
    item_ok,
    unwrap,
)
from harness.checker.result import UNKNOWN, CheckResult, Verdict, combine_verdicts
from harness.checker.sweep import sweep_linearizable
from harness.history import Op

# Rough bytes per memo entry (set slot + a ~150-bit int) plus per stack frame.
MEMO_ENTRY_BYTES = 110
STATE_BYTES = 400  # interned state + its id + transition cache entries (rough)
CHECK_EVERY = 1 << 12  # budget checks every this many memo insertions
CHECK_EVERY_MISSES = 1 << 9  # ... and every this many computed transitions
PREFIX_TAIL = 20  # ops of the longest prefix shown in a short witness
WITNESS_SEARCH_STEPS = 200_000  # search for a prefix after a precheck refutation
# The first, short search (lean: no pruning tables) before the stale-read precheck and the
# full search: memo entries (real choice points) allowed per item, plus a constant.
QUICK_SEARCH_STEPS_PER_ITEM = 2
QUICK_SEARCH_STEPS = 512
QUICK_FULL_SEARCH_STEPS_PER_ITEM = 8  # ... when it runs with the pruning (busy keys)
LEAN_IN_FLIGHT_MAX = 4.0  # the first search is lean when at most this many ops are in flight
SWEEP_IN_FLIGHT_MAX = 3.0  # the sweep is tried first when at most this many are in flight
IN_FLIGHT_SAMPLE = 256  # ops sampled to estimate that
_ZOBRIST_SEED = 0x5EED_11EA
_FIRST, _SECOND, _LAST = itemgetter(0), itemgetter(1), itemgetter(-1)


@dataclass(slots=True)
class Budget:
    """What the search may spend; ``deadline()`` returns True once time is up."""

    deadline: Callable[[], bool] | None = None
    memory_limit_bytes: int | None = None
    memory_probe: Callable[[], int] | None = None  # current process memory in bytes
    max_steps: int | None = None


@dataclass(slots=True)
class KeyResult:
    verdict: Verdict
    prefix: list[int]  # op indices (into the full op list), in linearization order
    failing: int | None  # op index that could not be linearized
    explanation: str
    reason: str  # for unknown: "time limit" / "memory limit" / "step limit"
    stats: dict[str, int]


class _OutOfBudget(Exception):
    pass


def check_linearizable(
    ops: Sequence[Op],
    model: Model,
    budget: Budget | None = None,
    *,
    parts: dict[Any, list[Item]] | None = None,
) -> CheckResult:
    """Check a paired history against ``model``; pure (time and memory via ``budget``).
    ``parts``: ``model.partition(ops)`` when the caller already has it (the benchmark
    times the partition apart)."""
    budget = budget or Budget()
    if parts is None:
        parts = model.partition(ops)
    keys = sorted(parts, key=lambda k: (len(parts[k]), repr(k)))
    totals: dict[str, int] = {"keys_checked": 0, "memo_entries": 0, "steps": 0, "states": 0}
    nops = len(ops)
    verdicts: list[Verdict] = []
    first_unknown: tuple[Any, KeyResult] | None = None
    steps_used = 0
    for key in keys:
        items = parts[key]
        kr = _check_key(items, ops, model, budget, steps_used)
        totals["keys_checked"] += 1
        for k, v in kr.stats.items():
            totals[k] = totals.get(k, 0) + v
        steps_used += kr.stats.get("steps", 0)
        if kr.verdict is False:
            return _result(model, ops, nops, len(parts), key, kr, totals)
        if kr.verdict == UNKNOWN and first_unknown is None:
            first_unknown = (key, kr)
        verdicts.append(kr.verdict)
    verdict = combine_verdicts(verdicts)
    if verdict == UNKNOWN and first_unknown is not None:
        return _result(model, ops, nops, len(parts), first_unknown[0], first_unknown[1], totals)
    return CheckResult(True, model.name, nops, len(parts), None, totals)


def _check_key(
    items: Sequence[Item], ops: Sequence[Op], model: Model, budget: Budget, steps_used: int
) -> KeyResult:
    """On a key with few ops in flight (``SWEEP_IN_FLIGHT_MAX``) of a model that sweeps,
    the sweep first (``harness.checker.sweep``: it only proves keys valid). Then the key's
    crashed ops nothing can observe are dropped (``Model.prune``) and a short search runs
    (most valid keys end there); for a key it does not show valid,
    the value-from-nowhere precheck (its explanation wins); only if the short search ran out
    of steps the stale-read precheck (O(n log n) but not free), then the full search. A key
    of appends and reads whose values reveal the order of the appends is decided without a
    search (``append_order``). First of all, ``Model.finds_linearization`` (registers whose
    writes write distinct values: a linearization built in O(n log n) and checked)."""
    if model.finds_linearization(items, ops):
        stats = {"steps": 0, "memo_entries": 0, "items": len(items), "constructed_keys": 1}
        return KeyResult(True, [], None, "", "", stats)
    in_flight = _mean_in_flight(items, ops)
    if model.sweeps and in_flight <= SWEEP_IN_FLIGHT_MAX:
        if sweep_linearizable(items, ops, model, budget.deadline):
            stats = {"steps": 0, "memo_entries": 0, "items": len(items), "sweep_keys": 1}
            return KeyResult(True, [], None, "", "", stats)
    items = model.prune(items, ops)
    if model.appends_concatenate:
        decided = check_append_order(items, ops)
        if decided is not None:
            ok, placed, bad, why = decided
            stats = {"steps": 0, "memo_entries": 0, "items": len(items), "append_order_keys": 1}
            prefix = [items[j][0] for j in placed]
            return KeyResult(
                ok, [] if ok else prefix, None if bad is None else items[bad][0], why, "", stats
            )
    left = None if budget.max_steps is None else max(0, budget.max_steps - steps_used)
    # The short search: lean (no pruning tables) on keys with few ops in flight, where it
    # is cheaper and hardly backtracks; with the pruning where the search has real choices.
    lean = in_flight <= LEAN_IN_FLIGHT_MAX
    if lean:
        quick = QUICK_SEARCH_STEPS_PER_ITEM * len(items) + QUICK_SEARCH_STEPS
    else:
        quick = QUICK_FULL_SEARCH_STEPS_PER_ITEM * len(items) + CHECK_EVERY
    kr = None
    if left is None or left > quick:
        sub = Budget(budget.deadline, budget.memory_limit_bytes, budget.memory_probe, quick)
        kr = _search(items, ops, model, sub, lean=lean)
        if kr.verdict is True:
            return kr  # the prechecks are sound: they cannot refute a valid key
        steps_used += kr.stats.get("steps", 0)
        left = None if left is None else max(0, left - kr.stats.get("steps", 0))
    pre = model.precheck(items, ops)
    if pre is not None:
        if kr is not None and kr.verdict is False:
            return _with_precheck(kr, pre)
        return _witness_search(items, ops, model, budget, steps_used, pre)
    if kr is not None and (kr.verdict is False or kr.reason != "step limit"):
        return kr
    pre = stale_precheck(items, ops, model)
    if pre is not None:
        return _witness_search(items, ops, model, budget, steps_used, pre)
    sub = Budget(budget.deadline, budget.memory_limit_bytes, budget.memory_probe, left)
    return _search(items, ops, model, sub)


def _mean_in_flight(items: Sequence[Item], ops: Sequence[Op]) -> float:
    """About how many of the key's ops are in flight on average (~1 on a cold kv key, ~N
    for N busy clients): the mean duration of up to ``IN_FLIGHT_SAMPLE`` evenly spaced ok
    ops times the number of ops, over the key's span of invocations (event indexes)."""
    n = len(items)
    if n < 2:
        return 0.0
    cols = columns(items)
    if cols is not None:  # the partition's columns: no need to visit the ops
        invs, ends = cols
        every = max(1, n // IN_FLIGHT_SAMPLE)
        if every == 1 and -1 not in ends:  # every op, all ok: the same sums, in C
            span = max(1, invs[-1] - invs[0])
            return float((sum(ends) - sum(invs)) * n / (n * span))
        durations = [d - i for i, d in zip(invs[::every], ends[::every], strict=True) if d >= 0]
        if not durations:
            return 0.0
        span = max(1, invs[-1] - invs[0])
        return float(sum(durations) * n / (len(durations) * span))
    sample = map(ops.__getitem__, map(_FIRST, items[:: max(1, n // IN_FLIGHT_SAMPLE)]))
    durations = [
        op.complete_index - op.invoke_index
        for op in sample
        if op.type == "ok" and op.complete_index is not None
    ]
    if not durations:
        return 0.0
    span = max(1, ops[items[-1][0]].invoke_index - ops[items[0][0]].invoke_index)
    return float(sum(durations) * n / (len(durations) * span))


def _witness_search(
    items: Sequence[Item],
    ops: Sequence[Op],
    model: Model,
    budget: Budget,
    steps_used: int,
    pre: tuple[int, str],
) -> KeyResult:
    """A key refuted by a precheck still gets a longest linearizable prefix for its witness,
    from a search capped at ``WITNESS_SEARCH_STEPS`` (the verdict stays False)."""
    cap = WITNESS_SEARCH_STEPS
    if budget.max_steps is not None:
        cap = max(0, min(cap, budget.max_steps - steps_used))
    sub = Budget(budget.deadline, budget.memory_limit_bytes, budget.memory_probe, cap)
    return _with_precheck(_search(items, ops, model, sub), pre)


def _with_precheck(kr: KeyResult, pre: tuple[int, str]) -> KeyResult:
    """The verdict False, the precheck's op and explanation, the search's prefix."""
    # A sound precheck and an exhaustive search cannot disagree: that would be a bug here.
    assert kr.verdict is not True, f"precheck refuted a linearizable key: {pre[1]}"
    explanation = (
        f"{pre[1]}. No linearization exists; the longest linearizable prefix the search "
        f"found has {len(kr.prefix)} operations."
    )
    return KeyResult(False, kr.prefix, pre[0], explanation, "", kr.stats)


def _result(
    model: Model,
    ops: Sequence[Op],
    nops: int,
    nkeys: int,
    key: Any,
    kr: KeyResult,
    totals: dict[str, int],
) -> CheckResult:
    witness: dict[str, Any] = {
        "key": key,
        "prefix_len": len(kr.prefix),
        "prefix": [_op_summary(ops[i]) for i in kr.prefix[-PREFIX_TAIL:]],
        "prefix_indices": kr.prefix,
        "explanation": kr.explanation,
    }
    if kr.failing is not None:
        witness["op"] = _op_summary(ops[kr.failing])
        witness["op_index"] = kr.failing
    if kr.verdict == UNKNOWN:
        witness["reason"] = kr.reason
    return CheckResult(kr.verdict, model.name, nops, nkeys, witness, totals)


def _op_summary(op: Op) -> dict[str, Any]:
    return {
        "process": op.process,
        "type": op.type,
        "f": op.f,
        "key": op.key,
        "value": op.value,
        "result": op.result,
        "invoke_index": op.invoke_index,
        "complete_index": op.complete_index,
    }


def _search(
    items: Sequence[Item],
    ops: Sequence[Op],
    model: Model,
    budget: Budget,
    *,
    fast: bool = True,
    lean: bool = False,
) -> KeyResult:
    """Lowe's just-in-time WGL search over one key's items.

    ``fast=False`` turns off the forced stretches (module docstring). ``lean=True`` skips
    the dead-configuration pruning and the state canonicalizer (cheaper to set up, the
    same verdict; the short first search of a key). Tests compare the variants."""
    if not lean:
        items = model.refine(items)
    m = len(items)
    # Entries: call j -> j, return j -> m + j, HEAD = 2m, TAIL = 2m + 1.
    head, tail = 2 * m, 2 * m + 1
    size = 2 * m + 2
    is_ret = [False] * m + [True] * m + [False, True]
    ret = [-1] * size  # ret[j]: the return entry of ok item j; -1 for crashed items, returns
    cops = list(map(_SECOND, items))
    item_ops = [ops[i] for i, _c in items]
    invs = [op.invoke_index for op in item_ops]  # (specialized reads: faster than attrgetter)
    # Ok items (models.item_ok): they must take effect before their completion.
    okj = [j for j, op in enumerate(item_ops) if op.type == "ok"]
    if CRASHED in map(_LAST, cops):
        okj = [j for j in okj if cops[j][-1] is not CRASHED]
    remaining = len(okj)
    rets = [m + j for j in okj]  # (comprehensions: ``map`` over int methods is slower)
    deque(map(ret.__setitem__, okj, rets), maxlen=0)  # ret[j] = m + j
    cis = [item_ops[j].complete_index for j in okj]
    if None in cis:  # an ok op without a completion event: it returns at its invocation
        cis = [invs[j] if ci is None else ci for j, ci in zip(okj, cis, strict=True)]
    # Event order as ints (event index * size + entry): calls sort before returns at equal
    # indexes, as (index, call/return, entry) tuples would, without building tuples.
    order = [i * size + j for j, i in enumerate(invs)]
    order += [ci * size + r for ci, r in zip(cis, rets, strict=True)]
    order.sort()
    chain = [head, *map(size.__rmod__, order), tail]
    nxt = [tail] * size
    prv = [head] * size
    # nxt[chain[k]] = chain[k + 1] and prv[chain[k + 1]] = chain[k], in C loops.
    deque(map(nxt.__setitem__, chain[:-1], chain[1:]), maxlen=0)
    deque(map(prv.__setitem__, chain[1:], chain[:-1]), maxlen=0)

    # Interned states; op kinds (distinct cops); transitions cached per (state, kind)
    # under the key state * nkinds + kind.
    state_ids: dict[Any, int] = {}
    states: list[Any] = []

    def intern(s: Any) -> int:
        sid = state_ids.get(s)
        if sid is None:
            sid = len(states)
            state_ids[s] = sid
            states.append(s)
        return sid

    kind_ids = dict(zip(dict.fromkeys(cops), count(), strict=False))
    kind = list(map(kind_ids.__getitem__, cops))
    kind_cops: list[Any] = list(kind_ids)
    nk = len(kind_cops)
    trans: dict[int, int] = {}
    tget = trans.get
    if lean:
        ro = list(map(model.read_only_list(kind_cops).__getitem__, kind))
        prod = req = [-1] * m
        multi: list[tuple[int, ...] | None] = [None] * m
        avail: list[int] = []
        need: list[int] = []
    else:
        ro, prod, req, multi, avail, need = _pruning_tables(
            items, model, kind, kind_cops, ret, intern, states
        )
    nbase = len(avail)
    counting = nbase > 0
    blocked = sum(1 for u in range(nbase) if need[u] and not avail[u])

    # Symmetry groups of interchangeable crashed ops (same cop), ranked by invocation.
    group = [-1] * m
    grank = [0] * m
    members: dict[int, list[int]] = {}
    if remaining < m:
        for j in range(m):
            if ret[j] < 0:
                members.setdefault(kind[j], []).append(j)
    ngroups = 0
    for js in members.values():
        if len(js) > 1:
            js.sort(key=invs.__getitem__)
            for r, j in enumerate(js):
                group[j] = ngroups
                grank[j] = r
            ngroups += 1
    gcount = [0] * ngroups

    zob = _zobrist_words(m)

    step = model.step if lean else model.stepper(items)

    memo: set[int] = set()
    memo_add = memo.add
    stack_e: list[int] = []
    stack_s: list[int] = []
    push_e, push_s = stack_e.append, stack_s.append
    pop_e, pop_s = stack_e.pop, stack_s.pop
    s = intern(model.init())
    zh = 0
    e = nxt[head]
    # The longest prefix: once the search first backtracks from a record depth, the record
    # stack is kept as stack_e[:best_common] (never touched again) + reversed(best_tail)
    # (what was popped below it since), so preserving it costs O(1) per pop, not a copy.
    best_depth = 0
    best_saved = True
    best_common = 0
    best_tail: list[int] = []
    best_state = s
    backtracks = 0
    countdown = CHECK_EVERY  # budget checks: memo insertions and forced steps
    misses = CHECK_EVERY_MISSES  # transitions computed: expensive for big states
    max_steps = budget.max_steps
    verdict: Verdict = UNKNOWN
    reason = ""
    fresh = True  # a configuration just entered: look for a forced op first
    try:
        while True:
            if remaining == 0:
                verdict = True
                break
            if fresh:
                fresh = False
                x = nxt[head]
                r = ret[x]
                if fast and r >= 0 and nxt[x] == r:
                    # A forced stretch (module docstring): while the first pending
                    # completion is the only op invoked before it, that op is the only
                    # candidate. Linearize it without memo or pruning test.
                    depth0 = len(stack_e)
                    while True:
                        tk = s * nk + kind[x]
                        ns = tget(tk)
                        if ns is None:
                            nstate = step(states[s], kind_cops[kind[x]])
                            if nstate is None:
                                ns = -1
                            else:
                                ns = state_ids.get(nstate)
                                if ns is None:
                                    ns = len(states)
                                    state_ids[nstate] = ns
                                    states.append(nstate)
                            trans[tk] = ns
                            misses -= 1
                            if not misses:
                                misses = CHECK_EVERY_MISSES
                                reason = _over_budget(budget, len(memo), len(states))
                                if reason:
                                    raise _OutOfBudget
                        if ns < 0:
                            break  # illegal: the general code below backtracks
                        push_e(~x)
                        push_s(s)
                        s = ns
                        zh ^= zob[x]
                        y = nxt[r]
                        nxt[head] = y
                        prv[y] = head
                        if counting:
                            pj = prod[x]
                            if pj >= 0:
                                avail[pj] -= 1
                                if not avail[pj] and need[pj]:
                                    blocked += 1
                            mp = multi[x]
                            if mp is not None:
                                for pj in mp:
                                    avail[pj] -= 1
                                    if not avail[pj] and need[pj]:
                                        blocked += 1
                            qj = req[x]
                            if qj >= 0:
                                need[qj] -= 1
                                if not need[qj] and not avail[qj]:
                                    blocked -= 1
                        x = y
                        r = ret[x]
                        if r < 0 or nxt[x] != r:
                            break
                    n = len(stack_e) - depth0
                    if n:
                        remaining -= n
                        if n + depth0 > best_depth:
                            best_depth = n + depth0
                            best_saved = False
                        if remaining == 0:
                            verdict = True
                            break
                        countdown -= n
                        if countdown <= 0:
                            countdown = CHECK_EVERY
                            reason = _over_budget(budget, len(memo), len(states))
                            if reason:
                                raise _OutOfBudget
                if blocked and (blocked > 1 or s >= nbase or not need[s] or avail[s]):
                    e = tail  # some ok op needs a state nothing can produce any more
                    continue
                # A legal read-only op (one that never changes any state it is legal in)
                # can be linearized now without loss of generality: any linearization
                # with it later can move it here. So it is forced, not a choice point.
                while not is_ret[x]:
                    if ro[x]:
                        g = group[x]
                        if g < 0 or grank[x] == gcount[g]:
                            tk = s * nk + kind[x]
                            ns = tget(tk)
                            if ns is None:
                                nstate = step(states[s], kind_cops[kind[x]])
                                # A legal read-only op leaves the state as it is.
                                ns = -1 if nstate is None else s
                                trans[tk] = ns
                                misses -= 1
                                if not misses:
                                    misses = CHECK_EVERY_MISSES
                                    reason = _over_budget(budget, len(memo), len(states))
                                    if reason:
                                        raise _OutOfBudget
                            if ns == s:
                                break
                    x = nxt[x]
                if not is_ret[x]:
                    nzh = zh ^ zob[x]
                    if fast:
                        # Not a choice point: no memo entry (module docstring).
                        countdown -= 1
                    else:
                        mk = (s << 128) | nzh
                        if mk in memo:
                            e = tail  # explored before and failed: so does this one
                            continue
                        memo_add(mk)
                        countdown -= 1
                    if countdown <= 0:
                        countdown = CHECK_EVERY
                        reason = _over_budget(budget, len(memo), len(states))
                        if reason:
                            raise _OutOfBudget
                    push_e(~x)
                    push_s(s)
                    if len(stack_e) > best_depth:
                        best_depth = len(stack_e)
                        best_saved = False
                    zh = nzh
                    if counting:
                        qj = req[x]
                        if qj >= 0:
                            need[qj] -= 1
                            if not need[qj] and not avail[qj]:
                                blocked -= 1
                    r = ret[x]
                    if r >= 0:
                        nxt[prv[r]] = nxt[r]
                        prv[nxt[r]] = prv[r]
                        remaining -= 1
                    nxt[prv[x]] = nxt[x]
                    prv[nxt[x]] = prv[x]
                    g = group[x]
                    if g >= 0:
                        gcount[g] += 1
                    fresh = True
                    continue
                e = nxt[head]
            if is_ret[e]:
                if not stack_e:
                    verdict = False
                    break
                if not best_saved and len(stack_e) == best_depth:
                    best_saved = True
                    best_common = best_depth
                    best_tail = []
                    best_state = s
                if best_saved and len(stack_e) == best_common:
                    best_tail.append(stack_e[-1])
                    best_common -= 1
                backtracks += 1
                ce = pop_e()
                s = pop_s()
                forced = ce < 0
                if forced:
                    ce = ~ce
                zh ^= zob[ce]
                r = ret[ce]
                if r >= 0:
                    nxt[prv[r]] = r
                    prv[nxt[r]] = r
                    remaining += 1
                nxt[prv[ce]] = ce
                prv[nxt[ce]] = ce
                if counting:
                    pj = prod[ce]
                    if pj >= 0:
                        avail[pj] += 1
                        if avail[pj] == 1 and need[pj]:
                            blocked -= 1
                    mp = multi[ce]
                    if mp is not None:
                        for pj in mp:
                            avail[pj] += 1
                            if avail[pj] == 1 and need[pj]:
                                blocked -= 1
                    qj = req[ce]
                    if qj >= 0:
                        need[qj] += 1
                        if need[qj] == 1 and not avail[qj]:
                            blocked += 1
                g = group[ce]
                if g >= 0:
                    gcount[g] -= 1
                e = tail if forced else nxt[ce]
                continue
            g = group[e]
            if ro[e] or (g >= 0 and grank[e] != gcount[g]):
                # A read-only candidate here is illegal: a legal one would have been forced.
                e = nxt[e]
                continue
            tk = s * nk + kind[e]
            ns = tget(tk)
            if ns is None:
                nstate = step(states[s], kind_cops[kind[e]])
                if nstate is None:
                    ns = -1
                else:
                    ns = state_ids.get(nstate)
                    if ns is None:
                        ns = len(states)
                        state_ids[nstate] = ns
                        states.append(nstate)
                trans[tk] = ns
                misses -= 1
                if not misses:
                    misses = CHECK_EVERY_MISSES
                    reason = _over_budget(budget, len(memo), len(states))
                    if reason:
                        raise _OutOfBudget
            if ns >= 0:
                nzh = zh ^ zob[e]
                mk = (ns << 128) | nzh
                if mk not in memo:
                    memo_add(mk)
                    countdown -= 1
                    if countdown <= 0:
                        countdown = CHECK_EVERY
                        reason = _over_budget(budget, len(memo), len(states))
                        if reason:
                            raise _OutOfBudget
                    push_e(e)
                    push_s(s)
                    if len(stack_e) > best_depth:
                        best_depth = len(stack_e)
                        best_saved = False
                    s = ns
                    zh = nzh
                    r = ret[e]
                    if r >= 0:
                        nxt[prv[r]] = nxt[r]
                        prv[nxt[r]] = prv[r]
                        remaining -= 1
                    nxt[prv[e]] = nxt[e]
                    prv[nxt[e]] = prv[e]
                    if counting:
                        pj = prod[e]
                        if pj >= 0:
                            avail[pj] -= 1
                            if not avail[pj] and need[pj]:
                                blocked += 1
                        mp = multi[e]
                        if mp is not None:
                            for pj in mp:
                                avail[pj] -= 1
                                if not avail[pj] and need[pj]:
                                    blocked += 1
                        qj = req[e]
                        if qj >= 0:
                            need[qj] -= 1
                            if not need[qj] and not avail[qj]:
                                blocked -= 1
                    if g >= 0:
                        gcount[g] += 1
                    fresh = True
                    continue
            e = nxt[e]
    except _OutOfBudget:
        verdict = UNKNOWN
    if max_steps is not None and verdict == UNKNOWN and not reason:
        reason = "step limit"
    if not best_saved or len(stack_e) >= best_depth:
        best = stack_e[:]
        best_state = s
    else:
        best = stack_e[:best_common] + best_tail[::-1]
    stats = {
        "steps": len(memo),
        "memo_entries": len(memo),
        "backtracks": backtracks,
        "states": len(states),
        "items": m,
    }
    memo.clear()
    if verdict is True:
        return KeyResult(True, [], None, "", "", stats)
    best = [j if j >= 0 else ~j for j in best]
    prefix = [items[j][0] for j in best]
    in_prefix = set(best)
    failing_j = _first_unlinearized_ok(items, ops, ret, in_prefix)
    failing = None if failing_j is None else items[failing_j][0]
    if verdict is False:
        explanation = _explain(
            model, items, ops, failing_j, states[best_state], len(best), stats["memo_entries"]
        )
        return KeyResult(False, prefix, failing, explanation, "", stats)
    explanation = (
        f"search stopped at the {reason} after {stats['memo_entries']} "
        f"configurations; the longest linearizable prefix found has {len(best)} of {m} ops"
    )
    return KeyResult(UNKNOWN, prefix, failing, explanation, reason, stats)


def _pruning_tables(
    items: Sequence[Item],
    model: Model,
    kind: list[int],
    kind_cops: list[Any],
    ret: list[int],
    intern: Callable[[Any], int],
    states: list[Any],
) -> tuple[list[bool], list[int], list[int], list[tuple[int, ...] | None], list[int], list[int]]:
    """ro, prod, req, multi, avail, need for the dead-configuration pruning.

    req[j] = the state ok op j needs to be legal, prod[j] = the state op j leaves behind
    (regardless of the state before); avail[u] = how many unlinearized ops could still
    produce state u, need[u] = how many unlinearized ok ops require it; the search counts
    as ``blocked`` the states u with need[u] > 0 and avail[u] == 0: unless u is the current
    state, such an op can never be linearized, so it backtracks at once. An op whose result
    depends on the prior state (a kv append) may produce several needed states: multi[j]
    lists them (from ``Model.producible``). The states interned here (ids < len(avail))
    are the only ones counted."""
    m = len(items)
    k_ro, k_prod, k_req = model.facts(kind_cops)
    ro = list(map(k_ro.__getitem__, kind))
    k_prod_id = [
        -1 if p is DEPENDS or p is KEEPS or r else intern(p)
        for p, r in zip(k_prod, k_ro, strict=True)
    ]
    k_req_id = [-1 if rq is ANY_STATE else intern(rq) for rq in k_req]
    prod = list(map(k_prod_id.__getitem__, kind))
    req = [k_req_id[k] if r >= 0 else -1 for k, r in zip(kind, ret, strict=False)]
    multi: list[tuple[int, ...] | None] = [None] * m
    dep_kinds = {k for k, p in enumerate(k_prod) if p is DEPENDS and not k_ro[k]}
    dep = [j for j in range(m) if kind[j] in dep_kinds] if dep_kinds else []
    if dep:
        needed_ids = sorted({r for r in req if r >= 0})
        reach = model.producible([states[u] for u in needed_ids], [items[j][1] for j in dep])
        if reach is None:  # no pruning
            return ro, [-1] * m, [-1] * m, multi, [0] * len(states), [0] * len(states)
        for j, lst in zip(dep, reach, strict=True):
            multi[j] = tuple(needed_ids[n] for n in lst)
    nbase = len(states)
    avail = [0] * nbase
    need = [0] * nbase
    for u, c in Counter(prod).items():
        if u >= 0:
            avail[u] += c
    for j in dep:
        for u in multi[j] or ():
            avail[u] += 1
    for u, c in Counter(req).items():
        if u >= 0:
            need[u] += c
    return ro, prod, req, multi, avail, need


def stale_precheck(
    items: Sequence[Item], ops: Sequence[Op], model: Model
) -> tuple[int, str] | None:
    """A sound O(n log n) refutation of stale reads, before any search.

    For an ok op R that needs state u (a read of u, a cas from u): take W, the ok op that
    sets a fixed state v != u, completed before R began, and began last among such ops. W
    precedes R, so some op producing u must be able to come after W and before R: one
    that is crashed or completed after W began, and began before R completed. If none
    exists R can never be legal. Ops whose effect depends on the prior state count as
    producers of what ``Model.producible`` says they could leave (skipped if unknown)."""
    producers: dict[Any, list[tuple[int, float]]] = {}  # u -> [(invoke, complete or inf)]
    setters: list[tuple[int, int, Any]] = []  # ok fixed-state ops: (complete, invoke, v)
    needs: list[tuple[int, int, Any]] = []  # ok ops needing a state: (invoke, item, u)
    inf = float("inf")
    dep: list[int] = []
    facts: dict[Any, tuple[Any, bool, Any]] = {}  # cop -> (produces, read_only, requires)
    for j, (i, cop) in enumerate(items):
        fact = facts.get(cop)
        if fact is None:
            fact = (model.produces(cop), model.read_only(cop), model.requires(cop))
            facts[cop] = fact
        p, ro, u = fact
        op = ops[i]
        done = op.complete_index if item_ok(ops, i, cop) else None
        if p is DEPENDS:
            if not ro:
                dep.append(j)
        elif p is not KEEPS and not ro:
            ps = producers.get(p)
            if ps is None:
                producers[p] = [(op.invoke_index, inf if done is None else done)]
            else:
                ps.append((op.invoke_index, inf if done is None else done))
            if done is not None:
                setters.append((done, op.invoke_index, p))
        if done is not None and u is not ANY_STATE:
            needs.append((op.invoke_index, j, u))
    if not needs or not setters:
        return None
    if dep:
        needed = list({u for _inv, _j, u in needs})
        reach_dep = model.producible(needed, [items[j][1] for j in dep])
        if reach_dep is None:
            return None
        for j, lst in zip(dep, reach_dep, strict=True):
            i, cop = items[j]
            op = ops[i]
            end = op.complete_index if item_ok(ops, i, cop) else None
            for n in lst:
                producers.setdefault(needed[n], []).append(
                    (op.invoke_index, inf if end is None else end)
                )
    # Per state u: producers sorted by invoke, with the running max of their completion.
    reach: dict[Any, tuple[list[int], list[float]]] = {}
    for u, ps in producers.items():
        if len(ps) == 1:
            reach[u] = ([ps[0][0]], [ps[0][1]])
            continue
        ps.sort()
        run: list[float] = []
        top = -inf
        for _inv, fin in ps:
            if fin > top:
                top = fin
            run.append(top)
        reach[u] = ([inv for inv, _d in ps], run)
    setters.sort(key=lambda t: (t[0], t[1]))  # never compare states: they may not order
    needs.sort(key=lambda t: (t[0], t[1]))
    k = 0
    best1: tuple[int, Any] | None = None  # (invoke, v): latest-invoked setter so far
    best2: tuple[int, Any] | None = None  # latest-invoked setter of a value != best1's
    for inv_r, j, u in needs:
        while k < len(setters) and setters[k][0] < inv_r:
            _done, inv_w, v = setters[k]
            k += 1
            if best1 is None:
                best1 = (inv_w, v)
            elif v == best1[1]:
                if inv_w > best1[0]:
                    best1 = (inv_w, v)
            elif inv_w > best1[0]:
                best1, best2 = (inv_w, v), best1
            elif best2 is None or inv_w > best2[0]:
                best2 = (inv_w, v)
        w = best1 if best1 is not None and best1[1] != u else best2
        if w is None:
            continue
        i = items[j][0]
        done_r = ops[i].complete_index
        invs, run = reach.get(u, ([], []))
        n = bisect.bisect_left(invs, done_r if done_r is not None else inv_r)
        if n and run[n - 1] > w[0]:
            continue
        return i, (
            f"{format_op(ops[i])} by process {json.dumps(ops[i].process)} (events "
            f"{ops[i].invoke_index}..{done_r}) needs the state {model.describe(u)}, but an "
            f"operation setting {model.describe(w[1])} began at event {w[0]} and completed "
            f"before it, and every operation that could produce {model.describe(u)} had "
            "completed before that one began: a stale read"
        )
    return None


_ZOBRIST_WORDS: list[int] = []
_ZOBRIST_RNG = random.Random(_ZOBRIST_SEED)


def _zobrist_words(m: int) -> list[int]:
    """The first m words of one fixed seeded sequence (a deterministic constant table,
    grown on demand, so every search uses the same words for the same positions)."""
    words = _ZOBRIST_WORDS
    while len(words) < m:
        words.append(_ZOBRIST_RNG.getrandbits(128))
    return words


def _over_budget(budget: Budget, memo_entries: int, nstates: int = 0) -> str:
    if budget.max_steps is not None and memo_entries >= budget.max_steps:
        return "step limit"
    if budget.deadline is not None and budget.deadline():
        return "time limit"
    limit = budget.memory_limit_bytes
    if limit is not None:
        # The memo set grows its table in jumps (to ~2-4x its size): leave room for the
        # next one so the process stays under the limit, not just near it.
        next_table_bytes = 16 << (2 * memo_entries).bit_length()
        estimate = memo_entries * MEMO_ENTRY_BYTES + nstates * STATE_BYTES
        if estimate + next_table_bytes > limit:
            return "memory limit"
        probe = budget.memory_probe
        if probe is not None and probe() + next_table_bytes + CHECK_EVERY * 64 > limit:
            return "memory limit"
    return ""


def _first_unlinearized_ok(
    items: Sequence[Item], ops: Sequence[Op], ret: list[int], in_prefix: set[int]
) -> int | None:
    best_j = None
    best_ci = 0
    for j, (i, _cop) in enumerate(items):
        if ret[j] < 0 or j in in_prefix:
            continue
        ci = ops[i].complete_index
        ci = ops[i].invoke_index if ci is None else ci
        if best_j is None or ci < best_ci:
            best_j, best_ci = j, ci
    return best_j


def _explain(
    model: Model,
    items: Sequence[Item],
    ops: Sequence[Op],
    failing_j: int | None,
    state: Any,
    depth: int,
    configurations: int,
) -> str:
    if failing_j is None:
        return "No linearization exists (no ok op is left outside the longest prefix found)."
    i, cop = items[failing_j]
    op = ops[i]
    after = model.step(state, cop)
    what = (
        "is illegal in that state"
        if after is None
        else f"is legal there (leaving {model.describe(after)}), but nothing can follow it"
    )
    return (
        f"No linearization exists. The longest linearizable prefix the search found has "
        f"{depth} operations, after which the model state is {model.describe(state)}. "
        f"The next operation that must take effect, {format_op(op)} by process "
        f"{json.dumps(op.process)} (invoked at event {op.invoke_index}, completed at event "
        f"{op.complete_index}), {what}; every other order of the operations concurrent with "
        f"it was tried and fails too ({configurations} configurations searched)."
    )


def format_op(op: Op) -> str:
    """Short human form of an op: ``read -> 3``, ``write 1``, ``cas [1, 2]``."""
    text = op.f
    if op.value is not None:
        text += " " + json.dumps(op.value, default=repr)
    if op.type == "ok" and op.result is not None and op.result != op.value:
        text += " -> " + json.dumps(op.result, default=repr)
    elif op.type != "ok":
        text += f" ({op.type})"
    return text


__all__ = ["Budget", "KeyResult", "check_linearizable", "format_op", "unwrap"]
