"""Cost of AP anti-entropy passes (docs/repair.md, "AP anti-entropy", measured there):
three in-process FLUs and the pass in one event loop (one core), stores holding one big
file of N chunks and F one-chunk files, equal on all three.  Prints wall and CPU seconds
of: the first pass (no memory), passes with nothing changed, a pass after one orphan in
the big file, the pass after it, one after an orphan in a small file, and the two
passes after 10,000 appends that reached every replica (the second plans them).

    .venv/bin/python scripts/anti_entropy_cost.py 100000 200
"""

from __future__ import annotations

import io
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from machi.client.flu_client import FluClient
from machi.core.checksum import client_csum
from machi.core.repair_plan import ChangeMemory
from machi.node.log import JsonLog
from machi.node.repair import run_anti_entropy
from tests.integration.inproc_flu import inproc_chain, install

NAMES = ("a", "b", "c")


async def main(n_chunks: int, n_files: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        async with inproc_chain(Path(d), NAMES) as nodes, AsyncExitStack() as st:
            cl = {n: await st.enter_async_context(
                FluClient("127.0.0.1", port, timeout_ms=600_000)) for n, (_, port) in nodes.items()}
            p = await install(nodes, 1, NAMES)
            stores = {n: nodes[n][0].store for n in NAMES}

            async def put(prefix: str, data: bytes) -> None:
                cs = client_csum(data)
                pos, _ = await stores["a"].append(prefix, data, cs, epoch_id=p.epoch_id)
                for n in ("b", "c"):
                    await stores[n].write(pos.file, pos.offset, data, cs)

            t = time.monotonic()
            for i in range(n_chunks):
                await put("big", b"x%07d" % i)
            for i in range(n_files):
                await put(f"f{i:04d}", b"small")
            print(f"filled {n_chunks} chunks + {n_files} files in {time.monotonic() - t:.1f} s")
            mem = ChangeMemory()
            log = JsonLog("c", "warning", stream=io.StringIO())

            async def one(what: str) -> None:
                w0, c0 = time.monotonic(), time.process_time()
                r = await run_anti_entropy(p, local_name="c", clients=cl, log=log, memory=mem)
                print(f"{what}: wall {time.monotonic() - w0:.3f} s cpu "
                      f"{time.process_time() - c0:.3f} s ok={r.ok} planned={r.stats.files} "
                      f"unchanged={r.stats.files_unchanged} "
                      f"equal={getattr(r.stats, 'files_equal', '-')} "
                      f"copies={r.stats.chunks_copied}",
                      flush=True)

            await one("first pass (no memory, all equal)")
            await one("nothing changed")
            await one("nothing changed")
            orphan = b"orphan"
            await stores["a"].append("big", orphan, client_csum(orphan), epoch_id=p.epoch_id)
            await one("one orphan in the big file")
            await one("the pass after it")
            await stores["a"].append("f0001", orphan, client_csum(orphan), epoch_id=p.epoch_id)
            await one("one orphan in a small file")
            for i in range(10_000):  # steady load: new chunks replicated everywhere
                await put("big", b"y%07d" % i)
            await one("after 10,000 appends that reached every replica")
            await one("the pass after it (plans those 10,000)")


if __name__ == "__main__":
    anyio.run(main, int(sys.argv[1]), int(sys.argv[2]))
