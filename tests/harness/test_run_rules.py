"""The run-level rules of `harness.run` on small hand-made inputs: one projection per epoch
number per node (`epoch_unique`), and AP stale reads tolerated only near faults
(`ap_calm_stale_reads`) -- without a cluster."""

from __future__ import annotations

from typing import Any

from harness.run import ap_calm_stale_reads, epoch_unique

A, B = "a" * 64, "b" * 64


def test_epoch_unique_flags_one_node_with_two_projections_at_one_epoch() -> None:
    """A node whose status showed one projection at epoch 3 and whose store holds another
    is flagged; the same number naming different projections on two nodes is not."""
    ok = epoch_unique({"n1": {"3": {A: "status"}}, "n2": {"3": {B: "public"}}}, [])
    assert ok["valid"] is True and ok["reused"] == 0
    bad = epoch_unique({"n1": {"3": {A: "status", B: "public"}}}, [])
    assert bad["valid"] is False and bad["reused"] == 1
    assert bad["witness"]["examples"][0]["node"] == "n1"
    # the projection log of the same node counts too
    logged = epoch_unique({"n1": {"3": {A: "status"}}},
                          [{"node": "n1", "epoch": 3, "epoch_csum": B}])
    assert logged["valid"] is False
    assert epoch_unique(None, [])["valid"] == "unknown"
    # a malformed (e.g. older) final.json gives unknown with the reason, not a crash
    odd = epoch_unique({"3": {A: "n1:status"}}, [])  # type: ignore[dict-item]
    assert odd["valid"] == "unknown" and "malformed" in odd["witness"]["reason"]


def _ev(i: int, t_s: float, process: Any, typ: str, f: str, value: Any,
        **extra: Any) -> dict[str, Any]:
    return {"index": i, "time": int(t_s * 1e9), "process": process, "type": typ, "f": f,
            "value": value, **extra}


def _stale_history(read_at_s: float, read_epoch: int = 1) -> list[dict[str, Any]]:
    """An append acknowledged at 1 s (epoch 1), a partition from 2 s to 4 s, and a read at
    `read_at_s` (epoch `read_epoch`) that finds the position unwritten."""
    pos = ["h^^00000000^x^1", 1024, 96]
    evs = [
        _ev(0, 0.5, 0, "invoke", "append", {"v": "c0-1", "prefix": "h"}),
        _ev(1, 1.0, 0, "ok", "append", {"v": "c0-1", "pos": pos}, epoch=1),
        _ev(2, 2.0, "nemesis", "info", "partition", {"targets": ["n1"], "phase": "start"}),
        _ev(3, 2.0, "nemesis", "info", "partition", {"targets": ["n1"], "phase": "done"}),
        _ev(4, 4.0, "nemesis", "info", "heal", {"targets": ["n1"], "phase": "start"}),
        _ev(5, 4.0, "nemesis", "info", "heal", {"targets": ["n1"], "phase": "done"}),
    ]
    evs += [_ev(6, read_at_s, 1, "invoke", "read", {"pos": pos}),
            _ev(7, read_at_s + 0.01, 1, "ok", "read", {"pos": pos, "v": None},
                epoch=read_epoch)]
    evs.sort(key=lambda e: (e["time"], e["index"]))
    for i, e in enumerate(evs):
        e["index"] = i
    return evs


def test_ap_stale_read_is_tolerated_only_near_a_fault() -> None:
    """A stale read during the partition or within the settle time after it is tolerated;
    one before any fault, or after the settle time, is a real anomaly."""
    settle_ms = 1_000
    during = ap_calm_stale_reads(_stale_history(3.0), settle_ms)
    assert during["count"] == 0 and during["reads_in_fault_windows"] == 1
    settling = ap_calm_stale_reads(_stale_history(4.5), settle_ms)
    assert settling["count"] == 0
    before = ap_calm_stale_reads(_stale_history(1.5), settle_ms)
    assert before["count"] == 1 and before["kinds"] == {"unwritten-after-ack": 1}
    after = ap_calm_stale_reads(_stale_history(6.0), settle_ms)
    assert after["count"] == 1 and after["examples"]
    # a chain change nobody caused (a new epoch first reported by the read itself) opens a
    # window too: AP may have split without the nemesis
    churn = ap_calm_stale_reads(_stale_history(6.0, read_epoch=2), settle_ms)
    assert churn["count"] == 0 and churn["epoch_change_windows"] == 1


def test_projection_lines_of_other_kernels_are_placed_by_their_wall_clock() -> None:
    """On hosts that are not netns a daemon's monotonic `time_ms` means nothing to the
    harness: records are moved to the harness clock by `time_unix_ms` and the run's clock
    pair; netns records and records without the wall clock stay as logged."""
    from harness.run import on_harness_clock

    clock = {"monotonic_ms": 1_000, "unix_ms": 1_700_000_000_000}
    recs = [{"node": "n1", "epoch": 2, "time_ms": 77, "time_unix_ms": 1_700_000_002_500},
            {"node": "n2", "epoch": 2, "time_ms": 88}]
    moved = on_harness_clock(recs, {"options": {"provider": "ssh"}, "clock": clock})
    assert moved[0]["time_ms"] == 3_500 and moved[0]["time_ms_daemon"] == 77
    assert moved[1] == recs[1]
    assert on_harness_clock(recs, {"options": {"provider": "netns"}, "clock": clock}) == recs
    assert on_harness_clock(recs, {"options": {"provider": "vagrant"}}) == recs  # no clock


def test_the_daemon_logs_each_adoption_with_its_wall_clock() -> None:
    """A projection-log line carries `time_unix_ms` next to the monotonic `time_ms`."""
    from machi.core.projection import make_projection
    from machi.node.chain_driver import projection_record

    p = make_projection(epoch_number=1, author_server="n1", chain_name="c1",
                        all_members=["n1"], upi=["n1"])
    rec = projection_record("n1", p, confirmed=True, time_ms=5, time_unix_ms=1_700_000_000_001)
    assert rec["time_ms"] == 5 and rec["time_unix_ms"] == 1_700_000_000_001
    assert "time_unix_ms" not in projection_record("n1", p, confirmed=True, time_ms=5)
