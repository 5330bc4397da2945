"""A one-pass sweep that proves a low-concurrency key linearizable, before any search.

Owns ``sweep_linearizable``. It walks one key's ops in invocation order and cuts the key
into *segments* at every point where all ok ops invoked so far have completed (the next
op is invoked after the latest completion so far). Every linearization then places all
ok ops of a segment before all ops of later segments (real-time order), so what the
past can leave behind at a cut is a set of *configurations*: (model state, crashed ops
not yet applied). The sweep carries that set exactly:

  - a segment of one ok op, with one configuration and no crashed op pending (most of a
    cold key: about one op in flight), is one ``model.step``;
  - any other segment is solved by an exhaustive search of its own ops (and the pending
    crashed ops, which may take effect any time after their invocation, or never) from
    every configuration, collecting every configuration in which all its ok ops are
    linearized. A legal read-only op is taken at once (it can always move there);
  - a pending crashed op is forgotten (never applied) once the key's ops that could
    observe its effect are all linearized (``Model.crashed_expiry``; for kv: no read or
    cas expects a value its effect could lead to any more), which is always at least as
    permissive; a configuration whose pending set is a subset of another's with the same
    state is dropped (the other can do everything it can).

The key is linearizable exactly when the set is not empty at the end. The sweep only
ever answers True (proved) or None: an empty set (the key is not linearizable), a
segment or set past its caps, ops not in invocation order, or a model without
``crashed_expiry``. On None the caller runs the search, which decides and builds the
witness; so a verdict never depends on the sweep, only the time does.

It must not read files or clocks (the deadline is a callable), nor keep global state.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from itertools import compress, islice, pairwise, repeat
from operator import attrgetter, ge, itemgetter
from typing import Any

from harness.checker.models import CRASHED, Item, Model, columns
from harness.history import Op

SEGMENT_NODES_MAX = 4096  # configurations one segment's search may visit
CONFIGS_MAX = 64  # configurations carried across a cut
CHECK_EVERY_ITEMS = 1 << 12  # deadline checks every this many ops
_FIRST, _SECOND, _LAST = itemgetter(0), itemgetter(1), itemgetter(-1)
_INVOKE, _COMPLETE, _TYPE = (
    attrgetter("invoke_index"),
    attrgetter("complete_index"),
    attrgetter("type"),
)
_EMPTY: frozenset[int] = frozenset()
_BITS_N = 64
_BITS = [1 << a for a in range(_BITS_N)]

Config = tuple[Any, frozenset[int]]  # (state, positions of pending crashed ops)


class _GiveUp(Exception):
    pass


def sweep_linearizable(
    items: Sequence[Item],
    ops: Sequence[Op],
    model: Model,
    deadline: Callable[[], bool] | None = None,
    *,
    nodes_max: int = SEGMENT_NODES_MAX,
    configs_max: int = CONFIGS_MAX,
) -> bool | None:
    """True when the sweep proves the key's items linearizable; None otherwise (see the
    module docstring: the search must then decide). ``nodes_max`` / ``configs_max``: the
    caps (configurations one segment's search may visit / carried across a cut)."""
    m = len(items)
    if m == 0:
        return True
    # invs[j]: item j's invocation; ends[j]: its completion, or -1 if it is crashed (from
    # the partition's columns when it gathered them, else from the ops).
    cols = columns(items)
    if cols is None:
        item_ops = list(map(ops.__getitem__, map(_FIRST, items)))
        invs = list(map(_INVOKE, item_ops))
        ends = list(map(_COMPLETE, item_ops))
        if None in ends:  # an ok op without a completion event returns at its invocation
            ends = [inv if d is None else d for inv, d in zip(invs, ends, strict=True)]
        types = list(map(_TYPE, item_ops))
        if types.count("ok") != m:
            ends = [d if t == "ok" else -1 for d, t in zip(ends, types, strict=True)]
    else:
        invs, ends = cols
    if any(map(ge, invs, islice(invs, 1, None))):
        return None  # not in invocation order (hand-made op lists): leave it to the search
    cops = list(map(_SECOND, items))
    if CRASHED in map(_LAST, cops):  # ok items marked crashed (write-once copies)
        ends = [-1 if c[-1] is CRASHED else d for d, c in zip(ends, cops, strict=True)]
    crashed: list[int] = []
    if -1 in ends:
        crashed = list(compress(range(m), map((-1).__eq__, ends)))
    expiry: dict[int, int] = {}
    if crashed:
        got = model.crashed_expiry(items, crashed)
        if got is None:
            return None
        expiry = got
        if -1 in expiry.values():
            # Crashed ops nothing observes: leave them out altogether (never applied).
            dropped = sorted(j for j, e in expiry.items() if e < 0)
            keep = bytearray(b"\x01") * m
            for j in dropped:
                keep[j] = 0
            m -= len(dropped)
            invs = list(compress(invs, keep))
            ends = list(compress(ends, keep))
            cops = list(compress(cops, keep))
            # New positions: j minus the dropped ops before it; an expiry e becomes the
            # last kept position <= e.
            expiry = {
                j - bisect_left(dropped, j): e - bisect_right(dropped, e)
                for j, e in expiry.items()
                if e >= 0
            }
            crashed = sorted(expiry)
    if m == 0:
        return True
    # Segment starts: op k starts one when invoked after every earlier ok op completed
    # (crashed ops, -1 in ``ends``, never complete: they do not hold a segment open), in
    # one loop (``accumulate(ends, max)`` is slower: a ``max`` call per op). ``ends``
    # serves as the completions of the ok ops below.
    dones = ends
    crashed_segs: set[int] = set()
    starts = [0]
    top = ends[0]
    for x in range(1, m):
        if invs[x] > top:
            starts.append(x)
        e = ends[x]
        if e > top:
            top = e
    starts.append(m)
    if crashed:
        crashed_segs = {starts[bisect_right(starts, c) - 1] for c in crashed}
    is_crashed = set(crashed)
    ro = model.read_only_list(cops)
    step = model.step
    s: Any = model.init()
    # The configurations at the last cut: the single state ``s`` (``states`` and
    # ``configs`` None: the common case), a set of states with nothing pending
    # (``states``), or configurations with pending crashed ops (``configs``).
    states: set[Any] | None = None
    configs: list[Config] | None = None
    pending_expiry: list[tuple[int, int]] = []  # (expires after position, crashed pos)
    budget = [nodes_max]
    countdown = CHECK_EVERY_ITEMS
    try:
        for j, k in pairwise(starts):
            if k - j == 1 and states is None and configs is None and j not in crashed_segs:
                s = step(s, cops[j])  # the common case: one op, one state
                if s is None:
                    return None
                continue
            countdown -= k - j
            if countdown <= 0:
                countdown = CHECK_EVERY_ITEMS
                if deadline is not None and deadline():
                    return None
            if k - j == 2 and states is None and configs is None and j not in crashed_segs:
                # Two overlapping ops from one state (``_solve_plain``'s case, inlined).
                ca = cops[j]
                cb = cops[j + 1]
                sa = step(s, ca)
                if sa is not None and ro[j]:
                    s = step(sa, cb)
                    if s is None:
                        return None
                    continue
                sb = step(s, cb)
                if sb is not None and ro[j + 1]:
                    if sa is None:
                        return None
                    s = sa
                    continue
                sab = None if sa is None else step(sa, cb)
                sba = None if sb is None else step(sb, ca)
                if sab is None or sba is None or sab == sba:
                    s = sba if sab is None else sab
                    if s is None:
                        return None
                elif configs_max < 2:
                    raise _GiveUp
                else:
                    states = {sab, sba}
                continue
            if configs is None and j not in crashed_segs:
                got_states = _solve_plain(
                    {s} if states is None else states, j, k, invs, dones, cops, ro, step, nodes_max
                )
                if not got_states:
                    return None
                if len(got_states) == 1:
                    (s,) = got_states
                    states = None
                elif len(got_states) > configs_max:
                    raise _GiveUp
                else:
                    states = got_states
                continue
            # Crashed ops around: the general segment search with pending sets.
            if configs is None:
                configs = [(s, _EMPTY)] if states is None else [(t, _EMPTY) for t in states]
            budget[0] = nodes_max
            if k - j == 1:
                if j in is_crashed:  # a crashed op alone: pending in every configuration
                    pend = frozenset((j,))
                    ends = [(st, p | pend) for st, p in configs]
                    pending_expiry.append((expiry.get(j, m), j))
                else:
                    ends = _solve_one(configs, j, cops, invs, dones, ro, step, budget)
            else:
                seg = [x for x in range(j, k) if x not in is_crashed]
                seg_crashed = [x for x in range(j, k) if x in is_crashed]
                ends = _solve_segment(
                    configs, seg, seg_crashed, cops, invs, dones, ro, step, budget
                )
                for c in seg_crashed:
                    pending_expiry.append((expiry.get(c, m), c))
            # Forget crashed ops nothing from k on can observe.
            gone = {c for e, c in pending_expiry if e < k}
            if gone:
                pending_expiry = [(e, c) for e, c in pending_expiry if c not in gone]
                ends = [(st, p - gone) for st, p in ends]
            configs = _undominated(ends)
            if not configs:
                return None
            if len(configs) > configs_max:
                raise _GiveUp
            if not any(p for _st, p in configs):
                states = {st for st, _p in configs}
                configs = None
                if len(states) == 1:
                    (s,) = states
                    states = None
    except _GiveUp:
        return None
    return True


def _solve_segment(
    start: list[Config],
    seg: list[int],
    seg_crashed: list[int],
    cops: list[Any],
    invs: list[int],
    dones: list[int],
    ro: list[bool],
    step: Callable[[Any, Any], Any],
    budget: list[int],
) -> list[Config]:
    """Every configuration reachable from ``start`` once all ok ops in ``seg`` are
    linearized. Breadth-first by the set of the segment's ok ops linearized (a bit
    mask): per mask the candidates are the ops invoked before the earliest completion
    left (Lowe's rule), and between two of them any pending crashed op invoked before
    that completion may be applied. Raises ``_GiveUp`` past ``budget[0]`` configurations."""
    n = len(seg)
    full = (1 << n) - 1
    sinv = [invs[k] for k in seg]
    sdone = [dones[k] for k in seg]
    scop = [cops[k] for k in seg]
    sro = [ro[k] for k in seg]
    left = budget[0]
    new_crashed = frozenset(seg_crashed)
    level: dict[int, set[Config]] = {
        0: {(st, p | new_crashed) for st, p in start} if new_crashed else set(start)
    }
    for _depth in range(n):
        nxt: dict[int, set[Config]] = {}
        for mask, configs in level.items():
            lim = min([sdone[a] for a in range(n) if not mask >> a & 1])
            cands = [a for a in range(n) if not mask >> a & 1 and sinv[a] <= lim]
            work = list(configs)
            while work:
                st, p = work.pop()
                for a in cands:
                    if sro[a] and step(st, scop[a]) is not None:
                        # A legal read-only op: take it now, nothing else (any order with
                        # it later can move it here).
                        nxt.setdefault(mask | 1 << a, set()).add((st, p))
                        break
                else:
                    for a in cands:
                        ns = step(st, scop[a])
                        if ns is not None:
                            nxt.setdefault(mask | 1 << a, set()).add((ns, p))
                    for c in p:
                        if invs[c] <= lim:
                            ns = step(st, cops[c])
                            if ns is not None:
                                cfg = (ns, p - {c})
                                if cfg not in configs:
                                    configs.add(cfg)
                                    work.append(cfg)
                left -= len(cands) + 1
            if left < 0:
                raise _GiveUp
        level = nxt
        if not level:
            return []
    budget[0] = left
    return list(level.get(full, ()))


def _solve_one(
    start: list[Config],
    x: int,
    cops: list[Any],
    invs: list[int],
    dones: list[int],
    ro: list[bool],
    step: Callable[[Any, Any], Any],
    budget: list[int],
) -> list[Config]:
    """``_solve_segment`` for a segment of one ok op ``x`` and no new crashed op (the same
    configurations, without its per-mask bookkeeping): from each configuration, ``x``
    now, or first some of the pending crashed ops invoked before ``x`` completed, one at a
    time (a legal read-only ``x`` is taken at once, with nothing applied before it)."""
    cx = cops[x]
    rox = ro[x]
    lim = dones[x]
    seen = set(start)
    work = list(seen)
    out: set[Config] = set()
    left = budget[0]
    while work:
        st, p = work.pop()
        left -= 2
        ns = step(st, cx)
        if ns is not None:
            if rox:
                out.add((st, p))
                continue
            out.add((ns, p))
        for c in p:
            if invs[c] <= lim:
                t = step(st, cops[c])
                if t is not None:
                    cfg = (t, p - {c})
                    if cfg not in seen:
                        seen.add(cfg)
                        work.append(cfg)
    if left < 0:
        raise _GiveUp
    budget[0] = left
    return list(out)


def _solve_plain(
    states: set[Any],
    j: int,
    k: int,
    invs: list[int],
    dones: list[int],
    cops: list[Any],
    ro: list[bool],
    step: Callable[[Any, Any], Any],
    nodes_max: int,
) -> set[Any]:
    """Every state reachable from ``states`` by linearizing the ok ops ``j..k-1`` (no
    crashed op pending): depth first over (linearized mask, state) with a visited set,
    Lowe's candidate rule, legal read-only ops taken at once. Two ops (both candidates
    from the start: the second was invoked before the first completed) are written out."""
    if k - j == 2:
        ca = cops[j]
        cb = cops[j + 1]
        ro_a = ro[j]
        ro_b = ro[j + 1]
        out: set[Any] = set()
        for st in states:
            sa = step(st, ca)
            if sa is not None and ro_a:
                sab = step(sa, cb)
                if sab is not None:
                    out.add(sab)
                continue
            sb = step(st, cb)
            if sb is not None and ro_b:
                if sa is not None:
                    out.add(sa)
                continue
            if sa is not None:
                sab = step(sa, cb)
                if sab is not None:
                    out.add(sab)
            if sb is not None:
                sba = step(sb, ca)
                if sba is not None:
                    out.add(sba)
        return out
    n = k - j
    if n == 1:
        c = cops[j]
        return {ns for ns in map(step, states, repeat(c, len(states))) if ns is not None}
    if n == 3 and invs[j + 1] <= dones[j] and invs[j + 2] <= max(dones[j], dones[j + 1]):
        return _solve_three(states, j, invs, dones, cops, step)  # as the sweep cuts them
    full = (1 << n) - 1
    scop = cops[j:k]
    sro = ro[j:k]
    sdone = dones[j:k]
    # Lowe's rule: the candidates are the ops invoked before the earliest completion left;
    # the ops are in invocation order, so they are the unlinearized ones of a prefix. With
    # the ops sorted by completion, ``ncand[t]`` is that prefix's length while the t-th
    # earliest completion is the earliest left. Per node, ``t`` (the first unlinearized op
    # in completion order) and ``lo`` (the first in invocation order) only move forward.
    by_done = sorted(range(n), key=sdone.__getitem__)
    bits = _BITS if n <= _BITS_N else [1 << a for a in range(n)]
    done_bit = list(map(bits.__getitem__, by_done))
    ncand = [bisect_right(invs, d, j, k) - j for d in sorted(sdone)]
    out: set[Any] = set()
    stack = list(zip(repeat(0), states, repeat(0), repeat(0)))
    seen: set[tuple[int, Any]] = set()  # (mask, state) of the nodes pushed (never mask 0)
    left = nodes_max
    while stack:
        mask, st, t, lo = stack.pop()
        while mask != full:
            while mask & done_bit[t]:
                t += 1
            while mask & bits[lo]:
                lo += 1
            hi = ncand[t]
            left -= hi - lo
            if hi - lo == 1:  # one candidate (the first unlinearized op): follow it
                ns = step(st, scop[lo])
                if ns is None:
                    break  # a dead end
                mask |= bits[lo]
                st = ns
                continue
            first = None  # the first child; more go to ``children``
            children = None
            for a in range(lo, hi):
                if mask & bits[a]:
                    continue
                ns = step(st, scop[a])
                if ns is not None:
                    if sro[a]:  # a legal read-only op: the only child (forced)
                        first = (mask | bits[a], ns)
                        children = None
                        break
                    if first is None:
                        first = (mask | bits[a], ns)
                    elif children is None:
                        children = [first, (mask | bits[a], ns)]
                    else:
                        children.append((mask | bits[a], ns))
            if left < 0:
                raise _GiveUp
            if children is None:
                if first is None:
                    break  # a dead end
                mask, st = first  # one child: follow it at once, no visited entry
                continue
            for node in children:
                if node not in seen:
                    seen.add(node)
                    stack.append((node[0], node[1], t, lo))
            break
        else:
            out.add(st)
    return out


def _solve_three(
    states: set[Any],
    j: int,
    invs: list[int],
    dones: list[int],
    cops: list[Any],
    step: Callable[[Any, Any], Any],
) -> set[Any]:
    """``_solve_plain`` for a segment of three ok ops a, b, c (invocation order), by
    enumerating its orders. As the sweep cuts segments, b was invoked before a completed
    and c before the later of a's and b's completions, so real time can only force a
    before c (a completed before c was invoked) or b before c; every other pair may go
    either way. The end states are those of every order it allows (no read-only shortcut
    needed: it only ever saves work, never changes the set)."""
    ca = cops[j]
    cb = cops[j + 1]
    cc = cops[j + 2]
    ic = invs[j + 2]
    c_after_a = dones[j] < ic
    c_after_b = dones[j + 1] < ic
    out: set[Any] = set()
    add = out.add
    for s in states:
        sa = step(s, ca)
        if sa is not None:
            t = step(sa, cb)
            if t is not None:
                t = step(t, cc)
                if t is not None:
                    add(t)  # a b c
            if not c_after_b:
                t = step(sa, cc)
                if t is not None:
                    t = step(t, cb)
                    if t is not None:
                        add(t)  # a c b
        sb = step(s, cb)
        if sb is not None:
            t = step(sb, ca)
            if t is not None:
                t = step(t, cc)
                if t is not None:
                    add(t)  # b a c
            if not c_after_a:
                t = step(sb, cc)
                if t is not None:
                    t = step(t, ca)
                    if t is not None:
                        add(t)  # b c a
        if not c_after_a and not c_after_b:
            sc = step(s, cc)
            if sc is not None:
                t = step(sc, ca)
                if t is not None:
                    t = step(t, cb)
                    if t is not None:
                        add(t)  # c a b
                t = step(sc, cb)
                if t is not None:
                    t = step(t, ca)
                    if t is not None:
                        add(t)  # c b a
    return out


def _undominated(configs: list[Config]) -> list[Config]:
    """The configurations without duplicates and without those whose pending set is a
    subset of another's with the same state."""
    if len(configs) <= 1:
        return configs
    by_state: dict[Any, list[frozenset[int]]] = {}
    for st, p in configs:
        by_state.setdefault(st, []).append(p)
    out: list[Config] = []
    for st, ps in by_state.items():
        if len(ps) == 1:
            out.append((st, ps[0]))
            continue
        uniq = sorted(set(ps), key=len, reverse=True)
        kept: list[frozenset[int]] = []
        for p in uniq:
            if not any(p <= q for q in kept):
                kept.append(p)
        out.extend((st, p) for p in kept)
    return out


__all__ = ["sweep_linearizable"]
