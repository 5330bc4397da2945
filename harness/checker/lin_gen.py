"""Seeded generators of concurrent histories for the general linearizability checker.

Owns ``generate`` (a history that is linearizable by construction: every op takes effect
at one random moment between its invocation and its completion, crashed ops complete as
``info`` and took effect or not) for the register, cas-register, kv and mutex models,
and ``inject`` (exactly one anomaly that makes the history non-linearizable: stale read,
lost write, value from nowhere). Used by the property tests and by benchmarks.

It must not do I/O, read clocks or use global randomness: one ``random.Random(seed)``.
Write values are unique per write so injected anomalies are unambiguous.
"""

from __future__ import annotations

import random
from typing import Any

from harness.history import Event, Op, pair_ops

LIN_ANOMALIES = ("stale-read", "lost-write", "from-nowhere")
_NOWHERE = "!nowhere!"  # no generated value contains "!"


def generate(
    model: str,
    *,
    seed: int,
    ops: int,
    processes: int = 5,
    crash_p: float = 0.0,
    fail_p: float = 0.0,
    keys: int = 1,
    read_p: float = 0.5,
) -> list[Event]:
    """A linearizable history of about ``ops`` operations as events (index = position)."""
    rng = random.Random(seed)
    state: dict[Any, Any] = {}
    init: Any = "" if model == "kv" else None
    if model == "mutex":
        init = False
    events: list[Event] = []
    pending: dict[int, list[Any]] = {}  # process -> [f, key, value, applied, result]
    idle = list(range(processes))
    next_proc = processes
    started = 0
    counter = 0

    def emit(proc: int, typ: str, f: str, key: Any, value: Any) -> None:
        ev_key = key if model == "kv" else None
        events.append(Event(len(events), len(events) * 1000, proc, typ, f, value, ev_key))

    def new_op() -> tuple[str, Any, Any]:
        nonlocal counter
        key = f"k{rng.randrange(keys)}" if model == "kv" else None
        r = rng.random()
        if model == "mutex":
            return ("acquire" if r < 0.5 else "release"), None, None
        if r < read_p:
            return "read", key, None
        counter += 1
        val: Any = counter if model != "kv" else f"v{counter}."
        if model in ("cas-register", "kv") and r < read_p + (1 - read_p) / 3:
            cur = state.get(key, init)
            old = cur if rng.random() < 0.7 else (counter - 1 if model != "kv" else "x")
            return "cas", key, [old, val]
        if model == "kv" and r > 0.85:
            return "append", key, f"a{counter}."
        return "write", key, val

    def apply(f: str, key: Any, value: Any) -> tuple[bool, Any]:
        cur = state.get(key, init)
        if f == "read":
            return True, cur
        if f == "write":
            state[key] = value
            return True, value
        if f == "append":
            state[key] = cur + value
            return True, value
        if f == "cas":
            if cur == value[0]:
                state[key] = value[1]
                return True, value
            return False, value
        if f == "acquire":
            if cur:
                return False, None
            state[key] = True
            return True, None
        if not cur:  # release
            return False, None
        state[key] = False
        return True, None

    while started < ops or pending:
        choices = []
        if idle and started < ops:
            choices.append("invoke")
        if pending:
            choices.append("step")
        what = rng.choice(choices)
        if what == "invoke":
            proc = idle.pop(rng.randrange(len(idle)))
            f, key, value = new_op()
            pending[proc] = [f, key, value, False, None]
            emit(proc, "invoke", f, key, value)
            started += 1
            continue
        proc = rng.choice(list(pending))
        op = pending[proc]
        f, key, value, applied, _res = op
        if not applied:
            ok, res = apply(f, key, value)
            op[3] = True
            op[4] = (ok, res)
            continue
        ok, res = op[4]
        del pending[proc]
        if crash_p and rng.random() < crash_p:
            emit(proc, "info", f, key, value)
            idle.append(next_proc)  # a crashed process is replaced, Jepsen style
            next_proc += 1
            continue
        if not ok:
            # cas on the wrong value / illegal lock op: a definite failure without effect
            emit(proc, "fail", f, key, value)
        elif fail_p and f == "read" and rng.random() < fail_p:
            emit(proc, "fail", f, key, None)
        else:
            emit(proc, "ok", f, key, res if f == "read" else value)
        idle.append(proc)
    return events


def generate_appends(
    *,
    seed: int,
    ops: int,
    processes: int = 10,
    crash_p: float = 0.0,
    read_p: float = 0.5,
    key: str = "k",
) -> list[Event]:
    """A linearizable kv history on one hot key: appends of unique values ("a<n>.") and
    reads of the whole value, by ``processes`` concurrent clients (index = position)."""
    rng = random.Random(seed)
    value = ""
    events: list[Event] = []
    pending: dict[int, list[Any]] = {}  # process -> [f, arg, applied, result]
    idle = list(range(processes))
    next_proc = processes
    started = 0

    def emit(proc: int, typ: str, f: str, v: Any) -> None:
        events.append(Event(len(events), len(events) * 1000, proc, typ, f, v, key))

    while started < ops or pending:
        if idle and started < ops and (not pending or rng.random() < 0.5):
            proc = idle.pop(rng.randrange(len(idle)))
            started += 1
            if rng.random() < read_p:
                pending[proc] = ["read", None, False, None]
                emit(proc, "invoke", "read", None)
            else:
                pending[proc] = ["append", f"a{started}.", False, None]
                emit(proc, "invoke", "append", f"a{started}.")
            continue
        proc = rng.choice(list(pending))
        op = pending[proc]
        if not op[2] and not (crash_p and rng.random() < crash_p / 2):
            op[2] = True
            if op[0] == "read":
                op[3] = value
            else:
                value += op[1]
            continue
        del pending[proc]
        if not op[2] or (crash_p and rng.random() < crash_p / 2):  # crashed, took effect or not
            emit(proc, "info", op[0], op[1])
            idle.append(next_proc)
            next_proc += 1
            continue
        emit(proc, "ok", op[0], op[3] if op[0] == "read" else op[1])
        idle.append(proc)
    return events


def generate_ops(model: str, **kw: Any) -> list[Op]:
    """``generate`` then ``pair_ops``."""
    return pair_ops(generate(model, **kw))


def inject(events: list[Event], anomaly: str, *, seed: int, model: str = "register") -> list[Event]:
    """A copy of a generated history with one anomaly that makes it non-linearizable.

    - ``from-nowhere``: an ok read returns a value nothing wrote.
    - ``stale-read``: an ok read returns the value of an ok write A although another ok
      write B of a different value completed after A completed and before the read began.
    - ``lost-write``: a quiescent tail: write X ok, then a read returns the value the
      register had from an earlier acknowledged write (X was lost).
    Values are unique per write, so each is unambiguous. For kv the anomaly lands on one key.
    """
    rng = random.Random(seed)
    evs = [Event(e.index, e.time, e.process, e.type, e.f, e.value, e.key, e.error) for e in events]
    ops = pair_ops(evs)
    by_index = {e.index: e for e in evs}
    reads = [o for o in ops if o.f == "read" and o.type == "ok"]
    if anomaly == "from-nowhere":
        if not reads:
            return _tail_anomaly(evs, ops, model, nowhere=True)
        r = rng.choice(reads)
        by_index[r.complete_index].value = _NOWHERE if model == "kv" else -1  # type: ignore[index]
        return evs
    if anomaly == "stale-read":
        cand = _stale_candidates(ops)
        if not cand:
            return _tail_anomaly(evs, ops, model, nowhere=False)
        r, stale = rng.choice(cand)
        by_index[r.complete_index].value = stale  # type: ignore[index]
        return evs
    if anomaly == "lost-write":
        return _tail_anomaly(evs, ops, model, nowhere=False)
    raise ValueError(f"unknown anomaly {anomaly!r}; choose from {LIN_ANOMALIES}")


def _stale_candidates(ops: list[Op]) -> list[tuple[Op, Any]]:
    """(ok read, stale value) pairs; only plain ok writes count (no cas, no append keys)."""
    out: list[tuple[Op, Any]] = []
    by_key: dict[Any, list[Op]] = {}
    messy: set[Any] = set()
    for o in ops:
        if o.f in ("cas", "append") and o.type != "fail":
            messy.add(o.key)
        by_key.setdefault(o.key, []).append(o)
    for key, kops in by_key.items():
        if key in messy:
            continue
        writes = [o for o in kops if o.f == "write" and o.type == "ok"]
        writes.sort(key=lambda o: o.complete_index or 0)
        for r in kops:
            if r.f != "read" or r.type != "ok":
                continue
            # A completed before B was invoked, B completed before r was invoked.
            done = [w for w in writes if (w.complete_index or 0) < r.invoke_index]
            for b in reversed(done):
                older = [w for w in done if (w.complete_index or 0) < b.invoke_index]
                if older and older[-1].value != b.value:
                    out.append((r, older[-1].value))
                break
            if len(out) > 50:
                return out
    return out


def _tail_anomaly(evs: list[Event], ops: list[Op], model: str, *, nowhere: bool) -> list[Event]:
    key = "k0" if model == "kv" else None
    old: Any = "" if model == "kv" else None
    for o in ops:
        if o.f == "write" and o.type == "ok" and o.key == key:
            old = o.value  # some earlier acknowledged value (or the initial one)
    procs = [e.process for e in evs if isinstance(e.process, int)]
    p = max(procs, default=0) + 1
    n = len(evs)
    new = "zz-lost." if model == "kv" else 10**9
    if nowhere:
        old = _NOWHERE if model == "kv" else -1
    tail = [
        Event(n, n * 1000, p, "invoke", "write", new, key),
        Event(n + 1, (n + 1) * 1000, p, "ok", "write", new, key),
        Event(n + 2, (n + 2) * 1000, p + 1, "invoke", "read", None, key),
        Event(n + 3, (n + 3) * 1000, p + 1, "ok", "read", old, key),
    ]
    return evs + tail


def pathological(crashed: int = 40) -> list[Event]:
    """Many concurrent crashed writes (multi-register txns, each writing its own register),
    then a read no subset of them explains: not linearizable, but refuting it means trying
    the ~2^crashed subsets of the crashed writes (no precheck or pruning applies to
    multi-register). For budget tests: check it with the ``multi-register`` model."""
    evs: list[Event] = []

    def add(p: int, typ: str, v: Any) -> None:
        evs.append(Event(len(evs), len(evs) * 1000, p, typ, "txn", v))

    for p in range(crashed):
        add(p, "invoke", [["write", f"r{p}", 1]])
    add(crashed, "invoke", [["read", "y", None]])
    add(crashed, "ok", [["read", "y", 5]])
    return evs
