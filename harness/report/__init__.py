"""Self-contained HTML reports (no network needed to view them)."""
