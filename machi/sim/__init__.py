"""Deterministic simulator: one thread, one seed, one-way links, invariants."""
