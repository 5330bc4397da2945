"""Sequential models for the linearizability checker (pure, hashable states).

Owns the semantics of each datatype: how a paired ``Op`` compiles to a small hashable
"compiled op" (``cop``) per key, and ``step(state, cop) -> new state | None`` (None = the
op is illegal in that state). Also a cheap, sound ``precheck`` per key that spots values
no operation could have produced. It must not search, pair events, read files or keep
any mutable state: models are plain data plus pure functions.

Conventions: ``fail`` ops never took effect and are dropped; crashed (``info``) reads carry
no information and are dropped; crashed writes / cas / appends / acquires keep their
effect and the search may linearize them at any time after invocation, or never. An item
whose cop ends with ``CRASHED`` counts as crashed even when its op is ok (a write-once
append's abandoned copy at a position other than the acknowledged one): use ``item_ok``,
never ``ops[i].type`` alone, to tell whether an item must be linearized. ``partition``
may drop crashed ops that provably cannot matter (a register write nothing reads, a kv
write or append no read or cas could ever match): "never took effect" is then always at
least as permissive.
Initial values: register, cas-register and multi-register start at nil (None), a kv key
starts as "" (a kv read of nil is read as ""), the mutex starts free, a write-once
position starts unwritten (None).
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Hashable, Sequence
from itertools import accumulate, compress, pairwise
from operator import attrgetter, itemgetter
from typing import Any, cast

from harness.history import HistoryError, Op

Cop = tuple[Any, ...]
# A compiled op in a key's sub-history: (index of the op in the input list, cop).
Item = tuple[int, Cop]
SINGLE_KEY = None


_CONTAINERS = (list, tuple, dict)
_SCALARS = frozenset((str, int, float, bool, type(None)))  # freeze() returns these as they are
_TYPE, _FIRST, _SECOND = attrgetter("type"), itemgetter(0), itemgetter(1)
_EXPECTS = frozenset(("r", "c"))  # kinds of kv cops whose second field is an expected value


def freeze(v: Any) -> Any:
    """A hashable copy of a JSON value (lists -> tuples, dicts -> sorted item tuples)."""
    t = type(v)
    if t is list or t is tuple:
        for x in v:
            if type(x) in _CONTAINERS:
                return tuple(freeze(y) for y in v)
        return tuple(v)  # flat (the common case: a position, a cas pair)
    if t is dict:
        return tuple(sorted(((k, freeze(x)) for k, x in v.items()), key=repr))
    if isinstance(v, list | tuple):  # subclasses
        return tuple(freeze(x) for x in v)
    return v


def _pair(v: Any, what: str, op: Op) -> tuple[Any, Any]:
    if isinstance(v, list | tuple) and len(v) == 2:
        return freeze(v[0]), freeze(v[1])
    raise HistoryError(f"op at event {op.invoke_index}: {what} value must be [old, new], got {v!r}")


class KeyItems(list):  # type: ignore[type-arg]
    """One key's items (a ``list[Item]``) as ``Model.partition`` built them, with columns it
    gathered in the same pass over the ops, so the per-key checks need not visit the op
    objects again: ``invs[j]``, the invoke index of item j's op, and ``ends[j]``, its
    completion index when the item must take effect before it (an ok op: its invoke index
    if it has no completion event), else -1 (crashed). A copy or a filtered list is a
    plain list again (the columns would not match it); readers check with ``columns``."""

    __slots__ = ("ends", "invs")

    def __init__(self, items: list[Item], invs: list[int], ends: list[int]) -> None:
        super().__init__(items)
        self.invs = invs
        self.ends = ends


def columns(items: Sequence[Item]) -> tuple[list[int], list[int]] | None:
    """(invs, ends) of ``items`` when the partition gathered them (``KeyItems``), else None."""
    if type(items) is KeyItems and len(items.invs) == len(items) == len(items.ends):
        return items.invs, items.ends
    return None


def _reads_and_identity_cas(cops: Sequence[Cop]) -> list[bool]:
    """Read-only ops of the register and kv models: reads, and cas of a value to itself
    (one comprehension: on CPython 3.11 it beats ``map`` over ``"r".__eq__`` fourfold)."""
    return [c[0] == "r" or (c[0] == "c" and c[1] == c[2]) for c in cops]


class Model:
    """Base class: a single-key model; subclasses define ``compile_op`` and ``step``."""

    name = "model"
    # True when a key with only appends and reads may be decided by
    # ``append_order.check_append_order`` (the state is the concatenation of the appends).
    appends_concatenate = False
    # True when ``_check_key`` tries ``harness.checker.sweep`` first on low-concurrency keys.
    sweeps = False

    def init(self) -> Hashable:
        """The initial state."""
        return None

    def compile_op(self, op: Op) -> list[tuple[Any, Cop]]:
        """(key, cop) pairs for one ok/info op; [] when the op carries no constraint."""
        raise NotImplementedError

    def step(self, state: Any, cop: Cop) -> Any:
        """The state after ``cop``, or None when ``cop`` is illegal in ``state``.

        Models whose legal states include None wrap them (see ``NIL``)."""
        raise NotImplementedError

    def partition(self, ops: Sequence[Op]) -> dict[Any, list[Item]]:
        """Split the history into independent keys (P-compositionality)."""
        parts: dict[Any, list[Item]] = defaultdict(list)
        for i, op in enumerate(ops):
            if op.type == "fail":
                continue
            for key, cop in self.compile_op(op):
                parts[key].append((i, cop))
        return dict(parts)

    def precheck(self, items: Sequence[Item], ops: Sequence[Op]) -> tuple[int, str] | None:
        """A sound quick refutation for one key: (op index, explanation) or None."""
        return None

    def read_only(self, cop: Cop) -> bool:
        """True when ``cop`` never changes any state it is legal in (a read).

        The search linearizes a legal read-only op at once, without branching on it."""
        if cop[0] == "r":
            return True
        if cop[0] == "c":
            return bool(cop[1] == cop[2])
        return False

    def requires(self, cop: Cop) -> Any:
        """The one state in which ``cop`` is legal, or ``ANY_STATE`` if not that simple."""
        return ANY_STATE

    def produces(self, cop: Cop) -> Any:
        """The state ``cop`` leaves behind whatever the state before (``KEEPS`` for a read,
        ``DEPENDS`` when the result depends on the prior state). The search uses
        ``requires``/``produces`` to drop a configuration as soon as some unlinearized ok op
        needs a state that is not current and that no remaining op can produce; a single
        ``DEPENDS`` op in a key disables that (and the stale-read precheck)."""
        return DEPENDS

    def prune(self, items: Sequence[Item], ops: Sequence[Op]) -> Sequence[Item]:
        """The key's items without crashed ops that provably cannot matter ("never took
        effect" is always at least as permissive), for the search and the prechecks; the
        sweep forgets such ops itself (``crashed_expiry``). The default keeps them all."""
        return items

    def refine(self, items: Sequence[Item]) -> Sequence[Item]:
        """The key's items for the full search: the same ops in the same order, cops
        possibly replaced by equivalent ones that let the search merge states (kv: the
        poisoned appends). The first, lean search and the prechecks skip it."""
        return items

    def facts(self, cops: Sequence[Cop]) -> tuple[list[bool], list[Any], list[Any]]:
        """``read_only``, ``produces`` and ``requires`` of each cop, as three lists (the
        search asks once per distinct cop; models override this with a faster loop that
        must give the same answers)."""
        return (
            self.read_only_list(cops),
            [self.produces(c) for c in cops],
            [self.requires(c) for c in cops],
        )

    def read_only_list(self, cops: Sequence[Cop]) -> list[bool]:
        """``read_only`` of each cop (models may override it with a faster loop)."""
        return [self.read_only(c) for c in cops]

    def canonicalizer(self, items: Sequence[Item]) -> Any:
        """None, or a function mapping a state to an equivalent canonical one for this
        key's ops (states that no op can tell apart may be merged so the memo sees it)."""
        return None

    def stepper(self, items: Sequence[Item]) -> Any:
        """``step`` followed by this key's ``canonicalizer`` (a legal result), as one
        function of (state, cop); models may override it with a faster equivalent."""
        canon = self.canonicalizer(items)
        if canon is None:
            return self.step
        base_step = self.step

        def step(state: Any, cop: Cop) -> Any:
            after = base_step(state, cop)
            return after if after is None else canon(after)

        return step

    def producible(self, needed: Sequence[Any], cops: Sequence[Cop]) -> list[list[int]] | None:
        """For ``DEPENDS`` ops: per cop, the indexes into ``needed`` of the states it could
        leave behind from some prior state (an over-approximation is fine); None when
        unknown, which disables the pruning that needs it."""
        return None

    def finds_linearization(self, items: Sequence[Item], ops: Sequence[Op]) -> bool:
        """True when a cheap construction finds a linearization of the key's items and
        checks it (real-time order and every step legal, from the initial state): the key
        is then linearizable. False says nothing (the search decides). The default never
        tries."""
        return False

    def crashed_expiry(
        self, items: Sequence[Item], crashed: Sequence[int]
    ) -> dict[int, int] | None:
        """For the sweep (``harness.checker.sweep``): per crashed item position j, a
        position after which applying it can no longer matter (once every item up to that
        position is linearized, "never applied" is at least as permissive); None when the
        model cannot tell, which turns the sweep off for keys with crashed ops."""
        return None

    def describe(self, state: Any) -> str:
        """Human-readable state for witnesses."""
        return repr(unwrap(state))

    def describe_cop(self, cop: Cop) -> str:
        return f"{cop[0]} {', '.join(repr(x) for x in cop[1:] if x is not CRASHED)}"


class _Nil:
    """The nil register value inside a state (states may not be None: None means illegal)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "nil"

    def __reduce__(self) -> str:
        return "NIL"


NIL: Any = _Nil()


class _Sentinel:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


ANY_STATE: Any = _Sentinel("ANY_STATE")
GARBAGE: Any = _Sentinel("GARBAGE")  # a kv value no read or cas can ever match again
KEEPS: Any = _Sentinel("KEEPS")
DEPENDS: Any = _Sentinel("DEPENDS")
CRASHED: Any = _Sentinel("CRASHED")  # last element of a cop: crashed though its op is ok


def item_ok(ops: Sequence[Op], i: int, cop: Cop) -> bool:
    """True when item ``(i, cop)`` must take effect before its op's completion (an ok op
    not marked ``CRASHED``); False when it may take effect any time after its invocation,
    or never."""
    return ops[i].type == "ok" and cop[-1] is not CRASHED


def wrap(v: Any) -> Any:
    return NIL if v is None else v


def unwrap(v: Any) -> Any:
    return None if v is NIL else v


# --- register / cas-register ---------------------------------------------------------


class RegisterModel(Model):
    """A read/write register starting at nil. cops: ("w", v), ("r", v)."""

    name = "register"
    allow_cas = False

    def __init__(self, initial: Any = None) -> None:
        self._init = wrap(freeze(initial))

    def init(self) -> Any:
        return self._init

    def compile_op(self, op: Op) -> list[tuple[Any, Cop]]:
        f = op.f
        if f == "read":
            if op.type != "ok":
                return []
            return [(SINGLE_KEY, ("r", wrap(freeze(op.result))))]
        if f == "write":
            return [(SINGLE_KEY, ("w", wrap(freeze(op.value))))]
        if f == "cas" and self.allow_cas:
            old, new = _pair(op.value, "cas", op)
            return [(SINGLE_KEY, ("c", wrap(old), wrap(new)))]
        raise HistoryError(f"op at event {op.invoke_index}: {self.name} has no op {f!r}")

    def step(self, state: Any, cop: Cop) -> Any:
        k = cop[0]
        if k == "w":
            return cop[1]
        if k == "r":
            return state if state == cop[1] else None
        return cop[2] if state == cop[1] else None  # cas

    def requires(self, cop: Cop) -> Any:
        return cop[1] if cop[0] in ("r", "c") else ANY_STATE

    def produces(self, cop: Cop) -> Any:
        k = cop[0]
        return cop[1] if k == "w" else cop[2] if k == "c" else KEEPS

    def read_only_list(self, cops: Sequence[Cop]) -> list[bool]:
        return _reads_and_identity_cas(cops)

    def facts(self, cops: Sequence[Cop]) -> tuple[list[bool], list[Any], list[Any]]:
        ro = self.read_only_list(cops)
        prod = [c[1] if c[0] == "w" else c[2] if c[0] == "c" else KEEPS for c in cops]
        req = [c[1] if c[0] != "w" else ANY_STATE for c in cops]
        return ro, prod, req

    def partition(self, ops: Sequence[Op]) -> dict[Any, list[Item]]:
        """``compile_op`` for every op, inlined (the same cops, faster for long histories)."""
        items: list[Item] = []
        add = items.append
        allow_cas = self.allow_cas
        crashed = False
        i = -1
        # Plain attribute reads (specialized on CPython 3.11; an attrgetter is slower).
        for op in ops:
            i += 1
            f = op.f
            t = op.type
            if f == "read":
                if t == "ok":
                    res = op.result
                    if type(res) not in _SCALARS:
                        res = freeze(res)
                    add((i, ("r", NIL if res is None else res)))
            elif t == "fail":
                continue
            elif f == "write":
                v = op.value
                if type(v) not in _SCALARS:
                    v = freeze(v)
                add((i, ("w", NIL if v is None else v)))
                if t != "ok":
                    crashed = True
            elif f == "cas" and allow_cas:
                old, new = _pair(op.value, "cas", op)
                add((i, ("c", wrap(old), wrap(new))))
                if t != "ok":
                    crashed = True
            else:
                self.compile_op(op)  # raises the usual HistoryError
        if not items:
            return {}
        if not crashed:
            return {SINGLE_KEY: items}  # nothing crashed: nothing to drop
        return {SINGLE_KEY: _drop_unobserved_crashed_writes(items, ops)}

    def precheck(self, items: Sequence[Item], ops: Sequence[Op]) -> tuple[int, str] | None:
        return _value_from_nowhere(items, ops, self.init(), _register_producers)

    def finds_linearization(self, items: Sequence[Item], ops: Sequence[Op]) -> bool:
        return _register_linearization(items, ops, self._init)


class CasRegisterModel(RegisterModel):
    """A register with compare-and-set. cops: ("w", v), ("r", v), ("c", old, new)."""

    name = "cas-register"
    allow_cas = True


def _register_producers(cop: Cop) -> Any:
    if cop[0] == "w":
        return cop[1]
    if cop[0] == "c":
        return cop[2]
    return _NO_VALUE


_NO_VALUE = object()


def _value_from_nowhere(
    items: Sequence[Item], ops: Sequence[Op], initial: Any, produced: Any
) -> tuple[int, str] | None:
    """An ok read of a value no op invoked before the read completed could have produced."""
    first_invoke: dict[Any, int] = {}
    for i, cop in items:
        v = produced(cop)
        if v is _NO_VALUE:
            continue
        inv = ops[i].invoke_index
        if v not in first_invoke or inv < first_invoke[v]:
            first_invoke[v] = inv
    for i, cop in items:
        if cop[0] != "r" or not item_ok(ops, i, cop):
            continue
        v = cop[1]
        if v == initial:
            continue
        first = first_invoke.get(v)
        op = ops[i]
        done = op.complete_index if op.complete_index is not None else op.invoke_index
        if first is None:
            return i, f"read returned {unwrap(v)!r}, a value no operation ever wrote"
        if first > done:
            return i, (
                f"read returned {unwrap(v)!r}, but the first write of that value was invoked "
                f"(event {first}) after the read completed (event {done})"
            )
    return None


def _register_linearization(items: Sequence[Item], ops: Sequence[Op], init: Any) -> bool:
    """A linearization of a register key whose writes all write distinct values (none the
    initial one), in O(n log n), checked before it says True; False when the key is not of
    that kind or the construction fails (then the search decides).

    With distinct values a value's *cluster* (its write and the reads of it; the initial
    value's reads, with no write) is one contiguous block of any linearization, the write
    first: once another write follows, the value never comes back. So a linearization is
    an order of the clusters, each written as its write then its reads by invocation, and
    real time only asks, for a cluster X placed before a cluster Y, that no op of Y
    completed before an op of X was invoked: I(X) < R(Y), with I the latest invocation in
    a cluster and R the earliest completion (a crashed op never completes). Sorting the
    clusters by min(I, R) gives such an order whenever one exists (Gibbons and Korach's
    zones: if X sorts before Y and I(X) > R(Y), then R(X) < I(X) and Y cannot go first
    either). Crashed writes nothing reads are left out (never applied); a crashed write
    that is read takes effect, with no completion. Whatever the argument, the order is
    replayed against real time and the register before the answer is True."""
    m = len(items)
    if m == 0:
        return True
    inf = 1 << 62
    invs = [0] * m
    resps = [0] * m
    vals: list[Any] = [None] * m
    writes = bytearray(m)
    writer: dict[Any, int] = {}
    hi: dict[Any, int] = {}  # value -> latest invocation in its cluster (I)
    lo: dict[Any, int] = {}  # value -> earliest completion in its cluster (R)
    read_vals: set[Any] = set()
    for j, (i, cop) in enumerate(items):
        op = ops[i]
        inv = op.invoke_index
        if op.type == "ok":
            done = op.complete_index
            resp = inv if done is None else done
        else:
            resp = inf
        k = cop[0]
        v = cop[1]
        if k == "w":
            if v in writer or v == init:
                return False
            writer[v] = j
            writes[j] = 1
        elif k == "r":
            read_vals.add(v)
        else:
            return False  # cas: not this construction's
        invs[j] = inv
        resps[j] = resp
        vals[j] = v
        top = hi.get(v)
        if top is None:
            hi[v] = inv
            lo[v] = resp
        else:
            if inv > top:
                hi[v] = inv
            if resp < lo[v]:
                lo[v] = resp
    # Cluster ranks: min(I, R); the initial value's cluster first.
    rank: dict[Any, int] = {}
    for v, top in hi.items():
        if v in writer:
            low = lo[v]
            rank[v] = top if top < low else low
        elif v == init:
            rank[v] = -1
        else:
            return False  # a value nothing wrote: not linearizable, or not this kind
    big = 2 * (max(invs) + 2)
    keys = [
        (rank[v] + 1) * big + (0 if w else 2 * inv + 1)
        for v, w, inv in zip(vals, writes, invs, strict=True)
    ]
    order = sorted(range(m), key=keys.__getitem__)
    # The check: no op completed before an op earlier in the order was invoked, and every
    # read returns what the last write wrote.
    state = init
    latest = -1
    for j in order:
        if resps[j] == inf and writes[j] and vals[j] not in read_vals:
            continue  # a crashed write nothing reads: never applied
        if resps[j] <= latest:
            return False
        if invs[j] > latest:
            latest = invs[j]
        if writes[j]:
            state = vals[j]
        elif vals[j] != state:
            return False
    return True


def _drop_unobserved_crashed_writes(items: list[Item], ops: Sequence[Op]) -> list[Item]:
    """Crashed writes / cas whose new value nothing ever observes cannot matter: drop them.

    Sound for (cas-)registers: after such an op no read and no cas can be linearized until
    the next write, so "never took effect" is always at least as permissive.
    """
    observed: set[Any] = set()
    for _i, cop in items:
        if cop[0] == "r" or cop[0] == "c":  # a read's value / a cas's expected old value
            observed.add(cop[1])
    out: list[Item] = []
    for i, cop in items:
        if not item_ok(ops, i, cop) and cop[0] in ("w", "c"):
            new = cop[1] if cop[0] == "w" else cop[2]
            if new not in observed:
                continue
        out.append((i, cop))
    return out


# --- key-value map ---------------------------------------------------------------------


class KVModel(Model):
    """A map of string registers, checked key by key; each key starts as "".

    cops: ("r", v), ("w", v), ("c", old, new), ("a", suffix)."""

    appends_concatenate = True
    sweeps = True
    name = "kv"

    def init(self) -> Any:
        return ""

    def compile_op(self, op: Op) -> list[tuple[Any, Cop]]:
        f = op.f
        key = freeze(op.key)
        if f == "read":
            if op.type != "ok":
                return []
            v = op.result
            return [(key, ("r", "" if v is None else v))]
        if f == "write":
            return [(key, ("w", _kv_str(op.value, op)))]
        if f == "cas":
            old, new = _pair(op.value, "cas", op)
            return [(key, ("c", _kv_str(old, op), _kv_str(new, op)))]
        if f == "append":
            return [(key, ("a", _kv_str(op.value, op)))]
        raise HistoryError(f"op at event {op.invoke_index}: kv has no op {f!r}")

    def step(self, state: Any, cop: Cop) -> Any:
        k = cop[0]
        if k == "r":
            return state if state == cop[1] else None
        if k == "w":
            return cop[1]
        if k == "a":
            return GARBAGE if state is GARBAGE else state + cop[1]
        if k == "a!":
            return GARBAGE
        return cop[2] if state == cop[1] else None

    def requires(self, cop: Cop) -> Any:
        return cop[1] if cop[0] in ("r", "c") else ANY_STATE

    def produces(self, cop: Cop) -> Any:
        k = cop[0]
        if k == "a":
            return KEEPS if cop[1] == "" else DEPENDS
        if k == "a!":
            return GARBAGE
        return cop[1] if k == "w" else cop[2] if k == "c" else KEEPS

    def read_only_list(self, cops: Sequence[Cop]) -> list[bool]:
        return _reads_and_identity_cas(cops)

    def facts(self, cops: Sequence[Cop]) -> tuple[list[bool], list[Any], list[Any]]:
        ro = self.read_only_list(cops)
        prod = [
            c[1]
            if c[0] == "w"
            else c[2]
            if c[0] == "c"
            else KEEPS
            if c[0] == "r" or c[1:] == ("",)
            else DEPENDS
            if c[0] == "a"
            else GARBAGE
            for c in cops
        ]
        req = [c[1] if c[0] == "r" or c[0] == "c" else ANY_STATE for c in cops]
        return ro, prod, req

    def partition(self, ops: Sequence[Op]) -> dict[Any, list[Item]]:
        """``compile_op`` for every op, inlined (the same cops, faster for long histories).
        Dropping the crashed ops nothing can observe waits for ``prune`` (only the search
        needs it: the sweep forgets them by itself), poisoning the unobserved ok appends
        for ``refine`` (only the full search needs it)."""
        # Per key: its items and their columns (``KeyItems``). Plain attribute reads: on
        # CPython 3.11 they are specialized for slotted ``Op``s, and much cheaper than an
        # ``attrgetter`` of the same fields.
        parts: dict[Any, KeyItems] = {}
        # Per key, the bound appends of its items and columns (fewer lookups per op).
        add: dict[Any, tuple[Any, Any, Any]] = {}
        get = add.get
        i = -1
        for op in ops:
            i += 1
            f = op.f
            t = op.type
            if f == "read":
                if t != "ok":
                    continue
                res = op.result
                cop: Cop = ("r", "" if res is None else res)
            elif t == "fail":
                continue
            elif f == "write":
                v = op.value
                cop = ("w", v) if type(v) is str else ("w", _kv_str(v, op))
            elif f == "append":
                v = op.value
                cop = ("a", v) if type(v) is str else ("a", _kv_str(v, op))
            else:
                v = op.value
                if (
                    f == "cas"
                    and type(v) is list
                    and len(v) == 2
                    and type(v[0]) is type(v[1]) is str
                ):
                    cop = ("c", v[0], v[1])
                else:
                    ((_k, cop),) = self.compile_op(op)  # cas, or the usual HistoryError
            key = op.key
            if type(key) is not str and type(key) not in _SCALARS:
                key = freeze(key)
            adders = get(key)
            if adders is None:
                slot = parts[key] = KeyItems([], [], [])
                adders = add[key] = (slot.append, slot.invs.append, slot.ends.append)
            adders[0]((i, cop))
            inv = op.invoke_index
            adders[1](inv)
            # The end column: the completion for ok ops (the invocation without one), -1
            # for crashed ones.
            if t == "ok":
                done = op.complete_index
                adders[2](inv if done is None else done)
            else:
                adders[2](-1)
        return cast(dict[Any, list[Item]], parts)

    def prune(self, items: Sequence[Item], ops: Sequence[Op]) -> Sequence[Item]:
        return _drop_unobserved_kv(list(items), ops)

    def refine(self, items: Sequence[Item]) -> Sequence[Item]:
        return _poison_appends(items, _maximal_expected(items))

    def canonicalizer(self, items: Sequence[Item]) -> Any:
        """With appends: a value that is a prefix of no value a read or cas expects can never
        become one (appends only extend it) and matches nothing: it is GARBAGE."""
        if not any(cop[0] == "a" for _i, cop in items):
            return None
        # A prefix of some expected value is a prefix of a maximal one, and the values
        # starting with ``state`` come first among those >= it: one bisect decides.
        expected = _maximal_expected(items)
        n = len(expected)
        bisect_left = bisect.bisect_left

        def canon(state: Any) -> Any:
            if state is GARBAGE:
                return state
            k = bisect_left(expected, state)
            if k < n and expected[k].startswith(state):
                return state
            return GARBAGE

        return canon

    def stepper(self, items: Sequence[Item]) -> Any:
        canon = self.canonicalizer(items)
        if canon is None:
            return self.step
        expected = _maximal_expected(items)
        n = len(expected)
        bisect_left = bisect.bisect_left

        def step(state: Any, cop: Cop) -> Any:
            # ``step`` then ``canon``, fused (the search calls this once per transition).
            k = cop[0]
            if k == "r":
                return state if state == cop[1] else None  # a legal read keeps a canonical state
            if k == "a":
                if state is GARBAGE:
                    return state
                v = state + cop[1]
            elif k == "w":
                v = cop[1]
            elif k == "a!":
                return GARBAGE
            elif state == cop[1]:
                v = cop[2]
            else:
                return None
            j = bisect_left(expected, v)
            if j < n and expected[j].startswith(v):
                return v
            return GARBAGE

        return step

    def producible(self, needed: Sequence[Any], cops: Sequence[Cop]) -> list[list[int]] | None:
        # An append of x can leave exactly the strings that end with x: with the needed
        # strings sorted reversed, those ending with x are one run starting at x reversed.
        if any(c[0] != "a" for c in cops):
            return None
        rev = sorted((u[::-1], n) for n, u in enumerate(needed) if type(u) is str)
        keys = [r for r, _n in rev]
        nkeys = len(keys)
        bisect_left = bisect.bisect_left
        out: list[list[int]] = []
        for c in cops:
            x = c[1][::-1]
            lo = hi = bisect_left(keys, x)
            while hi < nkeys and keys[hi].startswith(x):
                hi += 1
            out.append([rev[t][1] for t in range(lo, hi)])
        return out

    def crashed_expiry(
        self, items: Sequence[Item], crashed: Sequence[int]
    ) -> dict[int, int] | None:
        """The last position of an ok read or cas expecting a value the crashed op's
        effect can lead to (for a write or cas of v, a value starting with v; for an
        append of x, a value containing x), or later if a crashed cas that expects such a
        value expires later (to a fixpoint); -1 when nothing observes it (or for an
        empty append). Past it, the op's effect persists under appends until a write and
        no op left could be legal in between (the argument of ``_drop_unobserved_kv``)."""
        cops = list(map(_SECOND, items))
        # expected value -> last op expecting it (a crashed cas counts too: later is safe)
        last: dict[Any, int] = {c[1]: j for j, c in enumerate(cops) if c[0] == "r" or c[0] == "c"}
        crashed_obs: dict[str, list[int]] = {}  # expected value -> crashed cas expecting it
        for j in crashed:
            c = cops[j]
            if c[0] == "c":
                crashed_obs.setdefault(c[1], []).append(j)
        expected = sorted([v for v in last if type(v) is str])
        nexp = len(expected)
        never = len(items)
        out: dict[int, int] = {}
        deps: dict[int, list[int]] = {}
        text: str | None = None
        starts: list[int] = []
        for j in crashed:
            c = items[j][1]
            k = c[0]
            related: list[str] = []
            if k == "a!":
                pass
            elif k == "a":
                x = c[1]
                if x and "\x00" not in x:
                    if text is None:
                        text = "\x00".join(expected)
                        starts = list(accumulate((len(e) + 1 for e in expected), initial=0))
                    at = text.find(x)
                    while at >= 0:  # each expected value containing x, once
                        n = bisect.bisect_right(starts, at) - 1
                        related.append(expected[n])
                        at = text.find(x, starts[n + 1])
                elif x:
                    out[j] = never
                    continue
            elif (k == "w" or k == "c") and type(c[-1] if k == "c" else c[1]) is str:
                v = c[1] if k == "w" else c[2]
                n = bisect.bisect_left(expected, v)
                while n < nexp and expected[n].startswith(v):
                    related.append(expected[n])
                    n += 1
            else:
                out[j] = never
                continue
            out[j] = max(map(last.__getitem__, related), default=-1)  # expected: in last
            if crashed_obs:
                dep = [c2 for e in related for c2 in crashed_obs.get(e, ()) if c2 != j]
                if dep:
                    deps[j] = dep
        changed = bool(deps)
        while changed:  # positions only grow, up to ``never``: this ends
            changed = False
            for j, dep in deps.items():
                e = max(out[j], *(out[c2] for c2 in dep))
                if e != out[j]:
                    out[j] = e
                    changed = True
        return out

    def precheck(self, items: Sequence[Item], ops: Sequence[Op]) -> tuple[int, str] | None:
        if any(cop[0] == "a" for _i, cop in items):
            return None  # appends build values no single op wrote
        return _value_from_nowhere(items, ops, "", _register_producers)

    def finds_linearization(self, items: Sequence[Item], ops: Sequence[Op]) -> bool:
        return _kv_linearization(items, self)


def _kv_linearization(items: Sequence[Item], model: KVModel) -> bool:
    """``_register_linearization`` for a kv key: True only when a linearization is built
    and checked (real time, ``model.step`` from "", every ok op once).

    With distinct written values, distinct cas results and distinct non-empty append
    suffixes, each value the key takes is one *epoch* of any linearization: its producer
    (the write, cas or append that led to it) then the reads of it. A cas or an append
    ties its epoch to the one before (``succ``), so epochs form *chains* that start at a
    write (or at "" for the initial value), and a chain is one contiguous block. The
    producer of a value a read sees that no write or cas wrote is the append whose suffix
    ends it (the value before it is the rest, found the same way). Appends whose result
    nothing sees go alone (the value they leave matches nothing until the next write, which
    starts the next block). The blocks are ordered like the register's clusters. Crashed
    ops take effect only where their result is seen. Anything unexpected: False."""
    cols = columns(items)
    if cols is None:
        return False
    invs, ends = cols
    m = len(items)
    if m == 0:
        return True
    cops = list(map(_SECOND, items))
    readers: dict[Any, list[int]] = {}  # value -> read-only ops of its epoch
    made: dict[Any, int] = {}  # value -> the op that produced it
    succ: dict[Any, Any] = {}  # value -> the value the op ending its epoch leads to
    appends: dict[str, int] = {}  # suffix -> append
    late_cas: list[int] = []  # crashed cas: only where their result is seen
    for j, c in enumerate(cops):
        k = c[0]
        if k == "r" or (k == "c" and c[1] == c[2]):
            lst = readers.get(c[1])
            if lst is None:
                readers[c[1]] = [j]
            else:
                lst.append(j)
        elif k == "w":
            v = c[1]
            if v in made or v == "":
                return False
            made[v] = j
        elif k == "c":
            if ends[j] < 0:
                late_cas.append(j)
                continue
            old, new = c[1], c[2]
            if new in made or new == "" or old in succ:
                return False
            made[new] = j
            succ[old] = new
        elif k == "a":
            x = c[1]
            if not x or x in appends:
                return False
            appends[x] = j
        else:
            return False
    late: dict[Any, int] = {}  # result -> crashed cas, for results seen through appends
    for j in late_cas:
        old, new = cops[j][1], cops[j][2]
        if new in readers or new in succ:
            if new in made or new == "" or old in succ:
                return False
            made[new] = j
            succ[old] = new
        else:
            late[new] = j
    # Values seen that no write or cas wrote: the appends that end them.
    todo = [u for u in readers if u not in made and u != ""]
    todo += [u for u in succ if u not in made and u != ""]
    if todo:
        lens = sorted({len(x) for x in appends})
        while todo:
            u = todo.pop()
            if u in made:
                continue
            if type(u) is not str:
                return False
            hit = -1
            n = len(u)
            for ln in lens:
                if ln > n:
                    break
                a = appends.get(u[n - ln :])
                if a is not None:
                    if hit >= 0:
                        return False  # two appends could end it
                    hit = a
                    prev = u[: n - ln]
            if hit < 0:
                cas = late.pop(u, -1)
                if cas < 0:
                    return False
                hit = cas
                prev = cops[cas][1]
            else:
                del appends[cops[hit][1]]
            if prev in succ:
                return False
            made[u] = hit
            succ[prev] = u
            if prev != "" and prev not in made:
                todo.append(prev)
    inf = 1 << 62
    # Blocks: the chains from "" and from each write, then each unseen ok append alone.
    blocks: list[list[int]] = []
    heads: list[Any] = ["", *[v for v, j in made.items() if cops[j][0] == "w"]]
    seen_epochs = 0
    initial = False  # blocks[0] is the chain from "" (it must come first)
    for h in heads:
        block: list[int] = []
        v = h
        while True:
            seen_epochs += 1
            if v != "":
                block.append(made[v])
            rs = readers.get(v)
            if rs is not None:
                block += rs
            nxt = succ.get(v)
            if nxt is None:
                break
            v = nxt
            if seen_epochs > m + 1:
                return False
        if h == "" and not block:
            seen_epochs -= 1
            continue
        # A crashed op that produced a value nothing sees (the block's last epoch): never.
        while block and ends[block[-1]] < 0 and len(block) == 1:
            block.pop()
        if block:
            initial = initial or h == ""
            blocks.append(block)
    if seen_epochs != len(made) + (1 if "" in readers or "" in succ else 0):
        return False  # an epoch no chain reaches
    blocks += [[a] for a in appends.values() if ends[a] >= 0]
    # Block ranks: min(latest invocation, earliest completion); the chain from "" first.
    resps = ends if -1 not in ends else [inf if e < 0 else e for e in ends]
    ranks = []
    for b in blocks:
        if len(b) == 1:
            ranks.append(invs[b[0]])  # one op: invoked before it completes
            continue
        top = max(map(invs.__getitem__, b))
        low = min(map(resps.__getitem__, b))
        ranks.append(top if top < low else low)
    if initial:
        ranks[0] = -1
    order = [x for _r, b in sorted(zip(ranks, blocks, strict=True), key=_FIRST) for x in b]
    # The check, independent of how the order was built.
    step = model.step
    placed = bytearray(m)
    state: Any = ""
    latest = -1
    nok = 0
    for x in order:
        if placed[x]:
            return False
        placed[x] = 1
        e = ends[x]
        if e >= 0:
            if e <= latest:
                return False
            nok += 1
        if invs[x] > latest:
            latest = invs[x]
        state = step(state, cops[x])
        if state is None:
            return False
    return nok == m - ends.count(-1)


POISON_SCAN_CHARS_MAX = 200_000_000  # skip the poison analysis beyond this much scanning


def _poison_appends(items: Sequence[Item], maximal: list[str]) -> Sequence[Item]:
    """Appends whose suffix occurs in no value any read or cas expects become ("a!",).

    After such an append the value contains that suffix until the next write or cas, so no
    read or cas can be legal until then: every such value is equivalent to one GARBAGE
    state. Merging them lets the memo and the symmetry reduction see that placing one
    unobserved append or another makes no difference. ``maximal``: ``_maximal_expected``."""
    appends = [cop[1] for _i, cop in items if cop[0] == "a" and cop[1]]
    if not appends:
        return items
    expected = "\x00".join(maximal)
    if len(expected) * len(appends) > POISON_SCAN_CHARS_MAX:
        return items
    poison = {x for x in set(appends) if "\x00" not in x and x not in expected}
    if not poison:
        return items
    return [(i, ("a!",)) if cop[0] == "a" and cop[1] in poison else (i, cop) for i, cop in items]


def _drop_unobserved_kv(
    items: list[Item], ops: Sequence[Op], crashed: Sequence[int] | None = None
) -> list[Item]:
    """Crashed writes, cas and appends that leave a value no read or cas can ever match (a
    write or cas of a prefix of no expected value; an append of a string that occurs in no
    expected value, as ``_poison_appends``) cannot matter: drop them.

    Sound: after such an op, appends only extend the value (so it stays a prefix of nothing)
    and no read or cas is legal until the next write; the ops in between are appends,
    always legal without it too, and after that write the state is the same. So "never
    took effect" is always at least as permissive (as ``_drop_unobserved_crashed_writes``
    for registers)."""
    if crashed is None:  # ``crashed``: the positions of the crashed items, when known
        crashed = [
            n for n, (i, cop) in enumerate(items) if ops[i].type != "ok" or cop[-1] is CRASHED
        ]
    if not crashed:
        return items
    expected = _maximal_expected(items)
    nexp = len(expected)
    text = "\x00".join(expected)

    def matters(cop: Cop) -> bool:
        k = cop[0]
        if k == "a!":
            return False
        if k == "a":
            return not cop[1] or "\x00" in cop[1] or cop[1] in text
        if k == "w":
            v = cop[1]
        elif k == "c":
            v = cop[2]
        else:
            return True
        j = bisect.bisect_left(expected, v)
        return j < nexp and expected[j].startswith(v)

    keep = bytearray(b"\x01") * len(items)
    dropped = False
    for n in crashed:
        if not matters(items[n][1]):
            keep[n] = 0
            dropped = True
    if not dropped:
        return items
    return list(compress(items, keep))


def _maximal_expected(items: Sequence[Item]) -> list[str]:
    """The string values reads and cas expect, sorted, without those that are a prefix of
    another (a substring or prefix of a dropped value is one of the one kept)."""
    cops = list(map(_SECOND, items))
    observed = map(_SECOND, compress(cops, map(_EXPECTS.__contains__, map(_FIRST, cops))))
    exp = sorted({v for v in set(observed) if type(v) is str})
    # Sorted, a value that is a prefix of another is a prefix of the next one.
    keep = [e for e, f in pairwise(exp) if not f.startswith(e)]
    if exp:
        keep.append(exp[-1])
    return keep


def _kv_str(v: Any, op: Op) -> str:
    if isinstance(v, str):
        return v
    raise HistoryError(f"op at event {op.invoke_index}: kv values must be strings, got {v!r}")


# --- mutex -------------------------------------------------------------------------------


class MutexModel(Model):
    """A lock: acquire when free, release when held. States: False (free) / True (held)."""

    name = "mutex"

    def init(self) -> Any:
        return False

    def compile_op(self, op: Op) -> list[tuple[Any, Cop]]:
        if op.f == "acquire":
            return [(SINGLE_KEY, ("acquire",))]
        if op.f == "release":
            return [(SINGLE_KEY, ("release",))]
        raise HistoryError(f"op at event {op.invoke_index}: mutex has no op {op.f!r}")

    def step(self, state: Any, cop: Cop) -> Any:
        if cop[0] == "acquire":
            return None if state else True
        return False if state else None

    def read_only(self, cop: Cop) -> bool:
        return False

    def requires(self, cop: Cop) -> Any:
        return cop[0] == "release"  # acquire needs free (False), release needs held (True)

    def produces(self, cop: Cop) -> Any:
        return cop[0] == "acquire"

    def describe(self, state: Any) -> str:
        return "held" if state else "free"

    def describe_cop(self, cop: Cop) -> str:
        return str(cop[0])


# --- multi-register ------------------------------------------------------------------------


class MultiRegisterModel(Model):
    """Registers read and written by transactions of [read|write, k, v] micro-ops.

    State: a sorted tuple of (register, value) pairs (absent = nil). A crashed txn's reads
    are unknown and ignored; its writes may or may not have happened (all or nothing).
    Registers start at nil unless ``initial`` maps some of them to values."""

    name = "multi-register"

    def __init__(self, initial: dict[Any, Any] | None = None) -> None:
        regs = {freeze(k): freeze(v) for k, v in (initial or {}).items() if v is not None}
        self._init = tuple(sorted(regs.items(), key=repr))

    def init(self) -> Any:
        return self._init

    def compile_op(self, op: Op) -> list[tuple[Any, Cop]]:
        if op.f != "txn":
            raise HistoryError(f"op at event {op.invoke_index}: multi-register has no op {op.f!r}")
        mops = op.result if op.type == "ok" and op.result is not None else op.value
        if not isinstance(mops, list | tuple):
            raise HistoryError(f"op at event {op.invoke_index}: txn value must be a list")
        out: list[tuple[str, Any, Any]] = []
        for m in mops:
            if not (isinstance(m, list | tuple) and len(m) == 3 and m[0] in ("read", "write")):
                raise HistoryError(
                    f"op at event {op.invoke_index}: txn micro-op must be [read|write, k, v], "
                    f"got {m!r}"
                )
            if m[0] == "read" and op.type != "ok":
                continue
            out.append((m[0], freeze(m[1]), freeze(m[2])))
        if not out:
            return []
        return [(SINGLE_KEY, ("txn", tuple(out)))]

    def step(self, state: Any, cop: Cop) -> Any:
        regs = dict(state)
        for f, k, v in cop[1]:
            if f == "read":
                if regs.get(k) != v:
                    return None
            elif v is None:
                regs.pop(k, None)
            else:
                regs[k] = v
        return tuple(sorted(regs.items(), key=repr))

    def read_only(self, cop: Cop) -> bool:
        return all(f == "read" for f, _k, _v in cop[1])

    def describe(self, state: Any) -> str:
        return "{" + ", ".join(f"{k}: {v!r}" for k, v in state) + "}"

    def describe_cop(self, cop: Cop) -> str:
        return "txn " + " ".join(f"[{f} {k} {v!r}]" for f, k, v in cop[1])


# --- write-once chunk store ------------------------------------------------------------------


class WriteOnceModel(Model):
    """Machi's chunk store as one write-once register per position ([file, offset, size]).

    Values are unique chunk ids. cops: ("w", id) (append or write; rewriting the same id is
    idempotent, a different id is illegal), ("r", id | nil). An append attempt (ok or
    info, never fail) may have written its id at any position where a read observes it:
    a crashed append has no known position, and an append retried after a downstream
    failure restarts at a new position and may leave an abandoned copy at the old one
    (reference 4.3). So wherever a read observes an append's id and that append was not
    acknowledged there, it joins the position's sub-history as a crashed write of its id
    (``("w", id, CRASHED)`` for an ok append: it may take effect any time after the
    append's invocation, or never). Two different ids acknowledged at one position are
    refuted per position."""

    name = "write-once"

    def init(self) -> Any:
        return NIL

    def compile_op(self, op: Op) -> list[tuple[Any, Cop]]:
        f = op.f
        if f == "append":
            if op.type != "ok":
                return []  # placed by ``partition`` where observed
            res = op.result if isinstance(op.result, dict) else {}
            pos = res.get("pos")
            vid = res.get("v", _get(op.value, "v"))
            if pos is None:
                raise HistoryError(f"op at event {op.invoke_index}: ok append without a pos")
            return [(freeze(pos), ("w", freeze(vid)))]
        if f == "write":
            pos = _get(op.value, "pos")
            if pos is None:
                raise HistoryError(f"op at event {op.invoke_index}: write without a pos")
            return [(freeze(pos), ("w", freeze(_get(op.value, "v"))))]
        if f == "read":
            if op.type != "ok":
                return []
            pos = _get(op.result, "pos", _get(op.value, "pos"))
            if pos is None:
                raise HistoryError(f"op at event {op.invoke_index}: read without a pos")
            return [(freeze(pos), ("r", wrap(freeze(_get(op.result, "v")))))]
        raise HistoryError(f"op at event {op.invoke_index}: write-once has no op {f!r}")

    def step(self, state: Any, cop: Cop) -> Any:
        if cop[0] == "w":
            if state is NIL or state == cop[1]:
                return cop[1]
            return None
        return state if state == cop[1] else None

    def requires(self, cop: Cop) -> Any:
        return cop[1] if cop[0] == "r" else ANY_STATE

    def produces(self, cop: Cop) -> Any:
        return cop[1] if cop[0] == "w" else KEEPS

    def partition(self, ops: Sequence[Op]) -> dict[Any, list[Item]]:
        parts = {
            k: _drop_unobserved_crashed_writes(v, ops) for k, v in super().partition(ops).items()
        }
        # id -> (op index, the position it was acknowledged at, or None if not ok)
        appends: dict[Any, tuple[int, Any]] = {}
        for i, op in enumerate(ops):
            if op.f != "append" or op.type == "fail":
                continue
            if op.type == "ok":
                for key, cop in self.compile_op(op):
                    appends.setdefault(cop[1], (i, key))
            else:
                appends.setdefault(freeze(_get(op.value, "v")), (i, None))
        if appends:
            for key, items in parts.items():
                seen = {cop[1] for _i, cop in items if cop[0] == "r"}
                seen.difference_update(cop[1] for _i, cop in items if cop[0] == "w")
                extra: list[Item] = []
                for v in seen:
                    src = appends.get(v)
                    if src is None or src[1] == key:
                        continue
                    i = src[0]
                    extra.append((i, ("w", v) if src[1] is None else ("w", v, CRASHED)))
                if extra:
                    items.extend(extra)
                    items.sort(key=lambda it: it[0])
        return parts

    def precheck(self, items: Sequence[Item], ops: Sequence[Op]) -> tuple[int, str] | None:
        return _value_from_nowhere(items, ops, NIL, _register_producers)


def _get(d: Any, k: str, default: Any = None) -> Any:
    return d.get(k, default) if isinstance(d, dict) else default


MODELS: dict[str, type[Model]] = {
    "register": RegisterModel,
    "cas-register": CasRegisterModel,
    "kv": KVModel,
    "mutex": MutexModel,
    "multi-register": MultiRegisterModel,
    "write-once": WriteOnceModel,
}


def get_model(name: str, initial: Any = None) -> Model:
    """A model instance by its CLI name; ValueError for an unknown name.

    ``initial`` (a JSON value) sets the register's initial value (register, cas-register)
    or the initial registers (multi-register, a dict); other models take no initial value.
    """
    cls = MODELS.get(name)
    if cls is None:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    if initial is None:
        return cls()
    if cls in (RegisterModel, CasRegisterModel):
        return cls(initial)
    if cls is MultiRegisterModel:
        if not isinstance(initial, dict):
            raise ValueError("multi-register initial value must be a JSON object")
        return MultiRegisterModel(initial)
    raise ValueError(f"model {name!r} takes no initial value")
