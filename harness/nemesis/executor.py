"""Carry out `FaultEvent`s of a schedule on real hosts, and report what was done.

Owns the mapping from a schedule event to the network (`IptablesNet`) and process
(`ProcessNemesis`) mechanics, including the run-time choices a schedule cannot make: which
node is the head, tail, middle or a repairing node now (asked from `chain_view`; for
role partitions and role kills), and which
data files to tear (asked from `data_files`).  Every choice uses the event's sub-seed, so a
run with the same seed and the same chain history makes the same choices.

Must not: decide *when* faults happen (that is the schedule and the caller's clock), or leave
faults behind: `heal_all` flushes rules (proving connectivity like every heal) and
resumes/restarts the daemon everywhere.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from harness.nemesis import partition as p
from harness.nemesis.process import ProcessFaultError, ProcessNemesis
from harness.nemesis.schedule import FaultEvent, grudge_of

# (upi, repairing) of the chain as the harness currently sees it
ChainView = Callable[[], tuple[Sequence[str], Sequence[str]]]


class NemesisExecutor:
    """Applies schedule events; each `apply` returns a JSON-able record for the history."""

    def __init__(
        self,
        net: p.IptablesNet,
        procs: ProcessNemesis | None = None,
        *,
        chain_view: ChainView | None = None,
        data_files: Callable[[str], Sequence[str]] | None = None,
    ) -> None:
        self.net = net
        self.procs = procs
        self.chain_view = chain_view
        self.data_files = data_files
        self.nodes = list(net.hosts.names)

    def apply(self, event: FaultEvent) -> dict[str, Any]:
        record: dict[str, Any] = {"fault": event.fault, "targets": list(event.targets),
                                  "time_s": event.time_s}
        f = event.fault
        if f == "partition":
            g = self._grudge(event, record)
            if g is not None:
                self.net.apply(g)
                record["grudge"] = {n: sorted(s) for n, s in g.items()}
                record["components"] = [sorted(c) for c in p.components(self.nodes, g)]
        elif f == "loss":
            g = grudge_of(event)
            prob = float(event.param("probability"))
            self.net.apply(g, probability=prob)
            record["probability"] = prob
        elif f == "heal":
            report = self.net.heal_and_check()
            record["connected_pairs"] = len(report.ok)
        elif f in ("kill", "pause", "resume", "restart", "torn-write"):
            record.update(self._process(event))
        else:
            raise ValueError(f"unknown fault {f!r}")
        return record

    def _grudge(self, event: FaultEvent, record: dict[str, Any]) -> p.Grudge | None:
        kind = str(event.param("kind", ""))
        record["kind"] = kind
        if not kind.startswith("isolate-"):
            return grudge_of(event)
        if self.chain_view is None:
            raise ValueError(f"{kind} needs a chain_view (the current upi and repairing)")
        upi, repairing = self.chain_view()
        rng = random.Random(int(event.param("rng_seed", 0)))
        try:
            return p.isolate_role(upi, repairing, kind.removeprefix("isolate-"), self.nodes, rng)
        except p.PartitionError as e:
            record["skipped"] = str(e)  # e.g. no repairing node right now: nothing to do
            return None

    def _process(self, event: FaultEvent) -> dict[str, Any]:
        if self.procs is None:
            raise ValueError(f"{event.fault} needs a ProcessNemesis")
        t = list(event.targets)
        if event.fault == "kill" and event.param("role"):
            t, chosen = self._role_targets(event)
            return {"targets": t, **chosen, "was_running": self.procs.kill(t)}
        if event.fault == "kill":
            crash = {"crash": True} if event.param("crash") else {}
            return {"was_running": self.procs.kill(t), **crash}
        if event.fault == "pause":
            return {"was_running": self.procs.pause(t)}
        if event.fault == "resume":
            return {"was_running": self.procs.resume(t)}
        if event.fault == "restart":
            return {"pids": self.procs.restart(t)}
        if self.data_files is None:
            raise ValueError("torn-write needs data_files(node) -> paths")
        rng = random.Random(int(event.param("rng_seed", 0)))
        mode = str(event.param("mode", "flip"))
        torn = []
        for node in t:
            for path in self.data_files(node):
                try:
                    torn.append(self.procs.torn_write(node, path, rng, mode=mode).__dict__)
                except ProcessFaultError as e:
                    torn.append({"node": node, "path": path, "skipped": str(e)})
        return {"torn": torn}

    def _role_targets(self, event: FaultEvent) -> tuple[list[str], dict[str, Any]]:
        """The nodes a role kill hits: the chain's head, tail or a middle node now (from
        `chain_view`), plus count-1 other nodes, all drawn with the event's sub-seed; a role
        nobody holds now (e.g. no middle in a 2-node UPI) falls back to a UPI member."""
        role = str(event.param("role"))
        rng = random.Random(int(event.param("rng_seed", 0)))
        upi = [n for n in (self.chain_view()[0] if self.chain_view else self.nodes)
               if n in self.nodes] or list(self.nodes)
        out: dict[str, Any] = {"role": role}
        if role == "head":
            node = upi[0]
        elif role == "tail":
            node = upi[-1]
        elif role == "middle" and len(upi) >= 3:
            node = rng.choice(upi[1:-1])
        else:
            node = rng.choice(upi)
            out["role_fallback"] = f"no {role} node in upi={upi}"
        out["role_node"] = node
        others = [n for n in self.nodes if n != node]
        count = max(1, min(int(event.param("count", 1)), len(self.nodes)))
        return sorted([node, *rng.sample(others, count - 1)]), out

    def heal_all(self) -> dict[str, Any]:
        """End of a test (or Ctrl-C): no rule, no paused or dead daemon left, with the same
        connectivity proof as a scheduled heal (every host reaches every other host).
        Returns the proof's record (`connected_pairs`); raises `PartitionError` when the
        proof fails -- after resuming and restarting every daemon all the same."""
        try:
            report = self.net.heal_and_check()
        finally:
            if self.procs is not None:
                self.procs.resume(self.nodes)
                self.procs.restart(self.nodes)
        return {"connected_pairs": len(report.ok)}
