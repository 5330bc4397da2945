"""Storage-layer exceptions that have no wire status (start-up and I/O failures).

Owns: ``StorageCorrupt`` (refuse to start; names file, ranges and the repair command) and
``StoreFailed`` (an fsync/commit failed; the store refuses all further work).
"""

from __future__ import annotations

from .group_commit import StoreFailed

REPAIR_HINT = (
    "run `machi node repair --data-dir {dir}` (library: "
    "machi.storage.recovery.repair_metadata) to drop the metadata of the missing chunks "
    "and record them in the lost_chunks table; chain repair can then re-fill them"
)


class StorageCorrupt(Exception):
    """The data directory is inconsistent in a way that would lose data if ignored."""


__all__ = ["REPAIR_HINT", "StorageCorrupt", "StoreFailed"]
