"""The run-level rules of `harness.run` on small hand-made inputs: one projection per epoch
number per node (`epoch_unique`), and AP stale reads tolerated only near faults
(`ap_calm_stale_reads`), except inside a chain that status polls show stable
(`stable_intervals`) -- without a cluster."""

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


def _poll(start_s: float, stable: list[Any] | None) -> dict[str, Any]:
    return {"start_ms": int(start_s * 1000), "time_ms": int(start_s * 1000) + 5,
            "stable": stable}


def test_ap_stale_read_inside_a_verified_stable_chain_is_judged() -> None:
    """A stale read inside a fault window is judged after all when status polls before and
    after it show one stable chain (every node at one epoch id, full UPI) at the epoch the
    read was served at; a read at another epoch, or outside the polls, stays tolerated."""
    from harness.run import stable_intervals

    polls = [_poll(2.5, [1, A]), _poll(3.5, [1, A]), _poll(4.5, [1, A]), _poll(5.5, None),
             _poll(6.5, [2, B]), _poll(7.5, [2, B])]
    stable = stable_intervals(polls)
    assert stable == [(2_505_000_000, 4_500_000_000, 1), (6_505_000_000, 7_500_000_000, 2)]
    judged = ap_calm_stale_reads(_stale_history(3.0), 1_000, stable)
    assert judged["count"] == 1 and judged["judged_in_stable_intervals"] == 1
    other_epoch = ap_calm_stale_reads(_stale_history(3.0, read_epoch=2), 1_000, stable)
    assert other_epoch["count"] == 0
    # polls of an older run (no start_ms / stable) give no interval: tolerated as before
    assert stable_intervals([{"time_ms": 1}, {"time_ms": 2}]) == []
    assert ap_calm_stale_reads(_stale_history(3.0), 1_000, [])["count"] == 0
    # one stable poll alone proves nothing about the time after it
    assert stable_intervals([_poll(2.5, [1, A]), _poll(3.5, None)]) == []


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


def test_ap_read_is_judged_by_what_its_node_could_have_known() -> None:
    """An AP read that a member of the acknowledging epoch's UPI answers 'not written' is an
    anomaly even during a fault (that node held the chunk); the same answer from a node
    outside that UPI (the other side of a partition) or from a node whose files were torn
    is not judged."""
    from harness.run import ap_served_stale_reads

    records = [{"node": "n1", "epoch": 1, "projection": {"upi": ["n1", "n2", "n3"]}},
               {"node": "n1", "epoch": 2, "projection": {"upi": ["n1", "n2"]}}]
    pos = ["h^^00000000^x^1", 1024, 96]

    def history(reader: str, torn: bool = False) -> list[dict[str, Any]]:
        evs = [_ev(0, 0.5, 0, "invoke", "append", {"v": "c0-1", "prefix": "h"}),
               _ev(1, 1.0, 0, "ok", "append", {"v": "c0-1", "pos": pos}, epoch=1, node="n1")]
        if torn:
            evs.append(_ev(2, 1.5, "nemesis", "info", "torn-write",
                           {"targets": [reader], "phase": "start"}))
        evs += [_ev(3, 2.0, 1, "invoke", "read", {"pos": pos}),
                _ev(4, 2.1, 1, "ok", "read", {"pos": pos, "v": None}, epoch=3, node=reader)]
        return evs

    bad = ap_served_stale_reads(history("n3"), records)
    assert bad["count"] == 1 and bad["examples"][0]["acked_upi"] == ["n1", "n2", "n3"]
    assert "n3" in bad["explanation"]
    assert ap_served_stale_reads(history("n4"), records)["count"] == 0
    assert ap_served_stale_reads(history("n3", torn=True), records)["count"] == 0
    # an ack whose epoch the acking node never logged proves nothing
    assert ap_served_stale_reads(history("n3"), records[1:])["count"] == 0


def test_ap_value_seen_then_unwritten_in_one_projection_is_an_anomaly() -> None:
    """A value one node served in a projection and another node of the very same
    projection (epoch number and checksum) then answers 'not written' is an anomaly; at
    the same epoch number but another projection (an AP side) it is not judged."""
    from harness.run import ap_served_stale_reads

    records = [{"node": "n1", "epoch": 4, "epoch_csum": A}, {"node": "n3", "epoch": 4,
                                                             "epoch_csum": A},
               {"node": "n5", "epoch": 4, "epoch_csum": B}]
    pos = ["h^^00000000^x^1", 1024, 96]

    def history(second: str) -> list[dict[str, Any]]:
        return [_ev(0, 1.0, 1, "invoke", "read", {"pos": pos}),
                _ev(1, 1.1, 1, "ok", "read", {"pos": pos, "v": "c0-1"}, epoch=4, node="n1"),
                _ev(2, 1.2, 1, "invoke", "read", {"pos": pos}),
                _ev(3, 1.3, 1, "ok", "read", {"pos": pos, "v": None}, epoch=4, node=second)]

    bad = ap_served_stale_reads(history("n3"), records)
    assert bad["kinds"] == {"unwritten-in-one-projection": 1}
    assert ap_served_stale_reads(history("n5"), records)["count"] == 0
    assert ap_served_stale_reads(history("n4"), records)["count"] == 0  # never logged


def test_ap_final_phase_waits_for_an_anti_entropy_pass_started_after_stability() -> None:
    """The AP final phase compares the replicas only after the UPI tail finished two
    anti-entropy passes that started after the chain was stable (harness.deploy)."""
    from harness.deploy import anti_entropy_since, tail_anti_entropy

    def st(passes: int, running: bool, upi: tuple[str, ...] = ("a", "b", "c")) -> dict:
        ae = {"passes": passes, "running": running, "status": "ok", "last": None}
        return {n: {"upi": list(upi), **({"anti_entropy": ae} if n == upi[-1] else {})}
                for n in ("a", "b", "c")}

    assert tail_anti_entropy(st(3, False)) == ("c", st(3, False)["c"]["anti_entropy"])
    assert tail_anti_entropy({"a": "down", "b": {"upi": []}}) == (None, None)
    assert tail_anti_entropy({"a": {"upi": ["a"]}}) == ("a", None)  # an older daemon
    base = ("c", 3)
    for passes, running, done in ((3, False, False), (3, True, False), (4, True, False),
                                  (4, False, False), (5, True, False), (5, False, True),
                                  (6, True, True)):
        assert anti_entropy_since(base, *tail_anti_entropy(st(passes, running))) is done
    # another tail: its counter is its own
    assert not anti_entropy_since(base, *tail_anti_entropy(st(9, False, ("c", "a", "b"))))
