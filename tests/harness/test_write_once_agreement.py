"""The linear-time write-once checker and the general linearizability checker (with its
write-once model) give the same verdict on small write-once histories, valid or with one
injected anomaly, with crashed and failed operations."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from harness.checker.gen import WRITE_ONCE_ANOMALIES, write_once_history
from harness.checker.run import check_history
from harness.checker.write_once import check_write_once
from harness.history import events_from_dicts, pair_ops


def _both(events: list[dict[str, Any]]) -> tuple[Any, Any]:
    ops = pair_ops(events_from_dicts(events))
    general = check_history(ops, "write-once", time_limit_s=20, memory_limit_mb=1024, general=True)
    return check_write_once(events).valid, general.valid


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    processes=st.integers(1, 5),
    crash_p=st.sampled_from([0.0, 0.1, 0.3]),
    fail_p=st.sampled_from([0.0, 0.1]),
    anomaly=st.sampled_from([None, *WRITE_ONCE_ANOMALIES]),
)
def test_checkers_agree_on_generated_histories(
    seed: int, processes: int, crash_p: float, fail_p: float, anomaly: str | None
) -> None:
    """Same verdict from both checkers on simulated histories (+ at most one anomaly)."""
    events = list(
        write_once_history(
            seed=seed,
            ops=40,
            processes=processes,
            crash_p=crash_p,
            fail_p=fail_p,
            anomaly=anomaly,
            window=8,
            nodes=("a", "b"),
        )
    )
    mine, general = _both(events)
    assert general != "unknown"
    assert mine == general, (seed, anomaly)
    if anomaly is None:
        assert mine is True
