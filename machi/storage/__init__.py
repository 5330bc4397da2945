"""Storage: append-only data files, the SQLite metadata plane, the projection store."""
