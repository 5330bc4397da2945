"""Goal: three real daemons on loopback, bootstrapped with `machi chain bootstrap`, manage
their chain themselves (AP, and CP with two full members + one witness): the chain
converges, keeps taking concurrent appends through ChainClient while a node is SIGKILLed
and restarted and while one is paused with SIGSTOP/SIGCONT, converges again afterwards
(the returning node repaired back into the UPI), and every acknowledged chunk reads back
identically from every UPI member."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from harness.checker.projection_safety import check_projection_logs
from machi.client.chain_client import ChainClient
from machi.client.flu_client import ChunkPos, FluClient
from machi.core.epoch import EpochId
from machi.core.errors import MachiError
from machi.core.wire import Op
from machi.node.config import FAST_CHAIN_TOML
from machi.node.process import NodeProcess

pytestmark = pytest.mark.timeout(150)
NAMES = ("a", "b", "c")
CONVERGE_TIMEOUT_S = 45.0  # a bound under load, not a performance target
#: short manager timers (node config keys) so the file runs in well under 2 minutes
CHAIN_TOML = FAST_CHAIN_TOML


class Cluster:
    """Three ``machi node run`` processes with their chain managers enabled by the CLI."""

    def __init__(self, base: Path, witnesses: tuple[str, ...] = (), sync: str = "none",
                 extra_toml: str = "") -> None:
        base.mkdir(parents=True, exist_ok=True)
        cfg = base / "node.toml"
        cfg.write_text(CHAIN_TOML + extra_toml)
        self.witnesses = witnesses
        self.nodes = {
            n: NodeProcess(n, base / n, sync=sync,
                           extra_args=["--config", str(cfg),
                                       *(["--witness"] if n in witnesses else [])])
            for n in NAMES
        }
        self.paused: set[str] = set()

    def start(self) -> Cluster:
        for n in self.nodes.values():
            n.start(wait=False)
        for n in self.nodes.values():
            n.wait_ready()
        return self

    def kill_all(self) -> None:
        for name in list(self.paused):
            self.resume(name)
        for n in self.nodes.values():
            n.kill()

    def pause(self, name: str) -> None:
        proc = self.nodes[name].proc
        assert proc is not None
        os.kill(proc.pid, signal.SIGSTOP)
        self.paused.add(name)

    def resume(self, name: str) -> None:
        proc = self.nodes[name].proc
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
        self.paused.discard(name)

    @property
    def members(self) -> str:
        return self.members_of(NAMES)

    def members_of(self, names: tuple[str, ...]) -> str:
        return ",".join(f"{n}={self.nodes[n].address}" for n in names)

    @property
    def seeds(self) -> dict[str, tuple[str, int]]:
        return {n: (x.host, x.port) for n, x in self.nodes.items()}

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "machi.cli", "chain", *args],
                              capture_output=True, text=True, timeout=60, check=False)

    def logs(self) -> str:
        return "\n".join(f"--- {n}\n{x.log_tail(15)}" for n, x in self.nodes.items())

    async def status(self, name: str) -> dict[str, Any] | None:
        x = self.nodes[name]
        try:
            async with FluClient(x.host, x.port, timeout_ms=500, connect_timeout_ms=500) as c:
                return await c.chain_admin(Op.CHAIN_STATUS, {})
        except MachiError:
            return None

    async def converged(self, want_upi: set[str], up: tuple[str, ...]) -> dict[str, Any] | None:
        """The shared status when every node in ``up`` sits at one confirmed epoch with
        UPI (witnesses aside) == ``want_upi`` and nothing repairing; else None."""
        sts = [await self.status(n) for n in up]
        if any(s is None for s in sts):
            return None
        first = sts[0]
        assert first is not None
        for s in sts:
            assert s is not None
            if not s.get("confirmed") or s.get("repairing") or (
                s.get("epoch"), s.get("epoch_csum")) != (first.get("epoch"),
                                                         first.get("epoch_csum")):
                return None
            if {m for m in s.get("upi", []) if m not in self.witnesses} != want_upi:
                return None
        return first

    async def wait_converged(self, want_upi: set[str], up: tuple[str, ...]) -> tuple[
            dict[str, Any], float]:
        t0 = time.monotonic()
        while time.monotonic() - t0 < CONVERGE_TIMEOUT_S:
            st = await self.converged(want_upi, up)
            if st is not None:
                return st, time.monotonic() - t0
            await anyio.sleep(0.1)
        sts = {n: await self.status(n) for n in up}
        raise AssertionError(f"no convergence on UPI {sorted(want_upi)} within "
                             f"{CONVERGE_TIMEOUT_S}s: {sts}\n{self.logs()}")


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[Any]:
    made: list[Cluster] = []

    def make(witnesses: tuple[str, ...] = (), sync: str = "none",
             extra_toml: str = "") -> Cluster:
        c = Cluster(tmp_path / f"c{len(made)}", witnesses, sync, extra_toml)
        made.append(c)
        return c.start()

    try:
        yield make
    finally:
        for c in made:
            c.kill_all()


class Writers:
    """Concurrent appenders through one ChainClient; keeps every acknowledged chunk."""

    def __init__(self, cluster: Cluster, n: int = 3) -> None:
        self.cluster = cluster
        self.n = n
        self.acked: list[tuple[ChunkPos, bytes]] = []
        self.failed = 0
        self.stop = anyio.Event()

    async def run(self) -> None:
        async with ChainClient(self.cluster.seeds, op_timeout_ms=8_000,
                               request_timeout_ms=600, discovery_timeout_ms=600,
                               seed=1) as cc, anyio.create_task_group() as tg:
            for w in range(self.n):
                tg.start_soon(self._writer, cc, w)

    async def _writer(self, cc: ChainClient, w: int) -> None:
        i = 0
        while not self.stop.is_set():
            i += 1
            data = f"w{w}-{i}|".encode() + bytes([w, i % 256]) * (50 + i % 700)
            try:
                pos = await cc.append("t", data)
            except MachiError:
                self.failed += 1
                await anyio.sleep(0.05)
                continue
            self.acked.append((pos, data))
            await anyio.sleep(0.02)


async def check_everywhere(
    cluster: Cluster, st: dict[str, Any], acked: list[tuple[ChunkPos, bytes]]
) -> None:
    """Every acknowledged chunk reads back identically from every UPI member."""
    eid = EpochId(st["epoch"], bytes.fromhex(st["epoch_csum"]))
    bad: list[tuple[str, ChunkPos]] = []

    async def member(name: str) -> None:
        x = cluster.nodes[name]
        async with FluClient(x.host, x.port, timeout_ms=10_000) as c:
            async def part(k: int) -> None:
                for pos, data in acked[k::8]:
                    r = await c.read(pos.file, pos.offset, pos.size, epoch_id=eid)
                    if r.partial or r.data() != data:
                        bad.append((name, pos))

            async with anyio.create_task_group() as tg:
                for k in range(8):
                    tg.start_soon(part, k)

    async with anyio.create_task_group() as tg:
        for name in st["upi"]:
            if name not in cluster.witnesses:
                tg.start_soon(member, name)
    assert not bad, bad[:5]


def bootstrap(cluster: Cluster, mode: str) -> None:
    args = ["bootstrap", "--chain", "c1", "--mode", mode, "--members", cluster.members]
    if cluster.witnesses:
        args += ["--witnesses", ",".join(cluster.witnesses)]
    r = cluster.cli(*args)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert [d["node"] for d in lines] == list(NAMES)
    assert sum(bool(d.get("proposed")) for d in lines) == 1


async def set_members(cluster: Cluster, members: str) -> None:
    """`machi chain set-members`; a refusal because no member of the current UPI would
    stay (the chain is still moving: the staying member is repairing) is retried for a
    while, as an administrator would; any other failure fails the test."""
    deadline = time.monotonic() + 20
    while True:
        r = await anyio.to_thread.run_sync(cluster.cli, "set-members", "--members", members)
        if r.returncode == 0:
            return
        out = r.stdout + r.stderr
        assert "no member of the current UPI" in out and time.monotonic() < deadline, out
        await anyio.sleep(0.5)


def scenario(cluster: Cluster, mode: str, victim: str, paused: str) -> dict[str, float]:
    """Bootstrap, converge, kill + restart ``victim`` and pause ``paused`` under load."""
    full = {n for n in NAMES if n not in cluster.witnesses}
    times: dict[str, float] = {}
    bootstrap(cluster, mode)

    async def go() -> None:
        st, times["bootstrap_s"] = await cluster.wait_converged(full, NAMES)
        w = Writers(cluster)
        async with anyio.create_task_group() as tg:
            tg.start_soon(w.run)
            await anyio.sleep(0.5)
            cluster.nodes[victim].kill()
            rest = tuple(n for n in NAMES if n != victim)
            st, times["after_kill_s"] = await cluster.wait_converged(full - {victim}, rest)
            n_before = len(w.acked)
            await anyio.sleep(0.5)
            await anyio.to_thread.run_sync(cluster.nodes[victim].start)
            st, times["after_restart_s"] = await cluster.wait_converged(full, NAMES)
            cluster.pause(paused)
            await anyio.sleep(1.5)
            cluster.resume(paused)
            st, times["after_pause_s"] = await cluster.wait_converged(full, NAMES)
            # remove the paused node with set-members, then add it back (repaired)
            rest = tuple(n for n in NAMES if n != paused)
            await set_members(cluster, cluster.members_of(rest))
            st, times["after_remove_s"] = await cluster.wait_converged(full - {paused}, rest)
            assert st["all_members"] == list(rest)
            await anyio.sleep(0.3)
            await set_members(cluster, cluster.members)
            st, times["after_readd_s"] = await cluster.wait_converged(full, NAMES)
            assert st["all_members"] == list(NAMES) and st["epoch"] > 2000
            await anyio.sleep(0.3)
            w.stop.set()
        assert len(w.acked) > n_before > 0, (n_before, len(w.acked), w.failed)
        st, _ = await cluster.wait_converged(full, NAMES)
        await check_everywhere(cluster, st, w.acked)
        times["acked"] = len(w.acked)
        times["failed"] = w.failed

    anyio.run(go)
    check_logs(cluster, mode)
    print(mode, {k: round(v, 2) for k, v in times.items()})
    return times


def check_logs(cluster: Cluster, mode: str) -> None:
    """One epoch everywhere (CLI status); every node's adoptions strictly increase; the
    harness's projection-safety checker accepts all projection logs."""
    status = cluster.cli("status", "--members", cluster.members)
    assert status.returncode == 0, status.stdout + status.stderr
    sts = [json.loads(line) for line in status.stdout.splitlines()]
    assert len({(s["epoch"], s["epoch_csum"]) for s in sts}) == 1
    every: list[dict[str, Any]] = []
    for n in NAMES:
        log = (cluster.nodes[n].data_dir / "projection-log.jsonl").read_text().splitlines()
        recs = [json.loads(line) for line in log]
        assert recs and all(r["node"] == n for r in recs)
        epochs = [r["epoch"] for r in recs if not r["confirmed"]]
        assert epochs == sorted(set(epochs)), epochs  # strictly increasing adoptions
        every += recs
    verdict = check_projection_logs(every, mode=mode)  # the harness's safety checker
    assert verdict.valid is True, verdict.to_json()


def test_ap_chain_kill_restart_pause_remove_readd(cluster_factory: Any) -> None:
    """AP: converge, survive a SIGKILLed middle node and a paused tail, repair back, remove
    and re-add a member; bad admin requests are refused with a reason."""
    cluster = cluster_factory()
    r = cluster.cli("set-members", "--members", cluster.members)
    assert r.returncode == 1 and "no listed member" in r.stderr
    scenario(cluster, "ap", victim="b", paused="c")

    async def refusals() -> None:
        x = cluster.nodes["a"]
        members = {n: y.address for n, y in cluster.nodes.items()}
        async with FluClient(x.host, x.port, timeout_ms=5_000) as c:
            with pytest.raises(MachiError, match="runs chain 'c1'"):
                await c.chain_admin(Op.CHAIN_BOOTSTRAP, {"chain": "c2", "mode": "ap",
                                                         "members": members})
            with pytest.raises(MachiError, match="must not be a witness"):
                await c.chain_admin(Op.CHAIN_SET_MEMBERS, {"members": members,
                                                           "witnesses": list(NAMES)})

    anyio.run(refusals)


def test_cp_chain_with_witness_kill_restart_pause_remove_readd(cluster_factory: Any) -> None:
    """CP (a, b full; c witness): converge, survive a SIGKILLed and a paused full member,
    remove and re-add a full member."""
    scenario(cluster_factory(witnesses=("c",)), "cp", victim="b", paused="a")


def test_cp_chain_three_full_members_kill_restart_pause_remove_readd(
        cluster_factory: Any) -> None:
    """CP with three full members (no witness): the same kill/restart, pause, remove and
    re-add under concurrent appends; every acknowledged chunk reads back identically from
    every UPI member and the chain converges."""
    scenario(cluster_factory(), "cp", victim="a", paused="c")


def _wedged_at_start(cluster: Cluster, name: str) -> bool:
    """The last "wedge state loaded" line of ``name``'s log (its newest start) says wedged."""
    log = cluster.nodes[name].log_path.read_text(errors="replace").splitlines()
    loaded = [json.loads(line) for line in log if '"wedge state loaded"' in line]
    return bool(loaded) and loaded[-1]["fields"]["wedged"] is True


def test_cp_restart_after_every_node_crashed(cluster_factory: Any) -> None:
    """CP, three full members ("zerf"), sync=batch: SIGKILL every node under concurrent
    appends, then restart them all; each FLU restarts wedged, the managers rebuild the
    chain from the newest confirmed majority projection, appends resume, and every
    acknowledged chunk (before and after the crash) reads back identically from every UPI
    member."""
    cluster = cluster_factory(sync="batch")  # acknowledged = durable on every member
    bootstrap(cluster, "cp")
    full = set(NAMES)

    async def go() -> None:
        st0, _ = await cluster.wait_converged(full, NAMES)
        w = Writers(cluster)
        async with anyio.create_task_group() as tg:
            tg.start_soon(w.run)
            await anyio.sleep(1.0)
            for n in NAMES:  # the whole chain crashes (no clean stop anywhere)
                cluster.nodes[n].kill()
            n_crash = len(w.acked)
            await anyio.sleep(0.3)
            for n in NAMES:
                await anyio.to_thread.run_sync(cluster.nodes[n].start)
            assert all(_wedged_at_start(cluster, n) for n in NAMES)
            st, _ = await cluster.wait_converged(full, NAMES)
            assert st["epoch"] > st0["epoch"]
            await anyio.sleep(1.0)
            w.stop.set()
        assert n_crash > 0 and len(w.acked) > n_crash, (n_crash, len(w.acked), w.failed)
        st, _ = await cluster.wait_converged(full, NAMES)
        await check_everywhere(cluster, st, w.acked)

    anyio.run(go)
    check_logs(cluster, "cp")


def test_ap_chain_keeps_its_epoch_under_append_load(cluster_factory: Any) -> None:
    """Sustained append load (8 writers of 64 KiB chunks with no pause, on the shared test
    machine) makes reads slower but drops nobody for good: at most 3 adoptions per node
    while it lasts (no churn), and every acknowledged chunk reads back everywhere."""
    cluster = cluster_factory()
    bootstrap(cluster, "ap")

    async def go() -> None:
        await cluster.wait_converged(set(NAMES), NAMES)
        before = {n: len(_adoptions(cluster, n)) for n in NAMES}
        acked: list[tuple[ChunkPos, bytes]] = []
        stop = anyio.Event()

        async def writer(cc: ChainClient, w: int) -> None:
            i = 0
            while not stop.is_set():
                i += 1
                data = bytes([w, i % 256]) * 32 * 1024
                with contextlib.suppress(MachiError):
                    acked.append((await cc.append("load", data), data))

        async with ChainClient(cluster.seeds, op_timeout_ms=8_000, request_timeout_ms=2_000,
                               seed=3) as cc, anyio.create_task_group() as tg:
            for w in range(8):
                tg.start_soon(writer, cc, w)
            await anyio.sleep(5.0)
            stop.set()
        during = {n: len(_adoptions(cluster, n)) - before[n] for n in NAMES}
        assert all(v <= 3 for v in during.values()), during
        assert len(acked) > 50
        st, _ = await cluster.wait_converged(set(NAMES), NAMES)
        await check_everywhere(cluster, st, acked)

    anyio.run(go)


def _adoptions(cluster: Cluster, name: str) -> list[int]:
    """Epochs ``name`` adopted so far (its projection log, confirmations aside)."""
    path = cluster.nodes[name].data_dir / "projection-log.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line)["epoch"] for line in lines if not json.loads(line)["confirmed"]]


async def _replica_lists(cluster: Cluster) -> dict[str, dict[str, list[tuple[int, int, str]]]]:
    """Every node's checksum lists (offset, size, checksum) per file that holds a chunk
    (as the harness compares them: a file whose only write a crash cut before its sync
    is empty after recovery and holds nothing to replicate)."""
    out: dict[str, dict[str, list[tuple[int, int, str]]]] = {}
    for n, x in cluster.nodes.items():
        async with FluClient(x.host, x.port, timeout_ms=10_000) as c:
            files = {}
            for f, _size in await c.list_files():
                chunks = [(e.offset, e.size, "" if e.csum is None else e.csum.hex())
                          for e in await c.checksum_list(f) if e.size > 0]
                if chunks:
                    files[f] = chunks
            out[n] = files
    return out


def test_ap_restart_after_every_node_crashed_leaves_equal_replicas(
        cluster_factory: Any) -> None:
    """AP, sync=batch: appends in flight when every node is SIGKILLed at once (never
    acknowledged) may sit on some replicas only -- here one such append is made certain:
    it reached the head (a low-level append at the chain's epoch) and nothing else.  After
    restarting all three, each FLU starts wedged, the chain moves to a new epoch with the
    restarted members repairing, AP repair merges every replica, and then every replica's
    checksum lists are equal and every acknowledged chunk reads back everywhere.  (Before
    the restart rule the chain resumed its old epoch unrepaired: the lists differed.)"""
    cluster = cluster_factory(sync="batch")
    bootstrap(cluster, "ap")
    full = set(NAMES)

    async def go() -> None:
        st0, _ = await cluster.wait_converged(full, NAMES)
        w = Writers(cluster)
        async with anyio.create_task_group() as tg:
            tg.start_soon(w.run)
            await anyio.sleep(1.0)
            head = cluster.nodes[st0["upi"][0]]
            eid = EpochId(st0["epoch"], bytes.fromhex(st0["epoch_csum"]))
            async with FluClient(head.host, head.port, timeout_ms=5_000) as c:
                orphan = await c.append("inflight", b"reached the head only", epoch_id=eid)
            for n in NAMES:  # the whole chain crashes at once
                cluster.nodes[n].kill()
            n_crash = len(w.acked)
            await anyio.sleep(0.3)
            # all at once, as a harness restarts a cluster: nobody sees the others down
            await anyio.to_thread.run_sync(cluster.start)
            assert all(_wedged_at_start(cluster, n) or _restart_wedged(cluster, n)
                       for n in NAMES)
            st, _ = await cluster.wait_converged(full, NAMES)
            assert st["epoch"] > st0["epoch"]
            await anyio.sleep(1.0)
            w.stop.set()
        assert n_crash > 0 and len(w.acked) > n_crash, (n_crash, len(w.acked), w.failed)
        st, _ = await cluster.wait_converged(full, NAMES)
        await check_everywhere(cluster, st, w.acked)
        lists = await _replica_lists(cluster)
        assert lists["a"] == lists["b"] == lists["c"], {
            n: {f: len(v) for f, v in fs.items()} for n, fs in lists.items()}
        assert orphan.file in lists["c"]

    anyio.run(go)
    check_logs(cluster, "ap")


def _restart_wedged(cluster: Cluster, name: str) -> bool:
    """``name``'s newest start wedged its FLU for the AP restart rule before serving."""
    log = cluster.nodes[name].log_path.read_text(errors="replace").splitlines()
    starts = [i for i, line in enumerate(log) if '"wedge state loaded"' in line]
    return bool(starts) and any("waiting for a new epoch and repair" in line
                                for line in log[starts[-1]:])


#: the anti-entropy period of the test below (the default is 5 s)
AE_INTERVAL_MS = 1_000
#: how long the test waits for equal replicas: a bound under load, not a target
AE_WAIT_S = 30.0


@pytest.mark.parametrize("anti_entropy", [True, False], ids=["on", "off"])
def test_ap_orphan_chunk_reaches_every_replica_in_a_stable_chain(
        cluster_factory: Any, anti_entropy: bool) -> None:
    """AP: a chunk that only the head holds (an append whose reply was lost: made
    certain here by a low-level append at the chain's epoch, bypassing the chain client)
    reaches every replica through the tail's periodic anti-entropy pass, while the chain
    stays at its epoch (no repair involved): every replica's checksum lists become equal
    within a bounded wait.  With anti-entropy off
    (``chain_ap_anti_entropy_interval_ms = 0``) the lists still differ after several
    periods: the orphan stays on the head (docs/repair.md, "AP anti-entropy")."""
    interval = AE_INTERVAL_MS if anti_entropy else 0
    cluster = cluster_factory(extra_toml=f"chain_ap_anti_entropy_interval_ms = {interval}\n")
    bootstrap(cluster, "ap")
    full = set(NAMES)

    async def go() -> None:
        st0, _ = await cluster.wait_converged(full, NAMES)
        eid = EpochId(st0["epoch"], bytes.fromhex(st0["epoch_csum"]))
        acked: list[tuple[ChunkPos, bytes]] = []
        async with ChainClient(cluster.seeds, op_timeout_ms=8_000, seed=1) as cc:
            for i in range(5):
                data = f"acked {i}".encode() * 10
                acked.append((await cc.append("t", data), data))
        head = cluster.nodes[st0["upi"][0]]
        async with FluClient(head.host, head.port, timeout_ms=5_000) as c:
            # one in a file of its own (only the head has it), one in the file the
            # acknowledged appends went to (the others have the file, not this chunk)
            orphan = await c.append("o", b"the head wrote it, the reply was lost",
                                    epoch_id=eid)
            orphan2 = await c.append("t", b"a second one", epoch_id=eid)
        assert orphan2.file == acked[0][0].file
        t0 = time.monotonic()
        wait_s = AE_WAIT_S if anti_entropy else 5 * AE_INTERVAL_MS / 1000
        while time.monotonic() - t0 < wait_s:
            lists = await _replica_lists(cluster)
            if lists["a"] == lists["b"] == lists["c"]:
                break
            await anyio.sleep(0.2)
        st, _ = await cluster.wait_converged(full, NAMES)
        assert (st["epoch"], st["epoch_csum"]) == (st0["epoch"], st0["epoch_csum"]), (
            "the chain changed epoch: a repair, not anti-entropy, may have merged it")
        summary = {n: {f: len(v) for f, v in fs.items()} for n, fs in lists.items()}
        tail = await cluster.status(st["upi"][-1])
        assert tail is not None
        if anti_entropy:
            assert lists["a"] == lists["b"] == lists["c"], summary
            for n in NAMES:
                offs = {o for o, _s, _c in lists[n][orphan2.file]}
                assert orphan.file in lists[n] and orphan2.offset in offs, (n, summary)
            assert tail["anti_entropy"]["passes"] >= 1, tail
            await check_everywhere(cluster, st, acked)
        else:
            assert not lists["a"] == lists["b"] == lists["c"], summary
            assert tail["anti_entropy"]["passes"] == 0, tail

    anyio.run(go)
    check_logs(cluster, "ap")
