"""General linearizability checker: agrees with brute force, accepts generated histories,
rejects injected anomalies, and answers "unknown" within its budgets."""

from __future__ import annotations

import gc
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.checker.lin_gen import LIN_ANOMALIES, generate, inject, pathological
from harness.checker.linear import Budget, check_linearizable
from harness.checker.models import Item, Model, get_model
from harness.checker.run import check_history
from harness.history import Event, HistoryError, Op, events_from_dicts, pair_ops, write_history

# --- brute-force oracle ----------------------------------------------------------------


def brute_force(ops: Sequence[Op], model: Model) -> bool:
    """Exhaustive search without memo or tricks: extend the order with any op whose
    real-time predecessors are all placed and that is legal; crashed ops are optional."""
    items: list[Item] = [
        (i, cop)
        for i, op in enumerate(ops)
        if op.type != "fail"
        for _k, cop in model.compile_op(op)
    ]

    def must_precede(a: Item, b: Item) -> bool:
        oa, ob = ops[a[0]], ops[b[0]]
        return (
            oa.type == "ok"
            and oa.complete_index is not None
            and oa.complete_index < ob.invoke_index
        )

    def extend(state: Any, left: list[Item]) -> bool:
        if all(ops[i].type != "ok" for i, _c in left):
            return True
        for n, it in enumerate(left):
            if any(must_precede(other, it) for other in left if other is not it):
                continue
            nxt = model.step(state, it[1])
            if nxt is not None and extend(nxt, left[:n] + left[n + 1 :]):
                return True
        return False

    return extend(model.init(), items)


def _op_spec(model: str) -> st.SearchStrategy[tuple[str, Any, Any]]:
    """(f, invoke value, ok result) for one op of ``model``, from a tiny value domain."""
    v = st.integers(0, 2)
    if model == "register":
        return st.one_of(
            st.tuples(st.just("write"), v, st.none()).map(lambda t: (t[0], t[1], t[1])),
            st.tuples(st.just("read"), st.none(), st.one_of(st.none(), v)),
        )
    if model == "cas-register":
        return st.one_of(
            _op_spec("register"),
            st.tuples(st.just("cas"), st.lists(v, min_size=2, max_size=2)).map(
                lambda t: (t[0], t[1], t[1])
            ),
        )
    if model == "kv":
        s = st.sampled_from(["", "a", "b", "ab", "ba"])
        return st.one_of(
            st.tuples(st.just("write"), s).map(lambda t: (t[0], t[1], t[1])),
            st.tuples(st.just("append"), st.sampled_from(["a", "b"])).map(
                lambda t: (t[0], t[1], t[1])
            ),
            st.tuples(st.just("read"), st.none(), s),
            st.tuples(st.just("cas"), st.lists(s, min_size=2, max_size=2)).map(
                lambda t: (t[0], t[1], t[1])
            ),
        )
    if model == "mutex":
        return st.tuples(st.sampled_from(["acquire", "release"]), st.none(), st.none())
    # multi-register
    micro = st.tuples(
        st.sampled_from(["read", "write"]),
        st.sampled_from(["x", "y"]),
        st.one_of(st.none(), st.integers(0, 1)),
    )
    return st.lists(micro, min_size=1, max_size=2).map(
        lambda ms: (
            "txn",
            [[f, k, None if f == "read" else v] for f, k, v in ms],
            [list(m) for m in ms],
        )
    )


@st.composite
def tiny_histories(draw: st.DrawFn, model: str) -> list[Op]:
    """Up to 6 ops, one process each, with an arbitrary interleaving and outcome."""
    n = draw(st.integers(1, 6))
    specs = [draw(_op_spec(model)) for _ in range(n)]
    outcomes = [draw(st.sampled_from(["ok", "ok", "info", "fail", "pending"])) for _ in range(n)]
    order = draw(st.permutations(list(range(2 * n))))
    return interleave(specs, outcomes, order, "k" if model == "kv" else None)


def interleave(specs: list[tuple[str, Any, Any]], outcomes: list[str], order: list[int],
               key: Any) -> list[Op]:
    """Paired ops from one-op processes: ``specs[k]`` = (f, invoked value, ok value);
    ``order`` lists 2k (invoke) and 2k+1 (completion) tokens, the first one of k seen is
    its invocation; ``outcomes[k]`` ok/info/fail, or pending (never completes)."""
    events: list[Event] = []
    seen: set[int] = set()
    for tok in order:
        k = tok // 2
        f, value, result = specs[k]
        if k not in seen:
            seen.add(k)
            events.append(Event(len(events), 0, k, "invoke", f, value, key))
        elif outcomes[k] != "pending":
            typ = outcomes[k]
            events.append(Event(len(events), 0, k, typ, f, result if typ == "ok" else value, key))
    return pair_ops(events)


@pytest.mark.parametrize(
    "model_name", ["register", "cas-register", "kv", "mutex", "multi-register"]
)
@settings(max_examples=100)
@given(data=st.data())
def test_agrees_with_brute_force_on_tiny_histories(model_name: str, data: st.DataObject) -> None:
    """On every tiny history (crashed, failed and pending ops included) WGL == brute force."""
    ops = data.draw(tiny_histories(model_name))
    model = get_model(model_name)
    expected = brute_force(ops, model)
    got = check_linearizable(ops, model).valid
    assert got is expected, [o.to_json() for o in ops]


# --- generated histories ------------------------------------------------------------------


@pytest.mark.parametrize("model_name", ["register", "cas-register", "kv", "mutex"])
@settings(max_examples=25)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 300),
    processes=st.integers(1, 8),
    crash_p=st.sampled_from([0.0, 0.05, 0.3]),
)
def test_generated_histories_are_valid(
    model_name: str, seed: int, n: int, processes: int, crash_p: float
) -> None:
    """A history produced by a sequential model under random concurrency is linearizable."""
    ops = pair_ops(
        generate(model_name, seed=seed, ops=n, processes=processes, crash_p=crash_p, keys=3)
    )
    res = check_history(ops, model_name, time_limit_s=30)
    assert res.valid is True, res.witness


@pytest.mark.parametrize("model_name", ["register", "cas-register", "kv"])
@pytest.mark.parametrize("anomaly", LIN_ANOMALIES)
@settings(max_examples=10)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 200),
    processes=st.integers(1, 8),
    crash_p=st.sampled_from([0.0, 0.1]),
)
def test_injected_anomaly_is_invalid(
    model_name: str, anomaly: str, seed: int, n: int, processes: int, crash_p: float
) -> None:
    """One stale read, lost write or value from nowhere makes a generated history invalid."""
    evs = generate(model_name, seed=seed, ops=n, processes=processes, crash_p=crash_p, keys=2)
    bad = inject(evs, anomaly, seed=seed, model=model_name)
    ops = pair_ops(bad)
    res = check_history(ops, model_name, time_limit_s=30)
    assert res.valid is False, (anomaly, res.witness)
    assert res.witness is not None and res.witness["explanation"]
    assert_prefix_is_a_linearization(ops, get_model(model_name), res.witness)


def assert_prefix_is_a_linearization(ops: Sequence[Op], model: Model, w: dict[str, Any]) -> None:
    """The witness prefix replays legally through the model and respects real time."""
    cops = dict(model.partition(ops)[w["key"]])
    state = model.init()
    prefix = w["prefix_indices"]
    for n, i in enumerate(prefix):
        state = model.step(state, cops[i])
        assert state is not None, ("prefix op illegal", n, ops[i])
        for j in prefix[n + 1 :]:
            done = ops[j].complete_index
            assert done is None or ops[j].type != "ok" or done > ops[i].invoke_index


def test_write_once_model_agrees_with_the_write_once_checker() -> None:
    """On generated write-once histories (valid and with each anomaly) both checkers agree."""
    from harness.checker.gen import WRITE_ONCE_ANOMALIES, write_once_history

    for anomaly in (None, *WRITE_ONCE_ANOMALIES):
        for seed in range(3):
            dicts = write_once_history(
                seed=seed, ops=400, processes=5, crash_p=0.05, fail_p=0.02, anomaly=anomaly
            )
            ops = pair_ops(events_from_dicts(dicts))
            general = check_history(ops, "write-once", general=True, time_limit_s=30)
            linear = check_history(ops, "write-once")
            assert general.valid is linear.valid, (anomaly, seed, general.witness)
            assert general.valid is (anomaly is None)


def test_write_once_crashed_append_lands_only_where_read() -> None:
    """A crashed append explains a read of its id; a second id at that position does not fit."""
    pos = ["f", 0, 10]
    evs = [
        Event(0, 0, 0, "invoke", "append", {"v": "a"}),
        Event(1, 0, 1, "invoke", "read", {"pos": pos}),
        Event(2, 0, 1, "ok", "read", {"pos": pos, "v": "a"}),
        Event(3, 0, 2, "invoke", "write", {"pos": pos, "v": "b"}),
        Event(4, 0, 2, "ok", "write", {"pos": pos, "v": "b"}),
    ]
    model = get_model("write-once")
    assert check_linearizable(pair_ops(evs[:3]), model).valid is True
    res = check_linearizable(pair_ops(evs), model)
    assert res.valid is False
    assert res.witness is not None and res.witness["key"] == ("f", 0, 10)


# --- witnesses ---------------------------------------------------------------------------


def test_witness_names_the_op_and_the_longest_prefix() -> None:
    """An invalid verdict carries the failing op, the prefix before it and an explanation."""
    evs = [
        Event(0, 0, 0, "invoke", "write", 1),
        Event(1, 0, 0, "ok", "write", 1),
        Event(2, 0, 1, "invoke", "write", 2),
        Event(3, 0, 1, "ok", "write", 2),
        Event(4, 0, 2, "invoke", "read", None),
        Event(5, 0, 2, "ok", "read", 1),
    ]
    res = check_linearizable(pair_ops(evs), get_model("register"))
    assert res.valid is False
    w = res.witness
    assert w is not None
    assert w["op"]["f"] == "read" and w["op"]["result"] == 1
    assert w["prefix_indices"] == [0, 1] and w["prefix_len"] == 2
    assert "the model state is 2" in w["explanation"]


def test_stale_read_precheck_explains_and_keeps_a_prefix() -> None:
    """The stale-read precheck names the overwriting op; the witness still has a prefix."""
    from harness.checker.linear import stale_precheck

    evs = [
        Event(0, 0, 0, "invoke", "write", 1),
        Event(1, 0, 0, "ok", "write", 1),
        Event(2, 0, 1, "invoke", "write", 2),
        Event(3, 0, 1, "ok", "write", 2),
        Event(4, 0, 2, "invoke", "read", None),
        Event(5, 0, 2, "ok", "read", 1),
    ]
    ops = pair_ops(evs)
    model = get_model("register")
    hit = stale_precheck(model.partition(ops)[None], ops, model)
    assert hit is not None and hit[0] == 2 and "stale read" in hit[1]
    res = check_linearizable(ops, model, Budget(max_steps=0))
    assert res.valid is False and res.witness is not None
    assert "stale read" in res.witness["explanation"]


def test_witness_of_a_search_refutation_names_the_state() -> None:
    """When only the search refutes a history the explanation gives the state it ended in."""
    evs = [
        Event(0, 0, 0, "invoke", "txn", [["write", "x", 1]]),
        Event(1, 0, 0, "ok", "txn", [["write", "x", 1]]),
        Event(2, 0, 1, "invoke", "txn", [["read", "x", None]]),
        Event(3, 0, 1, "ok", "txn", [["read", "x", 2]]),
    ]
    res = check_linearizable(pair_ops(evs), get_model("multi-register"))
    assert res.valid is False
    w = res.witness
    assert w is not None and w["op"]["process"] == 1 and w["prefix_len"] == 1
    assert "the model state is {x: 1}" in w["explanation"]


# --- budgets -----------------------------------------------------------------------------


def test_pathological_history_is_unknown_within_its_time_limit() -> None:
    """Many concurrent crashed writes: the verdict is unknown, reached within the time limit."""
    ops = pair_ops(pathological(40))
    t0 = time.monotonic()
    res = check_history(ops, "multi-register", time_limit_s=1.0)
    elapsed_s = time.monotonic() - t0
    assert res.valid == "unknown"
    assert res.witness is not None and res.witness["reason"] == "time limit"
    assert res.witness["prefix_len"] > 0 and res.stats["memo_entries"] > 0
    assert elapsed_s < 1.0 + 2.0  # budget honoured (checked every few thousand steps)


def test_step_budget_gives_unknown_deterministically() -> None:
    """A step budget (no clock at all) stops the pure search with the same answer every time."""
    ops = pair_ops(pathological(20))
    a = check_linearizable(ops, get_model("multi-register"), Budget(max_steps=1000))
    b = check_linearizable(ops, get_model("multi-register"), Budget(max_steps=1000))
    assert a.valid == b.valid == "unknown"
    assert a.witness is not None and a.witness["reason"] == "step limit"
    assert a.stats == b.stats


def test_pathological_history_stays_under_its_memory_limit(tmp_path: Path) -> None:
    """In a subprocess with a 40 MB limit the check ends unknown and peak RSS stays below it."""
    path = tmp_path / "patho.jsonl"
    write_history(path, pathological(40))
    # VmHWM is the peak of this process's own memory map; ru_maxrss would also count the
    # pytest parent's pages the child started with before exec.
    script = (
        "import sys\n"
        "from harness.cli import main\n"
        "try:\n"
        "    main(sys.argv[1:], standalone_mode=False)\n"
        "except SystemExit as e:\n"
        "    code = e.code\n"
        "else:\n"
        "    code = 0\n"
        "hwm = [ln for ln in open('/proc/self/status') if ln.startswith('VmHWM:')][0]\n"
        "print('PEAK_RSS_KB', hwm.split()[1], file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    limit_mb = 40
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            "check",
            "--model",
            "multi-register",
            "--json",
            "--memory-limit",
            str(limit_mb),
            "--time-limit",
            "60",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert '"valid": "unknown"' in proc.stdout
    assert '"reason": "memory limit"' in proc.stdout
    peak_kb = int(proc.stderr.split("PEAK_RSS_KB")[1].split()[0])
    assert peak_kb * 1024 <= limit_mb * 1024 * 1024, peak_kb


@pytest.mark.parametrize("anomaly", ["stale-read", "lost-write"])
def test_search_alone_refutes_what_the_prechecks_catch(anomaly: str) -> None:
    """Without the prechecks the search reaches the same verdict on injected anomalies."""
    from harness.checker.linear import _search

    model = get_model("cas-register")
    for seed in range(4):
        evs = generate("cas-register", seed=seed, ops=150, processes=4, crash_p=0.05)
        ops = pair_ops(inject(evs, anomaly, seed=seed, model="cas-register"))
        (items,) = model.partition(ops).values()
        assert _search(items, ops, model, Budget()).verdict is False, (anomaly, seed)


@pytest.mark.parametrize("model_name", ["kv", "register", "cas-register", "mutex"])
@pytest.mark.parametrize("what", ["valid", "invalid", "unknown"])
def test_the_general_check_pauses_the_collector_and_leaves_no_cycles(
    model_name: str, what: str
) -> None:
    """check_history pauses Python's cyclic collector during the general check
    (run.paused_gc): it is enabled again after (and stays off if it was off), and the
    check leaves no cyclic garbage the pause would let pile up, whatever the verdict."""
    evs = generate(model_name, seed=5, ops=600, processes=8, crash_p=0.05, keys=4)
    if what == "invalid":
        evs = inject(evs, "stale-read", seed=5, model=model_name)
    ops = pair_ops(evs)
    steps = 3 if what == "unknown" else None
    assert gc.isenabled()
    gc.collect()
    try:
        if model_name == "mutex" and what == "invalid":  # a write in a mutex history
            with pytest.raises(HistoryError):
                check_history(ops, model_name, 60, 4096)
            assert gc.isenabled()  # restored on an error too
            return
        runs: list[str] = []

        def seen(phase: str, _info: dict[str, Any]) -> None:
            runs.append(phase)

        gc.callbacks.append(seen)
        try:
            res = check_history(ops, model_name, 60, 4096, max_steps=steps)
        finally:
            gc.callbacks.remove(seen)
        # None ran during the check: at most the one the allocations made meanwhile
        # trigger once it is enabled again (on the way out).
        assert runs.count("start") <= 1
        assert gc.isenabled()
        assert gc.collect() == 0
        if what == "invalid":
            assert res.valid is False
        gc.disable()
        check_history(ops, model_name, 60, 4096, max_steps=steps)
        assert not gc.isenabled()
    finally:
        gc.enable()
