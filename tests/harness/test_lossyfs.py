"""Goal: lossyfs models a power cut as documented: unsynced writes, overwrites and
truncations are undone, a file created since its directory's last fsync disappears,
synced data and a clean unmount keep everything, and paths cannot escape the backing dir."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.lossyfs import LossyMount, fuse_missing

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def lossy(tmp_path: Path) -> Iterator[LossyMount]:
    why = fuse_missing()
    if why:
        pytest.skip(why)
    m = LossyMount(tmp_path / "disk", tmp_path / "mnt")
    try:
        m.up()
        yield m
    finally:
        m.down()


def _sync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def test_power_cut_undoes_exactly_what_was_not_synced(lossy: LossyMount) -> None:
    """Synced bytes stay; later appends, an overwrite and a truncation are undone; a new
    file whose directory was never synced is gone, one whose directory was synced stays."""
    m, disk = lossy.mount, lossy.backing
    fd = os.open(m / "a", os.O_RDWR | os.O_CREAT)
    os.write(fd, b"x" * 100)
    os.fdatasync(fd)
    _sync_dir(m)
    os.write(fd, b"y" * 50)       # unsynced append
    os.pwrite(fd, b"Z", 10)       # unsynced overwrite of synced bytes
    os.close(fd)
    fd = os.open(m / "b", os.O_RDWR | os.O_CREAT)
    os.write(fd, b"b" * 10)
    os.fsync(fd)                  # data synced, but the directory entry never was
    os.close(fd)
    fd = os.open(m / "c", os.O_RDWR | os.O_CREAT)
    os.write(fd, b"c" * 30)
    os.fsync(fd)
    os.ftruncate(fd, 5)           # unsynced truncation
    os.close(fd)
    _sync_dir(m)                  # c's entry is durable now, b's too
    fd = os.open(m / "d", os.O_RDWR | os.O_CREAT)
    os.write(fd, b"d")
    os.fsync(fd)
    os.close(fd)                  # d: entry not durable
    assert (m / "a").stat().st_size == 150
    stats = lossy.power_cut()
    assert (disk / "a").read_bytes() == b"x" * 100
    assert (disk / "b").read_bytes() == b"b" * 10
    assert (disk / "c").read_bytes() == b"c" * 30
    assert not (disk / "d").exists()
    assert stats["entries_removed"] == 1
    assert stats["bytes_rolled_back"] == 50 + 1 + 25


def test_clean_unmount_keeps_everything(lossy: LossyMount) -> None:
    """Without a cut, unsynced data reaches the backing directory like on a running disk."""
    (lossy.mount / "f").write_bytes(b"kept")
    lossy.down()
    assert (lossy.backing / "f").read_bytes() == b"kept"


def test_paths_cannot_leave_the_backing_directory(lossy: LossyMount, tmp_path: Path) -> None:
    """A symlink pointing outside the backing directory is not followed into the host."""
    outside = tmp_path / "outside"
    outside.write_text("secret")
    os.symlink(outside, lossy.backing / "esc")
    with pytest.raises(OSError):
        (lossy.mount / "esc").read_text()
