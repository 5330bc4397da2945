"""Projection safety and convergence over the per-node projection logs.

Owns the offline checks of Humming Consensus runs (format: ``docs/history-write-once.md``,
"Projection logs"; the simulator's adoption records are accepted as they are):
per node epochs strictly increase, every adopted transition is sane (the rules of
reference 5.7, through ``machi.core.transition`` -- the same module the chain manager
and the simulator use), no node in two different UPIs at one epoch number, CP: at most
one confirmed projection with a non-empty UPI per epoch number; and the convergence
check (time from the heal until every node uses one projection with every non-witness
member in the UPI and nothing repairing).

Must not: decide transitions itself (``machi.core.transition`` does), do I/O, or read a
clock.  Records are plain dicts (decoded JSON lines) in log order; several nodes' logs
may be concatenated or interleaved, each record names its ``node``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from harness.checker.result import CheckResult
from machi.core.projection import Projection, make_projection, projection_from_json
from machi.core.transition import transition_problem

MODEL = "projection-safety"
EXAMPLES_MAX = 5
KINDS = (
    "malformed",
    "bad-checksum",
    "epoch-not-increasing",
    "unsafe-transition",
    "two-upis-one-epoch",
    "two-confirmed-one-epoch",
)
_DEFAULT_CHAIN = "chain"


@dataclass(frozen=True, slots=True)
class Adoption:
    """One log record, normalised."""

    line: int
    node: str
    epoch: int
    epoch_csum: str
    author: str
    chain: str
    mode: str
    upi: tuple[str, ...]
    repairing: tuple[str, ...]
    down: tuple[str, ...]
    witnesses: tuple[str, ...]
    all_members: tuple[str, ...]
    confirmed: bool
    time: int | None
    dbg: Mapping[str, Any] | None
    projection: Mapping[str, Any] | None

    @property
    def epoch_id(self) -> tuple[int, str]:
        return (self.epoch, self.epoch_csum)

    def is_none(self) -> bool:
        return not self.upi and not self.repairing


def _names(rec: Mapping[str, Any], key: str, line: int) -> tuple[str, ...]:
    raw = rec.get(key, [])
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise ValueError(f"record {line}: {key!r} must be a list of names")
    return tuple(raw)


def normalise(
    records: Iterable[Mapping[str, Any]],
    *,
    mode: str | None = None,
    chain: str | None = None,
    all_members: Sequence[str] | None = None,
) -> list[Adoption]:
    """Records -> ``Adoption``s; raises ``ValueError`` naming the record on bad fields.

    Missing ``all_members`` default to ``all_members`` here, else to every name seen in
    any record; missing ``mode`` and ``chain`` to the arguments (``ap``, ``chain``).
    """
    raw: list[tuple[int, Mapping[str, Any]]] = list(enumerate(records))
    seen: set[str] = set()
    for line, rec in raw:
        if not isinstance(rec, Mapping):
            raise ValueError(f"record {line}: want a JSON object")
        for key in ("upi", "repairing", "down", "witnesses", "all_members"):
            seen.update(_names(rec, key, line))
        node = rec.get("node")
        if isinstance(node, str):
            seen.add(node)
    members = tuple(all_members) if all_members is not None else tuple(sorted(seen))
    out: list[Adoption] = []
    for line, rec in raw:
        node = rec.get("node")
        epoch = rec.get("epoch", rec.get("epoch_number"))
        csum = rec.get("epoch_csum", "")
        if not isinstance(node, str) or not node:
            raise ValueError(f"record {line}: 'node' must be a name")
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise ValueError(f"record {line}: 'epoch' must be an integer >= 0")
        if not isinstance(csum, str):
            raise ValueError(f"record {line}: 'epoch_csum' must be a hex string")
        t = rec.get("time_ms", rec.get("tick", rec.get("time")))
        if t is not None and (not isinstance(t, int) or isinstance(t, bool)):
            raise ValueError(f"record {line}: time must be an integer")
        proj = rec.get("projection")
        dbg = rec.get("dbg")
        out.append(
            Adoption(
                line=line,
                node=node,
                epoch=epoch,
                epoch_csum=csum,
                author=str(rec.get("author", rec.get("author_server", node))),
                chain=str(rec.get("chain", rec.get("chain_name", chain or _DEFAULT_CHAIN))),
                mode=str(rec.get("mode", mode or "ap")),
                upi=_names(rec, "upi", line),
                repairing=_names(rec, "repairing", line),
                down=_names(rec, "down", line),
                witnesses=_names(rec, "witnesses", line),
                all_members=_names(rec, "all_members", line) or members,
                confirmed=bool(rec.get("confirmed", False)),
                time=t,
                dbg=dbg if isinstance(dbg, Mapping) else None,
                projection=proj if isinstance(proj, Mapping) else None,
            )
        )
    return out


def to_projection(a: Adoption) -> Projection:
    """The projection record of an adoption (full JSON form when logged, else rebuilt)."""
    if a.projection is not None:
        return projection_from_json(a.projection, verify_csum=True)
    return make_projection(
        epoch_number=a.epoch,
        author_server=a.author,
        chain_name=a.chain,
        all_members=a.all_members,
        mode=a.mode,  # type: ignore[arg-type]
        upi=a.upi,
        repairing=a.repairing,
        down=a.down,
        witnesses=a.witnesses,
        dbg=a.dbg or {},
    )


class _Report:
    def __init__(self, examples_max: int) -> None:
        self.counts: dict[str, int] = dict.fromkeys(KINDS, 0)
        self.examples: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
        self.examples_max = examples_max

    def add(self, kind: str, **example: Any) -> None:
        self.counts[kind] += 1
        if len(self.examples[kind]) < self.examples_max:
            self.examples[kind].append(example)

    def anomalies(self) -> dict[str, Any]:
        return {k: {"count": n, "examples": self.examples[k]} for k, n in self.counts.items() if n}


def check_projection_logs(
    records: Iterable[Mapping[str, Any]],
    *,
    mode: str | None = None,
    chain: str | None = None,
    all_members: Sequence[str] | None = None,
    heal_time: int | None = None,
    examples_max: int = EXAMPLES_MAX,
) -> CheckResult:
    """Check adoption records; with ``heal_time`` also report convergence in the witness.

    The verdict is about safety only (convergence is liveness and is reported, not
    judged). A CP move out of the none projection into the UPI can only be checked when
    the record carries the zerf basis (``dbg`` or the full ``projection``); records
    without it are counted in ``stats.unverified_transitions`` instead of guessed at.
    """
    report = _Report(examples_max)
    try:
        adoptions = normalise(records, mode=mode, chain=chain, all_members=all_members)
    except ValueError as exc:
        report.add("malformed", explanation=str(exc))
        return _result(report, [], 0, 0, heal_time)
    last: dict[str, tuple[Adoption, Projection | None]] = {}
    in_upi: dict[tuple[int, str], tuple[Adoption, tuple[int, str]]] = {}
    confirmed: dict[int, Adoption] = {}
    checked = unverified = 0
    for a in adoptions:
        try:
            p: Projection | None = to_projection(a)
        except ValueError as exc:
            kind = "bad-checksum" if "checksum" in str(exc) else "malformed"
            report.add(kind, line=a.line, node=a.node, epoch=a.epoch, explanation=str(exc))
            p = None
        prev = last.get(a.node)
        repeat = prev is not None and prev[0].epoch_id == a.epoch_id
        if prev is not None and not repeat:
            pa, pp = prev
            if a.epoch < pa.epoch or (a.epoch == pa.epoch and not (pa.is_none() and a.is_none())):
                report.add(
                    "epoch-not-increasing",
                    line=a.line,
                    node=a.node,
                    explanation=f"{a.node}: epoch {pa.epoch} -> {a.epoch}",
                )
            elif pp is not None and p is not None:
                if _needs_basis(pp, p, a):
                    unverified += 1
                else:
                    checked += 1
                    problem = transition_problem(pp, p, relative_to=a.node)
                    if problem is not None:
                        report.add(
                            "unsafe-transition",
                            line=a.line,
                            node=a.node,
                            epochs=[pa.epoch, a.epoch],
                            explanation=f"{a.node}: {pa.epoch} -> {a.epoch}: {problem}",
                        )
        for u in a.upi:
            seen = in_upi.setdefault((a.epoch, u), (a, a.epoch_id))
            if seen[1] != a.epoch_id:
                report.add(
                    "two-upis-one-epoch",
                    line=a.line,
                    node=u,
                    epoch=a.epoch,
                    explanation=f"{u} is in two different upis at epoch {a.epoch} "
                    f"(records {seen[0].line} and {a.line})",
                )
        if a.confirmed and a.mode == "cp" and a.upi:
            first = confirmed.setdefault(a.epoch, a)
            if first.epoch_id != a.epoch_id:
                report.add(
                    "two-confirmed-one-epoch",
                    line=a.line,
                    epoch=a.epoch,
                    explanation=f"two different confirmed projections at epoch {a.epoch} "
                    f"(records {first.line} and {a.line})",
                )
        if not repeat or prev is None:
            last[a.node] = (a, p)
    return _result(report, adoptions, checked, unverified, heal_time)


def _needs_basis(p1: Projection, p2: Projection, a: Adoption) -> bool:
    """A CP move from the none projection into the UPI, logged without its zerf basis."""
    if p2.mode != "cp" or p1.upi_non_witnesses or a.node not in p2.upi_non_witnesses:
        return False
    if p1.epoch_number == 0:
        return False
    return a.projection is None and not (a.dbg and "zerf_basis" in a.dbg)


def _result(
    report: _Report,
    adoptions: list[Adoption],
    checked: int,
    unverified: int,
    heal_time: int | None,
) -> CheckResult:
    anomalies = report.anomalies()
    witness: dict[str, Any] = {}
    if anomalies:
        witness["anomalies"] = anomalies
        witness["explanation"] = "; ".join(f"{a['count']} {k}" for k, a in anomalies.items())
    if heal_time is not None:
        witness["convergence"] = convergence(adoptions, heal_time=heal_time)
    nodes = {a.node for a in adoptions}
    return CheckResult(
        valid=not anomalies,
        model=MODEL,
        ops=len(adoptions),
        keys=len(nodes),
        witness=witness,
        stats={
            "records": len(adoptions),
            "nodes": len(nodes),
            "epochs": len({a.epoch for a in adoptions}),
            "transitions_checked": checked,
            "unverified_transitions": unverified,
        },
    )


def convergence(
    adoptions: Sequence[Adoption],
    *,
    heal_time: int,
    nodes: Sequence[str] | None = None,
) -> dict[str, Any]:
    """When, after ``heal_time``, did all nodes settle on one full, repaired chain?

    Converged = at the end of the logs every node (``nodes``, default: every member)
    uses the same epoch id, its UPI holds every non-witness member and nothing is
    repairing. ``converged_at`` is when the last node adopted that final projection;
    ``time_to_converge`` = max(0, converged_at - heal_time). Records without a time
    make the answer "did not converge" only if they are needed to tell.
    """
    if not adoptions:
        return {"converged": False, "reason": "no records"}
    members = set(adoptions[-1].all_members)
    want = sorted(nodes) if nodes is not None else sorted(members | {a.node for a in adoptions})
    final: dict[str, Adoption] = {}
    since: dict[str, Adoption] = {}  # first record of the node's final run of one epoch id
    for a in adoptions:
        cur = final.get(a.node)
        if cur is None or cur.epoch_id != a.epoch_id:
            since[a.node] = a
        final[a.node] = a
    missing = [n for n in want if n not in final]
    if missing:
        return {"converged": False, "reason": f"no projection adopted by {missing}"}
    ids = {final[n].epoch_id for n in want}
    summary = {n: [final[n].epoch, final[n].epoch_csum[:16]] for n in want}
    if len(ids) != 1:
        return {
            "converged": False,
            "reason": "nodes end on different projections",
            "final": summary,
        }
    p = final[want[0]]
    non_witnesses = [m for m in p.all_members if m not in p.witnesses]
    outside = [m for m in non_witnesses if m not in p.upi]
    if outside or p.repairing:
        return {
            "converged": False,
            "reason": f"final chain is not complete: upi {list(p.upi)}, repairing "
            f"{list(p.repairing)}, missing {outside}",
            "final": summary,
        }
    times = [since[n].time for n in want]
    if any(t is None for t in times):
        return {
            "converged": True,
            "converged_at": None,
            "time_to_converge": None,
            "epoch": p.epoch,
            "upi": list(p.upi),
        }
    at = max(t for t in times if t is not None)
    return {
        "converged": True,
        "converged_at": at,
        "time_to_converge": max(0, at - heal_time),
        "epoch": p.epoch,
        "upi": list(p.upi),
    }
