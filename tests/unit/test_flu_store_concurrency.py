"""Seeded concurrent stress of FluStore: many tasks append, write, replay, trim and read at
once; acknowledged bytes stay write-once and read back, before and after a restart."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import anyio
import pytest

from machi.core.checksum import NO_CSUM, client_csum
from machi.core.epoch import DUMMY_EPOCH_ID
from machi.core.errors import NotWritten, Trimmed, Written
from machi.storage.flu_store import FluStore, StoreConfig

pytestmark = pytest.mark.anyio
B = 1024
UUID = "b144ef13-db4d-4c9f-96e7-caff02dc754f"
SHARED = [f"s{i}^^00000000^{UUID}^1" for i in range(2)]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("sync", ["batch", "none"])
async def test_concurrent_ops_keep_write_once(tmp_path: Path, seed: int, sync: str) -> None:
    """Acknowledged chunks never overlap each other and read back unless trimmed."""
    print(f"seed={seed} sync={sync}")
    acked: dict[tuple[str, int], bytes] = {}  # (file, offset) -> bytes
    trims: list[tuple[str, int, int]] = []
    d = tmp_path / "flu"

    async with await FluStore.open(d, StoreConfig(sync=sync)) as s:  # type: ignore[arg-type]

        async def worker(w: int) -> None:
            rng = random.Random(seed * 1000 + w)
            for _ in range(25):
                op = rng.choice(["append", "write", "write", "replay", "trim", "read"])
                data = bytes([w]) * rng.randint(1, 40)
                if op == "append":
                    pos, _ = await s.append(rng.choice("ab"), data, client_csum(data),
                                            epoch_id=DUMMY_EPOCH_ID)
                    acked[(pos.file, pos.offset)] = data
                elif op in ("write", "replay"):
                    if op == "replay" and acked:
                        (file, off), data = rng.choice(sorted(acked.items()))
                    else:
                        file, off = rng.choice(SHARED), B + rng.randint(0, 400)
                    try:
                        await s.write(file, off, data, NO_CSUM)
                    except (Written, Trimmed):
                        continue
                    prev = acked.setdefault((file, off), data)
                    assert prev == data
                elif op == "trim":
                    file, off, n = rng.choice(SHARED), B + rng.randint(0, 400), rng.randint(1, 30)
                    await s.trim(file, off, n)
                    trims.append((file, off, n))
                else:
                    try:
                        res = await s.read(rng.choice(SHARED), B + rng.randint(0, 400), 50)
                    except (NotWritten, Trimmed):
                        continue
                    for c in res.chunks:
                        assert c.data == bytes([c.data[0]]) * len(c.data)

        async with anyio.create_task_group() as tg:
            for w in range(12):
                tg.start_soon(worker, w)
        await check(s, acked, trims)
    async with await FluStore.open(d) as s:
        await check(s, acked, trims)


async def check(s: FluStore, acked: dict[tuple[str, int], bytes],
                trims: list[tuple[str, int, int]]) -> None:
    by_file: dict[str, list[tuple[int, int]]] = {}
    for (file, off), data in acked.items():
        by_file.setdefault(file, []).append((off, off + len(data)))
    for spans in by_file.values():
        spans.sort()
        for (_, a_end), (b_off, _) in itertools.pairwise(spans):
            assert a_end <= b_off, "two acknowledged chunks overlap"
    for (file, off), data in acked.items():
        hit = any(f == file and t_off < off + len(data) and off < t_off + n
                  for f, t_off, n in trims)
        if hit:
            continue
        res = await s.read(file, off, len(data))
        assert [c.data for c in res.chunks] == [data] and not res.partial
