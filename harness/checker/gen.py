"""History generators for checker tests and ``machi-harness bench-check``.

Owns seeded generators of *valid* concurrent histories (write-once chunk store, register,
kv map) and the injection of exactly one known anomaly into a write-once history.  Each
generator simulates the system: processes invoke operations, every operation takes effect
at one random moment between its invocation and its completion (so the history is
linearizable by construction), crashed operations complete as ``info`` (applied or not)
and their process is replaced by a fresh one, Jepsen style.

Must not: do I/O, read clocks or use global randomness (one ``random.Random(seed)`` per
history); keep unbounded state beyond what the final-read phase needs (recent positions
live in a bounded window; the final phase replays compact arrays).
"""

from __future__ import annotations

import random
from array import array
from collections.abc import Iterator
from typing import Any

WRITE_ONCE_ANOMALIES = ("stale-read", "lost-write", "from-nowhere", "duplicate-position")

# What the write-once checker reports for each injected anomaly (any one of these).
EXPECTED_KINDS: dict[str, tuple[str, ...]] = {
    "stale-read": ("unwritten-after-ack", "unwritten-after-read"),
    "lost-write": ("lost",),
    "from-nowhere": ("from-nowhere",),
    "duplicate-position": ("conflict", "overlap"),
}

_TIME_STEP_NS = 1000


class _Proc:
    __slots__ = ("applied", "forced", "id", "inv", "op", "result")

    def __init__(self, pid: int) -> None:
        self.id = pid
        self.op: str | None = None  # the pending op's f, None when idle
        self.inv: dict[str, Any] | None = None
        self.applied = False
        self.forced = False  # an injected op: completes ok, never crashes or fails
        self.result: Any = None


def write_once_history(
    *,
    seed: int,
    ops: int,
    processes: int = 5,
    crash_p: float = 0.0,
    fail_p: float = 0.0,
    read_p: float = 0.45,
    write_p: float = 0.15,
    rollover: int = 1000,
    nodes: tuple[str, ...] = ("a", "b", "c"),
    final_reads: bool = True,
    anomaly: str | None = None,
    window: int = 512,
) -> Iterator[dict[str, Any]]:
    """Yield the events of a write-once history (dicts, history order).

    ``ops`` client operations by ``processes`` concurrent clients: appends (the server
    picks the position: next offset in the current file, a new file every ``rollover``
    appends), writes at explicit positions (a few clients race for the same slot: one
    wins, the others fail with ``written``), reads of recent positions (written, in
    flight, or never written). ``crash_p``: chance an op ends ``info`` (half of them
    took effect); ``fail_p``: chance an op fails before taking effect. Then, with
    ``final_reads``, every chunk that took effect is read from every node in ``nodes``.
    ``anomaly``: one of ``WRITE_ONCE_ANOMALIES`` to inject once.
    """
    if anomaly is not None and anomaly not in WRITE_ONCE_ANOMALIES:
        raise ValueError(f"unknown anomaly {anomaly!r}; want one of {WRITE_ONCE_ANOMALIES}")
    if anomaly == "lost-write" and not (final_reads and nodes):
        raise ValueError("a lost-write anomaly needs final reads")
    if ops < 0 or processes < 1 or window < 8:
        raise ValueError("want ops >= 0, processes >= 1, window >= 8")
    rng = random.Random(seed)
    rand = rng.random
    randrange = rng.randrange
    tag = f"{seed:x}"
    append_file = [f"pre^^00000000^{tag}^0"]
    wfile = f"w^^00000000^{tag}^0"
    file_no = 0
    eof = 1024
    appends_in_file = 0
    next_slot = 0
    # Bounded window of recent positions (for reads) and their values if written.
    ring: list[Any] = [None] * window
    ring_at = 0
    ring_len = 0
    store: dict[tuple[str, int, int], str] = {}
    # A position leaves ``store`` when it leaves the ring and no pending read targets it
    # (``pinned``); write slots below ``slot_floor`` are no longer writable (they fail), so
    # a forgotten slot can never be written twice.
    ring_set: set[tuple[str, int, int]] = set()
    pinned: dict[tuple[str, int, int], int] = {}
    slot_floor = 0
    acked_recent: list[tuple[str, int, int]] = []  # positions acked (bounded)
    last_acked_append: tuple[str, int, int] | None = None
    dup: tuple[tuple[str, int, int], str] | None = None  # injected duplicate: (pos, value)
    # Every chunk that took effect, for the final phase: file (-1 = write file), offset,
    # size, writer's process id and sequence number.
    fin_file = array("q")
    fin_off = array("q")
    fin_size = array("q")
    fin_pid = array("q")
    fin_seq = array("q")
    seq = 0
    inject_at = randrange(max(ops, 1) // 4, max(ops, 1) // 2 + 1) if anomaly else -1
    injected = False

    procs = [_Proc(i) for i in range(processes)]
    next_pid = processes
    index = 0
    invoked = 0
    busy = 0

    def remember(pos: tuple[str, int, int]) -> None:
        nonlocal ring_at, ring_len, slot_floor
        old = ring[ring_at]
        if old is not None:
            ring_set.discard(old)
            if old not in pinned:
                store.pop(old, None)
            if old[0] == wfile:
                slot_floor = max(slot_floor, (old[1] - 1024) // 64 + 1)
        ring[ring_at] = pos
        ring_set.add(pos)
        ring_at = (ring_at + 1) % window
        ring_len = min(ring_len + 1, window)

    def unpin(pos: tuple[str, int, int]) -> None:
        n = pinned[pos] - 1
        if n:
            pinned[pos] = n
            return
        del pinned[pos]
        if pos not in ring_set:
            store.pop(pos, None)

    while invoked < ops or busy:
        p = procs[randrange(processes)]
        if p.op is None:
            if invoked >= ops:
                continue
            invoked += 1
            busy += 1
            seq += 1
            r = rand()
            p.applied = False
            p.forced = False
            if r < read_p and ring_len:
                if (
                    anomaly == "stale-read"
                    and not injected
                    and invoked >= inject_at
                    and (acked_recent)
                ):
                    pos = acked_recent[-1]
                    p.forced = True
                elif anomaly == "from-nowhere" and not injected and invoked >= inject_at:
                    pos = (f"ghost^^00000000^{tag}^0", 1024, 64)
                    p.forced = True
                elif rand() < 0.1:  # probe a write slot nobody has written yet
                    pos = (wfile, 1024 + (next_slot + 1) * 64, 64)
                else:
                    pos = ring[randrange(ring_len)]
                p.op = "read"
                p.inv = {"pos": list(pos)}
                pinned[pos] = pinned.get(pos, 0) + 1
            elif r < read_p + write_p:
                slot = max(0, next_slot - randrange(3))
                if rand() < 0.3:
                    next_slot += 1
                pos = (wfile, 1024 + slot * 64, 64)
                p.op = "write"
                p.inv = {"pos": list(pos), "v": f"{p.id}-{seq}"}
                p.result = seq
            else:
                p.op = "append"
                p.inv = {"v": f"{p.id}-{seq}", "prefix": "pre"}
                p.result = seq
                if anomaly == "duplicate-position" and not injected and invoked >= inject_at:
                    p.forced = last_acked_append is not None
            yield {
                "index": index,
                "time": index * _TIME_STEP_NS,
                "process": p.id,
                "type": "invoke",
                "f": p.op,
                "value": p.inv,
            }
            index += 1
            continue
        if not p.applied:
            if not p.forced and rand() < fail_p:
                if p.op == "read" and p.inv is not None:
                    unpin(_tpos(p.inv["pos"]))
                yield _done(index, p, "fail", p.inv, "refused")
                index += 1
                busy -= 1
                continue
            if not p.forced and rand() < crash_p / 2:
                if p.op == "read" and p.inv is not None:
                    unpin(_tpos(p.inv["pos"]))
                yield _done(index, p, "info", p.inv, "timeout")
                index += 1
                busy -= 1
                p.id = next_pid
                next_pid += 1
                continue
            # The linearization point.
            p.applied = True
            inv = p.inv
            assert inv is not None
            if p.op == "read":
                pos = _tpos(inv["pos"])
                v: Any = store.get(pos)
                if p.forced and not injected:
                    injected = True
                    v = None if anomaly == "stale-read" else f"ghost-{seed}"
                p.result = {"pos": inv["pos"], "v": v}
                unpin(pos)
            elif p.op == "write":
                pos = _tpos(inv["pos"])
                if pos in store or (pos[1] - 1024) // 64 < max(slot_floor, next_slot - 8):
                    p.result = None  # already written (or too old to be free): fails
                else:
                    store[pos] = inv["v"]
                    remember(pos)
                    _fin(fin_file, fin_off, fin_size, fin_pid, fin_seq, -1, pos, p.id, p.result)
                    p.result = {"pos": inv["pos"], "v": inv["v"]}
            else:
                size = 1 + randrange(4096)
                if p.forced and not injected and last_acked_append is not None:
                    injected = True
                    pos = last_acked_append
                    store[pos] = inv["v"]
                    dup = (pos, inv["v"])  # the final phase reads the newer value there
                else:
                    if appends_in_file >= rollover:
                        file_no += 1
                        append_file.append(f"pre^^00000000^{tag}^{file_no}")
                        eof = 1024
                        appends_in_file = 0
                    pos = (append_file[file_no], eof, size)
                    eof += size
                    appends_in_file += 1
                    store[pos] = inv["v"]
                    remember(pos)
                    _fin(
                        fin_file, fin_off, fin_size, fin_pid, fin_seq, file_no, pos, p.id, p.result
                    )
                p.result = {"v": inv["v"], "pos": list(pos)}
            continue
        # Completion of an applied op.
        if not p.forced and rand() < crash_p / 2:
            yield _done(index, p, "info", p.inv, "timeout")
            index += 1
            busy -= 1
            p.id = next_pid
            next_pid += 1
            continue
        f = p.op
        if p.result is None:
            yield _done(index, p, "fail", p.inv, "written")
        else:
            yield _done(index, p, "ok", p.result, None)
            if f != "read":
                pos = _tpos(p.result["pos"])
                acked_recent.append(pos)
                if len(acked_recent) > window:
                    del acked_recent[: window // 2]
                if f == "append":
                    last_acked_append = pos
        index += 1
        busy -= 1

    if not (final_reads and nodes):
        return
    final_pid = next_pid
    lost_pos = acked_recent[-1] if anomaly == "lost-write" and acked_recent else None
    lost_node = nodes[-1]
    for i in range(len(fin_off)):
        fno = fin_file[i]
        file = wfile if fno == -1 else append_file[fno]
        pos = (file, fin_off[i], fin_size[i])
        v = f"{fin_pid[i]}-{fin_seq[i]}"
        if dup is not None and pos == dup[0]:
            v = dup[1]
        for node in nodes:
            got: str | None = v
            if pos == lost_pos and node == lost_node:
                got = None
            yield {
                "index": index,
                "time": index * _TIME_STEP_NS,
                "process": final_pid,
                "type": "invoke",
                "f": "read",
                "value": {"pos": list(pos)},
                "final": True,
                "node": node,
            }
            index += 1
            yield {
                "index": index,
                "time": index * _TIME_STEP_NS,
                "process": final_pid,
                "type": "ok",
                "f": "read",
                "value": {"pos": list(pos), "v": got},
                "final": True,
                "node": node,
            }
            index += 1


def _tpos(pos: list[Any]) -> tuple[str, int, int]:
    return (pos[0], pos[1], pos[2])


def _fin(
    files: array[int],
    offs: array[int],
    sizes: array[int],
    pids: array[int],
    seqs: array[int],
    file_no: int,
    pos: tuple[str, int, int],
    pid: int,
    seq: int,
) -> None:
    files.append(file_no)
    offs.append(pos[1])
    sizes.append(pos[2])
    pids.append(pid)
    seqs.append(seq)


def _done(index: int, p: _Proc, typ: str, value: Any, error: str | None) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "index": index,
        "time": index * _TIME_STEP_NS,
        "process": p.id,
        "type": typ,
        "f": p.op,
        "value": value,
    }
    if error is not None:
        ev["error"] = error
    p.op = None
    return ev


def write_once_bench_lines(
    *,
    seed: int,
    ops: int,
    processes: int = 10,
    crash_p: float = 0.01,
    read_p: float = 0.5,
    probe_p: float = 0.02,
    rollover: int = 100_000,
    final_reads: bool = True,
    window: int = 4096,
) -> Iterator[bytes]:
    """A valid write-once history as JSON Lines, fast enough for 10 M-op benchmarks.

    Simpler than :func:`write_once_history` (appends and reads only, no failures): each
    append takes effect at its completion, reads return what was applied before their
    invocation (a recent chunk, or null for a probe of a never-written position); a
    crashed append (``crash_p``) ends ``info`` and landed or not. Then, with
    ``final_reads``, every chunk that landed is read once (node ``a``). Lines are
    formatted directly (no dicts), so generation costs about as much as decoding.
    """
    rng = random.Random(seed)
    rand = rng.random
    randrange = rng.randrange
    tag = f"{seed:x}"
    fname = f"pre^^00000000^{tag}^0"
    file_no = 0
    eof = 1024
    in_file = 0
    busy: list[Any] = [None] * processes
    pid = list(range(processes))
    next_pid = processes
    ring: list[tuple[str, str]] = []  # (pos as JSON, value) of recent landed chunks
    fin_file = array("q")
    fin_off = array("q")
    fin_size = array("q")
    fin_pid = array("q")
    fin_seq = array("q")
    index = 0
    invoked = 0
    n_busy = 0
    seq = 0
    while invoked < ops or n_busy:
        s = randrange(processes)
        b = busy[s]
        p = pid[s]
        t = index * _TIME_STEP_NS
        if b is None:
            if invoked >= ops:
                continue
            invoked += 1
            n_busy += 1
            seq += 1
            r = rand()
            if r < probe_p:
                pos = f'["probe^{tag}",{seq},1]'
                busy[s] = ("read", pos, "null")
                yield (
                    f'{{"index":{index},"time":{t},"process":{p},"type":"invoke","f":"read",'
                    f'"value":{{"pos":{pos}}}}}\n'
                ).encode()
            elif r < read_p and ring:
                pos, v = ring[randrange(len(ring))]
                busy[s] = ("read", pos, f'"{v}"')
                yield (
                    f'{{"index":{index},"time":{t},"process":{p},"type":"invoke","f":"read",'
                    f'"value":{{"pos":{pos}}}}}\n'
                ).encode()
            else:
                v = f"{p}-{seq}"
                busy[s] = ("append", v, seq)
                yield (
                    f'{{"index":{index},"time":{t},"process":{p},"type":"invoke","f":"append",'
                    f'"value":{{"v":"{v}","prefix":"pre"}}}}\n'
                ).encode()
            index += 1
            continue
        busy[s] = None
        n_busy -= 1
        if b[0] == "read":
            yield (
                f'{{"index":{index},"time":{t},"process":{p},"type":"ok","f":"read",'
                f'"value":{{"pos":{b[1]},"v":{b[2]}}}}}\n'
            ).encode()
            index += 1
            continue
        _, v, op_seq = b
        crashed = rand() < crash_p
        if not crashed or rand() < 0.5:  # the chunk lands
            if in_file >= rollover:
                file_no += 1
                fname = f"pre^^00000000^{tag}^{file_no}"
                eof = 1024
                in_file = 0
            size = 1 + randrange(4096)
            offset = eof
            eof += size
            in_file += 1
            pos = f'["{fname}",{offset},{size}]'
            if len(ring) < window:
                ring.append((pos, v))
            else:
                ring[randrange(window)] = (pos, v)
            fin_file.append(file_no)
            fin_off.append(offset)
            fin_size.append(size)
            fin_pid.append(p)
            fin_seq.append(op_seq)
        if crashed:
            pid[s] = next_pid
            next_pid += 1
            yield (
                f'{{"index":{index},"time":{t},"process":{p},"type":"info","f":"append",'
                f'"value":{{"v":"{v}","prefix":"pre"}},"error":"timeout"}}\n'
            ).encode()
        else:
            yield (
                f'{{"index":{index},"time":{t},"process":{p},"type":"ok","f":"append",'
                f'"value":{{"v":"{v}","pos":{pos}}}}}\n'
            ).encode()
        index += 1
    if not final_reads:
        return
    p = next_pid
    for i in range(len(fin_off)):
        pos = f'["pre^^00000000^{tag}^{fin_file[i]}",{fin_off[i]},{fin_size[i]}]'
        v = f"{fin_pid[i]}-{fin_seq[i]}"
        t = index * _TIME_STEP_NS
        yield (
            f'{{"index":{index},"time":{t},"process":{p},"type":"invoke","f":"read",'
            f'"value":{{"pos":{pos}}},"final":true,"node":"a"}}\n'
        ).encode()
        index += 1
        t = index * _TIME_STEP_NS
        yield (
            f'{{"index":{index},"time":{t},"process":{p},"type":"ok","f":"read",'
            f'"value":{{"pos":{pos},"v":"{v}"}},"final":true,"node":"a"}}\n'
        ).encode()
        index += 1
