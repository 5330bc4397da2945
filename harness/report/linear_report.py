"""Self-contained HTML page for a failed linearizability check (no network to view it).

Owns the page: the key's operations on a timeline (one row per process, x = event index),
the longest linearizable prefix found (green, numbered in linearization order), the
operation that could not be linearized (red), crashed ops (dashed, open-ended), and the
checker's one-paragraph explanation. Inline CSS and SVG only; no external references.
It must not check anything: it renders a ``CheckResult`` and the ops it was computed on.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.checker.linear import format_op
from harness.checker.models import get_model
from harness.checker.result import CheckResult
from harness.history import Op

WINDOW_OPS = 400  # ops drawn around the failing op on big histories
ROW_PX = 22
WIDTH_PX = 1400
PREFIX_TABLE_ROWS = 60

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222}
h1{font-size:20px;margin:0 0 8px} .meta{color:#555;margin-bottom:12px}
.verdict{display:inline-block;padding:2px 8px;border-radius:4px;background:#c62828;color:#fff}
.expl{background:#fff8e1;border-left:4px solid #f9a825;padding:8px 12px;max-width:1100px}
.legend span{display:inline-block;margin-right:16px}
.sw{display:inline-block;width:14px;height:10px;margin-right:4px;vertical-align:middle}
.tl{border:1px solid #ddd;overflow-x:auto;margin:12px 0}
table{border-collapse:collapse;font-size:13px} td,th{border:1px solid #ddd;padding:2px 6px}
tr.fail td{background:#ffebee;font-weight:bold} code{font-size:12px}
"""


def write_report(
    report_dir: Path, history_path: Path, result: CheckResult, ops: Sequence[Op]
) -> Path:
    """Write the page for one failing history into ``report_dir``; returns its path."""
    report_dir.mkdir(parents=True, exist_ok=True)
    w = result.witness or {}
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", history_path.name)
    key = w.get("key")
    if key is not None:
        stem += "-key-" + re.sub(r"[^A-Za-z0-9._-]+", "_", json.dumps(key, default=str))[:60]
    out = report_dir / f"{stem}.html"
    out.write_text(render_report(str(history_path), result, ops), encoding="utf-8")
    return out


def write_witness_report(report_dir: Path, history_path: Path, result: CheckResult) -> Path:
    """A page for a failing check that has no linearization to draw (e.g. write-once):
    the verdict, the explanation if any, and the witness as formatted JSON."""
    report_dir.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", history_path.name)
    out = report_dir / f"{stem}.html"
    w = result.witness or {}
    esc = html.escape
    body = json.dumps(w, indent=2, default=str, sort_keys=True)
    page = "\n".join(
        [
            "<!DOCTYPE html><html><head><meta charset='utf-8'>",
            f"<title>{esc(str(history_path))}: {esc(_label(result.valid))}</title>",
            f"<style>{_CSS} pre{{background:#f5f5f5;padding:12px;overflow-x:auto}}</style>",
            f"</head><body><h1>{esc(str(history_path))}</h1>",
            f"<div class='meta'><span class='verdict'>{esc(_label(result.valid))}</span> "
            f"model <b>{esc(result.model)}</b> · {result.ops} ops · {result.keys} keys</div>",
            f"<p class='expl'>{esc(str(w.get('explanation', '')))}</p>"
            if "explanation" in w
            else "",
            f"<h2>Witness</h2><pre>{esc(body)}</pre></body></html>",
        ]
    )
    out.write_text(page, encoding="utf-8")
    return out


def _key_ops(result: CheckResult, ops: Sequence[Op]) -> list[int]:
    w = result.witness or {}
    try:
        model = get_model(result.model)
        parts = model.partition(ops)
    except Exception:  # a report must render even if the model cannot re-split the ops
        return list(range(len(ops)))
    items = parts.get(w.get("key"), [])
    idx = sorted({i for i, _cop in items})
    return idx or list(range(len(ops)))


def render_report(name: str, result: CheckResult, ops: Sequence[Op]) -> str:
    """The whole HTML page as a string."""
    w = result.witness or {}
    prefix: list[int] = list(w.get("prefix_indices") or [])
    failing = w.get("op_index")
    order = {i: n for n, i in enumerate(prefix, start=1)}
    key_idx = _key_ops(result, ops)
    window = _window(key_idx, ops, failing)
    svg = _timeline(window, ops, order, failing)
    esc = html.escape
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{esc(name)}: not linearizable</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(name)}</h1>",
        f"<div class='meta'><span class='verdict'>{esc(_label(result.valid))}</span> "
        f"model <b>{esc(result.model)}</b> · {result.ops} ops · {result.keys} keys · "
        f"key <code>{esc(json.dumps(w.get('key'), default=str))}</code> · "
        f"longest linearizable prefix: {len(prefix)} ops</div>",
        f"<p class='expl'>{esc(str(w.get('explanation', '')))}</p>",
        "<div class='legend'>",
        "<span><i class='sw' style='background:#66bb6a'></i>in the longest prefix "
        "(number = linearization order)</span>",
        "<span><i class='sw' style='background:#e53935'></i>could not be linearized</span>",
        "<span><i class='sw' style='background:#b0bec5'></i>other ok ops</span>",
        "<span><i class='sw' style='border:1px dashed #777'></i>crashed (info): "
        "may take effect any time after its invocation, or never</span></div>",
    ]
    if len(window) < len(key_idx):
        parts.append(
            f"<p>Showing {len(window)} of this key's {len(key_idx)} ops, around the failing op.</p>"
        )
    parts.append(f"<div class='tl'>{svg}</div>")
    parts.append(_prefix_table(prefix, ops, failing))
    parts.append("</body></html>")
    return "\n".join(parts)


def _label(v: Any) -> str:
    return "valid" if v is True else "invalid" if v is False else "unknown"


def _window(key_idx: list[int], ops: Sequence[Op], failing: int | None) -> list[int]:
    if len(key_idx) <= WINDOW_OPS:
        return key_idx
    center = key_idx.index(failing) if failing in key_idx else len(key_idx) - 1
    lo = max(0, center - WINDOW_OPS * 3 // 4)
    return key_idx[lo : lo + WINDOW_OPS]


def _fmt_op(op: Op) -> str:
    return format_op(op)


def _end(op: Op) -> int:
    return op.complete_index if op.complete_index is not None else op.invoke_index


def _timeline(window: list[int], ops: Sequence[Op], order: dict[int, int], failing: Any) -> str:
    if not window:
        return "<svg width='10' height='10'></svg>"
    procs: list[Any] = []
    seen: set[Any] = set()
    for i in window:
        p = ops[i].process
        if p not in seen:
            seen.add(p)
            procs.append(p)
    row = {p: n for n, p in enumerate(procs)}
    lo = min(ops[i].invoke_index for i in window)
    last_event = max(_end(ops[i]) for i in window)
    hi = max(last_event, lo + 1) + 1
    label_px = 90
    span = WIDTH_PX - label_px - 10

    def x(ev: int) -> float:
        return label_px + (ev - lo) * span / (hi - lo)

    height = ROW_PX * len(procs) + 30
    esc = html.escape
    out = [f"<svg width='{WIDTH_PX}' height='{height}' font-size='11' font-family='monospace'>"]
    for p, n in row.items():
        y = n * ROW_PX + 20
        out.append(f"<text x='4' y='{y + 12}'>p {esc(str(p))}</text>")
        out.append(
            f"<line x1='{label_px}' x2='{WIDTH_PX}' y1='{y + 16}' y2='{y + 16}' stroke='#eee'/>"
        )
    for i in window:
        op = ops[i]
        y = row[op.process] * ROW_PX + 20
        x0 = x(op.invoke_index)
        crashed = op.complete_index is None or op.type != "ok"
        x1 = x(op.complete_index) if op.complete_index is not None else x(hi)
        if op.type == "info":
            x1 = x(hi)
        wpx = max(3.0, x1 - x0)
        if i == failing:
            style = "fill='#e53935' stroke='#b71c1c'"
        elif i in order:
            style = "fill='#66bb6a' stroke='#2e7d32'"
        elif crashed:
            style = "fill='none' stroke='#777' stroke-dasharray='4 3'"
        else:
            style = "fill='#b0bec5' stroke='#78909c'"
        tip = f"op {i}: process {op.process} {op.type} {_fmt_op(op)} events {op.invoke_index}"
        tip += f"..{op.complete_index if op.complete_index is not None else '∞'}"
        if i in order:
            tip += f" · linearized #{order[i]}"
        out.append(
            f"<g><title>{esc(tip)}</title><rect x='{x0:.1f}' y='{y}' width='{wpx:.1f}' "
            f"height='16' rx='3' {style}/>"
        )
        text = (f"#{order[i]} " if i in order else "") + _fmt_op(op)
        out.append(
            f"<text x='{x0 + 3:.1f}' y='{y + 12}'>{esc(text[: max(1, int(wpx / 7))])}</text></g>"
        )
    out.append(
        f"<text x='{label_px}' y='12' fill='#777'>event {lo}</text>"
        f"<text x='{WIDTH_PX - 120}' y='12' fill='#777'>event {hi - 1}</text></svg>"
    )
    return "".join(out)


def _prefix_table(prefix: list[int], ops: Sequence[Op], failing: Any) -> str:
    esc = html.escape
    rows = ["<h2>Longest linearizable prefix (last ops) and the failing op</h2><table>"]
    rows.append("<tr><th>#</th><th>process</th><th>op</th><th>type</th><th>events</th></tr>")
    start = max(0, len(prefix) - PREFIX_TABLE_ROWS)
    if start:
        rows.append(f"<tr><td colspan='5'>... {start} earlier ops</td></tr>")
    for n, i in enumerate(prefix[start:], start=start + 1):
        op = ops[i]
        rows.append(
            f"<tr><td>{n}</td><td>{esc(str(op.process))}</td><td><code>{esc(_fmt_op(op))}</code>"
            f"</td><td>{op.type}</td><td>{op.invoke_index}..{op.complete_index}</td></tr>"
        )
    if isinstance(failing, int) and 0 <= failing < len(ops):
        op = ops[failing]
        rows.append(
            f"<tr class='fail'><td>✗</td><td>{esc(str(op.process))}</td>"
            f"<td><code>{esc(_fmt_op(op))}</code></td><td>{op.type}</td>"
            f"<td>{op.invoke_index}..{op.complete_index}</td></tr>"
        )
    rows.append("</table>")
    return "".join(rows)
