"""EDN import/export of Jepsen/Knossos histories (via the ``edn_format`` library).

Owns the mapping between EDN data and our JSON-friendly history values: keywords become
strings (``:read`` -> ``"read"``, ``:ns/k`` -> ``"ns/k"``), ``nil`` -> ``None``, vectors and
lists -> lists, maps -> dicts, sets -> sorted lists. Export writes ``:type``, ``:f``, string
``:process`` values (``:nemesis``) and the op name / register name of ``txn`` micro-ops back
as keywords; other strings stay strings (EDN keyword vs string in a value is not preserved).
Reading uses a small exact reader for the subset Jepsen histories use and falls back to
``edn_format`` for anything else (tags, chars, symbols, ...); tests hold the two equal.
It must not pair, interpret or check operations.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import edn_format

from harness.history import Event, HistoryError, events_from_dicts

_KEYWORD_FIELDS = ("type", "f")


def from_edn(obj: Any) -> Any:
    """Convert a parsed EDN value to plain Python (str / int / float / list / dict / None)."""
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, edn_format.Keyword):
        return obj.name
    if isinstance(obj, edn_format.Symbol):
        return str(obj)
    if isinstance(obj, edn_format.ImmutableDict | dict):
        return {_key(k): from_edn(v) for k, v in obj.items()}
    if isinstance(obj, frozenset | set):
        items = [from_edn(x) for x in obj]
        try:
            return sorted(items)
        except TypeError:
            return sorted(items, key=repr)
    if isinstance(obj, edn_format.ImmutableList | list | tuple):
        return [from_edn(x) for x in obj]
    return str(obj)


def _key(k: Any) -> Any:
    v = from_edn(k)
    if isinstance(v, list):
        return tuple(v)
    return v


# Fast path for the EDN subset Jepsen histories use (maps, vectors, lists, sets, keywords,
# strings, numbers, nil/true/false, comments): ~30x faster than edn_format's ply parser.
# Anything else (tags, chars, symbols, ratios, ...) falls back to edn_format.
_TOKEN = re.compile(
    r"""[\s,]+|;[^\n]*|(#\{|[\[\](){}])|:([^\s,;()\[\]{}"]+)"""
    r"""|"((?:[^"\\]|\\.)*)"|(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)(?=[\s,;()\[\]{}]|$)"""
    r"""|(nil|true|false)(?=[\s,;()\[\]{}]|$)"""
)
_STR_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}
_CLOSE = {"[": "]", "(": ")", "{": "}", "#{": "}"}
_ATOMS = {"nil": None, "true": True, "false": False}


class _Unsupported(Exception):
    pass


def _fast_forms(text: str) -> list[Any]:
    """All top-level forms, already converted like ``from_edn``; _Unsupported otherwise."""
    stack: list[tuple[str, list[Any]]] = []
    top: list[Any] = []
    cur = top
    pos = 0
    n = len(text)
    match = _TOKEN.match
    while pos < n:
        mt = match(text, pos)
        if mt is None:
            raise _Unsupported(pos)
        pos = mt.end()
        br, kw, st, num, atom = mt.groups()
        if br is not None:
            if br in _CLOSE:
                stack.append((br, cur))
                cur = []
                continue
            if not stack:
                raise _Unsupported(pos)
            opener, parent = stack.pop()
            if _CLOSE[opener] != br:
                raise _Unsupported(pos)
            val: Any
            if opener == "{":
                if len(cur) % 2:
                    raise _Unsupported(pos)
                val = {}
                for i in range(0, len(cur), 2):
                    k = cur[i]
                    val[tuple(k) if isinstance(k, list) else k] = cur[i + 1]
            elif opener == "#{":
                try:
                    val = sorted(cur)
                except TypeError:
                    val = sorted(cur, key=repr)
            else:
                val = cur
            cur = parent
            cur.append(val)
        elif kw is not None:
            cur.append(kw)
        elif st is not None:
            if "\\" in st:
                st = re.sub(r"\\(.)", lambda m: _unescape(m.group(1)), st)
            cur.append(st)
        elif num is not None:
            cur.append(float(num) if ("." in num or "e" in num or "E" in num) else int(num))
        elif atom is not None:
            cur.append(_ATOMS[atom])
    if stack:
        raise _Unsupported(n)
    return top


def _unescape(c: str) -> str:
    if c in _STR_ESCAPES:
        return _STR_ESCAPES[c]
    raise _Unsupported(c)


def parse_edn_history(text: str, name: str = "<edn>") -> list[dict[str, Any]]:
    """Parse EDN text holding one vector/list of op maps (or a sequence of maps)."""
    try:
        forms = _fast_forms(text)
    except _Unsupported:
        try:
            forms = [from_edn(f) for f in edn_format.loads_all(text)]
        except Exception as exc:  # edn_format raises several unrelated exception types
            raise HistoryError(f"{name}: invalid EDN: {exc}") from None
    if len(forms) == 1 and isinstance(forms[0], list):
        items = forms[0]
    else:
        items = forms
    out: list[dict[str, Any]] = []
    for i, d in enumerate(items):
        if not isinstance(d, dict):
            raise HistoryError(f"{name}: element {i} is not a map: {d!r}")
        out.append(d)
    return out


def read_edn_history(path: str | Path) -> Iterator[Event]:
    """Yield the events of an EDN history file (numbered by position when unindexed)."""
    p = Path(path)
    dicts = parse_edn_history(p.read_text(encoding="utf-8"), str(p))
    try:
        yield from events_from_dicts(dicts)
    except HistoryError as exc:
        raise HistoryError(f"{p}: {exc}") from None


def to_edn(obj: Any) -> Any:
    """Plain Python -> EDN-encodable value (dict keys become keywords)."""
    if isinstance(obj, dict):
        return {_kw(k) if isinstance(k, str) else to_edn(k): to_edn(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_edn(x) for x in obj]
    return obj


def _kw(s: str) -> edn_format.Keyword:
    return edn_format.Keyword(s)


def event_to_edn(ev: Event) -> Any:
    """One event as an EDN-encodable map (Jepsen's field conventions)."""
    d = ev.to_json()
    out: dict[Any, Any] = {}
    for k, v in d.items():
        if k in _KEYWORD_FIELDS and isinstance(v, str):
            val: Any = _kw(v)
        elif k == "process" and isinstance(v, str):
            val = _kw(v)
        elif k == "value" and ev.f == "txn" and isinstance(v, list):
            val = [_micro_op_to_edn(m) for m in v]
        elif k == "error" and isinstance(v, str) and v and " " not in v:
            val = _kw(v)
        else:
            val = to_edn(v)
        out[_kw(k)] = val
    return out


def _micro_op_to_edn(m: Any) -> Any:
    if isinstance(m, list | tuple) and len(m) == 3:
        f, k, v = m
        return [
            _kw(f) if isinstance(f, str) else f,
            _kw(k) if isinstance(k, str) else to_edn(k),
            to_edn(v),
        ]
    return to_edn(m)


def dumps_edn_history(events: Iterable[Event]) -> str:
    """An EDN vector of event maps, one map per line."""
    lines = [edn_format.dumps(event_to_edn(ev)) for ev in events]
    return "[" + "\n ".join(lines) + "]\n"


def write_edn_history(path: str | Path, events: Iterable[Event]) -> None:
    """Export a history to an EDN file (overwrites)."""
    Path(path).write_text(dumps_edn_history(events), encoding="utf-8")
