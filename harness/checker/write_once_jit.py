"""Compiled fast path of the write-once checker (``docs/history-write-once.md``), with numba.

Owns one thing: proving, at compiled speed and without one Python object per event, that a
JSON Lines write-once history is valid, and building then exactly the result the Python
checker (``write_once.py``) builds for it (stats, landing report).  It never answers
anything but "valid": on any possible anomaly, any line it does not parse (a string with a
backslash escape or a non-ASCII byte where the verdict reads it, a field of another JSON
type, a duplicate key, an unknown ``type``, a process that is neither an integer nor
``"nemesis"``, a pairing error, a repeated payload id, a blank line), a missing dependency
(numba, numpy), its memory budget or the deadline, it returns ``None`` and the caller runs
the exact Python checker, which produces the verdict and the witness.

How: the file is read in blocks of whole lines (``os.preadv`` into two alternating numpy
buffers; the caller's file offset is untouched); an ``@njit`` pass parses each line with a
small validating JSON scanner (any key order, whitespace, unknown keys and nested values
skipped and validated; two threads, one per half block) and hashes the strings the replay
looks up; another replays the Python checker's state machine, in file order, on compact
tables (prefetching the hash slots and rows a few lines ahead) while the next block is
read and parsed: payload ids, file names and other op names are interned exactly (FNV-1a hash, then
a byte comparison against the stored copy: never a hash alone), positions are keyed by
(file id, offset, size), processes by their integer.  A second ``@njit`` pass settles
pending invocations, runs the per-position rules and the overlap sweep.  Pairing follows
file order and real-time rules compare ``index`` values, as the Python checker does.

It must not decide "invalid" or "unknown" itself, change a verdict of the Python checker,
keep state between calls, or write anything but numba's own compile cache.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from harness.checker.result import CheckResult

np: Any
numba: Any
try:  # the ``fast`` extra; without it the caller falls back (DuckDB, then Python)
    import numba
    import numpy as np
except ImportError:  # pragma: no cover - exercised by monkeypatching
    np = None
    numba = None

MODEL = "write-once"
EXAMPLES_MAX = 5
_NEVER = 1 << 62
# Same estimates as write_once.py (``estimated_state_mb`` and the budget must agree).
_POSITION_BYTES = 620
_ATTEMPT_BYTES = 300
_PENDING_BYTES = 700
# Below this size the Python checker is cheaper than importing numba and loading the
# compiled code (measured at 100 k ops, 39 MiB: 1.4-1.75 CPU s here against 1.06 for the
# Python checker, at load ~25). ``write_once.FAST_MIN_BYTES`` repeats it.
FAST_MIN_BYTES = 64 << 20
BLOCK_BYTES = 8 << 20  # small: the pipeline fills (first parse) and drains (last replay) sooner
# Rows the id and position tables start with at most (then grown by doubling): sized from
# the file alone they reached 7 GB of (mostly untouched) zeros for 10 M ops, which the
# memory budget (4 GiB by default) counts, so the fast path handed over.
ROWS_START_MAX = 1 << 22
# A block of at least this many bytes is parsed in two halves on two threads.
SPLIT_MIN_BYTES = 1 << 20

# Scalars (one int64 array).
(
    S_STATUS,
    S_REASON,
    S_EVENTS,
    S_OK,
    S_FAIL,
    S_INFO,
    S_IGNORED,
    S_ANY_FINAL,
    S_UNACKED,
    S_NIDS,
    S_IDARENA,
    S_NNAMES,
    S_NAMEARENA,
    S_NPOS,
    S_NPROCS,
    S_PENDING,
    S_MAXPENDING,
    S_NEED,
    S_NSCALARS,
) = range(19)
_RUN, _GROW, _BAIL = 0, 1, 2

# Why it handed over (S_REASON), for tests and the bench row.
REASONS = (
    "none",
    "line shape",
    "value shape",
    "pairing",
    "repeated payload id",
    "conflict",
    "real-time",
    "lost",
    "from-nowhere",
    "read-of-failed",
    "overlap",
    "missing payload id or position",
)
(
    _R_NONE,
    _R_SHAPE,
    _R_VALUE,
    _R_PAIRING,
    _R_DUP,
    _R_CONFLICT,
    _R_REALTIME,
    _R_LOST,
    _R_NOWHERE,
    _R_FAILED,
    _R_OVERLAP,
    _R_MISSING,
) = range(12)

# Interned strings (payload ids; file and op names): start, length, hash; ids add the attempt.
T_START, T_LEN, T_HASH = 0, 1, 2
I_KIND, I_OUT, I_INV, I_SEQ, I_POS, I_TFILE, I_TOFF, I_TSIZE = 3, 4, 5, 6, 7, 8, 9, 10
N_ID_FIELDS = 11
N_NAME_FIELDS = 3
# Positions.
P_FILE, P_OFF, P_SIZE, P_HASH, P_VAL, P_ACK, P_WINV, P_WRESP, P_NULLINV, P_VALRESP, P_FINAL = (
    range(11)
)
N_POS_FIELDS = 11
# Processes.
Q_KEY, Q_HASH, Q_PEND, Q_INV, Q_SEQ, Q_F, Q_V, Q_TFILE, Q_TOFF, Q_TSIZE, Q_FINAL = range(11)
N_PROC_FIELDS = 11
_NEMESIS = -(1 << 63)  # process "nemesis" (every other process is an int of <= 18 digits)
# One parsed line.
(
    L_IDX,
    L_PROC,
    L_TYPE,
    L_F,
    L_FS,
    L_FE,
    L_VK,
    L_VS,
    L_VE,
    L_HASPOS,
    L_FILES,
    L_FILEE,
    L_OFF,
    L_SIZE,
    L_FINAL,
    L_SEEN,
    L_START,
    L_END,
    L_VH,
    L_FH,
    L_PH,
    N_LINE_FIELDS,
) = range(22)
_T_INVOKE, _T_OK, _T_FAIL, _T_INFO = 0, 1, 2, 3
_F_APPEND, _F_WRITE, _F_READ, _F_OTHER = 0, 1, 2, 3
_VK_NONE, _VK_OBJECT, _VK_OTHER, _VK_ODD = 0, 1, 2, 3
_FINAL_GOOD, _FINAL_WRONG = 1, 2
_FNV_OFFSET = -3750763034362895579  # 0xcbf29ce484222325 as int64
_FNV_PRIME = 1099511628211
_DEPTH_MAX = 64
_AHEAD = 16  # lines of prefetch distance in replay_block
# The shortest event line: {"index":0,"process":0,"type":"ok","f":""} is 42 bytes.
_LINE_MIN_BYTES = 32


# A numba that cannot compile this module's code (another version: ``_nrt=False``, the
# prefetch intrinsic) makes the path hand over, not the check fail.
_COMPILE_ERRORS: tuple[type[Exception], ...] = (
    () if numba is None else (numba.core.errors.NumbaError,)
)


def available() -> bool:
    """True when the compiled path can run (numba and numpy importable)."""
    return numba is not None


if numba is not None:
    # No reference counting in the hot functions (``_nrt=False``): they allocate nothing,
    # and with it every call passing an array cost atomic increments and decrements of
    # the arrays' counts (measured: about a tenth of the parse and replay time).  Only
    # ``finish`` allocates.
    _njit = numba.njit(cache=True, nogil=True, _nrt=False)
    _njit_alloc = numba.njit(cache=True, nogil=True)
    # (numba's IR inlining, ``inline="always"``, was tried on the helpers: no faster,
    # and the cold compile took 50 % longer.)
    _inline = _njit

    from llvmlite import ir as _ir
    from numba.core import cgutils as _cgutils

    @numba.extending.intrinsic
    def _prefetch(typingctx: Any, arr: Any, idx: Any) -> Any:
        """A hint (``llvm.prefetch``, read, high locality) that arr[idx] (its first item:
        arr[idx, 0] of a 2-D array) is needed soon: no load, no fault, no effect on
        results; idx must be in range."""

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            aryty = signature.args[0]
            ary = context.make_array(aryty)(context, builder, args[0])
            idx = context.cast(builder, args[1], signature.args[1], numba.types.intp)
            zero = context.get_constant(numba.types.intp, 0)
            ptr = _cgutils.get_item_pointer(
                context, builder, aryty, ary, [idx] + [zero] * (aryty.ndim - 1),
                wraparound=False, boundscheck=False,
            )
            i8p = _ir.IntType(8).as_pointer()
            i32 = _ir.IntType(32)
            fnty = _ir.FunctionType(_ir.VoidType(), [i8p, i32, i32, i32])
            # Unmangled: LLVM's auto-upgrade gives it the suffix of its pointer model
            # (``.p0`` opaque, ``.p0i8`` typed), so one name works across llvmlite versions.
            fn = _cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch")
            builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
            return context.get_dummy_value()

        return numba.types.void(arr, idx), codegen

    def _lit(s: str) -> Any:
        return np.frombuffer(s.encode(), dtype=np.uint8).copy()

    _K_INDEX = _lit("index")
    _K_PROCESS = _lit("process")
    _K_TYPE = _lit("type")
    _K_F = _lit("f")
    _K_VALUE = _lit("value")
    _K_FINAL = _lit("final")
    _K_V = _lit("v")
    _K_POS = _lit("pos")
    _W_INVOKE = _lit("invoke")
    _W_OK = _lit("ok")
    _W_FAIL = _lit("fail")
    _W_INFO = _lit("info")
    _W_APPEND = _lit("append")
    _W_WRITE = _lit("write")
    _W_READ = _lit("read")
    _W_NEMESIS = _lit("nemesis")
    _W_TRUE = _lit("true")
    _W_FALSE = _lit("false")
    _W_NULL = _lit("null")

    @_inline
    def _eq(buf: Any, s: int, e: int, lit: Any) -> bool:
        if e - s != lit.size:
            return False
        for k in range(lit.size):  # noqa: SIM110 - a loop numba compiles
            if buf[s + k] != lit[k]:
                return False
        return True

    @_inline
    def _ws(buf: Any, i: int, end: int) -> int:
        while i < end:
            c = buf[i]
            if c != 32 and c != 9 and c != 13:
                return i
            i += 1
        return i

    @_inline
    def _hex(c: int) -> bool:
        return (48 <= c <= 57) or (65 <= c <= 70) or (97 <= c <= 102)

    @_inline
    def _string(buf: Any, i: int, end: int) -> tuple[int, int]:
        """buf[i] is '"': (index after the closing quote or -1 if invalid, 1 if it has an
        escape). Control characters and non-ASCII bytes count as invalid."""
        i += 1
        escaped = 0
        while i < end:
            c = buf[i]
            if c == 34:
                return i + 1, escaped
            if c == 92:
                if i + 1 >= end:
                    return -1, 0
                d = buf[i + 1]
                if d == 117:
                    if i + 5 >= end:
                        return -1, 0
                    for k in range(i + 2, i + 6):
                        if not _hex(buf[k]):
                            return -1, 0
                    i += 6
                elif (
                    d == 34 or d == 92 or d == 47 or d == 98 or d == 102 or d == 110
                    or d == 114 or d == 116
                ):
                    i += 2
                else:
                    return -1, 0
                escaped = 1
                continue
            if c < 32 or c >= 128:
                return -1, 0
            i += 1
        return -1, 0

    @_inline
    def _number_end(buf: Any, i: int, end: int) -> int:
        """End of the JSON number at i, or -1."""
        if i < end and buf[i] == 45:
            i += 1
        if i >= end:
            return -1
        c = buf[i]
        if c == 48:
            i += 1
        elif 49 <= c <= 57:
            while i < end and 48 <= buf[i] <= 57:
                i += 1
        else:
            return -1
        if i < end and buf[i] == 46:
            i += 1
            if i >= end or not (48 <= buf[i] <= 57):
                return -1
            while i < end and 48 <= buf[i] <= 57:
                i += 1
        if i < end and (buf[i] == 101 or buf[i] == 69):
            i += 1
            if i < end and (buf[i] == 43 or buf[i] == 45):
                i += 1
            if i >= end or not (48 <= buf[i] <= 57):
                return -1
            while i < end and 48 <= buf[i] <= 57:
                i += 1
        return i

    @_inline
    def _int(buf: Any, i: int, end: int) -> tuple[int, int]:
        """(value, index after it) of a plain JSON integer (<= 18 digits, no fraction or
        exponent) at i; index -1 if it is anything else."""
        neg = False
        if i < end and buf[i] == 45:
            neg = True
            i += 1
        start = i
        if i >= end or not (48 <= buf[i] <= 57):
            return 0, -1
        if buf[i] == 48 and i + 1 < end and 48 <= buf[i + 1] <= 57:
            return 0, -1
        v = 0
        while i < end and 48 <= buf[i] <= 57:
            v = v * 10 + (buf[i] - 48)
            i += 1
        if i - start > 18:
            return 0, -1
        if i < end and (buf[i] == 46 or buf[i] == 101 or buf[i] == 69):
            return 0, -1
        return (-v if neg else v), i

    @_inline
    def _key_then_colon(buf: Any, i: int, end: int) -> int:
        """A string key at i (any content), then ':'; index after the colon or -1."""
        if i >= end or buf[i] != 34:
            return -1
        i, _ = _string(buf, i, end)
        if i < 0:
            return -1
        i = _ws(buf, i, end)
        if i >= end or buf[i] != 58:
            return -1
        return i + 1

    @_njit
    def _skip(buf: Any, i: int, end: int, stack: Any) -> int:
        """Validate and skip one JSON value at i; index after it or -1."""
        depth = 0
        while True:
            i = _ws(buf, i, end)
            if i >= end:
                return -1
            c = buf[i]
            if c == 123 or c == 91:
                j = _ws(buf, i + 1, end)
                if j < end and buf[j] == c + 2:  # '}' or ']'
                    i = j + 1
                else:
                    if depth >= _DEPTH_MAX:
                        return -1
                    stack[depth] = c
                    depth += 1
                    i = j
                    if c == 123:
                        i = _key_then_colon(buf, i, end)
                        if i < 0:
                            return -1
                    continue
            elif c == 34:
                i, _ = _string(buf, i, end)
                if i < 0:
                    return -1
            elif c == 116:
                if not _eq(buf, i, min(i + 4, end), _W_TRUE):
                    return -1
                i += 4
            elif c == 102:
                if not _eq(buf, i, min(i + 5, end), _W_FALSE):
                    return -1
                i += 5
            elif c == 110:
                if not _eq(buf, i, min(i + 4, end), _W_NULL):
                    return -1
                i += 4
            else:
                i = _number_end(buf, i, end)
                if i < 0:
                    return -1
            while True:  # a value ended: close containers, or go on after a comma
                if depth == 0:
                    return i
                i = _ws(buf, i, end)
                if i >= end:
                    return -1
                c = buf[i]
                top = stack[depth - 1]
                if c == 44:
                    i += 1
                    if top == 123:
                        i = _key_then_colon(buf, _ws(buf, i, end), end)
                        if i < 0:
                            return -1
                    break
                if c == top + 2:
                    depth -= 1
                    i += 1
                    continue
                return -1

    @_njit
    def _pos(buf: Any, i: int, end: int, recs: Any, r: int) -> int:
        """``[file, offset, size]`` of the common shape at i (buf[i] is '['): index after
        it, or -1 when it is anything else (the caller then skips it as odd)."""
        i = _ws(buf, i + 1, end)
        if i >= end or buf[i] != 34:
            return -1
        fs = i + 1
        i, esc = _string(buf, i, end)
        if i < 0 or esc:
            return -1
        recs[r, L_FILES] = fs
        recs[r, L_FILEE] = i - 1
        i = _ws(buf, i, end)
        if i >= end or buf[i] != 44:
            return -1
        off, i = _int(buf, _ws(buf, i + 1, end), end)
        if i < 0 or off < 0:
            return -1
        i = _ws(buf, i, end)
        if i >= end or buf[i] != 44:
            return -1
        size, i = _int(buf, _ws(buf, i + 1, end), end)
        if i < 0 or size <= 0:
            return -1
        i = _ws(buf, i, end)
        if i >= end or buf[i] != 93:
            return -1
        recs[r, L_OFF] = off
        recs[r, L_SIZE] = size
        return i + 1

    @_njit
    def _value(buf: Any, i: int, end: int, recs: Any, r: int, stack: Any) -> int:
        """The ``value`` field at i: an object's ``v`` and ``pos`` into ``line``; anything
        else marks the value other (not an object) or odd (an object of another shape)."""
        if buf[i] != 123:
            recs[r, L_VK] = _VK_OTHER
            return _skip(buf, i, end, stack)
        recs[r, L_VK] = _VK_OBJECT
        i = _ws(buf, i + 1, end)
        if i < end and buf[i] == 125:
            return i + 1
        seen = 0
        while True:
            if i >= end or buf[i] != 34:
                return -1
            ks = i + 1
            i, esc = _string(buf, i, end)
            if i < 0:
                return -1
            ke = i - 1
            i = _ws(buf, i, end)
            if i >= end or buf[i] != 58:
                return -1
            i = _ws(buf, i + 1, end)
            if i >= end:
                return -1
            if esc:  # an escaped key may spell v or pos
                return -1
            elif _eq(buf, ks, ke, _K_V):
                if seen & 1:
                    return -1
                seen |= 1
                if buf[i] == 34:
                    vs = i + 1
                    i, esc = _string(buf, i, end)
                    if esc:
                        recs[r, L_VK] = _VK_ODD
                    elif i >= 0:
                        recs[r, L_VS] = vs
                        recs[r, L_VE] = i - 1
                else:
                    if not _eq(buf, i, min(i + 4, end), _W_NULL):
                        recs[r, L_VK] = _VK_ODD
                    i = _skip(buf, i, end, stack)
            elif _eq(buf, ks, ke, _K_POS):
                if seen & 2:
                    return -1
                seen |= 2
                j = -1
                if buf[i] == 91:
                    j = _pos(buf, i, end, recs, r)
                if j >= 0:
                    recs[r, L_HASPOS] = 1
                    i = j
                elif buf[i] == 91:  # another array: the Python checker's business
                    recs[r, L_VK] = _VK_ODD
                    i = _skip(buf, i, end, stack)
                elif _eq(buf, i, min(i + 4, end), _W_NULL):
                    i += 4
                else:  # neither array nor null: the Python checker rejects the history
                    return -1
            else:
                i = _skip(buf, i, end, stack)
            if i < 0:
                return -1
            i = _ws(buf, i, end)
            if i >= end:
                return -1
            if buf[i] == 44:
                i = _ws(buf, i + 1, end)
                continue
            if buf[i] == 125:
                return i + 1
            return -1

    @_njit
    def _parse_line(buf: Any, i: int, end: int, recs: Any, r: int, stack: Any) -> int:
        """The event line at i into recs[r]; returns the index of its newline, or -1 when
        it is not one this path handles (invalid JSON, a missing or odd common field, a
        duplicate one).  buf[end - 1] is a newline, and no scanner here steps over one (it
        is no JSON whitespace they skip, nor allowed in a string or number), so the line
        needs no newline search of its own."""
        recs[r, L_VK] = _VK_NONE
        recs[r, L_VS] = -1
        recs[r, L_HASPOS] = 0
        recs[r, L_FINAL] = 0
        seen = 0
        i = _ws(buf, i, end)
        if i >= end or buf[i] != 123:
            return -1
        i = _ws(buf, i + 1, end)
        while True:
            if i >= end or buf[i] != 34:
                return -1
            ks = i + 1
            i, esc = _string(buf, i, end)
            if i < 0 or esc:
                return -1
            ke = i - 1
            i = _ws(buf, i, end)
            if i >= end or buf[i] != 58:
                return -1
            i = _ws(buf, i + 1, end)
            if i >= end:
                return -1
            if _eq(buf, ks, ke, _K_INDEX):
                if seen & 1:
                    return -1
                seen |= 1
                recs[r, L_IDX], i = _int(buf, i, end)
            elif _eq(buf, ks, ke, _K_PROCESS):
                if seen & 2:
                    return -1
                seen |= 2
                if buf[i] == 34:
                    s = i + 1
                    i, esc = _string(buf, i, end)
                    if i < 0 or esc or not _eq(buf, s, i - 1, _W_NEMESIS):
                        return -1
                    recs[r, L_PROC] = _NEMESIS
                else:
                    recs[r, L_PROC], i = _int(buf, i, end)
            elif _eq(buf, ks, ke, _K_TYPE):
                if seen & 4:
                    return -1
                seen |= 4
                if buf[i] != 34:
                    return -1
                s = i + 1
                i, esc = _string(buf, i, end)
                if i < 0 or esc:
                    return -1
                if _eq(buf, s, i - 1, _W_INVOKE):
                    recs[r, L_TYPE] = _T_INVOKE
                elif _eq(buf, s, i - 1, _W_OK):
                    recs[r, L_TYPE] = _T_OK
                elif _eq(buf, s, i - 1, _W_FAIL):
                    recs[r, L_TYPE] = _T_FAIL
                elif _eq(buf, s, i - 1, _W_INFO):
                    recs[r, L_TYPE] = _T_INFO
                else:
                    return -1
            elif _eq(buf, ks, ke, _K_F):
                if seen & 8:
                    return -1
                seen |= 8
                if buf[i] != 34:
                    return -1
                s = i + 1
                i, esc = _string(buf, i, end)
                if i < 0 or esc:
                    return -1
                recs[r, L_FS] = s
                recs[r, L_FE] = i - 1
                if _eq(buf, s, i - 1, _W_APPEND):
                    recs[r, L_F] = _F_APPEND
                elif _eq(buf, s, i - 1, _W_WRITE):
                    recs[r, L_F] = _F_WRITE
                elif _eq(buf, s, i - 1, _W_READ):
                    recs[r, L_F] = _F_READ
                else:
                    recs[r, L_F] = _F_OTHER
            elif _eq(buf, ks, ke, _K_VALUE):
                if seen & 16:
                    return -1
                seen |= 16
                i = _value(buf, i, end, recs, r, stack)
            elif _eq(buf, ks, ke, _K_FINAL):
                if seen & 32:
                    return -1
                seen |= 32
                if _eq(buf, i, min(i + 4, end), _W_TRUE):
                    recs[r, L_FINAL] = 1
                    i += 4
                elif _eq(buf, i, min(i + 5, end), _W_FALSE):
                    i += 5
                elif _eq(buf, i, min(i + 4, end), _W_NULL):
                    i += 4
                else:
                    return -1
            else:
                i = _skip(buf, i, end, stack)
            if i < 0:
                return -1
            i = _ws(buf, i, end)
            if i >= end:
                return -1
            if buf[i] == 44:
                i = _ws(buf, i + 1, end)
                continue
            if buf[i] == 125:
                i = _ws(buf, i + 1, end)
                if i < end and buf[i] == 10 and (seen & 15) == 15:
                    return i
                return -1
            return False

    @_inline
    def _fnv(buf: Any, s: int, e: int) -> int:
        h = _FNV_OFFSET
        for k in range(s, e):
            h = (h ^ buf[k]) * _FNV_PRIME
        return h ^ (h >> 31)

    @_inline
    def _mix(a: int, b: int, c: int) -> int:
        h = a * -7046029254386353131 + b * -4658895280553007687 + c * 5555511172163733223
        h = (h ^ (h >> 29)) * -4658895280553007687
        return h ^ (h >> 32)

    @_njit
    def _intern(
        buf: Any, s: int, e: int, h: int, tab: Any, slots: Any, arena: Any, sc: Any,
        n_at: int, used_at: int, insert: bool,
    ) -> int:
        """The entry of the string buf[s:e], of hash ``_fnv(buf, s, e)`` = h (computed by
        the parse pass), in a table (hash, then byte comparison), added when ``insert``;
        -1 when absent and not added."""
        mask = slots.size - 1
        k = h & mask
        n = e - s
        while True:
            j = slots[k]
            if j < 0:
                if not insert:
                    return -1
                j = sc[n_at]
                sc[n_at] = j + 1
                a = sc[used_at]
                for q in range(n):
                    arena[a + q] = buf[s + q]
                sc[used_at] = a + n
                tab[j, T_START] = a
                tab[j, T_LEN] = n
                tab[j, T_HASH] = h
                slots[k] = j
                return j
            if tab[j, T_HASH] == h and tab[j, T_LEN] == n:
                a = tab[j, T_START]
                same = True
                for q in range(n):
                    if arena[a + q] != buf[s + q]:
                        same = False
                        break
                if same:
                    return j
            k = (k + 1) & mask

    @_njit
    def _position(
        pos: Any, slots: Any, sc: Any, file: int, off: int, size: int, h: int
    ) -> int:
        """The entry of position (file id, off, size); h is its hash from the parse pass,
        ``_mix`` of the file name's hash, off and size (one file name, one file id)."""
        mask = slots.size - 1
        k = h & mask
        while True:
            j = slots[k]
            if j < 0:
                j = sc[S_NPOS]
                sc[S_NPOS] = j + 1
                pos[j, P_FILE] = file
                pos[j, P_OFF] = off
                pos[j, P_SIZE] = size
                pos[j, P_HASH] = h
                pos[j, P_VAL] = -1
                pos[j, P_ACK] = 0
                pos[j, P_WINV] = -1
                pos[j, P_WRESP] = -1
                pos[j, P_NULLINV] = -1
                pos[j, P_VALRESP] = _NEVER
                pos[j, P_FINAL] = 0
                slots[k] = j
                return j
            if (
                pos[j, P_HASH] == h
                and pos[j, P_FILE] == file
                and pos[j, P_OFF] == off
                and pos[j, P_SIZE] == size
            ):
                return j
            k = (k + 1) & mask

    @_njit
    def _process(procs: Any, slots: Any, sc: Any, key: int, insert: bool) -> int:
        h = _mix(key, 0, 0)
        mask = slots.size - 1
        k = h & mask
        while True:
            j = slots[k]
            if j < 0:
                if not insert:
                    return -1
                j = sc[S_NPROCS]
                sc[S_NPROCS] = j + 1
                procs[j, Q_KEY] = key
                procs[j, Q_HASH] = h
                procs[j, Q_PEND] = 0
                slots[k] = j
                return j
            if procs[j, Q_KEY] == key:
                return j
            k = (k + 1) & mask

    @_njit
    def rehash(tab: Any, n: int, hash_field: int, slots: Any) -> None:
        """Rebuild an open-addressing slot array (all -1, power of two) from stored hashes."""
        mask = slots.size - 1
        for j in range(n):
            k = tab[j, hash_field] & mask
            while slots[k] >= 0:
                k = (k + 1) & mask
            slots[k] = j

    @_inline
    def _bail(sc: Any, reason: int) -> int:
        sc[S_STATUS] = _BAIL
        sc[S_REASON] = reason
        return 0

    @_njit
    def _attempt(ids: Any, sc: Any, v: int, f: int, out: int, inv: int) -> bool:
        """Record the one attempt of payload id v; False if it was attempted before."""
        if ids[v, I_KIND] != 0:
            return False
        ids[v, I_KIND] = f + 1
        ids[v, I_OUT] = out
        ids[v, I_INV] = inv
        ids[v, I_SEQ] = -1
        if out != _T_OK:
            ids[v, I_SEQ] = sc[S_UNACKED]
            sc[S_UNACKED] += 1
        return True

    @_njit
    def _event(
        buf: Any, recs: Any, r: int, sc: Any, ids: Any, id_slots: Any, id_arena: Any, names: Any,
        name_slots: Any, name_arena: Any, pos: Any, pos_slots: Any, procs: Any,
        proc_slots: Any,
    ) -> None:
        """Replay one parsed event on the tables (the Python checker's feed loop)."""
        sc[S_EVENTS] += 1
        typ = recs[r, L_TYPE]
        f = recs[r, L_F]
        if f == _F_OTHER:
            f = 3 + _intern(
                buf, recs[r, L_FS], recs[r, L_FE], _fnv(buf, recs[r, L_FS], recs[r, L_FE]),
                names, name_slots, name_arena, sc, S_NNAMES, S_NAMEARENA, True,
            )
        chunk = f < 3
        if typ == _T_INVOKE:
            if (f == _F_APPEND or f == _F_WRITE) and recs[r, L_VK] != _VK_OBJECT:  # noqa: SIM109
                _bail(sc, _R_VALUE)
                return
            q = _process(procs, proc_slots, sc, recs[r, L_PROC], True)
            if procs[q, Q_PEND]:
                _bail(sc, _R_PAIRING)
                return
            procs[q, Q_PEND] = 1
            procs[q, Q_INV] = recs[r, L_IDX]
            procs[q, Q_SEQ] = sc[S_EVENTS]
            procs[q, Q_F] = f
            procs[q, Q_FINAL] = recs[r, L_FINAL]
            procs[q, Q_V] = -1
            if f == _F_APPEND or f == _F_WRITE:  # noqa: SIM109
                if recs[r, L_VS] < 0:
                    _bail(sc, _R_MISSING)
                    return
                procs[q, Q_V] = _intern(
                    buf, recs[r, L_VS], recs[r, L_VE], recs[r, L_VH], ids, id_slots, id_arena,
                    sc, S_NIDS, S_IDARENA, True,
                )
                if f == _F_WRITE:
                    if not recs[r, L_HASPOS]:
                        _bail(sc, _R_MISSING)
                        return
                    procs[q, Q_TFILE] = _intern(
                        buf, recs[r, L_FILES], recs[r, L_FILEE], recs[r, L_FH], names,
                        name_slots, name_arena, sc, S_NNAMES, S_NAMEARENA, True,
                    )
                    procs[q, Q_TOFF] = recs[r, L_OFF]
                    procs[q, Q_TSIZE] = recs[r, L_SIZE]
            sc[S_PENDING] += 1
            if sc[S_PENDING] > sc[S_MAXPENDING]:
                sc[S_MAXPENDING] = sc[S_PENDING]
            return
        q = _process(procs, proc_slots, sc, recs[r, L_PROC], False)
        if q < 0 or procs[q, Q_PEND] == 0:
            if recs[r, L_PROC] != _NEMESIS:
                _bail(sc, _R_PAIRING)
            return
        procs[q, Q_PEND] = 0
        sc[S_PENDING] -= 1
        if procs[q, Q_F] != f:
            _bail(sc, _R_PAIRING)
            return
        if not chunk:
            sc[S_IGNORED] += 1
            return
        inv = procs[q, Q_INV]
        if typ != _T_OK:
            if typ == _T_FAIL:
                sc[S_FAIL] += 1
            else:
                sc[S_INFO] += 1
            if f == _F_READ:
                return
            v = procs[q, Q_V]
            if not _attempt(ids, sc, v, f, typ, inv):
                _bail(sc, _R_DUP)
                return
            if f == _F_WRITE:
                ids[v, I_TFILE] = procs[q, Q_TFILE]
                ids[v, I_TOFF] = procs[q, Q_TOFF]
                ids[v, I_TSIZE] = procs[q, Q_TSIZE]
            return
        sc[S_OK] += 1
        if recs[r, L_VK] != _VK_OBJECT:
            _bail(sc, _R_VALUE)
            return
        if not recs[r, L_HASPOS]:
            _bail(sc, _R_MISSING)
            return
        file = _intern(
            buf, recs[r, L_FILES], recs[r, L_FILEE], recs[r, L_FH], names, name_slots,
            name_arena, sc, S_NNAMES, S_NAMEARENA, True,
        )
        p = _position(
            pos, pos_slots, sc, file, recs[r, L_OFF], recs[r, L_SIZE], recs[r, L_PH]
        )
        v = -1
        if recs[r, L_VS] >= 0:
            v = _intern(
                buf, recs[r, L_VS], recs[r, L_VE], recs[r, L_VH], ids, id_slots, id_arena, sc,
                S_NIDS, S_IDARENA, True,
            )
        cur = pos[p, P_VAL]
        if f == _F_READ:
            if v < 0:
                if inv > pos[p, P_NULLINV]:
                    pos[p, P_NULLINV] = inv
            else:
                if cur >= 0 and cur != v:
                    _bail(sc, _R_CONFLICT)
                    return
                pos[p, P_VAL] = v
                if recs[r, L_IDX] < pos[p, P_VALRESP]:
                    pos[p, P_VALRESP] = recs[r, L_IDX]
            if recs[r, L_FINAL] or procs[q, Q_FINAL]:
                sc[S_ANY_FINAL] = 1
                pos[p, P_FINAL] |= _FINAL_GOOD if v >= 0 else _FINAL_WRONG
            return
        if v < 0:
            _bail(sc, _R_MISSING)
            return
        if (cur >= 0 and cur != v) or pos[p, P_ACK] != 0:
            _bail(sc, _R_CONFLICT)
            return
        if not _attempt(ids, sc, v, f, _T_OK, inv):
            _bail(sc, _R_DUP)
            return
        ids[v, I_POS] = p
        pos[p, P_VAL] = v
        pos[p, P_ACK] = f + 1
        pos[p, P_WINV] = inv
        pos[p, P_WRESP] = recs[r, L_IDX]

    @_njit
    def parse_block(buf: Any, i: int, end: int, recs: Any, row: int, stack: Any) -> int:
        """Parse the lines of buf[i:end] (which ends with a newline) into ``recs`` from
        ``row`` on (one row per line, with its start and end and the hashes replay_block
        probes with); returns the count, or -1 at a line this path does not handle.
        ``stack``: _DEPTH_MAX int64 of scratch."""
        n = row
        while i < end:
            if n >= recs.shape[0]:  # never, by the caller's sizing; no write out of bounds
                return -1
            j = _parse_line(buf, i, end, recs, n, stack)
            if j < 0:
                return -1
            recs[n, L_START] = i
            recs[n, L_END] = j
            if recs[n, L_VS] >= 0:
                recs[n, L_VH] = _fnv(buf, recs[n, L_VS], recs[n, L_VE])
            if recs[n, L_HASPOS]:
                fh = _fnv(buf, recs[n, L_FILES], recs[n, L_FILEE])
                recs[n, L_FH] = fh
                recs[n, L_PH] = _mix(fh, recs[n, L_OFF], recs[n, L_SIZE])
            n += 1
            i = j + 1
        return n - row

    @_njit
    def last_newline(buf: Any, end: int) -> int:
        for k in range(end - 1, -1, -1):
            if buf[k] == 10:
                return k
        return -1

    @_njit
    def replay_block(
        buf: Any, recs: Any, k: int, n: int, sc: Any, ids: Any, id_slots: Any,
        id_arena: Any, names: Any, name_slots: Any, name_arena: Any, pos: Any, pos_slots: Any,
        procs: Any, proc_slots: Any,
    ) -> int:
        """Replay parsed lines recs[k:n] on the tables; returns where it stopped: n (status
        run), before a line the tables have no room for (status grow), or at a bail."""
        sc[S_STATUS] = _RUN
        id_mask = id_slots.size - 1
        pos_mask = pos_slots.size - 1
        while k < n:
            # Hash-table slots are random accesses: ask for them _AHEAD lines before they
            # are probed, and for the rows they point to half as far ahead.
            a = k + _AHEAD
            if a < n:
                if recs[a, L_VS] >= 0:
                    _prefetch(id_slots, recs[a, L_VH] & id_mask)
                if recs[a, L_HASPOS]:
                    _prefetch(pos_slots, recs[a, L_PH] & pos_mask)
            a = k + _AHEAD // 2
            if a < n:
                if recs[a, L_VS] >= 0:
                    j = id_slots[recs[a, L_VH] & id_mask]
                    if j >= 0:
                        _prefetch(ids, j)
                if recs[a, L_HASPOS]:
                    j = pos_slots[recs[a, L_PH] & pos_mask]
                    if j >= 0:
                        _prefetch(pos, j)
            size = recs[k, L_END] - recs[k, L_START]
            if (
                sc[S_NIDS] + 2 > ids.shape[0]
                or 2 * (sc[S_NIDS] + 2) > id_slots.size
                or sc[S_IDARENA] + size > id_arena.size
                or sc[S_NNAMES] + 2 > names.shape[0]
                or 2 * (sc[S_NNAMES] + 2) > name_slots.size
                or sc[S_NAMEARENA] + size > name_arena.size
                or sc[S_NPOS] + 1 > pos.shape[0]
                or 2 * (sc[S_NPOS] + 1) > pos_slots.size
                or sc[S_NPROCS] + 1 > procs.shape[0]
                or 2 * (sc[S_NPROCS] + 1) > proc_slots.size
            ):
                sc[S_STATUS] = _GROW
                sc[S_NEED] = size
                return k
            _event(
                buf, recs, k, sc, ids, id_slots, id_arena, names, name_slots, name_arena, pos,
                pos_slots, procs, proc_slots,
            )
            if sc[S_STATUS] != _RUN:
                return k
            k += 1
        return n

    @_inline
    def _realtime_bad(pos: Any, p: int, w_inv: int, w_resp: int) -> bool:
        null_inv = pos[p, P_NULLINV]
        val_resp = pos[p, P_VALRESP]
        return val_resp < w_inv or null_inv > w_resp or null_inv > val_resp

    @_njit_alloc
    def finish(sc: Any, ids: Any, pos: Any, procs: Any) -> Any:
        """Settle pending invocations (unknown, in invocation order), then the per-position
        rules and the overlap sweep; returns, per payload id, the first position (in
        first-touch order) where its unknown attempt was read, or -1."""
        n_procs = sc[S_NPROCS]
        seqs = np.full(n_procs, _NEVER, dtype=np.int64)
        for q in range(n_procs):
            if procs[q, Q_PEND]:
                seqs[q] = procs[q, Q_SEQ]
        landed = np.full(sc[S_NIDS], -1, dtype=np.int64)
        for q in np.argsort(seqs, kind="mergesort"):
            if not procs[q, Q_PEND]:
                break
            f = procs[q, Q_F]
            if f >= 3:
                sc[S_IGNORED] += 1
                continue
            sc[S_INFO] += 1
            if f == _F_READ:
                continue
            v = procs[q, Q_V]
            if not _attempt(ids, sc, v, f, _T_INFO, procs[q, Q_INV]):
                _bail(sc, _R_DUP)
                return landed
            if f == _F_WRITE:
                ids[v, I_TFILE] = procs[q, Q_TFILE]
                ids[v, I_TOFF] = procs[q, Q_TOFF]
                ids[v, I_TSIZE] = procs[q, Q_TSIZE]
        any_final = sc[S_ANY_FINAL] != 0
        n_acked = 0
        for p in range(sc[S_NPOS]):
            v = pos[p, P_VAL]
            if v < 0:
                continue
            if pos[p, P_ACK]:
                n_acked += 1
                if _realtime_bad(pos, p, pos[p, P_WINV], pos[p, P_WRESP]):
                    _bail(sc, _R_REALTIME)
                    return landed
                if any_final and pos[p, P_FINAL] != _FINAL_GOOD:
                    _bail(sc, _R_LOST)
                    return landed
                continue
            kind = ids[v, I_KIND]
            out = ids[v, I_OUT]
            if kind == 0 or (out == _T_OK and kind == _F_WRITE + 1):
                _bail(sc, _R_NOWHERE)
                return landed
            if kind == _F_WRITE + 1 and out != _T_OK and (
                ids[v, I_TFILE] != pos[p, P_FILE]
                or ids[v, I_TOFF] != pos[p, P_OFF]
                or ids[v, I_TSIZE] != pos[p, P_SIZE]
            ):
                _bail(sc, _R_NOWHERE)
                return landed
            if out == _T_FAIL:
                _bail(sc, _R_FAILED)
                return landed
            if out == _T_INFO and landed[v] < 0:
                landed[v] = p
            if _realtime_bad(pos, p, ids[v, I_INV], _NEVER):
                _bail(sc, _R_REALTIME)
                return landed
        acked = np.empty(n_acked, dtype=np.int64)
        k = 0
        for p in range(sc[S_NPOS]):
            if pos[p, P_VAL] >= 0 and pos[p, P_ACK]:
                acked[k] = p
                k += 1
        offs = np.empty(n_acked, dtype=np.int64)
        for k in range(n_acked):
            offs[k] = pos[acked[k], P_OFF]
        acked = acked[np.argsort(offs, kind="mergesort")]
        files = np.empty(n_acked, dtype=np.int64)
        for k in range(n_acked):
            files[k] = pos[acked[k], P_FILE]
        acked = acked[np.argsort(files, kind="mergesort")]
        prev_file = -1
        prev_end = 0
        for k in range(n_acked):
            p = acked[k]
            file = pos[p, P_FILE]
            end = pos[p, P_OFF] + pos[p, P_SIZE]
            if file != prev_file:
                prev_file = file
                prev_end = end
                continue
            if pos[p, P_OFF] < prev_end:
                _bail(sc, _R_OVERLAP)
                return landed
            if end > prev_end:
                prev_end = end
        return landed


class _Tables:
    """The growable arrays one check works on (numpy; grown by doubling between blocks)."""

    def __init__(self, guess_lines: int) -> None:
        self.sc = np.zeros(S_NSCALARS, dtype=np.int64)
        n = min(ROWS_START_MAX, max(1024, 1 << max(10, (guess_lines // 2).bit_length())))
        self.ids = np.zeros((n, N_ID_FIELDS), dtype=np.int64)
        self.id_slots = np.full(2 * n, -1, dtype=np.int32)
        self.id_arena = np.zeros(16 * n, dtype=np.uint8)
        self.names = np.zeros((64, N_NAME_FIELDS), dtype=np.int64)
        self.name_slots = np.full(128, -1, dtype=np.int32)
        self.name_arena = np.zeros(1 << 16, dtype=np.uint8)
        self.pos = np.zeros((n, N_POS_FIELDS), dtype=np.int64)
        self.pos_slots = np.full(2 * n, -1, dtype=np.int32)
        self.procs = np.zeros((64, N_PROC_FIELDS), dtype=np.int64)
        self.proc_slots = np.full(128, -1, dtype=np.int32)

    def nbytes(self) -> int:
        return sum(
            a.nbytes
            for a in (
                self.ids, self.id_slots, self.id_arena, self.names, self.name_slots,
                self.name_arena, self.pos, self.pos_slots, self.procs, self.proc_slots,
            )
        )

    def args(self) -> tuple[Any, ...]:
        return (
            self.sc, self.ids, self.id_slots, self.id_arena, self.names, self.name_slots,
            self.name_arena, self.pos, self.pos_slots, self.procs, self.proc_slots,
        )

    def grow(self, line_bytes: int) -> None:
        """Double whatever has no room for one more line of ``line_bytes``."""
        sc = self.sc
        self.ids, self.id_slots = _grow_table(self.ids, self.id_slots, sc[S_NIDS], 2, T_HASH)
        self.names, self.name_slots = _grow_table(
            self.names, self.name_slots, sc[S_NNAMES], 2, T_HASH
        )
        self.pos, self.pos_slots = _grow_table(self.pos, self.pos_slots, sc[S_NPOS], 1, P_HASH)
        self.procs, self.proc_slots = _grow_table(
            self.procs, self.proc_slots, sc[S_NPROCS], 1, Q_HASH
        )
        self.id_arena = _grow_arena(self.id_arena, sc[S_IDARENA], line_bytes)
        self.name_arena = _grow_arena(self.name_arena, sc[S_NAMEARENA], line_bytes)


def _grow_table(tab: Any, slots: Any, n: int, more: int, hash_field: int) -> tuple[Any, Any]:
    if n + more <= tab.shape[0] and 2 * (n + more) <= slots.size:
        return tab, slots
    new = np.zeros((2 * tab.shape[0], tab.shape[1]), dtype=np.int64)
    new[:n] = tab[:n]
    new_slots = np.full(2 * new.shape[0], -1, dtype=np.int32)
    rehash(new, n, hash_field, new_slots)
    return new, new_slots


def _grow_arena(arena: Any, used: int, line_bytes: int) -> Any:
    if used + line_bytes <= arena.size:
        return arena
    new = np.zeros(max(2 * arena.size, used + line_bytes), dtype=np.uint8)
    new[:used] = arena[:used]
    return new


class _Block:
    """One read buffer of whole lines and their parsed rows (two of them alternate)."""

    def __init__(self, size: int) -> None:
        self.buf = np.empty(size, dtype=np.uint8)
        self.recs = np.empty((0, N_LINE_FIELDS), dtype=np.int64)
        self.segs: list[tuple[int, int]] = []  # the parsed rows: recs[start:stop] each
        self.lines_end = 0  # buf[:lines_end] is whole lines
        self.data_end = 0  # buf[lines_end:data_end] is the start of the next line
        self.next_offset = 0
        self.eof = False
        self.bad = False

    def load(
        self, fd: int, prev: _Block | None, offset: int, helper: ThreadPoolExecutor | None
    ) -> _Block:
        """Read from ``offset`` after ``prev``'s incomplete last line, up to a newline (the
        file's last line gets one: a torn line then fails to parse), and parse: the second
        half of the lines on ``helper``'s thread meanwhile, when given."""
        have = 0
        if prev is not None:
            tail = prev.buf[prev.lines_end : prev.data_end]
            have = tail.size
            if have >= self.buf.size:
                self.buf = np.empty(2 * have, dtype=np.uint8)
            self.buf[:have] = tail
        lines_end = 0
        while True:
            if have == self.buf.size:  # a line longer than the buffer
                bigger = np.empty(2 * self.buf.size, dtype=np.uint8)
                bigger[:have] = self.buf[:have]
                self.buf = bigger
            n = os.preadv(fd, [memoryview(self.buf)[have:]], offset)
            offset += n
            if n == 0:
                self.eof = True
                if have:
                    self.buf[have] = 10
                    have += 1
                lines_end = have
                break
            have += n
            lines_end = last_newline(self.buf, have) + 1
            if lines_end > 0:
                break
        self.lines_end, self.data_end, self.next_offset = lines_end, have, offset
        mid = 0
        if helper is not None and lines_end >= SPLIT_MIN_BYTES:
            mid = last_newline(self.buf, lines_end // 2) + 1  # a line start, or 0
        # Rows without counting lines: a line parsed into a row is an event of at least
        # _LINE_MIN_BYTES (the four required fields), so bytes // _LINE_MIN_BYTES + 1 rows
        # bound any stretch of lines (rows not written are never touched, so not resident).
        second = mid // _LINE_MIN_BYTES + 1
        rows = second + (lines_end - mid) // _LINE_MIN_BYTES + 1
        if self.recs.shape[0] < rows:
            self.recs = np.empty((rows, N_LINE_FIELDS), dtype=np.int64)
        if mid > 0 and helper is not None:
            job = helper.submit(
                parse_block, self.buf, mid, lines_end, self.recs, second,
                np.zeros(_DEPTH_MAX, dtype=np.int64),
            )
            n1 = parse_block(self.buf, 0, mid, self.recs, 0, np.zeros(_DEPTH_MAX, np.int64))
            n2 = job.result()
            self.segs = [(0, n1), (second, second + n2)]
            self.bad = n1 < 0 or n2 < 0
        else:
            n = parse_block(
                self.buf, 0, lines_end, self.recs, 0, np.zeros(_DEPTH_MAX, dtype=np.int64)
            )
            self.segs = [(0, n)]
            self.bad = n < 0
        return self


def _file_fd(lines: Any) -> int | None:
    """The descriptor of a regular file opened by the caller and not yet read from."""
    try:
        fd = lines.fileno()
        if lines.tell() != 0 or not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
    except (AttributeError, OSError, ValueError):
        return None
    return int(fd)


def try_check_file(
    lines: Any,
    *,
    memory_limit_mb: float | None = None,
    deadline: Callable[[], bool] | None = None,
    min_bytes: int = 1,
    why: list[str] | None = None,
) -> CheckResult | None:
    """The Python checker's result for a valid history of a shape this path parses, or
    ``None`` when the exact Python checker must decide (possible anomaly, odd line, no
    numba, budget, time up, not a regular file, fewer than ``min_bytes`` bytes).  The
    reason for a ``None`` is appended to ``why`` when given."""

    try:
        return _check_file(lines, memory_limit_mb, deadline, min_bytes, why)
    except (MemoryError, OSError, ValueError, *_COMPILE_ERRORS) as exc:  # Python decides
        if why is not None:
            why.append(f"error: {type(exc).__name__}: {exc}")
        return None


def _check_file(
    lines: Any,
    memory_limit_mb: float | None,
    deadline: Callable[[], bool] | None,
    min_bytes: int,
    why: list[str] | None,
) -> CheckResult | None:
    def handover(reason: str) -> None:
        if why is not None:
            why.append(reason)

    if numba is None:
        handover("numba not installed")
        return None
    fd = _file_fd(lines)
    if fd is None:
        handover("not a regular file from its start")
        return None
    size_bytes = os.fstat(fd).st_size
    if size_bytes < max(min_bytes, 1):
        handover("small file")
        return None
    budget = None if memory_limit_mb is None else memory_limit_mb * 1048576
    t = _Tables(size_bytes // 120)
    sc = t.sc
    # Two stages on three threads (numba releases the GIL): block k+1 is read and parsed
    # (its two halves on two threads) while block k is replayed on the tables (replay is
    # sequential: file order).
    blocks = [_Block(min(BLOCK_BYTES, size_bytes + 1)), _Block(min(BLOCK_BYTES, size_bytes + 1))]
    with ThreadPoolExecutor(max_workers=1) as pool, ThreadPoolExecutor(max_workers=1) as helper:
        job = pool.submit(blocks[0].load, fd, None, 0, helper)
        which = 0
        while True:
            cur = job.result()
            if cur.bad:
                handover(REASONS[_R_SHAPE])
                return None
            if deadline is not None and deadline():
                handover("deadline")
                return None
            if not cur.eof:
                job = pool.submit(blocks[1 - which].load, fd, cur, cur.next_offset, helper)
            for k, stop in cur.segs:
                while True:
                    k = replay_block(cur.buf, cur.recs, k, stop, *t.args())
                    if sc[S_STATUS] != _GROW:
                        break
                    t.grow(int(sc[S_NEED]))
                    if budget is not None and t.nbytes() + 2 * cur.buf.nbytes > budget:
                        handover("memory budget")
                        return None
                if sc[S_STATUS] == _BAIL:
                    break
            if sc[S_STATUS] == _BAIL:
                handover(REASONS[sc[S_REASON]])
                return None
            if cur.eof:
                break
            which = 1 - which
    if sc[S_EVENTS] == 0:
        handover("empty")
        return None
    landed = finish(sc, t.ids, t.pos, t.procs)
    if sc[S_STATUS] == _BAIL:
        handover(REASONS[sc[S_REASON]])
        return None
    if budget is not None:  # the Python checker's estimate never exceeded this bound
        bound = (
            sc[S_NPOS] * _POSITION_BYTES
            + sc[S_UNACKED] * _ATTEMPT_BYTES
            + sc[S_MAXPENDING] * _PENDING_BYTES
        )
        if bound > budget:
            handover("memory budget")
            return None
    return _result(t, landed)


def _text(arena: Any, tab: Any, j: int) -> str:
    start = int(tab[j, T_START])
    return bytes(arena[start : start + int(tab[j, T_LEN])]).decode("ascii")


def _unknown_report(t: _Tables, landed: Any, kind: int) -> dict[str, Any]:
    n = int(t.sc[S_NIDS])
    ids = t.ids[:n]
    sel = np.nonzero((ids[:, I_KIND] == kind + 1) & (ids[:, I_OUT] == _T_INFO))[0]
    sel = sel[np.argsort(ids[sel, I_SEQ], kind="stable")]
    where = landed[sel]
    got = sel[where >= 0][:EXAMPLES_MAX]
    missing = sel[where < 0][:EXAMPLES_MAX]
    n_landed = int(np.count_nonzero(where >= 0))
    examples_landed = []
    for v in got:
        p = int(landed[v])
        examples_landed.append(
            {
                "v": _text(t.id_arena, t.ids, int(v)),
                "pos": [
                    _text(t.name_arena, t.names, int(t.pos[p, P_FILE])),
                    int(t.pos[p, P_OFF]),
                    int(t.pos[p, P_SIZE]),
                ],
            }
        )
    return {
        "count": int(sel.size),
        "landed": n_landed,
        "not_landed": int(sel.size) - n_landed,
        "examples_landed": examples_landed,
        "examples_not_landed": [_text(t.id_arena, t.ids, int(v)) for v in missing],
    }


def _result(t: _Tables, landed: Any) -> CheckResult:
    sc = [int(x) for x in t.sc]
    witness: dict[str, Any] = {"unknown_appends": _unknown_report(t, landed, _F_APPEND)}
    unknown_writes = _unknown_report(t, landed, _F_WRITE)
    if unknown_writes["count"]:
        witness["unknown_writes"] = unknown_writes
    ops = sc[S_OK] + sc[S_FAIL] + sc[S_INFO]
    stats: dict[str, Any] = {
        "events": sc[S_EVENTS],
        "positions": sc[S_NPOS],
        "ok": sc[S_OK],
        "fail": sc[S_FAIL],
        "info": sc[S_INFO],
        "ignored_ops": sc[S_IGNORED],
        "final_reads": bool(sc[S_ANY_FINAL]),
        "estimated_state_mb": round(
            (sc[S_NPOS] * _POSITION_BYTES + sc[S_UNACKED] * _ATTEMPT_BYTES) / 1048576, 1
        ),
    }
    return CheckResult(
        valid=True, model=MODEL, ops=ops, keys=sc[S_NPOS], witness=witness, stats=stats
    )
