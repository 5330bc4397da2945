"""lossyfs: a FUSE pass-through filesystem that can lose power.

Everything a process writes under the mount point goes straight to the backing directory
(no write cache of its own), and lossyfs remembers, per file, how to undo every change made
since that file was last fsync'ed / fdatasync'ed.  A **power cut** (SIGUSR1, then unmount)
undoes those changes on the backing files, newest first, and removes files whose directory
entry was never made durable (created since the last fsync of their directory), so the
backing directory holds what a disk would hold after power loss with the worst-case page
cache: nothing the process did not sync.  A clean unmount (no SIGUSR1) keeps everything.

Used by the power-loss tests (tests/integration/test_power_loss.py) to prove that an
acknowledged append is on disk as configured, and that a store which acknowledges before
syncing (the ack-before-sync canary) loses acknowledged data.

What is modelled: data writes and truncations (undone unless the file was synced after
them), file creation (undone unless the parent directory was synced after it).  What is
not: unlink, rename, mkdir, rmdir, chmod and times take effect at once and are never undone
(optimistic: a real disk could lose them too); sub-file ordering (a real disk may keep a
later unsynced write and lose an earlier one; lossyfs loses all of them).

Owns: that model and the mount's life.  Must not: touch anything outside the backing
directory, or keep data only in memory (the undo log holds old bytes, never new ones).
Run as ``python -m harness.lossyfs BACKING MOUNT`` (foreground; root or fuse group; needs
libfuse2 and fusepy, both installed by the project's scripts).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    from fuse import FUSE, FuseOSError, Operations  # type: ignore[import-untyped]
except (ImportError, OSError):  # fusepy, or libfuse2 under it, missing: see fuse_missing()
    FUSE = None
    Operations = object

    class FuseOSError(OSError):  # type: ignore[no-redef]
        def __init__(self, errno_: int) -> None:
            super().__init__(errno_, os.strerror(errno_))

#: bound on the undo log (old bytes kept for overwrites); past it, writes fail with EIO so
#: a test never silently stops modelling the cut
UNDO_BYTES_MAX = 512 * 1024 * 1024


@dataclass
class _FileUndo:
    """How to take one file back to its state at its last sync."""

    synced_size: int
    overwrites: list[tuple[int, bytes]] = field(default_factory=list)  # (offset, old bytes)


class LossyFS(Operations):  # type: ignore[misc]
    """The pass-through operations with the undo bookkeeping (one lock for all of it)."""

    def __init__(self, backing: str) -> None:
        self.root = os.path.realpath(backing)
        self._mu = threading.Lock()
        self.undo: dict[str, _FileUndo] = {}  # backing path -> undo since its last sync
        self.new_entries: dict[str, set[str]] = {}  # dir -> names created since its sync
        self.undo_bytes = 0
        self.cut_requested = False
        self.stats = {"files_rolled_back": 0, "bytes_rolled_back": 0, "entries_removed": 0}

    # -- paths ---------------------------------------------------------------------------
    def _full(self, path: str) -> str:
        full = os.path.realpath(os.path.join(self.root, path.lstrip("/")))
        if full != self.root and not full.startswith(self.root + os.sep):
            raise FuseOSError(errno.EACCES)
        return full

    # -- undo bookkeeping (call with self.lock held) --------------------------------------
    def _touch(self, full: str, size_now: int) -> _FileUndo:
        u = self.undo.get(full)
        if u is None:
            u = self.undo[full] = _FileUndo(synced_size=size_now)
        return u

    def _keep_old(self, u: _FileUndo, offset: int, old: bytes) -> None:
        if not old:
            return
        if self.undo_bytes + len(old) > UNDO_BYTES_MAX:
            raise FuseOSError(errno.EIO)
        u.overwrites.append((offset, old))
        self.undo_bytes += len(old)

    def _forget(self, full: str) -> None:
        u = self.undo.pop(full, None)
        if u is not None:
            self.undo_bytes -= sum(len(b) for _, b in u.overwrites)

    def power_cut(self) -> dict[str, int]:
        """Undo every unsynced change on the backing files (the mount must be gone)."""
        with self._mu:
            for full, u in self.undo.items():
                if not os.path.exists(full):
                    continue
                fd = os.open(full, os.O_WRONLY)
                try:
                    size = os.fstat(fd).st_size
                    lost = max(0, size - u.synced_size)
                    for offset, old in reversed(u.overwrites):
                        os.pwrite(fd, old, offset)
                        lost += len(old)
                    os.ftruncate(fd, u.synced_size)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                if lost or u.overwrites:
                    self.stats["files_rolled_back"] += 1
                    self.stats["bytes_rolled_back"] += lost
            for d, names in self.new_entries.items():
                for n in names:
                    p = os.path.join(d, n)
                    if os.path.isfile(p) or os.path.islink(p):
                        os.unlink(p)
                        self.stats["entries_removed"] += 1
            self.undo.clear()
            self.new_entries.clear()
            self.undo_bytes = 0
        return dict(self.stats)

    # -- filesystem operations -----------------------------------------------------------
    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        try:
            st = os.lstat(self._full(path))
        except OSError as e:
            raise FuseOSError(e.errno) from None
        return {k: getattr(st, k) for k in (
            "st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_atime", "st_mtime",
            "st_ctime")}

    def readdir(self, path: str, fh: Any) -> list[str]:
        return [".", "..", *os.listdir(self._full(path))]

    def access(self, path: str, amode: int) -> None:
        if not os.access(self._full(path), amode):
            raise FuseOSError(errno.EACCES)

    def statfs(self, path: str) -> dict[str, Any]:
        sv = os.statvfs(self._full(path))
        return {k: getattr(sv, k) for k in (
            "f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files",
            "f_flag", "f_frsize", "f_namemax")}

    def open(self, path: str, flags: int) -> int:
        try:
            return os.open(self._full(path), flags & ~(os.O_CREAT | os.O_EXCL))
        except OSError as e:
            raise FuseOSError(e.errno) from None

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        full = self._full(path)
        with self._mu:
            existed = os.path.lexists(full)
            try:
                fd = os.open(full, os.O_RDWR | os.O_CREAT, mode)
            except OSError as e:
                raise FuseOSError(e.errno) from None
            if not existed:
                d, n = os.path.split(full)
                self.new_entries.setdefault(d, set()).add(n)
                self._touch(full, 0)
        return fd

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return os.pread(fh, size, offset)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        full = self._full(path)
        with self._mu:
            size = os.fstat(fh).st_size
            u = self._touch(full, size)
            if offset < size:
                self._keep_old(u, offset, os.pread(fh, min(len(data), size - offset), offset))
            return os.pwrite(fh, data, offset)

    def truncate(self, path: str, length: int, fh: Any = None) -> None:
        full = self._full(path)
        with self._mu:
            size = os.path.getsize(full)
            u = self._touch(full, size)
            if length < size:
                with open(full, "rb") as f:
                    f.seek(length)
                    self._keep_old(u, length, f.read(size - length))
            os.truncate(full, length)

    def fsync(self, path: str, datasync: int, fh: int) -> None:
        full = self._full(path)
        with self._mu:
            (os.fdatasync if datasync else os.fsync)(fh)
            self._forget(full)

    def fsyncdir(self, path: str, datasync: int, fh: Any) -> None:
        full = self._full(path)
        with self._mu:
            fd = os.open(full, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self.new_entries.pop(full, None)

    def flush(self, path: str, fh: int) -> None:
        return None

    def release(self, path: str, fh: int) -> None:
        os.close(fh)

    def unlink(self, path: str) -> None:
        full = self._full(path)
        with self._mu:
            os.unlink(full)
            self._forget(full)
            d, n = os.path.split(full)
            self.new_entries.get(d, set()).discard(n)

    def rename(self, old: str, new: str) -> None:
        fo, fn = self._full(old), self._full(new)
        with self._mu:
            os.rename(fo, fn)
            self._forget(fn)
            if fo in self.undo:
                self.undo[fn] = self.undo.pop(fo)
            do, no = os.path.split(fo)
            if no in self.new_entries.get(do, set()):
                self.new_entries[do].discard(no)
                dn, nn = os.path.split(fn)
                self.new_entries.setdefault(dn, set()).add(nn)

    def mkdir(self, path: str, mode: int) -> None:
        os.mkdir(self._full(path), mode)

    def rmdir(self, path: str) -> None:
        os.rmdir(self._full(path))

    def chmod(self, path: str, mode: int) -> None:
        os.chmod(self._full(path), mode)

    def chown(self, path: str, uid: int, gid: int) -> None:
        os.chown(self._full(path), uid, gid)

    def utimens(self, path: str, times: Any = None) -> None:
        os.utime(self._full(path), times)

    def readlink(self, path: str) -> str:
        return os.readlink(self._full(path))


def fuse_missing() -> str | None:
    """Why lossyfs cannot run here (None when it can): root, /dev/fuse, fusepy, libfuse2."""
    if os.geteuid() != 0:
        return "needs root"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    try:
        import fuse  # noqa: F401
    except (ImportError, OSError) as e:
        return f"fusepy / libfuse2 missing ({e}); run scripts/install-system-deps"
    return None


class LossyMount:
    """One `python -m harness.lossyfs BACKING MOUNT` process: mount, power cut, remount."""

    def __init__(self, backing: Path, mount: Path) -> None:
        self.backing, self.mount = backing, mount
        self.proc: subprocess.Popen[str] | None = None
        backing.mkdir(parents=True, exist_ok=True)
        mount.mkdir(parents=True, exist_ok=True)

    def up(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "harness.lossyfs", str(self.backing), str(self.mount)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=Path(__file__).resolve().parents[1])
        deadline = time.monotonic() + 20
        while not os.path.ismount(self.mount):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.down()
                raise RuntimeError(f"lossyfs did not mount: {self.proc.stderr.read()[-2000:]}"
                                   if self.proc.stderr else "lossyfs did not mount")
            time.sleep(0.05)

    def _unmount(self) -> dict[str, object]:
        assert self.proc is not None
        # a just-killed node may hold the mount busy for a moment while it exits
        deadline = time.monotonic() + 30
        while True:
            r = subprocess.run(["umount", str(self.mount)], capture_output=True, text=True,
                               timeout=30)
            if r.returncode == 0 or not os.path.ismount(self.mount):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"umount {self.mount}: {r.stderr.strip()}")
            time.sleep(0.2)
        # A mount namespace made while we were mounted (`ip netns exec`, `unshare -m`) keeps
        # a copy of the mount, so the kernel may never tell lossyfs the mount is gone:
        # libfuse ends its loop on SIGTERM, and the cut (if armed) runs after that.
        try:
            self.proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
        out, err = self.proc.communicate(timeout=30)
        lines = [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]
        self.proc = None
        assert lines and "power_cut" in lines[-1], (out, err[-2000:])
        return lines[-1]

    def power_cut(self) -> dict[str, object]:
        """Forget everything not synced, then unmount.  Returns lossyfs's stats."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGUSR1)
        assert self.proc.stdout is not None
        armed = self.proc.stdout.readline()  # the cut is armed before the unmount
        assert "power_cut_armed" in armed, armed
        stats = self._unmount()
        assert stats["power_cut"] is True
        return stats

    def down(self) -> None:
        """Clean unmount (keeps everything); idempotent, also after a failure."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self._unmount()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if os.path.ismount(self.mount):
            subprocess.run(["umount", "-l", str(self.mount)], capture_output=True)
        self.proc = None


def main(argv: list[str] | None = None) -> int:
    """``python -m harness.lossyfs BACKING MOUNT``: serve until unmounted; SIGUSR1 first
    makes the unmount a power cut.  Prints one JSON line with the cut's stats at exit."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m harness.lossyfs BACKING MOUNT", file=sys.stderr)
        return 254
    backing, mount = args
    fs = LossyFS(backing)

    # SIGUSR1 is blocked everywhere (libfuse's threads inherit the mask) and taken by one
    # thread with sigwait: the main thread sits in libfuse's C loop, where a Python signal
    # handler would only run after the unmount.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})

    def wait_for_cut() -> None:
        signal.sigwait({signal.SIGUSR1})
        fs.cut_requested = True
        print(json.dumps({"power_cut_armed": True}), flush=True)

    threading.Thread(target=wait_for_cut, daemon=True, name="lossyfs-cut").start()
    FUSE(fs, mount, foreground=True, nothreads=False, allow_other=True,
         fsname="lossyfs", default_permissions=True, big_writes=True, max_write=131072)
    out: dict[str, Any] = {"power_cut": fs.cut_requested}
    if fs.cut_requested:
        out.update(fs.power_cut())
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
