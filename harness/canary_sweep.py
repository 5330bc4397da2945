"""Catch rates of the canaries' default runs over many seeds (`scripts/canary-sweep`).

Brings up one temporary 5-node netns cluster (own namespace prefix, always taken down),
then runs, one at a time, the *default run* of each cell -- `machi-harness test --mode M
--time-limit T --seed S [--canary C]`, nothing else -- for every seed, and records one JSON
line per run (cell, seed, exit status, verdict, caught, the canary's signatures found,
acknowledged appends, the first fault, wall time, run dir).  A canary run is *caught* when
it is invalid and shows one of the canary's signatures (`harness.canary.SIGNATURES`); a
clean run counts when it is valid.  At the end (and with `--table FILE.jsonl` for an
earlier sweep) it prints the Markdown table docs/harness-run.md "Canaries" shows.

Root only (netns).  Each run is bounded by `--run-timeout-s`; a run that times out or
cannot be made is recorded as such and the sweep goes on.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from harness.canary import SIGNATURES, signatures_found

NODES = 5
CLEAN = "clean"


def _cli() -> str:
    return str(Path(sys.executable).parent / "machi-harness")


def run_cell(state_dir: Path, store: Path, mode: str, canary: str, seed: int,
             time_limit_s: int, run_timeout_s: float) -> dict[str, Any]:
    """One default run; its summary line."""
    store.mkdir(parents=True, exist_ok=True)
    cmd = [_cli(), "test", "--hosts", "netns", "--nodes", str(NODES),
           "--state-dir", str(state_dir), "--store", str(store),
           "--mode", mode, "--time-limit", str(time_limit_s), "--seed", str(seed)]
    if canary != CLEAN:
        cmd += ["--canary", canary]
    line: dict[str, Any] = {"canary": canary, "mode": mode, "seed": seed,
                            "time_limit_s": time_limit_s}
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=run_timeout_s)
    except subprocess.TimeoutExpired:
        line.update(exit=None, outcome="timeout", wall_s=round(time.monotonic() - t0, 1))
        return line
    line["wall_s"] = round(time.monotonic() - t0, 1)
    line["exit"] = p.returncode
    runs = sorted(store.glob("*/latest"))
    if not runs or not (runs[0].resolve() / "results.json").exists():
        line.update(outcome="no-run", stderr=p.stderr[-800:])
        return line
    run_dir = runs[0].resolve()
    res = json.loads((run_dir / "results.json").read_text())
    line["run_dir"] = str(run_dir)
    line["valid"] = res.get("valid")
    if res.get("setup_error"):
        line.update(outcome="setup-error", error=str(res["setup_error"])[:300])
        return line
    found = signatures_found(res)
    line["failed_checks"] = sorted(n for n, c in res["checks"].items()
                                   if c.get("valid") is False)
    line["acks"] = res.get("counts", {}).get("append", {}).get("ok", 0)
    faults = res.get("faults") or []
    if faults:
        f0 = faults[0]
        line["first_fault"] = " ".join(str(x) for x in (
            f0.get("fault"), f0.get("kind") or f0.get("role") or "",
            "crash" if f0.get("crash") else "") if x).strip()
    if canary == CLEAN:
        line["outcome"] = "valid" if res.get("valid") is True else "NOT-VALID"
        line["warnings"] = len(res.get("warnings") or [])
    else:
        sig = sorted(found & set(SIGNATURES[canary]))
        line["signatures"] = sig
        line["outcome"] = "caught" if (res.get("valid") is False and sig) else "MISSED"
    return line


def table(lines: Iterable[dict[str, Any]]) -> str:
    """Markdown: per cell, runs, caught (clean: valid), signatures, first faults, misses."""
    cells: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for ln in lines:
        cells[(ln["canary"], ln["mode"])].append(ln)
    order = [*sorted(SIGNATURES), CLEAN]
    out = ["| canary | mode | runs | caught (clean: valid) | signatures (runs) | "
           "acks per run | first faults | wall s |",
           "|---|---|---|---|---|---|---|---|"]
    misses = []
    for canary in order:
        for mode in ("cp", "ap"):
            runs = cells.get((canary, mode))
            if not runs:
                continue
            good = sum(1 for r in runs if r.get("outcome") in ("caught", "valid"))
            sigs: dict[str, int] = defaultdict(int)
            for r in runs:
                for s in r.get("signatures") or []:
                    sigs[s] += 1
            firsts: dict[str, int] = defaultdict(int)
            for r in runs:
                firsts[r.get("first_fault", "-")] += 1
            acks = [r.get("acks", 0) for r in runs]
            walls = [r.get("wall_s", 0) for r in runs]
            out.append(
                f"| `{canary}` | {mode.upper()} | {len(runs)} | {good} / {len(runs)} | "
                + ("; ".join(f"`{k}` {v}" for k, v in sorted(sigs.items())) or "-")
                + f" | {min(acks)}-{max(acks)} | "
                + ", ".join(f"{k} {v}" for k, v in sorted(firsts.items()))
                + f" | {min(walls):.0f}-{max(walls):.0f} |")
            misses += [r for r in runs if r.get("outcome") not in ("caught", "valid")]
    for r in misses:
        out.append("")
        out.append(f"Not caught / not valid: {r['canary']} {r['mode']} seed {r['seed']}: "
                   f"{r.get('outcome')} exit {r.get('exit')} failed "
                   f"{r.get('failed_checks')} acks {r.get('acks')} ({r.get('run_dir', '')})")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="canary-sweep", description=__doc__.split("\n")[0])
    ap.add_argument("--modes", default="cp,ap")
    ap.add_argument("--canaries", default="all",
                    help="comma list of canaries and/or 'clean'; 'all' = every canary + clean")
    ap.add_argument("--seeds", default="", help="comma list of seeds")
    ap.add_argument("--random-seeds", type=int, default=0,
                    help="this many seeds drawn from --seed-of-seeds")
    ap.add_argument("--seed-of-seeds", type=int, default=2026)
    ap.add_argument("--time-limit", type=int, default=12)
    ap.add_argument("--run-timeout-s", type=float, default=400.0)
    ap.add_argument("--out", type=Path, default=Path("canary-sweep.jsonl"),
                    help="JSON lines, appended")
    ap.add_argument("--store", type=Path, default=Path("store/canary-sweep"))
    ap.add_argument("--table", type=Path, help="only print the table of this JSONL file")
    a = ap.parse_args(argv)
    if a.table:
        print(table(json.loads(x) for x in a.table.read_text().splitlines() if x.strip()))
        return 0
    canaries = [*sorted(SIGNATURES), CLEAN] if a.canaries == "all" else a.canaries.split(",")
    unknown = [c for c in canaries if c != CLEAN and c not in SIGNATURES]
    if unknown:
        ap.error(f"unknown canary {unknown}")
    seeds = [int(s) for s in a.seeds.split(",") if s]
    rng = random.Random(a.seed_of_seeds)
    seeds += [rng.randrange(1, 2**31) for _ in range(a.random_seeds)]
    if not seeds:
        ap.error("give --seeds or --random-seeds")
    if os.geteuid() != 0:
        print("canary-sweep: needs root (netns hosts)", file=sys.stderr)
        return 254
    from harness.hosts import netns

    why = netns.preflight()
    if why:
        print(f"canary-sweep: {why}", file=sys.stderr)
        return 3
    modes = a.modes.split(",")
    done: list[dict[str, Any]] = []
    with netns.temporary_cluster(NODES, prefix=f"machi-s{os.getpid() % 100000}-") as state:
        for seed in seeds:  # a round of every cell per seed: partial sweeps stay balanced
            for canary in canaries:
                for mode in modes:
                    store = a.store / f"{canary}-{mode}-{seed}"
                    ln = run_cell(state, store, mode, canary, seed, a.time_limit,
                                  a.run_timeout_s)
                    done.append(ln)
                    with a.out.open("a") as f:
                        f.write(json.dumps(ln) + "\n")
                    print(json.dumps({k: ln.get(k) for k in (
                        "canary", "mode", "seed", "outcome", "acks", "first_fault",
                        "wall_s")}), flush=True)
    print(table(done))
    return 0 if all(r.get("outcome") in ("caught", "valid") for r in done) else 1


if __name__ == "__main__":
    sys.exit(main())
