"""Start-up reconciliation of data files with the metadata, and the repair command.

Owns: building the in-memory indexes from the loaded metadata, deciding what is
inconsistent (metadata pointing past the end of a data file -> ``StorageCorrupt``), tidying
what is safe to tidy (finishing an interrupted whole-file deletion, recreating an empty
file whose creation was interrupted), and :func:`repair_metadata`, which drops the
metadata of chunks that are no longer on disk and records them in ``lost_chunks`` -
loudly, never silently.  Must not: serve requests or guess data.

Bytes on disk beyond the committed metadata (a crash between pwrite and commit) are
simply not in the index: they are unreadable and later writes overwrite them.

:func:`scan_tails` is the start-up checksum check: the last ``TAIL_SCAN_BYTES`` of every
data file (newest files first, at most ``SCAN_BUDGET_BYTES`` in all) are read and every
committed chunk there is verified against its stored checksum.  That is where a torn write
lives (a crash mid-pwrite, the harness's torn-write fault).  Corrupt chunks are reported
(ERROR log, the ``corrupt_chunks_at_start`` metric); they stay in the index - dropping an
acknowledged chunk would turn it into "not written" - and are healed by the first exact
rewrite (a client reading around them, or repair).  Older bytes are not scrubbed.
"""

from __future__ import annotations

import fcntl
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from machi.core.checksum import CsumTag, TaggedCsum, verify
from machi.core.errors import ConfigError
from machi.core.filename import FileName, parse_filename
from machi.core.ranges import Entry, FileIndex

from .data_file import DataFiles
from .errors import REPAIR_HINT, StorageCorrupt
from .metadata import DB_NAME, Loaded, MetadataDb

log = logging.getLogger("machi.storage")


@dataclass(slots=True)
class Problem:
    file: str
    physical_size: int | None  # None: data file missing
    lost: list[tuple[int, int]]  # (offset, size) of chunks past the end


@dataclass(slots=True)
class BuiltState:
    files: dict[str, tuple[FileName, FileIndex]] = field(default_factory=dict)
    recreate: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class RepairReport:
    data_dir: Path
    files_examined: int
    lost: list[tuple[str, int, int]]  # (file, offset, size) recorded in lost_chunks
    recreated_files: list[str]

    def summary(self) -> str:
        return (
            f"{self.data_dir}: examined {self.files_examined} files, dropped metadata of "
            f"{len(self.lost)} chunks ({sum(s for _, _, s in self.lost)} bytes) into "
            f"lost_chunks, recreated {len(self.recreated_files)} missing files"
        )


def find_problems(loaded: Loaded, data: DataFiles) -> list[Problem]:
    """Files whose committed chunks are not all on disk."""
    ends: dict[str, list[tuple[int, int]]] = {}
    for file, offset, size, _csum in loaded.chunks:
        ends.setdefault(file, []).append((offset, size))
    problems = []
    for name, *_ in loaded.files:
        chunks = ends.get(name, [])
        try:
            phys: int | None = data.size(name)
        except FileNotFoundError:
            phys = None
        lost = [(o, s) for o, s in chunks if phys is None or o + s > phys]
        if lost:
            problems.append(Problem(name, phys, lost))
    return problems


def describe(problems: list[Problem], data_dir: Path, limit: int = 10) -> str:
    lines = [f"{data_dir}: metadata points past the end of {len(problems)} data file(s):"]
    for p in problems[:limit]:
        where = "missing" if p.physical_size is None else f"{p.physical_size} bytes on disk"
        shown = ", ".join(f"[{o}, +{s})" for o, s in p.lost[:5])
        more = f" and {len(p.lost) - 5} more" if len(p.lost) > 5 else ""
        lines.append(f"  {p.file} ({where}): chunks {shown}{more}")
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more files")
    lines.append(REPAIR_HINT.format(dir=data_dir))
    return "\n".join(lines)


def build_indexes(loaded: Loaded, data: DataFiles, data_dir: Path) -> BuiltState:
    """The in-memory state for ``loaded``; raises ``StorageCorrupt`` on lost chunks."""
    problems = find_problems(loaded, data)
    if problems:
        raise StorageCorrupt(describe(problems, data_dir))
    state = BuiltState()
    entries: dict[str, list[Entry]] = {}
    eofs: dict[str, tuple[FileName, int]] = {}
    for name, prefix, ns, locator, seq, eof in loaded.files:
        try:
            fn = parse_filename(name)
        except ValueError as exc:
            raise StorageCorrupt(f"{data_dir}: bad file name in metadata: {exc}") from None
        if (fn.prefix, fn.namespace, fn.locator, fn.seq) != (prefix, ns, locator, seq):
            raise StorageCorrupt(f"{data_dir}: files row of {name} disagrees with its name")
        entries[name] = []
        eofs[name] = (fn, eof)
        if not data.exists(name):
            state.recreate.append(name)  # no chunks (else find_problems): safe to recreate
    tags = {int(t): t for t in CsumTag}
    for file, offset, size, csum in loaded.chunks:
        lst = entries.get(file)
        if lst is None:
            raise StorageCorrupt(f"{data_dir}: chunk rows for unknown file {file}")
        try:
            tc = TaggedCsum(tags[csum[0]], bytes(csum[1:]))
        except (KeyError, IndexError, ValueError):
            raise StorageCorrupt(f"{data_dir}: bad checksum of {file} at {offset}") from None
        lst.append(Entry(offset, size, tc))
    for file, offset, size in loaded.trims:
        lst = entries.get(file)
        if lst is None:
            raise StorageCorrupt(f"{data_dir}: trim rows for unknown file {file}")
        lst.append(Entry(offset, size, None))
    for name, (fn, eof) in eofs.items():
        try:
            state.files[name] = (fn, FileIndex.from_entries(eof, entries[name]))
        except ValueError as exc:
            raise StorageCorrupt(f"{data_dir}: metadata of {name}: {exc}") from None
    for name in loaded.trimmed_files:
        if data.exists(name):
            log.warning("finishing the deletion of fully trimmed file %s", name)
            data.unlink(name)
    known = set(state.files) | set(loaded.trimmed_files)
    for path in data.dir.iterdir():
        if path.name not in known:
            log.warning("data file %s has no committed metadata: ignored (unreadable)",
                        path.name)
    return state


#: Bytes at the end of each data file whose chunks the start-up check verifies.
TAIL_SCAN_BYTES = 4 * 1024 * 1024
#: Bound on the bytes the start-up check reads in all (newest files first).
SCAN_BUDGET_BYTES = 64 * 1024 * 1024


def scan_tails(
    files: dict[str, tuple[FileName, FileIndex]], data: DataFiles, *,
    tail_bytes: int | None = None, budget_bytes: int | None = None,
) -> tuple[list[tuple[str, int, int]], int]:
    """Verify the committed chunks in the last ``tail_bytes`` of each file (blocking I/O:
    run it in a worker thread).  Returns the corrupt chunks ``(file, offset, size)`` and
    the number of bytes read.  Files are taken newest first (by sequence number) until
    ``budget_bytes`` are used up; the rest is logged as not scanned.  Defaults: the
    module's ``TAIL_SCAN_BYTES`` and ``SCAN_BUDGET_BYTES`` at call time."""
    tail_bytes = TAIL_SCAN_BYTES if tail_bytes is None else tail_bytes
    budget_bytes = SCAN_BUDGET_BYTES if budget_bytes is None else budget_bytes
    corrupt: list[tuple[str, int, int]] = []
    used = 0
    order = sorted(files.items(), key=lambda kv: kv[1][0].seq, reverse=True)
    skipped = 0
    for name, (_fn, index) in order:
        lo = max(0, index.eof - tail_bytes)
        todo = [e for e in index.entries() if e.csum is not None and e.offset + e.size > lo]
        need = sum(e.size for e in todo)
        if not todo:
            continue
        if used + need > budget_bytes:
            skipped += 1
            continue
        used += need
        for e in todo:
            assert e.csum is not None
            try:
                raw = data.pread_now(name, e.size, e.offset)
            except FileNotFoundError:
                break
            if len(raw) < e.size or not verify(raw, e.csum):
                log.error("start-up check: corrupt chunk %s [%d, +%d) (a torn write?): it "
                          "reads as BAD_CHECKSUM until an exact rewrite heals it",
                          name, e.offset, e.size)
                corrupt.append((name, e.offset, e.size))
    if skipped:
        log.warning("start-up check: %d data files not scanned (budget of %d bytes used)",
                    skipped, budget_bytes)
    return corrupt, used


async def repair_metadata(data_dir: Path) -> RepairReport:
    """Drop the metadata of chunks that are past the end of their data file (or whose
    file is gone), recording each one in ``lost_chunks``; recreate missing data files.

    Run with the FLU stopped (it takes the data directory lock).  Every dropped chunk is
    logged at ERROR level.  Afterwards ``FluStore.open`` succeeds and the lost ranges are
    unwritten, so chain repair can copy them back from another replica.
    """
    data_dir = Path(data_dir)
    if not (data_dir / DB_NAME).is_file():
        raise ConfigError(f"{data_dir} holds no Machi metadata database ({DB_NAME})")
    lock_fd = os.open(data_dir / "LOCK", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock_fd)
        raise StorageCorrupt(f"{data_dir} is in use: stop the FLU before repairing") from None
    db = await MetadataDb.open(data_dir, "always")
    data = DataFiles(data_dir / "data")
    try:
        loaded = await db.load()
        problems = find_problems(loaded, data)
        lost: list[tuple[str, int, int]] = []
        recreated: list[str] = []
        csums = {(f, o): c for f, o, _s, c in loaded.chunks}
        c = db.conn
        for p in problems:
            for offset, size in p.lost:
                log.error("repair: dropping metadata of lost chunk %s [%d, +%d) (%s)",
                          p.file, offset, size,
                          "file missing" if p.physical_size is None
                          else f"file has {p.physical_size} bytes")
                reason = ("data file missing" if p.physical_size is None
                          else f"past end of file ({p.physical_size} bytes)")
                await c.exec_driver_sql(
                    "INSERT INTO lost_chunks (file, offset, size, csum, reason) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (p.file, offset, size, csums.get((p.file, offset)), reason),
                )
                await c.exec_driver_sql(
                    "DELETE FROM chunks WHERE file = ? AND offset = ?", (p.file, offset)
                )
                lost.append((p.file, offset, size))
        await c.commit()
        for p in problems:
            if p.physical_size is None:
                await data.create(p.file)
                recreated.append(p.file)
        report = RepairReport(data_dir, len(loaded.files), lost, recreated)
        log.error("repair: %s", report.summary()) if lost else log.info(
            "repair: %s", report.summary())
        return report
    finally:
        data.close()
        await db.close()
        os.close(lock_fd)
