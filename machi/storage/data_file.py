"""Append-only data files of one FLU: creation (with the 1024-byte header), positional
reads and writes, fdatasync, and a bounded cache of open file descriptors.

Owns: bytes on disk under ``<data_dir>/data/``.  Must not: decide what may be written
where (that is ``machi.core.ranges`` via ``flu_store``) or know about metadata.

Small writes and reads are done inline on the event loop (a ``pwrite`` of 4 KiB costs
~6 us, a thread hop ~145 us on the reference machine); writes of ``INLINE_WRITE_MAX`` bytes
or more go to a worker thread so that one large chunk does not stall every connection.
fdatasync is always done off the event loop: by a group commit on the database thread,
in the same hop as the metadata transaction (``take_dirty`` pins the descriptors it must
sync, ``fdatasync_fds`` syncs them, ``release`` unpins), or in a worker thread
(``sync_dirty``).
"""

from __future__ import annotations

import contextlib
import os
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

import anyio.to_thread

from machi.core.ranges import MIN_OFFSET

HEADER = (b"machi-py" * (MIN_OFFSET // 8))[:MIN_OFFSET]
INLINE_WRITE_MAX = 256 * 1024
INLINE_READ_MAX = 1024 * 1024
FD_CACHE_MAX = 256


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_data_file(path: Path) -> None:
    """Create ``path`` with the header, durable (file data and directory entry)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        os.pwrite(fd, HEADER, 0)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    fsync_dir(path.parent)


class DataFiles:
    """Open descriptors of the data files, bounded; dirty ones stay open until synced."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._dirty: set[str] = set()
        #: name -> pins: descriptors another thread may use (an fdatasync to come or
        #: running, a big pwrite/pread); never closed or evicted while pinned
        self._pinned: dict[str, int] = {}
        #: forgotten while pinned: name -> descriptor, closed when its last pin goes
        self._zombies: dict[str, int] = {}

    def path(self, name: str) -> Path:
        return self.dir / name

    def exists(self, name: str) -> bool:
        return self.path(name).exists()

    def size(self, name: str) -> int:
        return self.path(name).stat().st_size

    def _fd(self, name: str) -> int:
        fd = self._fds.get(name)
        if fd is not None:
            self._fds.move_to_end(name)
            return fd
        fd = os.open(self.path(name), os.O_RDWR | os.O_CLOEXEC)
        self._fds[name] = fd
        self._evict()
        return fd

    def _evict(self) -> None:
        if len(self._fds) <= FD_CACHE_MAX:
            return
        for name in list(self._fds):
            if len(self._fds) <= FD_CACHE_MAX:
                break
            if name not in self._dirty and name not in self._pinned:
                os.close(self._fds.pop(name))

    async def create(self, name: str) -> None:
        await anyio.to_thread.run_sync(create_data_file, self.path(name))

    async def pwrite(self, name: str, data: bytes | memoryview, offset: int) -> None:
        fd = self._fd(name)
        self._dirty.add(name)
        if len(data) < INLINE_WRITE_MAX:
            n = os.pwrite(fd, data, offset)
        else:
            self._pin(name)
            try:
                n = await anyio.to_thread.run_sync(os.pwrite, fd, data, offset)
            finally:
                self.release([name])
            # again: a sync that took the dirty mark while the write ran may have missed it
            self._dirty.add(name)
        if n != len(data):
            raise OSError(f"short write to {name} at {offset}: {n} of {len(data)} bytes")

    async def pread(self, name: str, size: int, offset: int) -> bytes:
        fd = self._fd(name)
        if size <= INLINE_READ_MAX:
            return os.pread(fd, size, offset)
        self._pin(name)
        try:
            return await anyio.to_thread.run_sync(os.pread, fd, size, offset)
        finally:
            self.release([name])

    def pread_now(self, name: str, size: int, offset: int) -> bytes:
        """Synchronous read, for the few places that must not yield (trim splitting)."""
        return os.pread(self._fd(name), size, offset)

    def _pin(self, name: str) -> None:
        self._pinned[name] = self._pinned.get(name, 0) + 1

    def take_dirty(self, into: dict[str, int]) -> None:
        """Move every file written since the last take into ``into`` (name -> descriptor),
        pinning the ones not already there (one pin per name in ``into``: give them back
        with ``release(into)`` once synced).  Files forgotten meanwhile are skipped."""
        for name in self._dirty:
            if name not in into:
                fd = self._fds.get(name)
                if fd is not None:
                    self._pin(name)
                    into[name] = fd
        self._dirty.clear()

    def release(self, names: Iterable[str]) -> None:
        """Drop one pin per name (after ``take_dirty``/``_pin``)."""
        for name in names:
            n = self._pinned.get(name, 0) - 1
            if n > 0:
                self._pinned[name] = n
                continue
            self._pinned.pop(name, None)
            fd = self._zombies.pop(name, None)
            if fd is not None:
                os.close(fd)
        self._evict()

    @staticmethod
    def fdatasync_fds(fds: Iterable[int]) -> None:
        """fdatasync each descriptor (any thread; the caller holds their pins)."""
        for fd in fds:
            os.fdatasync(fd)

    def redirty(self, names: Iterable[str]) -> None:
        """Mark ``names`` written again (their sync failed or never ran)."""
        self._dirty.update(n for n in names if n in self._fds)

    async def sync_dirty(self) -> None:
        """fdatasync every file written since the last call (one thread hop for all).

        Descriptors are pinned while the worker thread uses them, so neither eviction nor
        ``forget`` can close (and the kernel reuse) a descriptor under an fdatasync.
        """
        if not self._dirty:
            return
        batch: dict[str, int] = {}
        self.take_dirty(batch)
        try:
            await anyio.to_thread.run_sync(self.fdatasync_fds, list(batch.values()))
        except BaseException:
            self.redirty(batch)
            raise
        finally:
            self.release(batch)

    def forget(self, name: str) -> None:
        fd = self._fds.pop(name, None)
        self._dirty.discard(name)
        if fd is None:
            return
        if name in self._pinned:
            self._zombies[name] = fd
        else:
            os.close(fd)

    def unlink(self, name: str) -> None:
        self.forget(name)
        with contextlib.suppress(FileNotFoundError):
            self.path(name).unlink()

    def close(self) -> None:
        for fd in [*self._fds.values(), *self._zombies.values()]:
            os.close(fd)
        self._fds.clear()
        self._zombies.clear()
        self._dirty.clear()
