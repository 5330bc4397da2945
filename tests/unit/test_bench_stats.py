"""Goal: the benchmark's pure helpers (percentiles, size parsing, summaries, ratios) give
the documented numbers."""

from __future__ import annotations

import pytest

from machi.bench.flu import ratios
from machi.bench.stats import parse_size, percentile, size_label, summarize


def test_percentile_nearest_rank() -> None:
    """Nearest-rank percentiles of a known sequence."""
    xs = [float(i) for i in range(1, 101)]
    assert percentile(xs, 50) == 50.0
    assert percentile(xs, 99) == 99.0
    assert percentile(xs, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) == 0.0


def test_parse_size_and_label() -> None:
    """Sizes parse with binary units and print back the same way; garbage is refused."""
    assert parse_size("4KiB") == 4096
    assert parse_size("1MiB") == 1024**2
    assert parse_size("2k") == 2048
    assert parse_size("512") == 512
    assert size_label(4096) == "4KiB" and size_label(1024**2) == "1MiB"
    assert size_label(1000) == "1000B"
    for bad in ("", "0", "-4k", "4x", "KiB"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_summarize_rates() -> None:
    """ops/s, MB/s and latency in ms from latencies and elapsed time."""
    s = summarize([0.001] * 99 + [0.010], 2.0, 4096)
    assert s["ops"] == 100 and s["ops_per_s"] == 50.0
    assert s["mb_per_s"] == round(50 * 4096 / 1e6, 2)
    assert s["latency_ms_p50"] == 1.0 and s["latency_ms_p99"] == 1.0
    assert s["latency_ms_max"] == 10.0


def _cell(sync: str, size: int, conc: int, ops_s: float, mb_s: float, gb_s: float) -> dict:
    lbl = size_label(size)
    return {"sync": sync, "size": size, "size_label": lbl, "concurrency": conc,
            "append": {"ops_per_s": ops_s, "mb_per_s": mb_s},
            "read": {"ops_per_s": 0.0, "gb_per_s": gb_s}}


def test_ratios_pick_best_durable_cell() -> None:
    """Ratios use the best durable cell (sync=none never counts for durability)."""
    base = {"fdatasync_4k": {"ops_per_s": 200.0}, "seq_write_1m": {"mb_per_s": 400.0}}
    cells = [
        _cell("always", 4096, 1, 100.0, 0.4, 0.001),
        _cell("batch", 4096, 8, 150.0, 0.6, 0.002),
        _cell("none", 4096, 8, 5000.0, 20.0, 0.002),
        _cell("batch", 1024**2, 8, 150.0, 180.0, 1.5),
        _cell("none", 1024**2, 8, 400.0, 400.0, 0.9),
    ]
    r = ratios(cells, base)
    assert r["append_4k_durable_vs_raw_fdatasync"]["value"] == 0.75
    assert r["append_4k_durable_vs_raw_fdatasync"]["met"] is True
    assert r["append_4k_durable_vs_raw_fdatasync"]["per_mode_concurrency_1"] == {
        "always": 0.5}
    assert r["append_1m_durable_vs_raw_seq_write"]["value"] == 0.45
    assert r["append_1m_durable_vs_raw_seq_write"]["met"] is False
    assert r["read_gb_per_s"]["value"] == 1.5 and r["read_gb_per_s"]["met"] is True
