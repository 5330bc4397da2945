"""Columnar fast path of the write-once checker (``docs/history-write-once.md``).

Owns one thing: proving, with DuckDB (compiled, multi-threaded) and without one Python
object per event, that a JSON Lines write-once history of the common shape is valid, and
building then exactly the result the Python checker (``write_once.py``) builds for it
(stats, landing report).  It never answers anything but "valid": on any possible anomaly,
any line shape it does not handle (see ``_SCAN``), a missing dependency, an error of the
engine or its memory budget, it returns ``None`` and the caller runs the exact Python
checker, which produces the verdict and the witness.

It must not decide "invalid" or "unknown" itself, change a verdict of the Python checker,
keep state between calls, or write files (DuckDB runs in memory, spilling disabled).  The
only I/O is DuckDB reading the history file the caller opened.

Exactness on odd input: every field the verdict depends on is read as its raw JSON text,
so a JSON type other than the expected one (``"index": "7"``, ``"v": 1``, ``"pos":
["f", "12", 3]``, ``"final": "yes"``) is seen and sent to the Python checker, never
converted; strings with a backslash escape are sent there too (raw text then equals the
string).  Duplicate keys in one JSON object are not detected (DuckDB keeps one of them).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from typing import Any

from harness.checker.result import CheckResult

duckdb: Any
try:
    import duckdb
except ImportError:  # pragma: no cover - duckdb is a dependency; tested by monkeypatching
    duckdb = None

MODEL = "write-once"
EXAMPLES_MAX = 5
_NEVER = 1 << 62
# Same estimate as write_once.py (the stats field ``estimated_state_mb`` must agree).
_POSITION_BYTES = 620
_ATTEMPT_BYTES = 300
# Below this size the Python checker is cheaper than DuckDB's fixed cost (measured: 10 k
# ops, 3.8 MiB: 0.39 CPU s fast, 0.12 Python; 100 k ops, 39 MiB: 1.7 against 1.3).
FAST_MIN_BYTES = 64 << 20

# Peak RSS of the fast path per byte of JSON Lines (measured: 982 MB for the 408 MiB 1 M-op
# bench history, interpreter included), rounded up: a history whose estimate exceeds the
# memory budget is left to the Python checker (whose state is ~5x smaller).
_ENGINE_BYTES_PER_FILE_BYTE = 2.5

_COLUMNS = "{index:'JSON', process:'JSON', type:'JSON', f:'JSON', value:'VALUE_TYPE', final:'JSON'}"

# One row per line: raw JSON texts turned into compact columns, and ``bad`` when the line
# has a shape the fast path does not prove anything about.
_SCAN = """
CREATE TEMP TABLE ev AS
SELECT idx, proc, t, f, fo, v, file, off, size, fin,
 (idx IS NULL OR idx::VARCHAR <> itxt OR proc IS NULL OR t IS NULL OR fo = '' OR fin IS NULL
  OR (v IS NOT NULL AND (NOT starts_with(v, '"') OR contains(v, '\\')))
  OR (plen IS NOT NULL AND (plen <> 3 OR file IS NULL OR NOT starts_with(file, '"')
      OR contains(file, '\\') OR off IS NULL OR size IS NULL OR off::VARCHAR <> offt
      OR size::VARCHAR <> sizet OR off < 0 OR size <= 0))) AS bad
FROM (SELECT TRY_CAST(index::VARCHAR AS BIGINT) AS idx, index::VARCHAR AS itxt,
 process::VARCHAR AS proc,
 CASE type::VARCHAR WHEN '"invoke"' THEN 0 WHEN '"ok"' THEN 1 WHEN '"fail"' THEN 2
   WHEN '"info"' THEN 3 END::UTINYINT AS t,
 CASE f::VARCHAR WHEN '"append"' THEN 0 WHEN '"write"' THEN 1 WHEN '"read"' THEN 2
   ELSE 3 END::UTINYINT AS f,
 CASE WHEN f IS NULL THEN '' WHEN f::VARCHAR IN ('"append"', '"write"', '"read"') THEN NULL
   ELSE f::VARCHAR END AS fo,
 nullif(vv::VARCHAR, 'null') AS v, len(pp) AS plen,
 pp[1]::VARCHAR AS file,
 TRY_CAST(pp[2]::VARCHAR AS BIGINT) AS off, pp[2]::VARCHAR AS offt,
 TRY_CAST(pp[3]::VARCHAR AS BIGINT) AS size, pp[3]::VARCHAR AS sizet,
 CASE WHEN final IS NULL OR final::VARCHAR IN ('null', 'false') THEN 0
   WHEN final::VARCHAR = 'true' THEN 1 END::UTINYINT AS fin
 FROM (SELECT *, VALUE_COLUMNS FROM read_json(?, format='newline_delimited', columns=COLUMNS)))
"""
# ``value`` as a struct (fast); when some line's value is not an object (e.g. a nemesis
# event's string), as JSON text, taken apart per line (slower, same columns).
_VALUE_STRUCT = ("STRUCT(v JSON, pos JSON[])", "value.v AS vv, value.pos AS pp")
_VALUE_JSON = (
    "JSON",
    "CASE WHEN json_type(value) = 'OBJECT' THEN value->'$.v' END AS vv, "
    "CASE WHEN json_type(value) = 'OBJECT' THEN CAST(value->'$.pos' AS JSON[]) END AS pp",
)

# Events must be in index order (strictly increasing): then file order = index order and
# pairing by index (below) is the Python checker's pairing by file order.
_ORDER = """
SELECT count(*) FROM (SELECT idx FROM ev) a
POSITIONAL JOIN (SELECT idx AS nidx FROM ev OFFSET 1) b
WHERE b.nidx IS NOT NULL AND b.nidx <= a.idx
"""

# Chunk ops, paired in one window pass: each completion with the previous event of its
# process (its invocation when that is one), and each process's last event when it is an
# invocation (never completed: unknown, t = 3).  Values and positions come from the
# completion of an ok op or a read, from the invocation of a fail / info / pending attempt.
_OPS = """
CREATE TEMP TABLE ops AS
SELECT CASE WHEN t = 0 THEN 3 ELSE t END AS t, f, fo, proc, it, iff, ifo,
  CASE WHEN t = 0 THEN idx ELSE iidx END AS inv, CASE WHEN t = 0 THEN NULL ELSE idx END AS comp,
  CASE WHEN t = 0 OR t = 1 OR f = 2 THEN v ELSE iv END AS v,
  CASE WHEN t = 0 OR t = 1 OR f = 2 THEN file ELSE ifile END AS file,
  CASE WHEN t = 0 OR t = 1 OR f = 2 THEN off ELSE ioff END AS off,
  CASE WHEN t = 0 OR t = 1 OR f = 2 THEN size ELSE isize END AS size,
  (t <> 0 AND (fin = 1 OR ifin = 1)) AS fin
FROM (
  SELECT t, f, fo, proc, idx, fin, v, file, off, size,
    lag(idx) OVER w AS iidx, lag(t) OVER w AS it, lag(f) OVER w AS iff,
    lag(fo) OVER w AS ifo, lag(fin) OVER w AS ifin, lag(v) OVER w AS iv,
    lag(file) OVER w AS ifile, lag(off) OVER w AS ioff, lag(size) OVER w AS isize,
    lead(t) OVER w AS nt
  FROM ev WINDOW w AS (PARTITION BY proc ORDER BY idx))
WHERE (t <> 0 AND it = 0) OR (t = 0 AND nt IS NULL)
   OR (t <> 0 AND it IS DISTINCT FROM 0 AND proc <> '"nemesis"')
"""

# Pairing violations the Python checker raises HistoryError for: a completion without a
# pending invocation (process "nemesis" excepted: skipped), a completion of another op
# than the one invoked, an invocation while one is pending (then fewer invocations are
# paired or last than there are).  Then: ops that are not chunk ops (ignored).
_PAIR_BAD = """
SELECT count(*) FILTER (WHERE comp IS NOT NULL AND it IS DISTINCT FROM 0
                        AND proc <> '"nemesis"')
     + count(*) FILTER (WHERE comp IS NOT NULL AND it = 0
                        AND (f <> iff OR fo IS DISTINCT FROM ifo)),
       count(*) FILTER (WHERE f = 3 AND (comp IS NULL OR it = 0)),
       count(*) FILTER (WHERE comp IS NULL OR it = 0)
FROM ops
"""

_DROP_IGNORED = "DELETE FROM ops WHERE f = 3 OR (comp IS NOT NULL AND it IS DISTINCT FROM 0)"

_OPS_BAD = """
SELECT
  count(*) FILTER (WHERE f < 2 AND v IS NULL)
  + count(*) FILTER (WHERE f = 1 AND file IS NULL)
  + count(*) FILTER (WHERE f = 0 AND t = 1 AND file IS NULL)
  + count(*) FILTER (WHERE f = 2 AND t = 1 AND file IS NULL),
  count(*) FILTER (WHERE t = 1), count(*) FILTER (WHERE t = 2),
  count(*) FILTER (WHERE t = 3), count(*) FILTER (WHERE f = 2 AND t = 1 AND fin),
  count(*) FILTER (WHERE f < 2 AND t <> 1)
FROM ops
"""

# Attempts (append/write, any outcome) with one payload id each: a repeated id leaves the
# Python checker's bookkeeping order-dependent, so it decides those histories.
_DUP_IDS = """
SELECT count(*) FROM (SELECT v FROM ops WHERE f < 2 GROUP BY v HAVING count(*) > 1)
"""

# Per position (every ok op's position): the acknowledged write, the values read, the
# real-time bounds and the final reads.
_POSITIONS = """
CREATE TEMP TABLE pos AS
SELECT file, off, size,
  count(*) FILTER (WHERE f < 2) AS nw,
  any_value(v) FILTER (WHERE f < 2) AS wv,
  any_value(f) FILTER (WHERE f < 2) AS wf,
  any_value(inv) FILTER (WHERE f < 2) AS winv,
  any_value(comp) FILTER (WHERE f < 2) AS wresp,
  count(DISTINCT v) FILTER (WHERE f = 2 AND v IS NOT NULL) AS nrv,
  min(v) FILTER (WHERE f = 2 AND v IS NOT NULL) AS rv,
  coalesce(max(inv) FILTER (WHERE f = 2 AND v IS NULL), -1) AS null_inv,
  coalesce(min(comp) FILTER (WHERE f = 2 AND v IS NOT NULL), NEVER) AS val_resp,
  bool_or(f = 2 AND fin AND v IS NOT NULL) AS fin_good,
  bool_or(f = 2 AND fin AND v IS NULL) AS fin_bad,
  min(comp) AS first
FROM ops WHERE t = 1
GROUP BY file, off, size
""".replace("NEVER", str(_NEVER))

_POS_BAD = """
SELECT
  count(*) FILTER (WHERE nw > 1 OR nrv > 1 OR (nw = 1 AND nrv = 1 AND rv <> wv)),
  count(*) FILTER (WHERE nw = 1 AND (null_inv > wresp OR val_resp < winv
                                     OR null_inv > val_resp)),
  count(*) FILTER (WHERE nw = 1 AND ? AND NOT (coalesce(fin_good, false)
                                               AND NOT coalesce(fin_bad, false))),
  count(*)
FROM pos
"""

# Values read at positions nobody acknowledged them at: the attempt that wrote them.
_SOURCES = """
CREATE TEMP TABLE src AS
SELECT p.file, p.off, p.size, p.rv, p.null_inv, p.val_resp, p.first,
  u.t AS ut, u.f AS uf, u.inv AS uinv, u.file AS ufile, u.off AS uoff, u.size AS usize,
  a.f AS af, a.inv AS ainv
FROM pos p
LEFT JOIN (SELECT * FROM ops WHERE f < 2 AND t <> 1) u ON u.v = p.rv
LEFT JOIN (SELECT * FROM ops WHERE f < 2 AND t = 1) a ON a.v = p.rv
WHERE p.nw = 0 AND p.nrv = 1
"""

_SRC_BAD = """
SELECT count(*) FROM src WHERE
  (ut IS NULL AND (af IS NULL OR af = 1))
  OR (ut IS NOT NULL AND (ut = 2 OR (uf = 1 AND (ufile <> file OR uoff <> off
                                                   OR usize <> size))))
  OR val_resp < coalesce(uinv, ainv) OR null_inv > val_resp
"""

# Overlapping acknowledged chunks in one file.
_OVERLAP = """
SELECT count(*) FROM (
  SELECT off, max(off + size) OVER (PARTITION BY file ORDER BY off, size
                                    ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS end_
  FROM pos WHERE nw = 1)
WHERE end_ > off
"""

# Unknown (info / never completed) attempts in the Python checker's order, with where
# each landed (the first position, in first-touch order, that read its id).
_UNKNOWN = """
SELECT u.v, l.file, l.off, l.size
FROM (SELECT * FROM ops WHERE f = ? AND t = 3) u
LEFT JOIN (SELECT rv, arg_min(file, first) AS file, arg_min(off, first) AS off,
                  arg_min(size, first) AS size
           FROM src WHERE ut = 3 GROUP BY rv) l ON l.rv = u.v
ORDER BY u.comp IS NULL, u.comp, u.inv
"""


def _unquote(text: str) -> str:
    return text[1:-1]  # raw JSON string text without a backslash (checked in _SCAN)


def _file_path(lines: Any) -> str | None:
    """The path DuckDB can read for ``lines``: a regular file opened by the caller, not yet
    read from (its own descriptor, so the caller's offset is untouched)."""
    try:
        fd = lines.fileno()
        if lines.tell() != 0 or not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
    except (AttributeError, OSError, ValueError):
        return None
    path = f"/proc/self/fd/{fd}"
    return path if os.path.exists(path) else None


def engine_threads() -> int:
    """How many threads DuckDB uses here (its default: one per core)."""
    if duckdb is None:
        return 0
    with duckdb.connect(":memory:") as con:
        return int(con.execute("SELECT current_setting('threads')").fetchone()[0])


def available() -> bool:
    """True when the fast path can run (DuckDB importable)."""
    return duckdb is not None


def try_check_file(
    lines: Any,
    *,
    memory_limit_mb: float | None = None,
    deadline: Callable[[], bool] | None = None,
    threads: int | None = None,
    min_bytes: int = 1,
) -> CheckResult | None:
    """The Python checker's result for a valid history of the common shape, or ``None``
    when the exact Python checker must decide (possible anomaly, odd shape, no DuckDB,
    budget, time up, not a regular file, fewer than ``min_bytes`` bytes)."""
    if duckdb is None:
        return None
    path = _file_path(lines)
    if path is None:
        return None
    size_bytes = os.stat(path).st_size
    if size_bytes < max(min_bytes, 1):
        return None
    if memory_limit_mb is not None:
        if size_bytes * _ENGINE_BYTES_PER_FILE_BYTE > memory_limit_mb * 1048576:
            return None
    try:
        con = duckdb.connect(":memory:", config=_config(memory_limit_mb, threads))
    except Exception:
        return None
    try:
        return _check(con, path, deadline)
    except Exception:  # engine error, out of memory, a line DuckDB rejects: Python decides
        return None
    finally:
        con.close()


def _config(memory_limit_mb: float | None, threads: int | None) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "preserve_insertion_order": True,
        "enable_external_access": True,
        "temp_directory": "",
    }
    if memory_limit_mb is not None:
        cfg["memory_limit"] = f"{max(int(memory_limit_mb), 64)}MB"
    if threads is not None:
        cfg["threads"] = threads
    return cfg


def _check(con: Any, path: str, deadline: Callable[[], bool] | None) -> CheckResult | None:
    def one(sql: str, *params: Any) -> Any:
        return con.execute(sql, list(params)).fetchone()

    def time_up() -> bool:
        return deadline is not None and deadline()

    for value_type, value_columns in (_VALUE_STRUCT, _VALUE_JSON):
        scan = _SCAN.replace("VALUE_COLUMNS", value_columns).replace(
            "COLUMNS", _COLUMNS.replace("VALUE_TYPE", value_type)
        )
        try:
            con.execute(scan, [path])
            break
        except duckdb.Error as exc:
            if value_type == _VALUE_JSON[0] or "transform" not in str(exc).lower():
                raise
    bad, events, invokes = one(
        "SELECT count(*) FILTER (WHERE bad), count(*), count(*) FILTER (WHERE t = 0) FROM ev"
    )
    if bad or not events or time_up():
        return None
    if one(_ORDER)[0]:
        return None
    con.execute(_OPS)
    pair_bad, ignored, invokes_paired = one(_PAIR_BAD)
    if pair_bad or invokes_paired != invokes or time_up():
        return None
    con.execute(_DROP_IGNORED)
    ops_bad, n_ok, n_fail, n_info, n_final, n_unacked = one(_OPS_BAD)
    if ops_bad or one(_DUP_IDS)[0] or time_up():
        return None
    con.execute(_POSITIONS)
    any_final = n_final > 0
    conflict, realtime, lost, n_positions = one(_POS_BAD, any_final)
    if conflict or realtime or lost:
        return None
    con.execute(_SOURCES)
    if one(_SRC_BAD)[0] or one(_OVERLAP)[0] or time_up():
        return None
    witness: dict[str, Any] = {"unknown_appends": _unknown_report(con, 0)}
    unknown_writes = _unknown_report(con, 1)
    if unknown_writes["count"]:
        witness["unknown_writes"] = unknown_writes
    stats: dict[str, Any] = {
        "events": events,
        "positions": n_positions,
        "ok": n_ok,
        "fail": n_fail,
        "info": n_info,
        "ignored_ops": ignored,
        "final_reads": any_final,
        "estimated_state_mb": round(
            (n_positions * _POSITION_BYTES + n_unacked * _ATTEMPT_BYTES) / 1048576, 1
        ),
    }
    return CheckResult(
        valid=True,
        model=MODEL,
        ops=n_ok + n_fail + n_info,
        keys=n_positions,
        witness=witness,
        stats=stats,
    )


def _unknown_report(con: Any, f: int) -> dict[str, Any]:
    count = n_landed = 0
    ex_landed: list[dict[str, Any]] = []
    ex_not: list[Any] = []
    cur = con.execute(_UNKNOWN, [f])
    while True:
        rows = cur.fetchmany(4096)
        if not rows:
            break
        for v, file, off, size in rows:
            count += 1
            if file is not None:
                n_landed += 1
                if len(ex_landed) < EXAMPLES_MAX:
                    ex_landed.append({"v": _unquote(v), "pos": [_unquote(file), off, size]})
            elif len(ex_not) < EXAMPLES_MAX:
                ex_not.append(_unquote(v))
    return {
        "count": count,
        "landed": n_landed,
        "not_landed": count - n_landed,
        "examples_landed": ex_landed,
        "examples_not_landed": ex_not,
    }
