"""Fault schedules drawn from a seed: same seed, same nodes, same options -> same schedule.

Owns the pure function `make_schedule(seed, nodes, ...) -> list[FaultEvent]` (Jepsen's
nemesis generator, FoundationDB's seeded faults).  One fault is active at a time: a start
event (partition, kill, pause, torn-write) is always followed by its end event (heal,
restart, resume) before the next fault starts, and the schedule ends healed.  A `crash`
(every node SIGKILLed at once, a cluster-wide power failure) is a kill of every node.  Partition
grudges are computed here when they depend only on the node list; grudges that depend on
the chain's state at run time (isolate the head, tail, a middle or a repairing node) carry a
sub-seed instead, so the executor's choice is reproducible too; so do kills of a chain
role (`kill_roles`).

Must not: do I/O, read the clock or use the global `random` state.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from harness.nemesis import partition as p

FAULTS = ("partition", "kill", "pause", "torn-write", "loss", "crash")
PARTITION_KINDS = (
    "isolate", "one-way", "halves", "majority-minority", "majorities-ring", "bridge", "random",
    "isolate-head", "isolate-tail", "isolate-middle", "isolate-repairing",
)
KILL_ROLES = ("head", "tail", "middle")
_END_OF = {"partition": "heal", "loss": "heal", "kill": "restart", "pause": "resume"}
EVENTS_MAX = 10_000


@dataclass(frozen=True)
class FaultEvent:
    """At `time_s` after the test's start, do `fault` to `targets` (params: details)."""

    time_s: float
    fault: str
    targets: tuple[str, ...]
    params: tuple[tuple[str, Any], ...] = ()

    def param(self, key: str, default: Any = None) -> Any:
        return dict(self.params).get(key, default)

    def to_json(self) -> dict[str, Any]:
        return {"time_s": self.time_s, "fault": self.fault, "targets": list(self.targets),
                "params": _jsonable(dict(self.params))}


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, tuple | list | frozenset | set):
        seq = sorted(x) if isinstance(x, frozenset | set) else x
        return [_jsonable(v) for v in seq]
    return x


def grudge_param(g: p.Grudge) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """A grudge as a hashable, ordered value for `FaultEvent.params`."""
    return tuple((n, tuple(sorted(s))) for n, s in sorted(g.items()))


def grudge_of(event: FaultEvent) -> p.Grudge:
    return p.normalize({n: set(s) for n, s in event.param("grudge", ())})


@dataclass(frozen=True)
class ScheduleOptions:
    """Knobs of the schedule.  Times are seconds after the test's start."""

    time_limit_s: float = 60.0
    faults: tuple[str, ...] = ("partition", "kill")
    partition_kinds: tuple[str, ...] = (
        "isolate", "halves", "majority-minority", "majorities-ring", "bridge", "random",
        "one-way",
    )
    quiet_s: tuple[float, float] = (2.0, 6.0)  # healthy gap before each later fault
    fault_s: tuple[float, float] = (2.0, 8.0)  # how long a fault lasts
    #: healthy start before the first fault: early, so that a short run has its fault
    first_quiet_s: tuple[float, float] = (1.5, 3.0)
    #: how long the first fault lasts: long enough that the chain manager (default
    #: timers) reacts to it -- a 3.7 s partition went unnoticed under load
    first_fault_s: tuple[float, float] = (5.0, 8.0)
    #: faults the schedule starts with (in a seeded order), e.g. `crash` for a canary that
    #: only a crash exposes; each must be one of `faults`
    required: tuple[str, ...] = ()
    #: when set, each `kill` hits the node in one of these chain roles (head, tail,
    #: middle; drawn here, resolved at run time from the chain's current UPI; a first
    #: fault that is a kill hits the head) plus k-1 random others, and its `restart` names
    #: every node (restarting the dead ones)
    kill_roles: tuple[str, ...] = ()
    loss_probability: tuple[float, float] = (0.1, 0.5)
    torn_write_modes: tuple[str, ...] = ("truncate", "flip")

    def __post_init__(self) -> None:
        bad = set(self.faults) - set(FAULTS)
        if bad or not self.faults:
            raise ValueError(f"faults must be a non-empty subset of {FAULTS}, got {self.faults}")
        badk = set(self.partition_kinds) - set(PARTITION_KINDS)
        if badk or not self.partition_kinds:
            raise ValueError(f"unknown partition kinds {sorted(badk)}")
        if set(self.kill_roles) - set(KILL_ROLES):
            raise ValueError(f"kill roles must be among {KILL_ROLES}, got {self.kill_roles}")
        if set(self.required) - set(self.faults):
            raise ValueError(f"required faults {self.required} must be among {self.faults}")
        for lo, hi in (self.quiet_s, self.fault_s, self.first_quiet_s, self.first_fault_s,
                       self.loss_probability):
            if not 0 < lo <= hi:
                raise ValueError("ranges must satisfy 0 < low <= high")
        if self.loss_probability[1] > 1:
            raise ValueError("loss probability must be <= 1")


def make_schedule(
    seed: int, nodes: Sequence[str], options: ScheduleOptions | None = None
) -> list[FaultEvent]:
    """The fault schedule of a test: pure function of seed, node list and options."""
    opts = options or ScheduleOptions()
    ns = list(nodes)
    if len(ns) < 2 and ("partition" in opts.faults or "loss" in opts.faults):
        raise ValueError("partitions need at least 2 nodes")
    rng = random.Random(f"machi-schedule/{seed}")
    events: list[FaultEvent] = []
    required = list(opts.required)
    rng.shuffle(required)
    # every fault ends this long before the time limit (the node restarted or the network
    # healed while the load still runs); a fault that does not fit is shortened down to
    # the shortest fault_s, else it is dropped and the schedule ends
    end_by = opts.time_limit_s - min(2.0, opts.time_limit_s / 10)
    t = 0.0
    while len(events) < EVENTS_MAX - 3:
        t += rng.uniform(*(opts.quiet_s if events else opts.first_quiet_s))
        dur = rng.uniform(*(opts.fault_s if events else opts.first_fault_s))
        fault = required.pop(0) if required else rng.choice(opts.faults)
        if t + dur > end_by:
            dur = end_by - t
            if dur < opts.fault_s[0]:
                break
        events.extend(_fault_events(fault, round(t, 3), round(t + dur, 3), ns, opts, rng,
                                    first=not events))
        t += dur
    return events


def _fault_events(
    fault: str, start: float, end: float, ns: list[str], opts: ScheduleOptions,
    rng: random.Random, *, first: bool = False,
) -> list[FaultEvent]:
    everyone = tuple(ns)
    if fault == "partition":
        kind = rng.choice(opts.partition_kinds)
        if first and "isolate-head" in opts.partition_kinds:
            kind = "isolate-head"  # the first partition cuts the head off (like the first kill)
        elif kind == "isolate-repairing" and first:
            kind = "isolate-tail"  # a freshly bootstrapped chain has no repairing node
        if len(ns) < 3 and kind in ("majorities-ring", "bridge"):
            kind = "isolate"
        sub_seed = rng.getrandbits(32)
        params: list[tuple[str, Any]] = [("kind", kind), ("rng_seed", sub_seed)]
        if not kind.startswith("isolate-"):
            g = p.partition_by_name(kind, ns, random.Random(sub_seed))
            params.append(("grudge", grudge_param(g)))
        return [FaultEvent(start, "partition", everyone, tuple(params)),
                FaultEvent(end, "heal", everyone)]
    if fault == "loss":
        prob = round(rng.uniform(*opts.loss_probability), 3)
        g = p.complete_grudge([[n] for n in ns])
        return [FaultEvent(start, "loss", everyone,
                           (("grudge", grudge_param(g)), ("probability", prob))),
                FaultEvent(end, "heal", everyone)]
    if fault == "crash":
        # the whole cluster loses power at once: SIGKILL every node, restart them all
        return [FaultEvent(start, "kill", everyone, (("crash", True),)),
                FaultEvent(end, "restart", everyone)]
    k = rng.randint(1, max(1, (len(ns) - 1) // 2))
    if fault == "kill" and opts.kill_roles:
        role = rng.choice(opts.kill_roles)
        if first and "head" in opts.kill_roles:
            role = "head"  # the first kill hits the head: the node every write starts at
        return [FaultEvent(start, "kill", everyone, (("role", role), ("count", k),
                                                     ("rng_seed", rng.getrandbits(32)))),
                FaultEvent(end, "restart", everyone)]
    targets = tuple(sorted(rng.sample(ns, k)))
    if fault == "torn-write":
        mode = rng.choice(opts.torn_write_modes)
        mid = round((start + end) / 2, 3)
        return [FaultEvent(start, "kill", targets),
                FaultEvent(mid, "torn-write", targets,
                           (("mode", mode), ("rng_seed", rng.getrandbits(32)))),
                FaultEvent(end, "restart", targets)]
    return [FaultEvent(start, fault, targets), FaultEvent(end, _END_OF[fault], targets)]


def schedule_json(seed: int, events: Sequence[FaultEvent]) -> str:
    """The schedule as JSON (recorded with the run so it can be read and compared)."""
    return json.dumps({"seed": seed, "events": [e.to_json() for e in events]}, indent=1)
