"""The main-job demo (``machi demo``): three FLU daemons on loopback formed into an AP
chain, a short append/read workload through the Chain Replication client, and the error
paths a user should see once (TRIMMED, BAD_ARG, BAD_EPOCH, WEDGED and recovery).

Owns: the daemons' lifetime (temporary data dirs, free ports, SIGTERM at the end, SIGKILL
if anything fails), the seeded workload, the checks (every chunk read back and compared by
blake3; every member holds the same checksums) and the human-readable narration.  Must
not: leave a process or a data dir behind, or report success when any check failed.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from machi.client.chain_client import ChainClient
from machi.client.flu_client import ChunkPos, FluClient
from machi.core.checksum import client_csum, digest
from machi.core.epoch import DUMMY_EPOCH_ID, EpochId
from machi.core.errors import BadArg, BadEpoch, MachiError, Trimmed, Wedged
from machi.core.projection import MemberSpec, Projection, make_projection
from machi.core.wire import Op
from machi.node.config import FAST_CHAIN_TOML
from machi.node.process import NodeProcess

from .daemon import node_args

NAMES = ("n1", "n2", "n3")
PREFIXES = ("photos", "logs")
CHUNK_BYTES_MAX = 64 * 1024
DEMO_TIMEOUT_S = 25.0  # the whole workload, well under the 30 s budget
STOP_TIMEOUT_S = 10.0
CONVERGE_TIMEOUT_S = 15.0
#: short chain-manager timers (node config keys) so that the demo converges in seconds
CHAIN_MANAGER_TOML = (
    "# written by machi demo --chain-manager\nchain_manager = true\n" + FAST_CHAIN_TOML
)
Say = Callable[[str], None]


class DemoFailed(Exception):
    """A check of the demo failed (the message says which)."""


@dataclass(frozen=True, slots=True)
class DemoOptions:
    appends: int = 300
    concurrency: int = 8
    seed: int = 1
    sync: str = "batch"
    data_dir: Path | None = None  # parent of the temporary dir
    #: form the chain with the daemons' own chain managers (Humming Consensus) instead of
    #: installing the projections by hand
    chain_manager: bool = False


@dataclass(slots=True)
class Tally:
    appends: int = 0
    append_bytes: int = 0
    reads_verified: int = 0
    read_bytes: int = 0
    expected_errors: dict[str, int] = field(default_factory=dict)
    errors: int = 0

    def expected(self, err: MachiError) -> None:
        name = err.status.name
        self.expected_errors[name] = self.expected_errors.get(name, 0) + 1


class Demo:
    def __init__(self, opts: DemoOptions, say: Say) -> None:
        self.opts = opts
        self._say = say
        self.t0 = time.monotonic()
        self.tally = Tally()
        self.rng = random.Random(opts.seed)
        self.nodes: dict[str, NodeProcess] = {}
        self.epoch = 0

    def say(self, msg: str) -> None:
        self._say(f"[{time.monotonic() - self.t0:6.2f}s] {msg}")

    # ---- daemons ----------------------------------------------------------------------------
    def start(self, root: Path) -> None:
        for name in NAMES:
            if self.opts.chain_manager:
                config = root / f"{name}.toml"
                config.write_text(CHAIN_MANAGER_TOML)
                extra = ["--config", str(config)]
            else:
                extra = node_args(root, name)
            self.nodes[name] = NodeProcess(name, root / name, sync=self.opts.sync,
                                           log_path=root / f"{name}.log", extra_args=extra)
        self.say(f"starting {len(NAMES)} FLU daemons (machi node run) on 127.0.0.1 in {root}")
        for n in self.nodes.values():
            n.start(wait=False)
        for n in self.nodes.values():
            n.wait_ready()
            assert n.proc is not None
            self.say(f"started FLU {n.name} pid={n.proc.pid} on {n.address} "
                     f"(sync={self.opts.sync}, data {n.data_dir})")

    def stop(self) -> None:
        """SIGTERM every daemon, then wait; raises DemoFailed on a non-zero exit."""
        for n in self.nodes.values():
            if n.running():
                assert n.proc is not None
                n.proc.terminate()
        bad = []
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for n in self.nodes.values():
            assert n.proc is not None
            try:  # no second SIGTERM: it would hit the daemon's default handler
                code = n.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                n.kill()
                code = n.proc.returncode
            if code != 0:
                bad.append(f"{n.name} exited {code}")
        self.say("stopped the daemons (SIGTERM): " + (", ".join(bad) or "all exited 0"))
        if bad:
            raise DemoFailed("; ".join(bad))

    def kill(self) -> None:
        for n in self.nodes.values():
            n.kill()

    def log_tails(self) -> str:
        return "\n".join(f"--- {n.name} log:\n{n.log_tail(8)}" for n in self.nodes.values())

    # ---- projections --------------------------------------------------------------------------
    async def install(self) -> Projection:
        """Write the next AP projection (UPI = all three) public, then private, to every
        node: writing public wedges a node, adopting private unwedges it."""
        self.epoch += 1
        p = make_projection(
            epoch_number=self.epoch, author_server=NAMES[0], chain_name="demo",
            all_members=NAMES, upi=NAMES,
            members_dict={n: MemberSpec(n, x.host, x.port) for n, x in self.nodes.items()},
        )
        for name in NAMES:
            async with self.flu(name) as c:
                await c.projection_write("public", p)
                await c.projection_write("private", p)
        self.say(f"projection epoch {p.epoch_number} (csum {p.epoch_csum.hex()[:12]}) "
                 f"written to all: AP chain upi={list(p.upi)}")
        return p

    def flu(self, name: str) -> FluClient:
        return self.nodes[name].client(timeout_ms=5_000, name="demo")

    async def chain_bootstrap(self) -> EpochId:
        """Enable every node's chain manager, let n1 propose epoch 1, wait until Humming
        Consensus has all three at one confirmed epoch with UPI = all three."""
        members = {n: x.address for n, x in self.nodes.items()}
        meta = {"chain": "demo", "mode": "ap", "members": members, "witnesses": []}
        for name in NAMES:
            async with self.flu(name) as c:
                await c.chain_admin(Op.CHAIN_BOOTSTRAP, {**meta, "propose": name == NAMES[0]})
        self.say(f"chain bootstrap sent (AP, members {list(NAMES)}); {NAMES[0]} proposes "
                 "epoch 1, Humming Consensus does the rest")
        return await self.converged("bootstrap")

    async def converged(self, why: str) -> EpochId:
        start = time.monotonic()
        last: list[dict[str, Any]] = []
        while time.monotonic() - start < CONVERGE_TIMEOUT_S:
            last = []
            for name in NAMES:
                try:
                    async with self.nodes[name].client(timeout_ms=1_000,
                                                       connect_timeout_ms=1_000) as c:
                        last.append(await c.chain_admin(Op.CHAIN_STATUS, {}))
                except MachiError:
                    break
            epochs = {(s.get("epoch"), s.get("epoch_csum")) for s in last}
            if len(last) == len(NAMES) and len(epochs) == 1 and all(
                s.get("confirmed") and not s.get("wedged") and not s.get("repairing")
                and sorted(s.get("upi", [])) == sorted(NAMES) for s in last
            ):
                number, csum = epochs.pop()
                if not isinstance(number, int) or not isinstance(csum, str):
                    raise DemoFailed(f"malformed chain status: {last[0]}")
                self.say(f"Humming Consensus ({why}): all three at epoch {number} "
                         f"(csum {csum[:12]}), upi={last[0].get('upi')}, confirmed, "
                         f"after {time.monotonic() - start:.2f} s")
                self.epoch = number
                return EpochId(number, bytes.fromhex(csum))
            await anyio.sleep(0.1)
        raise DemoFailed(f"no convergence within {CONVERGE_TIMEOUT_S} s ({why}): {last}")

    # ---- workload ---------------------------------------------------------------------------
    async def run(self) -> None:
        if self.opts.chain_manager:
            first = await self.chain_bootstrap()
        else:
            first = (await self.install()).epoch_id
        seeds = {n: (x.host, x.port) for n, x in self.nodes.items()}
        async with ChainClient(seeds, seed=self.opts.seed, op_timeout_ms=10_000,
                               name="demo") as cc:
            written = await self.appends(cc)
            await self.read_back(cc, written)
            await self.members_agree(written)
            await self.trim_one(cc, written)
            await self.listings(cc, written)
        await self.bad_prefix(first)
        await self.wrong_epochs(first)
        if self.opts.chain_manager:
            second = await self.converged("still stable")
        else:
            second = (await self.install()).epoch_id
        async with ChainClient(seeds, seed=self.opts.seed + 1, op_timeout_ms=10_000,
                               name="demo") as cc:
            chunk = b"after the epoch change"
            pos = await cc.append("logs", chunk)
            got = await cc.read(pos.file, pos.offset, pos.size)
            if got != chunk:
                raise DemoFailed("append after the new epoch did not read back")
            self.tally.appends += 1
            self.tally.append_bytes += len(chunk)
            self.say(f"at epoch {second.number}: append -> {pos.file}@{pos.offset} "
                     "read back OK" + ("" if second == first else
                                       " (the new epoch started a new file)"))

    async def appends(self, cc: ChainClient) -> list[tuple[ChunkPos, bytes]]:
        n, conc = self.opts.appends, self.opts.concurrency
        chunks = [
            (self.rng.choice(PREFIXES), self.rng.randbytes(self.rng.randint(1, CHUNK_BYTES_MAX)))
            for _ in range(n)
        ]
        self.say(f"appending {n} chunks (1 B .. 64 KiB, seed {self.opts.seed}) under "
                 f"prefixes {list(PREFIXES)} through the chain, {conc} in flight")
        written: list[tuple[ChunkPos, bytes]] = []
        todo = iter(chunks)
        start = time.monotonic()

        async def worker() -> None:
            for prefix, data in todo:
                pos = await cc.append(prefix, data)
                written.append((pos, digest(data)))
                self.tally.appends += 1
                self.tally.append_bytes += len(data)
                if len(written) <= 2 or len(written) % 100 == 0:
                    self.say(f"  append #{len(written)}: {prefix} {len(data)} B -> "
                             f"{pos.file}@{pos.offset}")

        async with anyio.create_task_group() as tg:
            for _ in range(conc):
                tg.start_soon(worker)
        elapsed = time.monotonic() - start
        mb = sum(len(d) for _, d in chunks) / 1e6
        self.say(f"appended {len(written)} chunks, {mb:.2f} MB in {elapsed:.2f} s "
                 f"({len(written) / elapsed:.0f} ops/s, {mb / elapsed:.2f} MB/s, each acked "
                 "by all 3 members)")
        return written

    async def read_back(self, cc: ChainClient, written: list[tuple[ChunkPos, bytes]]) -> None:
        todo = iter(written)
        start = time.monotonic()

        async def worker() -> None:
            for pos, want in todo:
                data = await cc.read(pos.file, pos.offset, pos.size)
                if len(data) != pos.size or digest(data) != want:
                    raise DemoFailed(f"read back of {pos.file}@{pos.offset} differs")
                self.tally.reads_verified += 1
                self.tally.read_bytes += len(data)

        async with anyio.create_task_group() as tg:
            for _ in range(self.opts.concurrency):
                tg.start_soon(worker)
        elapsed = time.monotonic() - start
        self.say(f"read back {len(written)} chunks from the tail in {elapsed:.2f} s: every "
                 "blake3 checksum matches")

    async def members_agree(self, written: list[tuple[ChunkPos, bytes]]) -> None:
        """checksum_list on every member: each chunk present with the client's digest."""
        want = {(p.file, p.offset): (p.size, d) for p, d in written}
        for name in NAMES:
            async with self.flu(name) as c:
                seen = {}
                for file in {f for f, _ in want}:
                    for e in await c.checksum_list(file):
                        if e.csum is not None:
                            seen[(file, e.offset)] = (e.size, e.csum.digest)
            missing = [k for k, v in want.items() if seen.get(k) != v]
            if missing:
                raise DemoFailed(f"{name}: {len(missing)} chunks missing or different, "
                                 f"e.g. {missing[0]}")
        self.say(f"checksum-list on n1, n2, n3: all {len(want)} chunks present with "
                 "identical checksums on every member")

    async def trim_one(self, cc: ChainClient, written: list[tuple[ChunkPos, bytes]]) -> None:
        pos, _ = written[self.rng.randrange(len(written))]
        await cc.trim(pos.file, pos.offset, pos.size)
        try:
            await cc.read(pos.file, pos.offset, pos.size)
        except Trimmed as e:
            self.tally.expected(e)
            self.say(f"trimmed {pos.file}@{pos.offset}+{pos.size}; reading it again -> "
                     "TRIMMED (as expected)")
        else:
            raise DemoFailed("a trimmed chunk was still readable")
        written.remove((pos, _))

    async def listings(self, cc: ChainClient, written: list[tuple[ChunkPos, bytes]]) -> None:
        files = await cc.list_files()
        for name, size in sorted(files):
            self.say(f"  list-files: {name} {size} B")
        file = written[0][0].file
        entries = await cc.checksum_list(file)
        trimmed = sum(1 for e in entries if e.csum is None)
        self.say(f"checksum-list {file}: {len(entries)} entries ({trimmed} trimmed)")

    async def bad_prefix(self, epoch_id: EpochId) -> None:
        async with self.flu("n1") as c:
            try:
                await c.append("../etc/passwd", b"x", epoch_id=epoch_id)
            except BadArg as e:
                self.tally.expected(e)
                self.say(f"append with prefix '../etc/passwd' -> BAD_ARG: {e.message}")
            else:
                raise DemoFailed("a path-like prefix was accepted")

    async def wrong_epochs(self, epoch_id: EpochId) -> None:
        """Older epoch -> BAD_EPOCH; newer epoch -> the node wedges itself; recovered by
        the next projection (:meth:`install`)."""
        async with self.flu("n3") as c:
            try:
                await c.append("logs", b"stale", epoch_id=DUMMY_EPOCH_ID)
            except BadEpoch as e:
                self.tally.expected(e)
                self.say(f"n3: append at epoch 0 (current {epoch_id.number}) -> BAD_EPOCH")
            else:
                raise DemoFailed("an append at an old epoch was accepted")
            if self.opts.chain_manager:
                # A FLU wedged by a stray newer-epoch request stays wedged under a running
                # AP manager while the chain is stable (no new projection comes): skip it.
                self.say("n3: newer-epoch wedge step skipped with --chain-manager (a stray "
                         "newer epoch would leave n3 wedged until the next projection change)")
                return
            newer = EpochId(epoch_id.number + 5, bytes(32))
            for what in ("a newer epoch", "the current epoch"):
                eid = newer if what == "a newer epoch" else epoch_id
                try:
                    await c.append("logs", b"x", epoch_id=eid, csum=client_csum(b"x"))
                except Wedged as e:
                    self.tally.expected(e)
                    self.say(f"n3: append at {what} ({eid.number}) -> WEDGED")
                else:
                    raise DemoFailed(f"an append at {what} did not get WEDGED")
            ws = await c.wedge_status()
            if not ws.wedged:
                raise DemoFailed("n3 is not wedged after a newer-epoch request")
            self.say("n3 wedge-status: wedged=True (it waits for a new projection)")

    def summary(self, elapsed_s: float) -> str:
        t = self.tally
        mb = (t.append_bytes + t.read_bytes) / 1e6
        ops = t.appends + t.reads_verified
        exp = ", ".join(f"{k}={v}" for k, v in sorted(t.expected_errors.items()))
        return (f"summary: {t.appends} appends ({t.append_bytes / 1e6:.2f} MB), "
                f"{t.reads_verified} reads verified ({t.read_bytes / 1e6:.2f} MB), "
                f"{ops} ops in {elapsed_s:.1f} s of workload ({ops / elapsed_s:.0f} ops/s, "
                f"{mb / elapsed_s:.2f} MB/s), expected errors seen: {exp}, "
                f"errors={t.errors}")


def _first_leaf(e: BaseException) -> BaseException:
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    return e


def run_demo(opts: DemoOptions, say: Say) -> int:
    """Run the demo; returns the exit code (0 = every check passed)."""
    parent = opts.data_dir
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="machi-demo-", dir=parent))
    demo = Demo(opts, say)
    try:
        demo.start(root)

        async def go() -> None:
            with anyio.fail_after(DEMO_TIMEOUT_S):
                await demo.run()

        started = time.monotonic()
        anyio.run(go, backend="asyncio")
        elapsed = time.monotonic() - started
        demo.stop()
        say(demo.summary(elapsed))
        return 0
    except Exception as e:  # any failure is reported, the daemons are killed below
        demo.tally.errors += 1
        leaf = _first_leaf(e)
        say(f"FAILED: {type(leaf).__name__}: {leaf}")
        say(demo.log_tails())
        return 1
    finally:
        demo.kill()
        shutil.rmtree(root, ignore_errors=True)


__all__ = ["DemoFailed", "DemoOptions", "run_demo"]
