"""Linear-time checker for Machi write-once chunk histories (``docs/history-write-once.md``).

Owns the write-once verdict: per position at most one value, the real-time rules of a
write-once register with unique values (null reads before the winning write, value reads
after it), values that no attempt wrote, values of failed attempts, overlapping
acknowledged chunks, acknowledged chunks missing from the final reads, and the landing
report for unknown (info) appends.

It must not search (no backtracking: one pass over the events, then one or two passes
over the positions), do I/O, read a clock of its own or keep per-op objects alive beyond
what the verdict needs: a position costs one dict entry and one small list, an
unacknowledged attempt one tuple.  Past its memory budget (estimated from entry counts,
so deterministic) the verdict is ``"unknown"``.

Big histories (a regular file of 64 MiB or more) first go to a fast path: the compiled one
(``write_once_jit``, numba, the ``fast`` extra) when installed, else the columnar one
(``write_once_fast``, DuckDB); either answers only "valid", with this
checker's result; anything else is decided here.

Input: JSONL lines via :func:`check_write_once_lines` (fastest: an open binary file, read
in 8 MiB blocks, each decoded by one msgspec ``decode_lines`` call into typed records),
raw event dicts, or ``Event`` / ``Op`` objects from ``harness.history`` via
:func:`check_write_once`.  While it runs, Python's
cyclic GC is paused (and restored after): the state holds no cycles and gen-2 passes
over millions of small lists would cost more than the check.
"""

from __future__ import annotations

import gc
import importlib.util
import io
import json
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping
from itertools import chain, islice
from typing import Any, Literal

from harness.checker.result import UNKNOWN, CheckResult
from harness.checker.run import paused_gc
from harness.history import Event, HistoryError, Op

msgspec: Any
try:  # a dependency; the stdlib fallback (tested) keeps the checker usable without it
    import msgspec
except ImportError:  # pragma: no cover - exercised by monkeypatching msgspec to None
    msgspec = None

_Val: Any = None
_Ev: Any = None
_FastVal: Any = None
_FastEv: Any = None
if msgspec is not None:

    class _ValRecord(msgspec.Struct, gc=False):  # type: ignore[misc,call-arg]
        """The value of a chunk op (other fields, e.g. ``prefix``, are ignored)."""

        v: Any = None
        pos: tuple[Any, ...] | None = None

    class _EvRecord(msgspec.Struct, gc=False):  # type: ignore[misc,call-arg]
        """One history line, as much of it as the write-once checker reads."""

        index: int
        process: int | str
        type: str
        f: str
        value: _ValRecord | str | int | float | bool | list[Any] | None = None
        final: Any = None
        node: Any = None

    class _FastValRecord(msgspec.Struct, gc=False):  # type: ignore[misc,call-arg]
        """``_ValRecord`` of the common shape: decoding is about 30 % cheaper typed."""

        v: str | None = None
        pos: tuple[str, int, int] | None = None

    class _FastEvRecord(msgspec.Struct, gc=False):  # type: ignore[misc,call-arg]
        """A chunk-op line of the common shape (``type`` and ``f`` decode to shared
        constants). A block with any other line is decoded again as ``_EvRecord``s."""

        index: int
        process: int | str
        type: Literal["invoke", "ok", "fail", "info"]
        f: Literal["append", "write", "read"]
        value: _FastValRecord | None = None
        final: Any = None
        node: Any = None

    _Val = _ValRecord
    _Ev = _EvRecord
    _FastVal = _FastValRecord
    _FastEv = _FastEvRecord


def _plain(val: Any) -> Any:
    """A struct value back to the dict form the slow path reads."""
    if _Val is not None and (type(val) is _Val or type(val) is _FastVal):
        d: dict[str, Any] = {"v": val.v}
        if val.pos is not None:
            d["pos"] = list(val.pos)
        return d
    return val


MODEL = "write-once"
ANOMALY_KINDS = (
    "conflict",
    "unwritten-after-ack",
    "unwritten-after-read",
    "read-before-write",
    "from-nowhere",
    "read-of-failed",
    "overlap",
    "lost",
)
EXAMPLES_MAX = 5

# Estimated bytes per entry, from peak RSS on CPython 3.11 over a 1 M-op history (340 MB for
# 517 K positions, interpreter and decode buffers included), rounded up:
# a position = dict slot + key tuple + file offset int + 8-slot list + two index ints.
_POSITION_BYTES = 620
_ATTEMPT_BYTES = 300
_PENDING_BYTES = 700
_BUDGET_EVERY_EVENTS = 1 << 16
_NEVER = 1 << 62  # "no such index": larger than any event index

# Position state slots.
_VAL, _ACK, _W_INV, _W_RESP, _NULL_INV, _VAL_RESP, _FINAL, _FINAL_BAD = range(8)
_FINAL_GOOD = 1
_FINAL_WRONG = 2
_CONFLICT: list[Any] = []  # marker: a read value conflicting with the position's value


class _BudgetExceeded(Exception):
    pass


def _bad_pos(pos: object, index: int) -> HistoryError:
    where = f"event {index}" if index >= 0 else "an acknowledged chunk"
    return HistoryError(f"{where}: position must be [file, offset >= 0, size > 0], got {pos!r}")


class WriteOnceChecker:
    """Streaming state for one history: feed events (or ops), then ask for the result.

    ``memory_limit_mb``: estimated budget for the checker's own state (None = unlimited).
    ``deadline``: optional callable returning True once time is up (the caller owns the
    clock); checked every 65536 events.
    """

    def __init__(
        self,
        *,
        memory_limit_mb: float | None = None,
        deadline: Callable[[], bool] | None = None,
        examples_max: int = EXAMPLES_MAX,
    ) -> None:
        self._positions: dict[tuple[str, int, int], list[Any]] = {}
        self._files: dict[str, str] = {}  # interned file names
        self._unacked: dict[Any, tuple[str, str, int, Any]] = {}  # v -> (type, f, inv, key)
        self._pending: dict[Any, Any] = {}  # process -> invoke event (dict or Op-like)
        self._counts: dict[str, int] = dict.fromkeys(ANOMALY_KINDS, 0)
        self._examples: dict[str, list[dict[str, Any]]] = {k: [] for k in ANOMALY_KINDS}
        self._examples_max = examples_max
        self._budget_bytes = None if memory_limit_mb is None else memory_limit_mb * 1024 * 1024
        self._deadline = deadline
        self._events = 0
        self._ops = 0
        self._ops_by_type = {"ok": 0, "fail": 0, "info": 0}
        self._ignored_ops = 0
        self._any_final = False
        self._stopped: str | None = None
        self._result: CheckResult | None = None
        self._landed: dict[Any, tuple[str, int, int]] = {}

    # ---- anomalies ------------------------------------------------------------------
    def _anomaly(self, kind: str, example: dict[str, Any]) -> None:
        self._counts[kind] += 1
        ex = self._examples[kind]
        if len(ex) < self._examples_max:
            ex.append(example)

    # ---- budget ---------------------------------------------------------------------
    def _estimate_bytes(self) -> int:
        return (
            len(self._positions) * _POSITION_BYTES
            + len(self._unacked) * _ATTEMPT_BYTES
            + len(self._pending) * _PENDING_BYTES
        )

    def _check_budget(self) -> None:
        if self._budget_bytes is not None and self._estimate_bytes() > self._budget_bytes:
            raise _BudgetExceeded(
                f"memory budget of {self._budget_bytes / 1048576:.0f} MB exceeded after "
                f"{self._events} events ({len(self._positions)} positions)"
            )
        if self._deadline is not None and self._deadline():
            raise _BudgetExceeded(f"time limit reached after {self._events} events")

    # ---- feeding --------------------------------------------------------------------
    def feed_events(self, events: Iterable[Mapping[str, Any] | Event]) -> None:
        """Feed events in history order (dicts as decoded from JSON, or ``Event``s).

        Dicts must carry ``index`` (``iter_jsonl_events`` fills it in). The loop inlines the
        two common cases (an ok read of a known position, an ok append/write at a new
        position); everything else goes through ``_complete``.
        """
        it = iter(events)
        self.feed_batches(iter(lambda: list(islice(it, _BUDGET_EVERY_EVENTS)), []))

    def feed_batches(self, batches: Iterable[list[Any]]) -> None:
        """Feed events in history order, already cut into lists (``feed_events`` does that)."""
        if self._stopped is not None:
            return
        pending = self._pending
        positions = self._positions
        complete = self._complete
        fast_ops = 0
        any_final = False
        gc_was_enabled = gc.isenabled()
        gc.disable()  # millions of small lists: cyclic GC passes would dominate the run
        try:
            for batch in batches:
                self._check_budget()
                for ev in batch:
                    if type(ev) is not dict:
                        ev = _event_dict(ev, self._events)
                    typ = ev["type"]
                    if typ == "invoke":
                        if pending.setdefault(ev["process"], ev) is not ev:
                            raise HistoryError(
                                f"event {ev['index']}: process {ev['process']!r} invokes "
                                "while an earlier invocation is still pending"
                            )
                        continue
                    inv = pending.pop(ev["process"], None)
                    if inv is None:
                        if ev["process"] == "nemesis":
                            continue
                        raise HistoryError(
                            f"event {ev['index']}: {typ} by process {ev['process']!r} "
                            "without a pending invocation"
                        )
                    f = inv["f"]
                    if f != ev["f"]:
                        raise HistoryError(
                            f"event {ev['index']}: process {ev['process']!r} completes "
                            f"{ev['f']!r} but invoked {f!r}"
                        )
                    if typ == "ok":
                        try:
                            val = ev["value"]
                            v = val["v"]
                            key = tuple(val["pos"])
                            if f == "read":
                                st = positions[key]  # a new position takes the slow path
                                if v is None:
                                    i = inv["index"]
                                    if i > st[4]:  # _NULL_INV
                                        st[4] = i
                                elif st[0] == v or st[0] is None:  # _VAL
                                    st[0] = v
                                    i = ev["index"]
                                    if i < st[5]:  # _VAL_RESP
                                        st[5] = i
                                else:
                                    st = _CONFLICT  # the slow path reports it
                                if st is not _CONFLICT:
                                    fast_ops += 1
                                    if ev.get("final") or inv.get("final"):
                                        any_final = True
                                        if v is not None:
                                            st[6] |= _FINAL_GOOD
                                        else:
                                            st[6] |= _FINAL_WRONG
                                            if st[7] is None:
                                                node = ev.get("node") or inv.get("node")
                                                st[7] = (ev["index"], node, v)
                                    continue
                            elif (
                                (f == "append" or f == "write")
                                and v is not None
                                and "final" not in ev
                                and "final" not in inv
                                and len(key) == 3
                                and key not in positions
                            ):
                                # Types are checked in the overlap pass (every acked key).
                                positions[key] = [
                                    v,
                                    f,
                                    inv["index"],
                                    ev["index"],
                                    -1,
                                    _NEVER,
                                    0,
                                    None,
                                ]
                                fast_ops += 1
                                continue
                        except (KeyError, TypeError):
                            pass
                    complete(
                        f,
                        typ,
                        inv["index"],
                        ev["index"],
                        inv.get("value"),
                        ev.get("value"),
                        inv.get("final") or ev.get("final"),
                        ev.get("node") or inv.get("node"),
                    )
                self._events += len(batch)
        except _BudgetExceeded as exc:
            self._stopped = str(exc)
        except KeyError as exc:
            raise HistoryError(f"after event {self._events}: missing field {exc}") from None
        finally:
            self._ops += fast_ops
            self._ops_by_type["ok"] += fast_ops
            if any_final:
                self._any_final = True
            if gc_was_enabled:
                gc.enable()

    def feed_struct_batches(self, batches: Iterable[list[Any]]) -> None:
        """``feed_batches`` for events decoded into msgspec structs (``iter_jsonl_batches``
        with ``structs=True``): the same logic, attribute access instead of dict lookups."""
        if self._stopped is not None:
            return
        pending = self._pending
        positions = self._positions
        complete = self._complete
        val_type = _Val
        fast_val_type = _FastVal
        fast_ops = 0
        any_final = False
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            for batch in batches:
                self._check_budget()
                for ev in batch:
                    typ = ev.type
                    if typ == "invoke":
                        if pending.setdefault(ev.process, ev) is not ev:
                            raise HistoryError(
                                f"event {ev.index}: process {ev.process!r} invokes while an "
                                "earlier invocation is still pending"
                            )
                        continue
                    inv = pending.pop(ev.process, None)
                    if inv is None:
                        if ev.process == "nemesis":
                            continue
                        raise HistoryError(
                            f"event {ev.index}: {typ} by process {ev.process!r} without a "
                            "pending invocation"
                        )
                    f = inv.f
                    if f != ev.f:
                        raise HistoryError(
                            f"event {ev.index}: process {ev.process!r} completes {ev.f!r} but "
                            f"invoked {f!r}"
                        )
                    if typ == "ok":
                        val = ev.value
                        vt = type(val)
                        if (vt is fast_val_type or vt is val_type) and val.pos is not None:
                            v = val.v
                            key = val.pos
                            if f == "read":
                                st = positions.get(key)
                                if st is not None:
                                    if v is None:
                                        i = inv.index
                                        if i > st[4]:  # _NULL_INV
                                            st[4] = i
                                    elif st[0] == v or st[0] is None:  # _VAL
                                        st[0] = v
                                        i = ev.index
                                        if i < st[5]:  # _VAL_RESP
                                            st[5] = i
                                    else:
                                        st = _CONFLICT  # the slow path reports it
                                    if st is not _CONFLICT:
                                        fast_ops += 1
                                        if ev.final or inv.final:
                                            any_final = True
                                            if v is not None:
                                                st[6] |= _FINAL_GOOD
                                            else:
                                                st[6] |= _FINAL_WRONG
                                                if st[7] is None:
                                                    st[7] = (ev.index, ev.node or inv.node, v)
                                        continue
                            elif (
                                (f == "append" or f == "write")
                                and v is not None
                                and ev.final is None
                                and inv.final is None
                                and len(key) == 3
                                and key not in positions
                            ):
                                positions[key] = [v, f, inv.index, ev.index, -1, _NEVER, 0, None]
                                fast_ops += 1
                                continue
                    complete(
                        f,
                        typ,
                        inv.index,
                        ev.index,
                        _plain(inv.value),
                        _plain(ev.value),
                        inv.final or ev.final,
                        ev.node or inv.node,
                    )
                self._events += len(batch)
        except _BudgetExceeded as exc:
            self._stopped = str(exc)
        finally:
            self._ops += fast_ops
            self._ops_by_type["ok"] += fast_ops
            if any_final:
                self._any_final = True
            if gc_was_enabled:
                gc.enable()

    def feed_ops(self, ops: Iterable[Op]) -> None:
        """Feed paired ops (``harness.history.pair_ops``), in any order."""
        if self._stopped is not None:
            return
        complete = self._complete
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            for k, op in enumerate(ops, start=1):
                self._events += 2
                if k % _BUDGET_EVERY_EVENTS == 0:
                    self._check_budget()
                extra = op.extra
                if op.complete_index is None or op.type == "info":
                    complete(op.f, "info", op.invoke_index, -1, op.value, None, None, None)
                    continue
                complete(
                    op.f,
                    op.type,
                    op.invoke_index,
                    op.complete_index,
                    op.value,
                    op.result,
                    extra.get("final"),
                    extra.get("node"),
                )
        except _BudgetExceeded as exc:
            self._stopped = str(exc)
        finally:
            if gc_was_enabled:
                gc.enable()

    def _key(self, pos: Any, index: int) -> tuple[str, int, int]:
        try:
            file, offset, size = pos
        except (TypeError, ValueError):
            raise _bad_pos(pos, index) from None
        if (
            type(file) is not str
            or type(offset) is not int
            or type(size) is not int
            or offset < 0
            or size <= 0
        ):
            raise _bad_pos(pos, index)
        files = self._files
        f = files.get(file)
        if f is None:
            f = files[file] = file
        return (f, offset, size)

    def _record_unacked(self, f: str, typ: str, inv_index: int, inv_value: Any) -> None:
        if not isinstance(inv_value, Mapping) or inv_value.get("v") is None:
            raise HistoryError(f"event {inv_index}: {f} needs a value with a payload id 'v'")
        key = self._key(inv_value.get("pos"), inv_index) if f == "write" else None
        self._unacked[inv_value["v"]] = (typ, f, inv_index, key)

    def _complete(
        self,
        f: str,
        typ: str,
        inv_index: int,
        comp_index: int,
        inv_value: Any,
        comp_value: Any,
        final: Any,
        node: Any,
    ) -> None:
        if f != "read" and f != "append" and f != "write":
            self._ignored_ops += 1  # nemesis and other ops: not chunk ops, not counted
            return
        self._ops += 1
        self._ops_by_type[typ] = self._ops_by_type.get(typ, 0) + 1
        if f == "read":
            if typ == "ok":
                self._read(inv_index, comp_index, inv_value, comp_value, final, node)
            return
        if typ != "ok":
            self._record_unacked(f, typ, inv_index, inv_value)
            return
        val = comp_value if isinstance(comp_value, Mapping) else {}
        v = val.get("v")
        if v is None:
            v = inv_value.get("v") if isinstance(inv_value, Mapping) else None
            if v is None:
                raise HistoryError(f"event {comp_index}: ok {f} without a payload id 'v'")
        pos = val.get("pos")
        if pos is None:
            if f == "append" or not isinstance(inv_value, Mapping):
                raise HistoryError(f"event {comp_index}: ok {f} without a position 'pos'")
            pos = inv_value.get("pos")
        key = self._key(pos, comp_index)
        positions = self._positions
        st = positions.get(key)
        if st is None:
            positions[key] = [v, f, inv_index, comp_index, -1, _NEVER, 0, None]
            return
        cur = st[_VAL]
        if cur is not None and cur != v:
            self._anomaly(
                "conflict",
                {
                    "pos": list(key),
                    "values": [cur, v],
                    "index": comp_index,
                    "explanation": f"ok {f} of {v!r} at a position that already holds {cur!r}",
                },
            )
        if st[_ACK] is not None:
            return  # a second acknowledgement at one position: reported above, keep the first
        st[_VAL] = v
        st[_ACK] = f
        st[_W_INV] = inv_index
        st[_W_RESP] = comp_index

    def _read(
        self,
        inv_index: int,
        comp_index: int,
        inv_value: Any,
        comp_value: Any,
        final: Any,
        node: Any,
    ) -> None:
        val = comp_value if isinstance(comp_value, Mapping) else None
        pos = val.get("pos") if val is not None else None
        if pos is None:
            pos = inv_value.get("pos") if isinstance(inv_value, Mapping) else None
        key = self._key(pos, comp_index)
        v = val.get("v") if val is not None else None
        positions = self._positions
        st = positions.get(key)
        if st is None:
            st = positions[key] = [None, None, -1, -1, -1, _NEVER, 0, None]
        if v is None:
            if inv_index > st[_NULL_INV]:
                st[_NULL_INV] = inv_index
        else:
            cur = st[_VAL]
            if cur is None:
                st[_VAL] = v
            elif cur != v:
                self._anomaly(
                    "conflict",
                    {
                        "pos": list(key),
                        "values": [cur, v],
                        "index": comp_index,
                        "explanation": f"read returned {v!r} at a position holding {cur!r}",
                    },
                )
            if comp_index < st[_VAL_RESP]:
                st[_VAL_RESP] = comp_index
        if final:
            self._any_final = True
            if v is not None and v == st[_VAL]:
                st[_FINAL] |= _FINAL_GOOD
            else:
                st[_FINAL] |= _FINAL_WRONG
                if st[_FINAL_BAD] is None:
                    st[_FINAL_BAD] = (comp_index, node, v)

    # ---- verdict --------------------------------------------------------------------
    def result(self) -> CheckResult:
        """Finish: settle pending invocations, run the position passes, build the verdict."""
        if self._result is not None:
            return self._result
        if self._stopped is None:
            gc_was_enabled = gc.isenabled()
            gc.disable()
            try:
                self._finish()
            finally:
                if gc_was_enabled:
                    gc.enable()
        self._result = self._build_result()
        return self._result

    def _finish(self) -> None:
        for inv in self._pending.values():
            if type(inv) is not dict:
                inv = {"f": inv.f, "index": inv.index, "value": _plain(inv.value)}
            # Never completed: unknown, like info.
            self._complete(inv["f"], "info", inv["index"], -1, inv.get("value"), None, None, None)
        self._pending.clear()
        landed: dict[Any, tuple[str, int, int]] = {}
        unresolved: dict[Any, list[tuple[str, int, int]]] = {}
        acked_keys: list[tuple[str, int, int]] = []
        unacked = self._unacked
        any_final = self._any_final
        for key, st in self._positions.items():
            v = st[_VAL]
            if v is None:
                continue
            if st[_ACK] is not None:
                acked_keys.append(key)
                # null_inv > w_resp, val_resp < w_inv, null_inv > val_resp: see _check_realtime
                if (
                    st[_NULL_INV] > st[_W_RESP]
                    or st[_VAL_RESP] < st[_W_INV]
                    or (st[_NULL_INV] > st[_VAL_RESP])
                ):
                    self._check_realtime(key, st, st[_W_INV], st[_W_RESP])
                if any_final and (st[_FINAL] != _FINAL_GOOD):
                    self._lost(key, st)
                continue
            src = unacked.get(v)
            if src is None:
                unresolved.setdefault(v, []).append(key)
                continue
            typ, f, inv_index, target = src
            if f == "write" and target != key:
                self._from_nowhere(key, v, f"the write of {v!r} targeted {list(target)}")
            elif typ == "fail":
                self._anomaly(
                    "read-of-failed",
                    {
                        "pos": list(key),
                        "v": v,
                        "invoke_index": inv_index,
                        "explanation": f"read {v!r}, written by a {f} whose outcome was fail",
                    },
                )
            else:
                landed.setdefault(v, key)
                self._check_realtime(key, st, inv_index, _NEVER)
        if unresolved:
            self._resolve_elsewhere(unresolved)
        self._check_overlaps(acked_keys)
        self._landed = landed

    def _check_realtime(self, key: Any, st: list[Any], w_inv: int, w_resp: int) -> None:
        null_inv = st[_NULL_INV]
        val_resp = st[_VAL_RESP]
        v = st[_VAL]
        if val_resp < w_inv:
            self._anomaly(
                "read-before-write",
                {
                    "pos": list(key),
                    "v": v,
                    "read_complete_index": val_resp,
                    "write_invoke_index": w_inv,
                    "explanation": f"a read returned {v!r} before its writer was invoked",
                },
            )
        if null_inv > w_resp:
            self._anomaly(
                "unwritten-after-ack",
                {
                    "pos": list(key),
                    "v": v,
                    "read_invoke_index": null_inv,
                    "write_complete_index": w_resp,
                    "explanation": "a read began after the write was acknowledged "
                    "and still found the position unwritten",
                },
            )
        if null_inv > val_resp:
            self._anomaly(
                "unwritten-after-read",
                {
                    "pos": list(key),
                    "v": v,
                    "read_invoke_index": null_inv,
                    "earlier_read_complete_index": val_resp,
                    "explanation": f"a read found the position unwritten after another read "
                    f"had returned {v!r}",
                },
            )

    def _from_nowhere(self, key: Any, v: Any, why: str) -> None:
        self._anomaly(
            "from-nowhere",
            {"pos": list(key), "v": v, "explanation": f"read returned {v!r}: {why}"},
        )

    def _lost(self, key: Any, st: list[Any]) -> None:
        bad = st[_FINAL_BAD]
        if bad is None:
            why = "no final read of this position returned it"
            ex = {"pos": list(key), "v": st[_VAL], "explanation": why}
        else:
            index, node, got = bad
            why = f"final read at event {index} on node {node!r} returned {got!r}"
            ex = {
                "pos": list(key),
                "v": st[_VAL],
                "index": index,
                "node": node,
                "got": got,
                "explanation": why,
            }
        self._anomaly("lost", ex)

    def _resolve_elsewhere(self, unresolved: dict[Any, list[tuple[str, int, int]]]) -> None:
        """Values read at positions nobody acknowledged them at: an ok append elsewhere?"""
        positions = self._positions
        for key, st in positions.items():
            if st[_ACK] is None:
                continue
            keys = unresolved.pop(st[_VAL], None)
            if keys is None:
                continue
            for other in keys:
                if st[_ACK] == "write":
                    self._from_nowhere(
                        other, st[_VAL], f"its write was acknowledged at {list(key)}"
                    )
                else:  # an append can leave an abandoned copy (reference 4.3)
                    self._check_realtime(other, positions[other], st[_W_INV], _NEVER)
            if not unresolved:
                return
        for v, keys in unresolved.items():
            for other in keys:
                self._from_nowhere(other, v, "no write or append attempted this value")

    def _check_overlaps(self, acked_keys: list[tuple[str, int, int]]) -> None:
        try:
            acked_keys.sort()  # nearly sorted already (appends arrive in offset order)
        except TypeError:  # mixed types in some position: find it for the message
            for key in acked_keys:
                if type(key[0]) is not str or type(key[1]) is not int:
                    raise _bad_pos(list(key), -1) from None
            raise
        prev_file = None
        prev_end = 0
        prev_key: tuple[str, int, int] | None = None
        for key in acked_keys:
            file, offset, size = key
            # Keys made on the fast path are type-checked here, once.
            if type(offset) is not int or type(size) is not int or offset < 0 or size <= 0:
                raise _bad_pos(list(key), -1)
            if file != prev_file:
                if type(file) is not str:
                    raise _bad_pos(list(key), -1)
                prev_file, prev_end, prev_key = file, offset + size, key
                continue
            if offset < prev_end:
                self._anomaly(
                    "overlap",
                    {
                        "pos": list(key),
                        "other": list(prev_key or ()),
                        "explanation": "two acknowledged chunks overlap in bytes",
                    },
                )
            if offset + size > prev_end:
                prev_end, prev_key = offset + size, key

    def _build_result(self) -> CheckResult:
        stats: dict[str, Any] = {
            "events": self._events,
            "positions": len(self._positions),
            "ok": self._ops_by_type.get("ok", 0),
            "fail": self._ops_by_type.get("fail", 0),
            "info": self._ops_by_type.get("info", 0),
            "ignored_ops": self._ignored_ops,
            "final_reads": self._any_final,
            "estimated_state_mb": round(self._estimate_bytes() / 1048576, 1),
        }
        if self._stopped is not None:
            return CheckResult(
                valid=UNKNOWN,
                model=MODEL,
                ops=self._ops,
                keys=len(self._positions),
                witness={"explanation": f"checker stopped: {self._stopped}"},
                stats=stats,
            )
        anomalies = {
            kind: {"count": n, "examples": self._examples[kind]}
            for kind, n in self._counts.items()
            if n
        }
        witness: dict[str, Any] = {"unknown_appends": self._unknown_report("append")}
        unknown_writes = self._unknown_report("write")
        if unknown_writes["count"]:
            witness["unknown_writes"] = unknown_writes
        if anomalies:
            witness["anomalies"] = anomalies
            witness["explanation"] = "; ".join(
                f"{a['count']} {kind}" for kind, a in anomalies.items()
            )
        return CheckResult(
            valid=not anomalies,
            model=MODEL,
            ops=self._ops,
            keys=len(self._positions),
            witness=witness,
            stats=stats,
        )

    def _unknown_report(self, f: str) -> dict[str, Any]:
        landed = self._landed
        count = n_landed = 0
        ex_landed: list[dict[str, Any]] = []
        ex_not: list[Any] = []
        for v, (typ, kind, _inv, _target) in self._unacked.items():
            if typ != "info" or kind != f:
                continue
            count += 1
            key = landed.get(v)
            if key is not None:
                n_landed += 1
                if len(ex_landed) < self._examples_max:
                    ex_landed.append({"v": v, "pos": list(key)})
            elif len(ex_not) < self._examples_max:
                ex_not.append(v)
        return {
            "count": count,
            "landed": n_landed,
            "not_landed": count - n_landed,
            "examples_landed": ex_landed,
            "examples_not_landed": ex_not,
        }


def _event_dict(ev: Any, position: int) -> dict[str, Any]:
    if isinstance(ev, Event):
        return ev.to_json()
    if isinstance(ev, Mapping):
        d = dict(ev)
        d.setdefault("index", position)
        return d
    raise HistoryError(f"want an event object or dict, got {type(ev).__name__}")


def check_write_once(
    history: Iterable[Op] | Iterable[Event] | Iterable[Mapping[str, Any]],
    *,
    memory_limit_mb: float | None = None,
    time_limit_s: float | None = None,
    deadline: Callable[[], bool] | None = None,
    examples_max: int = EXAMPLES_MAX,
) -> CheckResult:
    """Check a write-once history given as ops, events or raw event dicts.

    ``time_limit_s`` is accepted for signature parity with ``check_history``; this
    checker is linear and has no clock: pass ``deadline`` to enforce time.
    """
    del time_limit_s
    checker = WriteOnceChecker(
        memory_limit_mb=memory_limit_mb, deadline=deadline, examples_max=examples_max
    )
    it = iter(history)
    with paused_gc():
        first = next(it, None)
        if first is None:
            return checker.result()
        if isinstance(first, Op):
            checker.feed_ops(chain((first,), it))  # type: ignore[arg-type]
        else:
            checker.feed_events(chain((first,), it))  # type: ignore[arg-type]
        return checker.result()


# ---- fast JSON Lines decoding ------------------------------------------------------------
def _stdlib_decoder() -> Callable[[bytes | str], Any]:
    return json.loads


def _fast_decoder() -> Callable[[bytes | str], Any]:
    if msgspec is None:
        return _stdlib_decoder()
    return msgspec.json.Decoder().decode  # type: ignore[no-any-return]


def iter_jsonl_events(lines: Iterable[bytes | str], *, name: str = "history") -> Iterator[Any]:
    """Decode JSON Lines into event dicts (msgspec when installed, else ``json``).

    Same rules as ``harness.history.read_history``: blank lines skipped; a torn last line
    (no newline, not JSON) is what a crashed writer leaves and is dropped; any other bad
    line raises ``HistoryError`` naming the line; a missing ``index`` is the position.
    """
    for batch in iter_jsonl_batches(lines, name=name):
        yield from batch


_LINES_PER_BATCH = 16384
_BLOCK_BYTES = 1 << 23  # a binary file is decoded 8 MiB at a time


def _byte_blocks(fh: Any) -> Iterator[tuple[memoryview | bytes, int]]:
    """(block, newlines in it): blocks of whole lines from a binary file, read into one
    reused buffer (a block is only valid until the next one is asked for); the last block
    may lack its newline (a torn line) and is then a copy."""
    buf = bytearray(_BLOCK_BYTES)
    have = 0
    while True:
        if have >= len(buf) // 2:  # a line longer than half the buffer: grow
            buf.extend(bytes(len(buf)))
        with memoryview(buf) as mv:
            n = fh.readinto(mv[have:])
        if not n:
            if have:
                yield bytes(buf[:have]), buf.count(b"\n", 0, have)
            return
        end = have + n
        k = buf.rfind(b"\n", 0, end)
        if k < 0:
            have = end
            continue
        with memoryview(buf) as mv, mv[: k + 1] as block:
            yield block, buf.count(b"\n", 0, k + 1)
        have = end - (k + 1)
        buf[:have] = buf[k + 1 : end]


def _chunks(
    lines: Iterable[bytes | str],
) -> Iterator[tuple[memoryview | bytes | None, int, list[Any] | None]]:
    """(block, newlines, None) per 8 MiB of a binary file; (None, 0, lines) per 16384
    other lines."""
    if isinstance(lines, io.BufferedIOBase | io.RawIOBase):
        for block, newlines in _byte_blocks(lines):
            yield block, newlines, None
        return
    it = iter(lines)
    while True:
        chunk = list(islice(it, _LINES_PER_BATCH))
        if not chunk:
            return
        yield None, 0, chunk


def iter_jsonl_batches(
    lines: Iterable[bytes | str], *, name: str = "history", structs: bool = False
) -> Iterator[list[Any]]:
    """Like :func:`iter_jsonl_events`, in lists: with msgspec, one ``decode_lines`` call per
    8 MiB block of a binary file (or per 16384 given lines), first into the common-shape
    records (``structs=True``), then the general ones; the per-line path runs only for a
    block with a problem in it (it names the line)."""
    if structs and msgspec is None:
        raise ValueError("structs=True needs msgspec")
    decoders: list[Callable[[bytes], list[Any]]] = []
    if msgspec is not None:
        if structs:
            decoders = [msgspec.json.Decoder(_FastEv).decode_lines]
        decoders.append(msgspec.json.Decoder(_Ev if structs else None).decode_lines)
    decode = _fast_decoder()
    position = 0
    lineno = 0
    for block, newlines, chunk in _chunks(lines):
        out: list[Any] | None = None
        if block is not None:
            n_lines = newlines + (0 if block[-1:] == b"\n" else 1)
        else:
            assert chunk is not None
            n_lines = len(chunk)
            if decoders and type(chunk[0]) is bytes:
                block = b"".join(chunk)
        if block is not None:
            for decode_lines in decoders:
                try:
                    out = decode_lines(block)
                except Exception:  # a bad or torn line, or another shape: next decoder
                    out = None
                    continue
                if len(out) == n_lines and (
                    structs or all(type(d) is dict and "index" in d for d in out)
                ):
                    break
                out = None
        if out is not None:
            lineno += n_lines
            position += len(out)
            yield out
            continue
        if chunk is None:
            assert block is not None
            chunk = list(io.BytesIO(bytes(block)))  # split at b"\n" only, as a file reads
        out = []
        torn = False
        for line in chunk:
            lineno += 1
            try:
                d = decode(line)
            except Exception as exc:  # msgspec.DecodeError or json.JSONDecodeError
                if not line.strip():
                    continue
                ending = b"\n" if isinstance(line, bytes) else "\n"
                if not line.endswith(ending):  # type: ignore[arg-type]
                    torn = True
                    break
                raise HistoryError(f"{name}:{lineno}: invalid JSON: {exc}") from None
            if type(d) is not dict:
                raise HistoryError(f"{name}:{lineno}: event must be a JSON object")
            if "index" not in d:
                d["index"] = position
            position += 1
            out.append(d)
        if out and structs:
            out = [_to_struct(d, name) for d in out]
        if out:
            yield out
        if torn:
            return


def _to_struct(d: dict[str, Any], name: str) -> Any:
    try:
        return msgspec.convert(d, _Ev)
    except msgspec.ValidationError as exc:
        raise HistoryError(f"{name}: event {d.get('index')}: {exc}") from None


def check_write_once_lines(
    lines: Iterable[bytes | str],
    *,
    name: str = "history",
    memory_limit_mb: float | None = None,
    deadline: Callable[[], bool] | None = None,
    fast: bool = True,
    fast_min_bytes: int | None = None,
) -> CheckResult:
    """Check a JSON Lines history given as its lines (e.g. an open binary file).

    With ``fast`` (the default) and ``lines`` a regular file opened by the caller, not yet
    read from and of at least ``fast_min_bytes`` (default: the fast path's own threshold),
    a fast path runs first (:func:`try_fast_paths`: compiled with numba when installed,
    else columnar with DuckDB): it returns the result only for a history it proved valid
    (the same result this checker builds); anything else is checked here, from the start
    of the file.
    """
    if fast:
        res, _ = try_fast_paths(
            lines, memory_limit_mb=memory_limit_mb, deadline=deadline, min_bytes=fast_min_bytes
        )
        if res is not None:
            return res
    checker = WriteOnceChecker(memory_limit_mb=memory_limit_mb, deadline=deadline)
    with paused_gc():  # one pause over feeding and the verdict passes
        if msgspec is not None:
            checker.feed_struct_batches(iter_jsonl_batches(lines, name=name, structs=True))
        else:
            checker.feed_batches(iter_jsonl_batches(lines, name=name))
        return checker.result()


# Each fast path's threshold (its module's FAST_MIN_BYTES; kept here so that a small file
# never imports it): below it the Python checker costs less CPU (measured, see
# docs/history-write-once.md).
FAST_MIN_BYTES = {"jit": 64 << 20, "duckdb": 64 << 20}


def fast_path_name() -> str:
    """Which fast path this installation runs: "jit" (numba), "duckdb", or "" (none)."""
    if importlib.util.find_spec("numba") is not None:
        return "jit"
    if importlib.util.find_spec("duckdb") is not None:
        return "duckdb"
    return ""


def _regular_file_size(lines: Any) -> int | None:
    try:
        st = os.fstat(lines.fileno())
    except (AttributeError, OSError, ValueError):
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def try_fast_paths(
    lines: Any,
    *,
    memory_limit_mb: float | None = None,
    deadline: Callable[[], bool] | None = None,
    min_bytes: int | None = None,
    why: list[str] | None = None,
) -> tuple[CheckResult | None, str]:
    """(result, path): the compiled fast path's answer (``write_once_jit``, numba) when numba
    is installed, else the columnar one's (``write_once_fast``, DuckDB); the result is None
    when it handed over (``why`` gets the reason) or did not run (path "": no fast path
    installed, not a regular file, smaller than ``min_bytes`` -- default: the path's
    ``FAST_MIN_BYTES`` --; then nothing is imported, so small checks stay cheap)."""
    name = fast_path_name()
    size = _regular_file_size(lines)
    if not name or size is None:
        return None, ""
    if size < (FAST_MIN_BYTES[name] if min_bytes is None else min_bytes):
        return None, ""  # decided before importing numba (~0.5 s) or DuckDB
    if name == "jit":
        from harness.checker import write_once_jit as path
    else:
        from harness.checker import write_once_fast as path  # type: ignore[no-redef]
    if name == "jit":
        res = path.try_check_file(
            lines, memory_limit_mb=memory_limit_mb, deadline=deadline, why=why
        )
    else:
        res = path.try_check_file(lines, memory_limit_mb=memory_limit_mb, deadline=deadline)
        if res is None and why is not None:
            why.append("duckdb handed over")
    return res, name


