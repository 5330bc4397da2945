"""TEST-ONLY canaries: chain clients that break one Chain Replication guarantee on purpose,
so a harness run can prove its checkers catch the breakage (`--canary NAME`).

Off unless a run sets `--canary` (recorded in results.json as `test_canary`).  Implemented
on the client side, in the harness only -- nothing here is reachable from `machi`:
- `read-non-tail`: reads go to a random member of UPI + repairing other than the UPI tail,
  with no read repair (a repairing or lagging replica answers "not written").
- `ack-before-tail`: an append is acknowledged once the head holds it; the downstream
  members are never written.
The daemon-side canaries epoch-reuse, skip-repair and ack-before-sync are switches inside
the daemons (node config key `test_canary`, written by `harness.deploy` for every node;
docs/node.md "Test canaries"); their runs use the plain `ChainClient`.

Must not: be used outside harness runs and tests.
"""

from __future__ import annotations

import random
from typing import Any

from machi.client.chain_client import ChainClient, _Op
from machi.client.flu_client import ChunkPos, ReadReply
from machi.core.errors import NotWritten
from machi.core.outcome import OpKind


class ReadNonTailClient(ChainClient):
    """CANARY read-non-tail: reads a random UPI/repairing member, no repair."""

    async def read_reply(self, file: str, offset: int, size: int, *,
                         needs_trimmed: bool = False, info: Any = None) -> ReadReply:
        op = _Op(self, OpKind.READ, info)

        async def body() -> ReadReply:
            p = await self._projection(op)
            rng = random.Random()
            candidates = [m for m in (*p.upi, *p.repairing)
                          if m not in p.witnesses and m != p.tail] or [str(p.tail)]
            target = rng.choice(candidates)
            c = await self._flu(target)
            op.info.epoch_id = p.epoch_id
            op.info.node = target
            try:
                return await c.read(file, offset, size, epoch_id=p.epoch_id,
                                    needs_trimmed=needs_trimmed)
            except NotWritten as e:
                raise op.error(e.status, str(e)) from None

        return await op.run(body)


class AckBeforeTailClient(ChainClient):
    """CANARY ack-before-tail: an append counts members downstream of the head as done
    without writing to them."""

    async def _write_one(self, op: _Op, p: Any, member: str, pos: ChunkPos,
                         data: Any, csum: Any) -> Any:
        if op.kind is OpKind.APPEND and op.progress.acked:
            op.progress = op.progress.with_ack(member)
            return p
        return await super()._write_one(op, p, member, pos, data, csum)


#: faults a canary needs that the default nemesis (`partition,kill`) lacks: `--canary X`
#: without `--nemesis` adds them to the default nemesis (recorded in results.json
#: `options.nemesis_for_canary`; a schedule with a crash starts with it).  ack-before-sync
#: loses what it has not synced only when every node dies at once (docs/harness-run.md
#: "Canaries").
CANARY_FAULTS: dict[str, tuple[str, ...]] = {"ack-before-sync": ("crash",)}

CLIENTS: dict[str, type[ChainClient]] = {
    "read-non-tail": ReadNonTailClient,
    "ack-before-tail": AckBeforeTailClient,
}


#: canary -> what its run must report (any of): a failed check by name, or a write-once
#: anomaly kind (AP: stale-read kinds count only where `analyze` judges them: calm, or by
#: what the serving node could have known).  Used by the canary tests and
#: scripts/canary-sweep.
SIGNATURES: dict[str, tuple[str, ...]] = {
    # reads of in-flight appends from a non-tail, then again: seen, then unwritten
    "read-non-tail": ("unwritten-after-read", "unwritten-in-one-projection"),
    # only the head gets the chunk: the tail (and after a head kill every survivor) lacks it
    "ack-before-tail": ("lost", "unwritten-after-ack", "unwritten-on-acking-replica"),
    # one node holds two different projections at one epoch number
    "epoch-reuse": ("epoch_unique",),
    # a restarted (or partitioned) node joins the UPI without its data: acknowledged chunks
    # lost, or (when a later read or repair path still finds them elsewhere) replicas that
    # differ after the final phase
    "skip-repair": ("lost", "replicas_equal"),
    # acknowledged, then the whole cluster crashes before the write-back
    "ack-before-sync": ("lost",),
}


def signatures_found(res: dict[str, Any]) -> set[str]:
    """Which canary signatures a run's results.json shows (failed checks and counted
    anomaly kinds; in AP only the judged stale-read kinds)."""
    checks = res["checks"]
    found = {name for name, c in checks.items() if c.get("valid") is False}
    wo = checks["write_once"]
    anomalies = (wo.get("witness") or {}).get("anomalies") or {}
    if res["options"]["mode"] == "ap" and "ap_calm_stale_reads" in wo:
        calm = wo["ap_calm_stale_reads"].get("kinds") or {}
        served = (wo.get("ap_served_stale_reads") or {}).get("kinds") or {}
        found |= {k for k, n in {**calm, **served}.items() if n > 0}
        found |= {k for k, a in anomalies.items()
                  if a.get("count") and k not in ("unwritten-after-ack", "unwritten-after-read")}
    else:
        found |= {k for k, a in anomalies.items() if a.get("count")}
    return found
