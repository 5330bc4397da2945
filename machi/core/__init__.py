"""The sans-IO core: pure, deterministic functions and types.

Nothing in this package may perform I/O, read a clock or use global randomness.
Time and randomness are passed in by callers. The only third-party import allowed is
``blake3`` (a pure hash function); ``tests/unit/test_core_purity.py`` enforces this.
"""
