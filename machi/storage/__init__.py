"""Storage: append-only data files, the SQLite metadata plane, the projection store.

Public entry points: ``machi.storage.flu_store.FluStore`` and
``machi.storage.recovery.repair_metadata``.
"""

from .errors import StorageCorrupt, StoreFailed

__all__ = ["StorageCorrupt", "StoreFailed"]
