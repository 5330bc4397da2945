"""Append-only data files of one FLU: creation (with the 1024-byte header), positional
reads and writes, fdatasync, and a bounded cache of open file descriptors.

Owns: bytes on disk under ``<data_dir>/data/``.  Must not: decide what may be written
where (that is ``machi.core.ranges`` via ``flu_store``) or know about metadata.

Small writes and reads are done inline on the event loop (a ``pwrite`` of 4 KiB costs
~6 us, a thread hop ~145 us on the reference machine); writes of ``INLINE_WRITE_MAX`` bytes
or more go to a worker thread so that one large chunk does not stall every connection.
fdatasync is always done in a worker thread.
"""

from __future__ import annotations

import contextlib
import os
from collections import OrderedDict
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
        self._pinned: dict[str, int] = {}  # name -> descriptor being fdatasync'ed
        self._zombies: list[int] = []  # forgotten while pinned: closed after the sync

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
            n = await anyio.to_thread.run_sync(os.pwrite, fd, data, offset)
        if n != len(data):
            raise OSError(f"short write to {name} at {offset}: {n} of {len(data)} bytes")

    async def pread(self, name: str, size: int, offset: int) -> bytes:
        fd = self._fd(name)
        if size <= INLINE_READ_MAX:
            return os.pread(fd, size, offset)
        return await anyio.to_thread.run_sync(os.pread, fd, size, offset)

    def pread_now(self, name: str, size: int, offset: int) -> bytes:
        """Synchronous read, for the few places that must not yield (trim splitting)."""
        return os.pread(self._fd(name), size, offset)

    async def sync_dirty(self) -> None:
        """fdatasync every file written since the last call (one thread hop for all).

        Descriptors are pinned while the worker thread uses them, so neither eviction nor
        ``forget`` can close (and the kernel reuse) a descriptor under an fdatasync.
        """
        if not self._dirty:
            return
        batch = {n: self._fds[n] for n in self._dirty if n in self._fds}
        self._dirty.clear()
        self._pinned.update(batch)
        fds = list(batch.values())

        def _sync() -> None:
            for fd in fds:
                os.fdatasync(fd)

        try:
            await anyio.to_thread.run_sync(_sync)
        except BaseException:
            self._dirty.update(n for n in batch if n in self._fds)
            raise
        finally:
            for n in batch:
                self._pinned.pop(n, None)
            if not self._pinned:
                for fd in self._zombies:
                    os.close(fd)
                self._zombies.clear()
            self._evict()

    def forget(self, name: str) -> None:
        fd = self._fds.pop(name, None)
        self._dirty.discard(name)
        if fd is None:
            return
        if name in self._pinned:
            self._zombies.append(fd)
        else:
            os.close(fd)

    def unlink(self, name: str) -> None:
        self.forget(name)
        with contextlib.suppress(FileNotFoundError):
            self.path(name).unlink()

    def close(self) -> None:
        for fd in [*self._fds.values(), *self._zombies]:
            os.close(fd)
        self._fds.clear()
        self._zombies.clear()
        self._dirty.clear()
