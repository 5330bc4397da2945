"""Latency and throughput summaries for benchmark cells.  Pure: no clock, no I/O."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in [0, 100]) of an already sorted sequence."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def summarize(latencies_s: Sequence[float], elapsed_s: float, op_bytes: int) -> dict[str, Any]:
    """ops, ops/s, MB/s (10^6 bytes), GB/s and latency p50/p99/max in milliseconds."""
    lat = sorted(latencies_s)
    ops = len(lat)
    rate = ops / elapsed_s if elapsed_s > 0 else 0.0
    return {
        "ops": ops,
        "elapsed_s": round(elapsed_s, 4),
        "ops_per_s": round(rate, 1),
        "mb_per_s": round(rate * op_bytes / 1e6, 2),
        "gb_per_s": round(rate * op_bytes / 1e9, 4),
        "latency_ms_p50": round(percentile(lat, 50) * 1000, 3),
        "latency_ms_p99": round(percentile(lat, 99) * 1000, 3),
        "latency_ms_max": round((lat[-1] if lat else 0.0) * 1000, 3),
    }


def parse_size(text: str) -> int:
    """``4KiB``, ``1MiB``, ``512``, ``2k`` -> bytes; raises ``ValueError``."""
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    mult = 1
    if t and t[-1] in units:
        mult = units[t[-1]]
        t = t[:-1]
    if not t.isdigit() or int(t) * mult <= 0:
        raise ValueError(f"bad size {text!r}: want e.g. 4KiB, 1MiB, 512")
    return int(t) * mult


def size_label(n: int) -> str:
    for unit, mult in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n % mult == 0:
            return f"{n // mult}{unit}"
    return f"{n}B"
