"""The self-contained `index.html` of a harness run (inline SVG/CSS/JS, no network).

Owns the page: verdict at the top, op counts per type and outcome, a timeline of operations
per client with fault periods shaded, latency (raw points, quantiles) and throughput over
time with fault bands, each node's epoch / UPI / repairing over time (from the projection
logs) with its wedged and silent periods (from the harness's status polls, status.jsonl),
and for each anomaly the failing ops and the explanation.

Must not: load anything from the network, or decide verdicts (it shows `results.json`).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

W = 1000  # plot width (px)
LANE_H = 10
COLORS = {"ok": "#2a9d4a", "fail": "#d1495b", "info": "#e0a100", "invoke": "#888"}
FAULT_COLOR = {"partition": "#f4a3a3", "loss": "#f4c7a3", "kill": "#c9b3f2",
               "pause": "#a3c8f4", "torn-write": "#f2b3e4"}
_END = {"heal": "partition", "restart": "kill", "resume": "pause"}


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    if path.exists():
        for line in path.read_bytes().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def _fault_bands(events: list[dict[str, Any]], t0: int) -> list[tuple[float, float, str]]:
    """(start_s, end_s, fault) from the nemesis events of the history."""
    bands: list[tuple[float, float, str]] = []
    open_: dict[str, float] = {}
    for ev in events:
        if ev.get("process") != "nemesis" or (ev.get("value") or {}).get("phase") != "done":
            continue
        t = (ev["time"] - t0) / 1e9
        f = ev["f"]
        v = ev.get("value") or {}
        if f in ("partition", "loss", "kill", "pause") and (v.get("skipped") or v.get("error")):
            continue  # not applied (e.g. no repairing node to isolate): no band
        if f in ("partition", "loss", "kill", "pause"):
            open_.setdefault(f if f != "loss" else "partition", t)
            if f == "loss":
                open_["loss"] = open_.pop("partition")
        elif f == "torn-write":
            bands.append((t, t + 0.2, "torn-write"))
        elif f in _END or f == "heal-all":
            keys = list(open_) if f == "heal-all" else [k for k in open_ if k == _END[f]
                                                        or (f == "heal" and k == "loss")]
            for k in keys:
                bands.append((open_.pop(k), t, k))
    end = max(((e["time"] - t0) / 1e9 for e in events), default=0.0)
    bands.extend((s, end, k) for k, s in open_.items())
    return bands


def _svg_bands(bands: list[tuple[float, float, str]], sx: float, h: int) -> str:
    return "".join(
        f'<rect x="{s * sx:.1f}" y="0" width="{max(1.0, (e - s) * sx):.1f}" height="{h}" '
        f'fill="{FAULT_COLOR.get(k, "#ddd")}" opacity="0.45"><title>{_esc(k)} '
        f'{s:.1f}-{e:.1f}s</title></rect>' for s, e, k in bands)


def _timeline(ops: list[dict[str, Any]], bands: list[tuple[float, float, str]],
              dur: float) -> str:
    procs = sorted({o["process"] for o in ops}, key=lambda p: (isinstance(p, str), str(p)))
    lane = {p: i for i, p in enumerate(procs)}
    h = max(20, len(procs) * LANE_H + 20)
    sx = W / max(dur, 1e-3)
    parts = [f'<svg width="{W}" height="{h}" class="plot">', _svg_bands(bands, sx, h)]
    for o in ops:
        y = lane[o["process"]] * LANE_H + 2
        x = o["t0"] * sx
        w = max(1.0, (o["t1"] - o["t0"]) * sx)
        parts.append(
            f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{LANE_H - 2}" '
            f'fill="{COLORS.get(o["type"], "#888")}"><title>{_esc(o["process"])} {_esc(o["f"])}'
            f' {_esc(o["type"])} {(o["t1"] - o["t0"]) * 1000:.1f} ms {_esc(o.get("error") or "")}'
            f' {_esc(json.dumps(o.get("value"))[:200])}</title></rect>')
    for p, i in lane.items():
        parts.append(f'<text x="2" y="{i * LANE_H + LANE_H - 1}" font-size="8">{_esc(p)}</text>')
    parts.append(_axis(dur, sx, h))
    parts.append("</svg>")
    return "".join(parts)


def _axis(dur: float, sx: float, h: int) -> str:
    step = max(1, int(dur / 10) or 1)
    return "".join(f'<line x1="{t * sx:.1f}" y1="{h - 10}" x2="{t * sx:.1f}" y2="{h - 6}" '
                   f'stroke="#444"/><text x="{t * sx + 2:.1f}" y="{h - 1}" font-size="9">'
                   f'{t}s</text>' for t in range(0, int(dur) + 1, step))


def _quantile(xs: list[float], q: float) -> float:
    if not xs:
        return 0.0
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def _latency(ops: list[dict[str, Any]], bands: list[tuple[float, float, str]],
             dur: float) -> str:
    h = 220
    sx = W / max(dur, 1e-3)
    lats = [max(0.01, (o["t1"] - o["t0"]) * 1000) for o in ops]
    top = max(lats, default=1.0)
    import math

    ly = math.log10(top * 1.2) + 2  # log scale from 0.01 ms

    def y(ms: float) -> float:
        return h - 14 - (math.log10(max(ms, 0.01)) + 2) / ly * (h - 24)

    parts = [f'<svg width="{W}" height="{h}" class="plot">', _svg_bands(bands, sx, h)]
    for o, ms in zip(ops, lats, strict=True):
        parts.append(f'<circle cx="{o["t0"] * sx:.1f}" cy="{y(ms):.1f}" r="1.6" '
                     f'fill="{COLORS.get(o["type"], "#888")}"/>')
    # quantiles per second
    for q, color in ((0.5, "#1d3557"), (0.95, "#e76f51"), (0.99, "#6a0572")):
        pts = []
        for sec in range(int(dur) + 1):
            xs = [ms for o, ms in zip(ops, lats, strict=True) if int(o["t0"]) == sec]
            if xs:
                pts.append(f"{(sec + 0.5) * sx:.1f},{y(_quantile(xs, q)):.1f}")
        if pts:
            parts.append(f'<polyline points="{" ".join(pts)}" fill="none" stroke="{color}" '
                         f'stroke-width="1.5"><title>p{int(q * 100)}</title></polyline>')
    for v in (0.1, 1, 10, 100, 1000, 10000):
        if v <= top * 1.2:
            parts.append(f'<text x="2" y="{y(v):.1f}" font-size="9">{v:g} ms</text>')
    parts.append(_axis(dur, sx, h))
    parts.append("</svg>")
    return "".join(parts)


def _throughput(ops: list[dict[str, Any]], bands: list[tuple[float, float, str]],
                dur: float) -> str:
    h = 140
    sx = W / max(dur, 1e-3)
    per: dict[str, list[int]] = {t: [0] * (int(dur) + 1) for t in ("ok", "fail", "info")}
    for o in ops:
        if o["type"] in per:
            per[o["type"]][min(int(o["t1"]), int(dur))] += 1
    top = max((max(v) for v in per.values()), default=1) or 1
    parts = [f'<svg width="{W}" height="{h}" class="plot">', _svg_bands(bands, sx, h)]
    for t, counts in per.items():
        pts = " ".join(f"{(i + 0.5) * sx:.1f},{h - 14 - c / top * (h - 24):.1f}"
                       for i, c in enumerate(counts))
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{COLORS[t]}" '
                     f'stroke-width="1.5"><title>{t} ops/s</title></polyline>')
    parts.append(f'<text x="2" y="10" font-size="9">{top} ops/s</text>')
    parts.append(_axis(dur, sx, h))
    parts.append("</svg>")
    return "".join(parts)


def status_periods(polls: list[dict[str, Any]], nodes: list[str],
                   t0_ms: int) -> dict[str, list[tuple[float, float, str]]]:
    """Per node, (start_s, end_s, state) from the ~1 s CHAIN_STATUS polls (status.jsonl,
    harness clock): "wedged", or "no answer" (down, paused or cut off from the harness).
    A period runs from the first poll that showed it to the next poll that did not."""
    out: dict[str, list[tuple[float, float, str]]] = {n: [] for n in nodes}
    open_: dict[str, tuple[float, str]] = {}
    t = 0.0
    ps = sorted((p for p in polls if isinstance(p.get("time_ms"), int)),
                key=lambda p: p["time_ms"])
    for p in ps:
        t = (p["time_ms"] - t0_ms) / 1000
        per = p.get("nodes") if isinstance(p.get("nodes"), dict) else {}
        for n in nodes:
            st = per.get(n)
            state = ("no answer" if not isinstance(st, dict) or "error" in st
                     else "wedged" if st.get("wedged") else "")
            cur = open_.get(n)
            if cur is not None and cur[1] != state:
                out[n].append((cur[0], t, cur[1]))
                del open_[n]
            if state and n not in open_:
                open_[n] = (t, state)
    for n, (start, state) in open_.items():
        out[n].append((start, t + 1.0, state))
    return out


STATUS_COLOR = {"wedged": "#6a040f", "no answer": "#6c757d"}


def _status_summary(periods: dict[str, list[tuple[float, float, str]]]) -> str:
    items = [f"{_esc(n)} {_esc(k)} {s:.1f}-{e:.1f} s" for n, ps in periods.items()
             for s, e, k in ps]
    if not items:
        return '<p id="status-periods">no node was wedged or silent in a status poll</p>'
    shown = "; ".join(items[:60]) + (f"; ... ({len(items) - 60} more)" if len(items) > 60
                                     else "")
    return f'<p id="status-periods">status polls: {shown}</p>'


def _chain(records: list[dict[str, Any]], nodes: list[str], t0_ms: int | None, dur: float,
           bands: list[tuple[float, float, str]],
           periods: dict[str, list[tuple[float, float, str]]] | None = None) -> str:
    """Per node: one segment per adopted projection (epoch, UPI, repairing), and a bar under
    it while status polls showed the node wedged (dark red) or not answering (grey)."""
    if not records:
        return "<p>no projection logs</p>"
    lane_h = 26
    h = len(nodes) * lane_h + 20
    tmin = t0_ms if t0_ms is not None else min(r.get("time_ms") or 0 for r in records)
    tmax = max(max(r.get("time_ms") or 0 for r in records), tmin + int(dur * 1000))
    span = max(1.0, (tmax - tmin) / 1000)
    sx = W / span
    parts = [f'<svg width="{W}" height="{h}" class="plot">', _svg_bands(bands, sx, h)]
    by_node: dict[str, list[dict[str, Any]]] = {n: [] for n in nodes}
    for r in records:
        by_node.setdefault(r["node"], []).append(r)
    palette = ["#8ecae6", "#ffb703", "#90be6d", "#f28482", "#b392ac", "#84a59d", "#f6bd60"]
    for i, n in enumerate(nodes):
        rs = sorted(by_node.get(n, []), key=lambda r: r.get("time_ms") or 0)
        y = i * lane_h + 2
        for j, r in enumerate(rs):
            s = ((r.get("time_ms") or tmin) - tmin) / 1000
            e = ((rs[j + 1].get("time_ms") or tmax) - tmin) / 1000 if j + 1 < len(rs) else span
            full = not r.get("repairing") and len(r.get("upi", [])) == len(
                [m for m in r.get("all_members", []) if m not in r.get("witnesses", [])])
            color = palette[r.get("epoch", 0) % len(palette)]
            label = (f"e{r.get('epoch')} upi={','.join(r.get('upi', []))}"
                     f" rep={','.join(r.get('repairing', []))}"
                     + (" confirmed" if r.get("confirmed") else "")
                     + ("" if n in r.get("upi", []) or n in r.get("repairing", [])
                        else " (not in chain: wedged/down)"))
            parts.append(
                f'<rect x="{max(0.0, s) * sx:.1f}" y="{y}" width="{max(1.0, (e - s) * sx):.1f}" '
                f'height="{lane_h - 6}" fill="{color}" stroke="{"#222" if full else "#d1495b"}" '
                f'stroke-width="{0.5 if full else 1.5}"><title>{_esc(n)}: {_esc(label)}</title>'
                f'</rect>')
            if (e - s) * sx > 40:
                parts.append(f'<text x="{max(0.0, s) * sx + 2:.1f}" y="{y + 14}" font-size="9">'
                             f'e{r.get("epoch")} {_esc(",".join(r.get("upi", [])))}</text>')
        for s, e, k in (periods or {}).get(n, []):
            parts.append(
                f'<rect x="{max(0.0, s) * sx:.1f}" y="{y + lane_h - 10}" '
                f'width="{max(1.0, (e - s) * sx):.1f}" height="5" '
                f'fill="{STATUS_COLOR.get(k, "#000")}"><title>{_esc(n)}: {_esc(k)} '
                f'{s:.1f}-{e:.1f}s (status polls)</title></rect>')
        parts.append(f'<text x="{W - 24}" y="{y + 14}" font-size="10">{_esc(n)}</text>')
    parts.append(_axis(span, sx, h))
    parts.append("</svg>")
    return "".join(parts)


def _pair(events: list[dict[str, Any]], t0: int) -> list[dict[str, Any]]:
    pending: dict[Any, dict[str, Any]] = {}
    ops = []
    end = max((e["time"] for e in events), default=t0)
    for ev in events:
        p = ev.get("process")
        if p == "nemesis":
            continue
        if ev["type"] == "invoke":
            pending[p] = ev
            continue
        inv = pending.pop(p, None)
        if inv is None:
            continue
        ops.append({"process": p, "f": ev["f"], "type": ev["type"], "t0": (inv["time"] - t0) / 1e9,
                    "t1": (ev["time"] - t0) / 1e9, "value": ev.get("value"),
                    "error": ev.get("error"), "final": bool(ev.get("final"))})
    for p, inv in pending.items():
        ops.append({"process": p, "f": inv["f"], "type": "info", "t0": (inv["time"] - t0) / 1e9,
                    "t1": (end - t0) / 1e9, "value": inv.get("value"), "error": "pending",
                    "final": bool(inv.get("final"))})
    return ops


def _anomalies(results: dict[str, Any]) -> str:
    out = []
    for name, c in results.get("checks", {}).items():
        w = c.get("witness") or {}
        an = w.get("anomalies") or {}
        noted = c.get("errors") or (c.get("divergent_chunks") or {}).get("count")
        if c.get("valid") is True and not an and not noted:
            continue
        out.append(f"<h3>{_esc(name)}: {_esc(c.get('valid'))}</h3>")
        if w.get("explanation"):
            out.append(f"<p>{_esc(w['explanation'])}</p>")
        for kind, a in an.items():
            out.append(f"<h4>{_esc(kind)} ({_esc(a.get('count', '?'))})</h4>")
            for ex in (a.get("examples") or [])[:5]:
                out.append(f"<pre>{_esc(json.dumps(ex, indent=1)[:3000])}</pre>")
        rest = {k: v for k, v in c.items() if k not in ("witness", "valid", "stats")}
        if rest:
            out.append(f"<pre>{_esc(json.dumps(rest, indent=1, default=str)[:3000])}</pre>")
        if not an and w:
            out.append(f"<pre>{_esc(json.dumps(w, indent=1, default=str)[:3000])}</pre>")
    return "".join(out) or "<p>none</p>"


def _warnings(results: dict[str, Any]) -> str:
    ws = results.get("warnings") or []
    if not ws:
        return '<p id="warnings">none</p>'
    items = "".join(f"<li><b>{_esc(w.get('count'))}</b> {_esc(w.get('kind'))} "
                    f"({_esc(w.get('check'))}): {_esc(w.get('text'))}</li>" for w in ws)
    return f'<ul id="warnings">{items}</ul>'


def render(run_dir: Path, results: dict[str, Any]) -> str:
    events = _jsonl(run_dir / "history.jsonl")
    t0 = min((e["time"] for e in events), default=0)
    ops = _pair(events, t0)
    dur = max((o["t1"] for o in ops), default=1.0)
    bands = _fault_bands(events, t0)
    run_ops = [o for o in ops if not o["final"]]
    records = []
    for d in sorted((run_dir / "nodes").glob("*")) if (run_dir / "nodes").exists() else []:
        records.extend(_jsonl(d / "projection-log.jsonl"))
    from harness.run import on_harness_clock

    records = on_harness_clock(records, {"options": results.get("options") or {},
                                         "clock": results.get("clock")})
    t0_ms = t0 // 1_000_000 if t0 else None
    nodes = list(results.get("nodes") or sorted({r["node"] for r in records}))
    periods = status_periods(_jsonl(run_dir / "status.jsonl"), nodes, t0_ms or 0)
    v = results.get("valid")
    verdict = {True: "valid", False: "INVALID"}.get(v, "unknown") if isinstance(v, bool) \
        else "unknown"
    vcolor = {"valid": "#2a9d4a", "INVALID": "#d1495b"}.get(verdict, "#e0a100")
    o = results.get("options", {})
    counts_rows = "".join(
        f"<tr><td>{_esc(f)}</td>" + "".join(f"<td>{c.get(t, 0)}</td>" for t in
                                            ("ok", "fail", "info")) + "</tr>"
        for f, c in sorted(results.get("counts", {}).items()))
    checks_rows = "".join(
        f"<tr><td>{_esc(n)}</td><td>{_esc(c.get('valid'))}</td></tr>"
        for n, c in results.get("checks", {}).items())
    faults = "".join(f"<li>{_esc(json.dumps(f, default=str)[:300])}</li>"
                     for f in results.get("faults", []))
    conv = results.get("convergence")
    legend = " ".join(f'<span class="sw" style="background:{c}"></span>{_esc(k)}'
                      for k, c in {**COLORS, **FAULT_COLOR}.items() if k != "invoke")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>machi harness: {_esc(verdict)}</title>
<style>
body{{font:14px system-ui,sans-serif;margin:20px;max-width:1060px}}
.verdict{{font-size:28px;font-weight:bold;color:#fff;background:{vcolor};padding:8px 16px;
border-radius:6px;display:inline-block}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 8px}}
.plot{{border:1px solid #ddd;background:#fcfcfc;display:block;margin:4px 0 16px}}
.sw{{display:inline-block;width:10px;height:10px;margin:0 3px 0 10px}}
pre{{background:#f4f4f4;padding:6px;overflow:auto;max-height:300px}}
details{{margin:8px 0}}
</style></head><body>
<div class="verdict" id="verdict">{_esc(verdict)}</div>
<p>test <b>{_esc(o.get('name'))}</b>: {_esc(o.get('nodes'))} nodes ({_esc(o.get('provider'))}),
mode {_esc(o.get('mode'))}, nemesis {_esc(','.join(o.get('nemesis', [])) or 'none')},
{_esc(o.get('time_limit_s'))} s, {_esc(o.get('concurrency'))} clients, seed
<b>{_esc(results.get('seed'))}</b>{' , <b>CANARY ' + _esc(o.get('canary')) + '</b>'
if o.get('canary') else ''}</p>
<h2>Checks</h2><table><tr><th>checker</th><th>valid</th></tr>{checks_rows}</table>
<p>convergence after heal: {_esc(json.dumps(conv, default=str))}</p>
<h2>Operations</h2><table><tr><th>op</th><th>ok</th><th>fail</th><th>info</th></tr>
{counts_rows}</table>
<p>{legend}</p>
<h2>Timeline (one lane per client; faults shaded)</h2>{_timeline(ops, bands, dur)}
<h2>Latency (raw points, p50/p95/p99 per second; log scale)</h2>{_latency(run_ops, bands, dur)}
<h2>Throughput (completions per second by outcome)</h2>{_throughput(run_ops, bands, dur)}
<h2>Chain per node (epoch, UPI; red outline: not a full repaired chain; bar below:
<span class="sw" style="background:{STATUS_COLOR['wedged']}"></span>wedged
<span class="sw" style="background:{STATUS_COLOR['no answer']}"></span>no status answer)</h2>
{_chain(records, nodes, t0_ms, dur, bands, periods)}
{_status_summary(periods)}
<h2>Anomalies</h2>{_anomalies(results)}
<h2>Warnings (tolerated by a rule, not in the verdict)</h2>{_warnings(results)}
<details><summary>faults applied</summary><ul>{faults}</ul></details>
<details><summary>results.json</summary><pre id="results">{_esc(json.dumps(results, indent=1,
default=str)[:200000])}</pre></details>
<script>
// highlight: click the verdict to toggle the raw results
document.getElementById("verdict").addEventListener("click", function () {{
  var d = document.querySelector("details:last-of-type"); d.open = !d.open;
}});
</script>
</body></html>
"""


def write_report(run_dir: Path, results: dict[str, Any]) -> Path:
    path = Path(run_dir) / "index.html"
    path.write_text(render(Path(run_dir), results), encoding="utf-8")
    return path
