"""Hypothesis stateful test of the real FluStore against a byte-level model of written /
unwritten / trimmed ranges: appends, writes, replays, overlaps, reads, trims, restarts,
and multi-chunk appends and writes (all or nothing)."""

from __future__ import annotations

import itertools
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio.from_thread
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from machi.core.checksum import NO_CSUM, client_csum
from machi.core.epoch import DUMMY_EPOCH_ID, EpochId
from machi.core.errors import BadArg, BadChecksum, NotWritten, Trimmed, Written
from machi.storage.flu_store import FluStore, ReadResult, StoreConfig

B = 1024
MAX_FILE = B + 200
EPOCHS = [DUMMY_EPOCH_ID, EpochId(1, b"\x01" * 32)]
EXTERNAL = "ext^^0000abcd^b144ef13-db4d-4c9f-96e7-caff02dc754f^3"


@dataclass
class MFile:
    eof: int = B
    chunks: dict[int, bytes] = field(default_factory=dict)  # offset -> bytes
    trimmed: set[int] = field(default_factory=set)  # trimmed byte offsets

    def owner(self, b: int) -> int | None:
        for off, data in self.chunks.items():
            if off <= b < off + len(data):
                return off
        return None

    def trim(self, off: int, size: int) -> None:
        end = off + size
        for c_off, data in list(self.chunks.items()):
            c_end = c_off + len(data)
            if c_end <= off or c_off >= end:
                continue
            del self.chunks[c_off]
            if c_off < off:
                self.chunks[c_off] = data[: off - c_off]
            if c_end > end:
                self.chunks[end] = data[end - c_off:]
        self.trimmed.update(range(off, end))
        self.eof = max(self.eof, end)

    def fully_trimmed(self) -> bool:
        return self.eof > B and all(b in self.trimmed for b in range(B, self.eof))


class FileStoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self._portal_cm = anyio.from_thread.start_blocking_portal("asyncio")
        self.portal = self._portal_cm.__enter__()
        # tmpfs when there is one: this test is about semantics, not fsync latency
        shm = "/dev/shm" if Path("/dev/shm").is_dir() else None
        self.dir = Path(tempfile.mkdtemp(prefix="machi-stateful-", dir=shm))
        self.store: FluStore | Any = None
        self.files: dict[str, MFile] = {}
        self.deleted: set[str] = set()
        self.targets: dict[str, tuple[str, EpochId]] = {}
        self.minted: set[str] = set()  # files the store minted since it (re)opened
        # names in creation order: UUIDs are random, so sorting by name would make
        # Hypothesis draws differ between a run and its replay
        self.order: list[str] = [EXTERNAL]

    @initialize(sync=st.sampled_from(["batch", "none", "always"]))
    def open_store(self, sync: str) -> None:
        self.config = StoreConfig(sync=sync, max_file_size=MAX_FILE,  # type: ignore[arg-type]
                                  group_commit_max_delay_ms=0)
        self.store = self.call(FluStore.open, self.dir, self.config)

    def call(self, fn: Any, *args: Any, **kw: Any) -> Any:
        async def run() -> Any:
            return await fn(*args, **kw)

        return self.portal.call(run)

    def teardown(self) -> None:
        try:
            if self.store is not None:
                self.call(self.store.close)
        finally:
            self._portal_cm.__exit__(None, None, None)
            shutil.rmtree(self.dir, ignore_errors=True)

    def names(self) -> list[str]:
        return list(self.order)

    def with_chunks(self) -> list[str]:
        return [n for n in self.order if n in self.files and self.files[n].chunks]

    def maybe_delete(self, name: str) -> None:
        f = self.files[name]
        # deleted once fully trimmed and retired: full, or minted here and rolled over
        retired = f.eof >= MAX_FILE or (
            name in self.minted and name not in {t for t, _ in self.targets.values()})
        if f.fully_trimmed() and retired:
            del self.files[name]
            self.deleted.add(name)

    # ---- rules --------------------------------------------------------------------
    @rule(prefix=st.sampled_from(["a", "b"]), data=st.binary(min_size=1, max_size=60),
          extra=st.sampled_from([0, 0, 3, 150]), epoch=st.sampled_from(EPOCHS))
    def append(self, prefix: str, data: bytes, extra: int, epoch: EpochId) -> None:
        total = len(data) + extra
        if B + total > MAX_FILE:
            with pytest.raises(BadArg):
                self.call(self.store.append, prefix, data, NO_CSUM, epoch_id=epoch,
                          chunk_extra=extra)
            return
        pos, _ = self.call(self.store.append, prefix, data, client_csum(data), epoch_id=epoch,
                           chunk_extra=extra)
        t = self.targets.get(prefix)
        if t is not None and t[1] == epoch and self.files[t[0]].eof + total <= MAX_FILE:
            assert pos.file == t[0] and pos.offset == self.files[t[0]].eof
        else:
            assert pos.file not in self.files and pos.file not in self.deleted
            assert pos.offset == B
            self.files[pos.file] = MFile()
            self.order.append(pos.file)
            self.targets[prefix] = (pos.file, epoch)
            self.minted.add(pos.file)
        f = self.files[pos.file]
        f.chunks[pos.offset] = data
        f.eof = pos.offset + total

    @rule(data=st.data(), rel=st.integers(0, 220), payload=st.binary(min_size=1, max_size=40))
    def write(self, data: st.DataObject, rel: int, payload: bytes) -> None:
        name = data.draw(st.sampled_from(self.names()))
        self._write(name, B + rel, payload)

    @precondition(lambda self: any(f.chunks for f in self.files.values()))
    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(self.with_chunks()))
        off = data.draw(st.sampled_from(sorted(self.files[name].chunks)))
        self._write(name, off, self.files[name].chunks[off])

    def _write(self, name: str, off: int, payload: bytes) -> None:
        def do() -> Any:
            return self.call(self.store.write, name, off, payload, client_csum(payload))

        if name in self.deleted:
            with pytest.raises(Trimmed):
                do()
            return
        f = self.files.get(name) or MFile()
        span = range(off, off + len(payload))
        owners = {f.owner(b) for b in span} - {None}
        if any(b in f.trimmed for b in span):
            with pytest.raises(Trimmed):
                do()
        elif not owners:
            do()
            f.chunks[off] = payload
            f.eof = max(f.eof, off + len(payload))
        elif owners == {off} and f.chunks[off] == payload:
            do()  # exact replay
        else:
            with pytest.raises(Written):
                do()
        if name not in self.files:
            self.files[name] = f  # a write (even a refused one) names the file

    @rule(prefix=st.sampled_from(["a", "b"]),
          chunks=st.lists(st.tuples(st.binary(min_size=1, max_size=30),
                                    st.sampled_from([0, 0, 2, 40])), min_size=1, max_size=4),
          epoch=st.sampled_from(EPOCHS), bad=st.integers(-1, 3))
    def append_chunks(self, prefix: str, chunks: list[tuple[bytes, int]], epoch: EpochId,
                      bad: int) -> None:
        """Many chunks in one request: contiguous in one file, each its own chunk; one
        bad checksum (``bad`` < len) fails the whole request and writes nothing."""
        total = sum(len(d) + x for d, x in chunks)
        csums = [client_csum(d + b"!" if i == bad else d) for i, (d, _x) in enumerate(chunks)]
        args = [(d, c, x) for (d, x), c in zip(chunks, csums, strict=True)]
        if 0 <= bad < len(chunks):
            with pytest.raises(BadChecksum) as ei:
                self.call(self.store.append_chunks, prefix, args, epoch_id=epoch)
            assert ei.value.chunk_index == bad  # type: ignore[attr-defined]
            return
        if B + total > MAX_FILE:
            with pytest.raises(BadArg):
                self.call(self.store.append_chunks, prefix, args, epoch_id=epoch)
            return
        res = self.call(self.store.append_chunks, prefix, args, epoch_id=epoch)
        first = res[0][0]
        t = self.targets.get(prefix)
        if t is not None and t[1] == epoch and self.files[t[0]].eof + total <= MAX_FILE:
            assert first.file == t[0] and first.offset == self.files[t[0]].eof
        else:
            assert first.file not in self.files and first.offset == B
            self.files[first.file] = MFile()
            self.order.append(first.file)
            self.targets[prefix] = (first.file, epoch)
            self.minted.add(first.file)
        f = self.files[first.file]
        off = first.offset
        for (pos, _cs), (d, x) in zip(res, chunks, strict=True):
            assert (pos.file, pos.offset, pos.size) == (first.file, off, len(d))
            f.chunks[off] = d
            off += len(d) + x
        f.eof = off

    @rule(data=st.data(), rels=st.lists(st.integers(0, 220), min_size=1, max_size=3,
                                        unique=True),
          payloads=st.lists(st.binary(min_size=1, max_size=20), min_size=3, max_size=3),
          replay=st.booleans())
    def write_chunks(self, data: st.DataObject, rels: list[int], payloads: list[bytes],
                     replay: bool) -> None:
        """Many chunks of one file in one request: all written (free places or exact
        replays) or, when any one overlaps other bytes, none."""
        name = data.draw(st.sampled_from(self.names()))
        f0 = self.files.get(name)
        items = [(B + r, p) for r, p in zip(sorted(rels), payloads, strict=False)]
        if replay and f0 is not None and f0.chunks:
            off = data.draw(st.sampled_from(sorted(f0.chunks)))
            items = sorted([*[(o, p) for o, p in items if o + len(p) <= off
                              or o >= off + len(f0.chunks[off])], (off, f0.chunks[off])])
        if any(a[0] + len(a[1]) > b[0] for a, b in itertools.pairwise(items)):
            with pytest.raises(BadArg):  # chunks of one request overlap each other
                self.call(self.store.write_chunks, name,
                          [(o, p, client_csum(p)) for o, p in items])
            return

        def do() -> Any:
            return self.call(self.store.write_chunks, name,
                             [(o, p, client_csum(p)) for o, p in items])

        if name in self.deleted:
            with pytest.raises(Trimmed):
                do()
            return
        f = self.files.get(name) or MFile()
        verdicts = []
        for off, payload in items:
            span = range(off, off + len(payload))
            owners = {f.owner(b) for b in span} - {None}
            if any(b in f.trimmed for b in span):
                verdicts.append(Trimmed)
            elif not owners:
                verdicts.append(None)
            elif owners == {off} and f.chunks[off] == payload:
                verdicts.append("replay")
            else:
                verdicts.append(Written)
        bad = [v for v in verdicts if isinstance(v, type)]
        if bad:
            with pytest.raises((Trimmed, Written)):
                do()
        else:
            do()
            for (off, payload), v in zip(items, verdicts, strict=True):
                if v is None:
                    f.chunks[off] = payload
                    f.eof = max(f.eof, off + len(payload))
        if name not in self.files:
            self.files[name] = f  # a write (even a refused one) names the file

    @rule(data=st.data(), rel=st.integers(0, 220), payload=st.binary(min_size=1, max_size=8))
    def write_bad_checksum(self, data: st.DataObject, rel: int, payload: bytes) -> None:
        name = data.draw(st.sampled_from(self.names()))
        with pytest.raises((BadChecksum, Trimmed)):
            self.call(self.store.write, name, B + rel, payload, client_csum(payload + b"!"))

    @rule(data=st.data(), rel=st.integers(0, 220), size=st.integers(1, 80))
    def trim(self, data: st.DataObject, rel: int, size: int) -> None:
        name = data.draw(st.sampled_from(self.names()))
        if name in self.deleted:
            with pytest.raises(Trimmed):
                self.call(self.store.trim, name, B + rel, size)
            return
        self.call(self.store.trim, name, B + rel, size)
        f = self.files.setdefault(name, MFile())
        f.trim(B + rel, size)
        self.maybe_delete(name)

    @rule(data=st.data(), rel=st.integers(0, 240), size=st.integers(1, 80),
          needs_trimmed=st.booleans())
    def read(self, data: st.DataObject, rel: int, size: int, needs_trimmed: bool) -> None:
        name = data.draw(st.sampled_from(self.names()))
        off = B + rel
        expected = self.expected_read(name, off, size, needs_trimmed)
        if isinstance(expected, type):
            with pytest.raises(expected):
                self.call(self.store.read, name, off, size, needs_trimmed=needs_trimmed)
            return
        got = self.call(self.store.read, name, off, size, needs_trimmed=needs_trimmed)
        assert [(c.offset, c.data) for c in got.chunks] == expected[0]
        assert got.trimmed == expected[1]
        assert got.partial == expected[2]

    @precondition(lambda self: any(f.chunks for f in self.files.values()))
    @rule(data=st.data(), needs_trimmed=st.booleans())
    def read_chunk(self, data: st.DataObject, needs_trimmed: bool) -> None:
        """Read exactly one known chunk (or a slice of it): never partial."""
        name = data.draw(st.sampled_from(self.with_chunks()))
        off = data.draw(st.sampled_from(sorted(self.files[name].chunks)))
        chunk = self.files[name].chunks[off]
        lo = data.draw(st.integers(0, len(chunk) - 1))
        hi = data.draw(st.integers(lo + 1, len(chunk)))
        got = self.call(self.store.read, name, off + lo, hi - lo, needs_trimmed=needs_trimmed)
        assert [(c.offset, c.data) for c in got.chunks] == [(off + lo, chunk[lo:hi])]
        assert not got.partial and got.trimmed == []

    def expected_read(self, name: str, off: int, size: int, needs_trimmed: bool) -> Any:
        if name in self.deleted:
            return Trimmed
        f = self.files.get(name)
        if f is None or off >= f.eof:
            return NotWritten
        end = off + size
        pieces = []
        for c_off in sorted(f.chunks):
            c = f.chunks[c_off]
            lo, hi = max(c_off, off), min(c_off + len(c), end)
            if lo < hi:
                pieces.append((lo, c[lo - c_off: hi - c_off]))
        runs: list[tuple[int, int]] = []
        for b in range(off, end):
            if b in f.trimmed:
                if runs and runs[-1][0] + runs[-1][1] == b:
                    runs[-1] = (runs[-1][0], runs[-1][1] + 1)
                else:
                    runs.append((b, 1))
        n_trimmed = sum(s for _, s in runs)
        if not pieces:
            if n_trimmed == size:
                return Trimmed
            if runs and needs_trimmed:
                return ([], runs, True)
            return NotWritten
        written = sum(len(d) for _, d in pieces)
        return (pieces, runs if needs_trimmed else [], written < size)

    @rule()
    def restart(self) -> None:
        self.call(self.store.close)
        self.store = self.call(FluStore.open, self.dir, self.config)
        self.targets.clear()  # a restarted FLU mints new files for every prefix
        self.minted.clear()  # ... and forgets which ones it minted before

    # ---- invariants ---------------------------------------------------------------
    @invariant()
    def files_match(self) -> None:
        if self.store is None:
            return
        listed = self.call(self.store.list_files)
        assert listed == sorted((n, f.eof) for n, f in self.files.items())

    @invariant()
    def checksum_lists_match(self) -> None:
        if self.store is None:
            return
        for name, f in self.files.items():
            async def collect(name: str = name) -> list[Any]:
                return [e async for b in self.store.checksum_list(name, batch_size=4)
                        for e in b]

            entries = self.portal.call(collect)
            written = [(e.offset, e.size) for e in entries if e.csum is not None]
            assert written == sorted((o, len(d)) for o, d in f.chunks.items())
            n_trimmed = sum(e.size for e in entries if e.csum is None)
            assert n_trimmed == len(f.trimmed)


FileStoreMachine.TestCase.settings = settings(
    max_examples=20, stateful_step_count=30, deadline=None
)
test_file_store = FileStoreMachine.TestCase

_ = ReadResult  # the type the read rule checks
