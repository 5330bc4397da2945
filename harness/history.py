"""Operation histories: the event record, JSON Lines reading/writing, and invoke/complete pairing.

Owns the history format described in ``docs/history.md`` (Jepsen-compatible fields, one
event per line) and the one place where raw events become paired operations (``Op``).
It must not know about any model or checker: checkers consume ``Op`` lists and decide.

Reading streams line by line; a torn last line (a writer that crashed mid-line) is skipped,
any other malformed line raises ``HistoryError`` naming the file and line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

EVENT_TYPES = frozenset({"invoke", "ok", "fail", "info"})
COMPLETION_TYPES = frozenset({"ok", "fail", "info"})
# Fields with a dedicated attribute; everything else in a line lands in ``Event.extra``.
_CORE_FIELDS = ("index", "time", "process", "type", "f", "value", "key", "error")
NEMESIS = "nemesis"


class HistoryError(ValueError):
    """A history that cannot be read or paired: the message names where and why."""


@dataclass(slots=True)
class Event:
    """One line of a history: an invocation or a completion (ok / fail / info)."""

    index: int
    time: int  # ns
    process: int | str
    type: str  # "invoke" | "ok" | "fail" | "info"
    f: str
    value: Any = None
    key: Any = None
    error: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The JSON object for this event (``key``/``error`` only when set; extras merged)."""
        d: dict[str, Any] = {
            "index": self.index,
            "time": self.time,
            "process": self.process,
            "type": self.type,
            "f": self.f,
            "value": self.value,
        }
        if self.key is not None:
            d["key"] = self.key
        if self.error is not None:
            d["error"] = self.error
        for k, v in self.extra.items():
            if k not in d:
                d[k] = v
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Event:
        """Build an event from a decoded JSON object; raises ``HistoryError`` on bad fields.

        A missing ``index`` becomes -1 (``read_history`` then numbers events by position);
        a missing ``time`` becomes 0.
        """
        if not isinstance(d, dict):
            raise HistoryError(f"event must be a JSON object, got {type(d).__name__}")
        typ = d.get("type")
        if typ not in EVENT_TYPES:
            raise HistoryError(f"event type must be one of {sorted(EVENT_TYPES)}, got {typ!r}")
        f = d.get("f")
        if not isinstance(f, str):
            raise HistoryError(f"event 'f' must be a string, got {f!r}")
        process = d.get("process")
        if isinstance(process, bool) or not isinstance(process, int | str):
            raise HistoryError(f"event 'process' must be an int or a string, got {process!r}")
        index = d.get("index", -1)
        time_ns = d.get("time", 0)
        if index is None:
            index = -1
        if time_ns is None:
            time_ns = 0
        if isinstance(index, bool) or not isinstance(index, int):
            raise HistoryError(f"event 'index' must be an int, got {index!r}")
        if isinstance(time_ns, bool) or not isinstance(time_ns, int):
            raise HistoryError(f"event 'time' must be an int (ns), got {time_ns!r}")
        extra = {k: v for k, v in d.items() if k not in _CORE_FIELDS}
        return cls(
            index=index,
            time=time_ns,
            process=process,
            type=typ,
            f=f,
            value=d.get("value"),
            key=d.get("key"),
            error=d.get("error"),
            extra=extra,
        )


@dataclass(slots=True)
class Op:
    """An invocation paired with its completion (``info`` also when it never completed)."""

    process: int | str
    f: str
    key: Any
    value: Any  # invoke value
    result: Any  # completion value (None if none)
    type: str  # "ok" | "fail" | "info"
    invoke_index: int
    complete_index: int | None
    invoke_time: int
    complete_time: int | None
    error: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-friendly dict of this op (for witnesses and reports)."""
        return {
            "process": self.process,
            "f": self.f,
            "key": self.key,
            "value": self.value,
            "result": self.result,
            "type": self.type,
            "invoke_index": self.invoke_index,
            "complete_index": self.complete_index,
            "invoke_time": self.invoke_time,
            "complete_time": self.complete_time,
            "error": self.error,
        }


def _detect_format(path: Path) -> str:
    return "edn" if path.suffix.lower() == ".edn" else "jsonl"


def read_history(path: str | Path, format: str = "auto") -> Iterator[Event]:
    """Yield the events of a history file (``jsonl`` streamed; ``edn`` parsed whole).

    ``format="auto"`` picks EDN for ``*.edn`` and JSON Lines otherwise. Events without an
    ``index`` are numbered by position. A torn final line (no newline, not valid JSON) is
    what a crashed writer leaves behind and is skipped; anything else malformed raises.
    """
    p = Path(path)
    fmt = _detect_format(p) if format == "auto" else format
    if fmt == "edn":
        from harness.edn import read_edn_history

        yield from read_edn_history(p)
        return
    if fmt != "jsonl":
        raise HistoryError(f"unknown history format {format!r} (jsonl, edn or auto)")
    with p.open("rb") as fh:
        yield from _read_jsonl(fh, str(p))


def _read_jsonl(fh: IO[bytes], name: str) -> Iterator[Event]:
    # Bytes, not text: a torn tail may end inside a multi-byte UTF-8 character.
    position = 0
    for lineno, line in enumerate(fh, start=1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            if not line.endswith(b"\n"):
                return  # only the last line can lack a newline: a crashed writer's torn tail
            raise HistoryError(f"{name}:{lineno}: invalid JSON: {exc}") from None
        try:
            ev = Event.from_json(d)
        except HistoryError as exc:
            raise HistoryError(f"{name}:{lineno}: {exc}") from None
        if ev.index < 0:
            ev.index = position
        position += 1
        yield ev


def events_from_dicts(dicts: Iterable[dict[str, Any]]) -> Iterator[Event]:
    """Events from already-decoded dicts, numbering the ones without an index."""
    for position, d in enumerate(dicts):
        ev = Event.from_json(d)
        if ev.index < 0:
            ev.index = position
        yield ev


def pair_ops(events: Iterable[Event], *, include_nemesis: bool = False) -> list[Op]:
    """Pair each invocation with its process's next completion, in invocation order.

    Rules: a process has at most one pending invocation; a completion must follow an
    invocation of the same ``f`` by the same process; an invocation that never completes
    becomes an ``info`` op (outcome unknown). Events of the ``"nemesis"`` process are
    dropped unless ``include_nemesis`` (then an ``info`` with nothing pending opens an op,
    as Jepsen's nemesis writes info/info pairs). Event indexes must strictly increase (they
    define real-time order). Raises ``HistoryError`` when malformed.
    """
    ops: list[Op] = []
    pending: dict[int | str, int] = {}  # process -> index into ops
    last_index = -1
    for ev in events:
        if ev.index <= last_index:
            # Real-time order is index order; a history whose lines disagree is ambiguous.
            raise HistoryError(
                f"event index {ev.index} follows index {last_index}: indexes must increase"
            )
        last_index = ev.index
        proc = ev.process
        if proc == NEMESIS and not include_nemesis:
            continue
        typ = ev.type
        if typ == "invoke" or (typ == "info" and proc == NEMESIS and proc not in pending):
            if proc in pending:
                prev = ops[pending[proc]]
                raise HistoryError(
                    f"event {ev.index}: process {proc!r} invokes {ev.f!r} while its "
                    f"{prev.f!r} invoked at event {prev.invoke_index} is still pending"
                )
            pending[proc] = len(ops)
            ops.append(
                Op(
                    process=proc,
                    f=ev.f,
                    key=ev.key,
                    value=ev.value,
                    result=None,
                    type="info",
                    invoke_index=ev.index,
                    complete_index=None,
                    invoke_time=ev.time,
                    complete_time=None,
                    error=None,
                    extra=dict(ev.extra),
                )
            )
            continue
        slot = pending.pop(proc, None)
        if slot is None:
            raise HistoryError(
                f"event {ev.index}: {typ} of {ev.f!r} by process {proc!r} without a pending "
                "invocation"
            )
        op = ops[slot]
        if ev.f != op.f:
            raise HistoryError(
                f"event {ev.index}: process {proc!r} completes {ev.f!r} but invoked {op.f!r} "
                f"at event {op.invoke_index}"
            )
        op.type = typ
        op.result = ev.value
        op.complete_index = ev.index
        op.complete_time = ev.time
        op.error = ev.error
        if op.key is None:
            op.key = ev.key
        for k, v in ev.extra.items():
            op.extra.setdefault(k, v)
    return ops


class HistoryWriter:
    """Incremental, crash-safe JSON Lines writer.

    Each event is one line written and flushed at once, so a crash loses at most the line
    being written (which readers skip). ``fsync_every=N`` also fsyncs every N lines
    (0 = never; ``close`` always fsyncs). Refuses to overwrite an existing file unless
    ``append=True``.
    """

    def __init__(self, path: str | Path, *, fsync_every: int = 0, append: bool = False) -> None:
        if fsync_every < 0:
            raise ValueError("fsync_every must be >= 0")
        self.path = Path(path)
        self._fsync_every = fsync_every
        self._since_fsync = 0
        self._fh: IO[str] | None = self.path.open("a" if append else "x", encoding="utf-8")
        self.count = 0

    def write(self, event: Event) -> None:
        """Append one event as one line and flush it."""
        fh = self._fh
        if fh is None:
            raise HistoryError(f"{self.path}: writer is closed")
        line = json.dumps(event.to_json(), separators=(",", ":"), default=_json_default)
        fh.write(line + "\n")
        fh.flush()
        self.count += 1
        if self._fsync_every:
            self._since_fsync += 1
            if self._since_fsync >= self._fsync_every:
                os.fsync(fh.fileno())
                self._since_fsync = 0

    def close(self) -> None:
        """Flush, fsync and close (idempotent)."""
        fh = self._fh
        if fh is None:
            return
        self._fh = None
        try:
            fh.flush()
            os.fsync(fh.fileno())
        finally:
            fh.close()

    def __enter__(self) -> HistoryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _json_default(obj: object) -> Any:
    if isinstance(obj, tuple | set | frozenset):
        return list(obj)
    if isinstance(obj, bytes):
        return obj.hex()
    raise TypeError(f"cannot encode {type(obj).__name__} in a history line")


def write_history(path: str | Path, events: Iterable[Event]) -> int:
    """Write a whole history to a new JSON Lines file; returns the number of events."""
    with HistoryWriter(path) as w:
        for ev in events:
            w.write(ev)
        return w.count
