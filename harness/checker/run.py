"""Impure glue around the pure checkers: clocks, process memory, and model dispatch.

Owns ``check_history`` (the entry point for the CLI and ``bench-check``): it turns
``time_limit_s`` / ``memory_limit_mb`` into a ``Budget`` (``time.monotonic`` deadline, RSS
probe from /proc) and dispatches ``write-once`` to the linear-time write-once checker
unless ``general=True``, with Python's cyclic garbage collector paused around the general
checker (``paused_gc``). It must not implement any checking itself.
"""

from __future__ import annotations

import gc
import os
import resource
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from harness.checker.linear import Budget, check_linearizable
from harness.checker.models import Model, get_model
from harness.checker.result import CheckResult
from harness.history import Op

_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """Current resident set size of this process (peak RSS where /proc is unavailable)."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE_BYTES
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def make_deadline(time_limit_s: float | None) -> Callable[[], bool] | None:
    """A callable that turns True once ``time_limit_s`` seconds have passed (monotonic)."""
    if time_limit_s is None:
        return None
    end = time.monotonic() + time_limit_s

    def deadline() -> bool:
        return time.monotonic() >= end

    return deadline


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector for the block (restored after, also on error).

    The general checker allocates many small tuples, sets and ints, and every few hundred
    allocations CPython runs a collection; once in a while a full one, which walks every
    live object (the whole history: on kv 10 keys x 10,000 ops that was a third of the
    check's CPU). What the checker builds holds no reference cycles, so reference counting
    frees all of it as usual and the pause costs no memory; the memory budget's RSS probe
    still watches the process."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def make_budget(
    time_limit_s: float | None, memory_limit_mb: float | None, max_steps: int | None = None
) -> Budget:
    """A search budget: wall-clock deadline, memory limit on the whole process's RSS."""
    limit = None if memory_limit_mb is None else int(memory_limit_mb * 1024 * 1024)
    return Budget(
        deadline=make_deadline(time_limit_s),
        memory_limit_bytes=limit,
        memory_probe=rss_bytes if limit is not None else None,
        max_steps=max_steps,
    )


def check_history(
    ops: Sequence[Op],
    model: str | Model,
    time_limit_s: float | None = None,
    memory_limit_mb: float | None = None,
    *,
    initial: Any = None,
    general: bool = False,
    max_steps: int | None = None,
) -> CheckResult:
    """Check paired ops against a model by name (or instance) within time/memory budgets.

    ``write-once`` goes to ``harness.checker.write_once.check_write_once`` (linear time)
    unless ``general`` asks for the general search with the write-once model.
    """
    if isinstance(model, str):
        if model == "write-once" and not general:
            from harness.checker.write_once import check_write_once

            return check_write_once(
                ops,
                memory_limit_mb=memory_limit_mb,
                deadline=make_deadline(time_limit_s),
            )
        model = get_model(model, initial)
    with paused_gc():
        return check_linearizable(ops, model, make_budget(time_limit_s, memory_limit_mb, max_steps))
