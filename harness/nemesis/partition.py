"""Network partitions: pure grudge computations, and iptables rules on the receiving host.

A *grudge* maps a node to the set of nodes it must not hear from (Jepsen's term).  The
functions that compute grudges (one-way, isolate, halves, majority/minority, majorities ring,
bridge, random) are pure: node names and an rng in, a grudge out.  `iptables_script` turns
one node's grudge into shell text, and `IptablesNet` applies grudges over SSH, in parallel,
each node dropping INPUT from the addresses it holds a grudge against, in a dedicated chain
(`MACHI-NEMESIS`) so that heal is a flush.

Must not: touch any host's iptables outside `MACHI-NEMESIS` and the one jump to it from
INPUT; drop traffic from anything but cluster nodes (the harness must always reach every host
to heal it); run iptables anywhere but on the cluster's hosts (never the root namespace).
"""

from __future__ import annotations

import itertools
import random
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from harness.hosts.base import Host, HostSet

CHAIN = "MACHI-NEMESIS"
Grudge = dict[str, frozenset[str]]


class PartitionError(Exception):
    """A partition cannot be computed or applied; the message says why."""


# --------------------------------------------------------------------------------------
# Pure grudges


def _check_nodes(nodes: Sequence[str], at_least: int = 2) -> list[str]:
    ns = list(nodes)
    if len(set(ns)) != len(ns):
        raise PartitionError(f"duplicate nodes in {ns}")
    if len(ns) < at_least:
        raise PartitionError(f"need at least {at_least} nodes, got {ns}")
    return ns


def normalize(grudge: Mapping[str, Iterable[str]]) -> Grudge:
    """Drop empty entries and self-grudges; freeze the sets (a canonical, comparable form)."""
    out: Grudge = {}
    for node, srcs in grudge.items():
        s = frozenset(x for x in srcs if x != node)
        if s:
            out[node] = s
    return dict(sorted(out.items()))


def complete_grudge(components: Sequence[Iterable[str]]) -> Grudge:
    """Every node hears only nodes of its own component."""
    comps = [frozenset(c) for c in components]
    everyone = frozenset().union(*comps) if comps else frozenset()
    if sum(len(c) for c in comps) != len(everyone):
        raise PartitionError("components overlap")
    return normalize({n: everyone - c for c in comps for n in c})


def one_way(src: str, dst: str) -> Grudge:
    """`src` -> `dst` is cut: `dst` does not hear `src`; the other direction is untouched."""
    if src == dst:
        raise PartitionError("one-way partition needs two different nodes")
    return {dst: frozenset({src})}


def isolate(nodes: Sequence[str], target: str) -> Grudge:
    """`target` is cut from every other node, both ways."""
    ns = _check_nodes(nodes)
    if target not in ns:
        raise PartitionError(f"{target} is not one of {ns}")
    return complete_grudge([[target], [n for n in ns if n != target]])


def halves(nodes: Sequence[str], rng: random.Random) -> Grudge:
    """Shuffle, cut in two halves (the first one smaller when the count is odd)."""
    ns = _check_nodes(nodes)
    rng.shuffle(ns)
    k = len(ns) // 2
    return complete_grudge([ns[:k], ns[k:]])


def majority_minority(nodes: Sequence[str], rng: random.Random) -> Grudge:
    """A random majority (floor(n/2)+1 nodes) and the minority, cut from each other."""
    ns = _check_nodes(nodes)
    rng.shuffle(ns)
    m = len(ns) // 2 + 1
    return complete_grudge([ns[:m], ns[m:]])


def majorities_ring(nodes: Sequence[str], rng: random.Random) -> Grudge:
    """Each node hears a majority (itself and its ring neighbours), but no two nodes hear
    the same majority (Jepsen's majorities-ring; nodes placed on a shuffled ring)."""
    ns = _check_nodes(nodes, at_least=3)
    rng.shuffle(ns)
    n = len(ns)
    m = n // 2 + 1
    everyone = frozenset(ns)
    out: dict[str, frozenset[str]] = {}
    for i in range(n):
        window = [ns[(i + j) % n] for j in range(m)]
        out[window[m // 2]] = everyone - frozenset(window)
    return normalize(out)


def bridge(nodes: Sequence[str], rng: random.Random) -> Grudge:
    """Two halves joined by one bridge node that hears (and is heard by) everyone."""
    ns = _check_nodes(nodes, at_least=3)
    rng.shuffle(ns)
    k = (len(ns) - 1) // 2
    left, mid, right = ns[:k], ns[k], ns[k + 1 :]
    g = complete_grudge([left, right])
    assert mid not in g
    return g


def random_partition(nodes: Sequence[str], rng: random.Random) -> Grudge:
    """Nodes dealt into 2..min(n, 3) non-empty components at random."""
    ns = _check_nodes(nodes)
    rng.shuffle(ns)
    k = rng.randint(2, min(len(ns), 3))
    comps: list[list[str]] = [[ns[i]] for i in range(k)]
    for n in ns[k:]:
        comps[rng.randrange(k)].append(n)
    return complete_grudge(comps)


def isolate_role(
    upi: Sequence[str], repairing: Sequence[str], role: str, nodes: Sequence[str],
    rng: random.Random,
) -> Grudge:
    """Isolate the chain's head, tail, a middle or a repairing node (chosen from the
    current projection by the caller's reading of it)."""
    if role == "head" and upi:
        target = upi[0]
    elif role == "tail" and upi:
        target = upi[-1]
    elif role == "middle" and len(upi) >= 3:
        target = rng.choice(list(upi[1:-1]))
    elif role == "repairing" and repairing:
        target = rng.choice(list(repairing))
    else:
        raise PartitionError(f"no {role} node in upi={list(upi)} repairing={list(repairing)}")
    return isolate(nodes, target)


PARTITIONERS = {
    "halves": halves,
    "majority-minority": majority_minority,
    "majorities-ring": majorities_ring,
    "bridge": bridge,
    "random": random_partition,
}


def partition_by_name(name: str, nodes: Sequence[str], rng: random.Random) -> Grudge:
    """`name` is one of PARTITIONERS, `isolate` (a random node) or `one-way` (random pair)."""
    ns = list(nodes)
    if name == "isolate":
        return isolate(ns, rng.choice(ns))
    if name == "one-way":
        src, dst = rng.sample(ns, 2)
        return one_way(src, dst)
    if name not in PARTITIONERS:
        raise PartitionError(f"unknown partition {name!r}; known: isolate, one-way, "
                             + ", ".join(PARTITIONERS))
    return PARTITIONERS[name](ns, rng)


def can_hear(grudge: Mapping[str, frozenset[str]], dst: str, src: str) -> bool:
    return src not in grudge.get(dst, frozenset())


def components(nodes: Sequence[str], grudge: Mapping[str, frozenset[str]]) -> list[set[str]]:
    """Groups of nodes that hear each other both ways (transitively), for reports."""
    parent = {n: n for n in nodes}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in itertools.combinations(nodes, 2):
        if can_hear(grudge, a, b) and can_hear(grudge, b, a):
            parent[find(a)] = find(b)
    groups: dict[str, set[str]] = {}
    for n in nodes:
        groups.setdefault(find(n), set()).add(n)
    return sorted(groups.values(), key=lambda g: sorted(g))


# --------------------------------------------------------------------------------------
# iptables text (pure)


@dataclass(frozen=True)
class LinkFault:
    """What one node does with packets from some sources: drop all, or drop with p."""

    sources: frozenset[str]
    probability: float = 1.0


def iptables_script(addresses: Iterable[str], probability: float = 1.0) -> str:
    """Shell text that makes this host's `MACHI-NEMESIS` chain drop INPUT from `addresses`
    (with `probability` < 1: random loss via `-m statistic`).  Replaces the chain's rules."""
    if not 0.0 < probability <= 1.0:
        raise PartitionError(f"probability must be in (0, 1], got {probability}")
    lines = [setup_script(), f"iptables -w -F {CHAIN}"]
    for addr in sorted(set(addresses)):
        stat = (
            f" -m statistic --mode random --probability {probability:.6f}"
            if probability < 1.0 else ""
        )
        lines.append(f"iptables -w -A {CHAIN} -s {shlex.quote(addr)}{stat} -j DROP")
    return "\n".join(lines)


def setup_script() -> str:
    """Create the chain and the single jump from INPUT (idempotent)."""
    return (
        f"iptables -w -N {CHAIN} 2>/dev/null || true\n"
        f"iptables -w -C INPUT -j {CHAIN} 2>/dev/null || iptables -w -I INPUT 1 -j {CHAIN}"
    )


def heal_script() -> str:
    return f"iptables -w -F {CHAIN} 2>/dev/null || true"


def teardown_script() -> str:
    """Remove the jump and the chain entirely (leaves the host's own rules alone)."""
    return (
        f"while iptables -w -D INPUT -j {CHAIN} 2>/dev/null; do :; done\n"
        f"iptables -w -F {CHAIN} 2>/dev/null || true\n"
        f"iptables -w -X {CHAIN} 2>/dev/null || true"
    )


# --------------------------------------------------------------------------------------
# Applying grudges over SSH


@dataclass(frozen=True)
class ConnectivityReport:
    """Which (src, dst) pairs could open a TCP connection to dst's probe port."""

    ok: tuple[tuple[str, str], ...]
    failed: tuple[tuple[str, str], ...]

    @property
    def all_ok(self) -> bool:
        return not self.failed


class IptablesNet:
    """Applies grudges to a HostSet with iptables on each receiving host, in parallel."""

    def __init__(self, hosts: HostSet, *, timeout_s: float = 30.0) -> None:
        self.hosts = hosts
        self.timeout_s = timeout_s
        self.addresses = hosts.addresses()
        self.current: Grudge = {}

    def __enter__(self) -> IptablesNet:
        self.setup()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        # Runs on normal exit, on errors and on Ctrl-C (KeyboardInterrupt) alike.  When the
        # body already failed, a failing heal must not hide that error: it is chained.
        try:
            self.heal()
        except Exception as heal_error:
            if exc is None:
                raise
            raise PartitionError(
                f"heal after an error failed, rules may remain (run `machi-harness cluster "
                f"heal`): {heal_error}"
            ) from heal_error

    def _on_all(self, script_of: dict[str, str]) -> None:
        self.hosts.map(
            lambda h: h.run(script_of[h.name], sudo=True, timeout_s=self.timeout_s),
            list(script_of),
        )

    def setup(self) -> None:
        """Create the chain everywhere and flush it (a fresh start for a test)."""
        self._on_all({n: setup_script() + "\n" + heal_script() for n in self.hosts.names})
        self.current = {}

    def apply(self, grudge: Mapping[str, Iterable[str]], *, probability: float = 1.0) -> Grudge:
        """Make the network look like `grudge` (replacing the previous partition)."""
        g = normalize(grudge)
        unknown = (set(g) | set().union(*g.values())) - set(self.addresses) if g else set()
        if unknown:
            raise PartitionError(f"grudge names unknown nodes {sorted(unknown)}")
        scripts = {
            n: iptables_script([self.addresses[s] for s in g.get(n, ())], probability)
            for n in self.hosts.names
        }
        self._on_all(scripts)
        self.current = g
        return g

    def heal(self) -> None:
        """Flush every nemesis rule on every host, in parallel."""
        self._on_all({n: heal_script() for n in self.hosts.names})
        self.current = {}

    def teardown(self) -> None:
        """Heal and remove the chain and its jump on every host."""
        self._on_all({n: teardown_script() for n in self.hosts.names})
        self.current = {}

    def rule_counts(self) -> dict[str, int]:
        """How many rules each host's chain holds (0 when the chain does not exist)."""
        res = self.hosts.run_all(f"iptables -w -S {CHAIN} 2>/dev/null || true", sudo=True)
        return {n: sum(1 for ln in r.stdout.splitlines() if ln.startswith("-A"))
                for n, r in res.items()}

    def probe(self, *, timeout_s: float = 1.0) -> ConnectivityReport:
        """From every host, try a TCP connect to every other host's probe port."""
        specs = {h.name: h.spec for h in self.hosts}

        def one(h: Host) -> list[tuple[str, bool]]:
            peers = [p for p in self.hosts.names if p != h.name]
            lines = [
                f"if timeout {timeout_s} bash -c 'exec 3<>/dev/tcp/"
                f"{specs[p].peer_address}/{specs[p].probe_port}' 2>/dev/null;"
                f" then echo {p} ok; else echo {p} fail; fi &"
                for p in peers
            ]
            out = h.run("\n".join([*lines, "wait"]), timeout_s=timeout_s + 20).stdout
            seen = dict(ln.split() for ln in out.splitlines() if ln.strip())
            return [(p, seen.get(p) == "ok") for p in peers]

        res = self.hosts.map(one)
        ok = tuple((s, d) for s, r in sorted(res.items()) for d, good in r if good)
        failed = tuple((s, d) for s, r in sorted(res.items()) for d, good in r if not good)
        return ConnectivityReport(ok, failed)

    def heal_and_check(self, *, attempts: int = 3) -> ConnectivityReport:
        """Heal, then prove it: every host reaches every other host (bounded retries)."""
        self.heal()
        report = self.probe()
        for _ in range(attempts - 1):
            if report.all_ok:
                break
            report = self.probe()
        if not report.all_ok:
            raise PartitionError(f"after heal these pairs cannot connect: {report.failed}")
        return report
