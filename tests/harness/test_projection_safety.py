"""Projection-log safety and convergence: a sane run passes, each kind of violation is
flagged, convergence time is measured from the heal, and simulator logs agree with the
simulator's own invariant checks."""

from __future__ import annotations

from typing import Any

import pytest

from harness.checker.projection_safety import check_projection_logs, convergence, normalise
from machi.core.projection import make_projection

MEMBERS = ("a", "b", "c")


def rec(
    node: str,
    epoch: int,
    upi: list[str],
    *,
    author: str = "a",
    repairing: tuple[str, ...] = (),
    down: tuple[str, ...] = (),
    mode: str = "ap",
    t: int = 0,
    confirmed: bool = False,
    witnesses: tuple[str, ...] = (),
) -> dict[str, Any]:
    p = make_projection(
        epoch_number=epoch,
        author_server=author,
        chain_name="c1",
        all_members=MEMBERS,
        mode=mode,  # type: ignore[arg-type]
        upi=upi,
        repairing=repairing,
        down=down,
        witnesses=witnesses,
    )
    return {
        "node": node,
        "epoch": epoch,
        "epoch_csum": p.epoch_csum.hex(),
        "author": author,
        "chain": "c1",
        "mode": mode,
        "upi": upi,
        "repairing": list(repairing),
        "down": list(down),
        "witnesses": list(witnesses),
        "all_members": list(MEMBERS),
        "confirmed": confirmed,
        "time_ms": t,
    }


def sane_run() -> list[dict[str, Any]]:
    """Full chain, c drops out, c repairs, the tail b promotes c back."""
    out = []
    steps = [
        (1, ["a", "b", "c"], "a", (), ()),
        (2, ["a", "b"], "a", (), ("c",)),
        (3, ["a", "b"], "a", ("c",), ()),
        (4, ["a", "b", "c"], "b", (), ()),
    ]
    for i, (epoch, upi, author, repairing, down) in enumerate(steps):
        for node in MEMBERS:
            if node == "c" and epoch == 2:
                continue  # c was down: it never adopted epoch 2
            out.append(
                rec(
                    node,
                    epoch,
                    upi,
                    author=author,
                    repairing=repairing,
                    down=down,
                    t=100 * (i + 1) + ord(node),
                )
            )
    return out


def kinds(records: list[dict[str, Any]], **kw: Any) -> dict[str, int]:
    r = check_projection_logs(records, **kw)
    anomalies = (r.witness or {}).get("anomalies", {})
    assert (r.valid is True) == (not anomalies)
    return {k: a["count"] for k, a in anomalies.items()}


def test_sane_run_is_valid_and_converges() -> None:
    """A run that shrinks, repairs and re-grows the chain is safe and converges."""
    r = check_projection_logs(sane_run(), heal_time=250)
    assert r.valid is True, r.witness
    assert r.stats["transitions_checked"] == 8
    conv = r.witness["convergence"]  # type: ignore[index]
    assert conv["converged"] is True
    assert conv["epoch"] == 4
    assert conv["converged_at"] == 400 + ord("c")
    assert conv["time_to_converge"] == 400 + ord("c") - 250


def test_epoch_going_back_is_flagged() -> None:
    """A node whose epochs do not strictly increase is flagged."""
    log = sane_run()
    log.append(rec("a", 3, ["a", "b"], repairing=("c",)))
    assert kinds(log) == {"epoch-not-increasing": 1}


def test_confirmation_repeat_is_not_an_epoch_regression() -> None:
    """Re-logging the same epoch id to mark it confirmed is fine."""
    log = sane_run()
    log.append({**log[-1], "confirmed": True})
    assert kinds(log) == {}


def test_reordering_the_upi_is_unsafe() -> None:
    """UPI [a, b] -> [b, a] re-orders in-sync replicas."""
    log = [rec("a", 1, ["a", "b"]), rec("a", 2, ["b", "a"], author="b")]
    assert kinds(log) == {"unsafe-transition": 1}


def test_promotion_not_by_the_tail_is_unsafe() -> None:
    """Only the old UPI tail, which ran the repair, may promote repaired members."""
    log = [rec("a", 1, ["a", "b"], repairing=("c",)), rec("a", 2, ["a", "b", "c"], author="a")]
    assert kinds(log) == {"unsafe-transition": 1}
    ok = [rec("a", 1, ["a", "b"], repairing=("c",)), rec("a", 2, ["a", "b", "c"], author="b")]
    assert kinds(ok) == {}


def test_unrepaired_newcomer_is_unsafe() -> None:
    """A member joining the UPI without passing through repairing is unsafe."""
    log = [rec("b", 1, ["a", "b"]), rec("b", 2, ["a", "b", "c"], author="b")]
    assert kinds(log) == {"unsafe-transition": 1}


def test_node_in_two_upis_at_one_epoch() -> None:
    """Two different projections at one epoch number sharing a UPI member are flagged."""
    log = [rec("a", 5, ["a", "b"]), rec("c", 5, ["c", "b"], author="c")]
    assert kinds(log) == {"two-upis-one-epoch": 1}
    disjoint = [rec("a", 5, ["a"]), rec("c", 5, ["c"], author="c")]
    assert kinds(disjoint) == {}


def test_cp_two_confirmed_projections_at_one_epoch() -> None:
    """CP: two different confirmed projections with non-empty UPIs at one epoch."""
    log = [
        rec("a", 7, ["a", "b"], mode="cp", confirmed=True),
        rec("c", 7, ["b", "c"], mode="cp", author="c", confirmed=True),
    ]
    found = kinds(log)
    assert found["two-confirmed-one-epoch"] == 1
    ap = [dict(x, mode="ap") for x in log]
    assert "two-confirmed-one-epoch" not in kinds(ap)


def test_cp_minority_upi_is_unsafe() -> None:
    """CP: a non-empty UPI without a majority of members is an unsafe transition."""
    log = [rec("a", 1, ["a", "b"], mode="cp"), rec("a", 2, ["a"], mode="cp", down=("b", "c"))]
    assert kinds(log) == {"unsafe-transition": 1}


def test_full_projection_with_bad_checksum() -> None:
    """A logged full projection whose checksum does not match is flagged."""
    p = make_projection(
        epoch_number=3, author_server="a", chain_name="c1", all_members=MEMBERS, upi=["a"]
    )
    full = p.to_json()
    full["upi"] = ["a", "b"]
    log = [
        {
            "node": "a",
            "epoch": 3,
            "epoch_csum": full["epoch_csum"],
            "upi": ["a", "b"],
            "projection": full,
        }
    ]
    assert kinds(log) == {"bad-checksum": 1}


def test_malformed_records() -> None:
    """Bad fields are reported as malformed, never a crash."""
    assert kinds([{"node": "a", "epoch": "1"}]) == {"malformed": 1}
    assert kinds([{"node": "a", "epoch": 1, "upi": "a"}]) == {"malformed": 1}
    bad = rec("a", 1, ["a"])
    bad["down"] = ["a"]  # upi and down overlap
    assert kinds([bad]) == {"malformed": 1}


def test_convergence_failures() -> None:
    """Different final projections, or a chain still repairing, did not converge."""
    log = sane_run()[:-1]  # c never adopted epoch 4
    conv = convergence(normalise(log), heal_time=0)
    assert conv["converged"] is False
    assert "different" in conv["reason"]
    repairing = [x for x in sane_run() if x["epoch"] <= 3]
    conv = convergence(normalise(repairing), heal_time=0)
    assert conv["converged"] is False
    assert "not complete" in conv["reason"]
    assert convergence([], heal_time=0)["converged"] is False


def test_witness_need_not_be_in_the_upi() -> None:
    """CP with a witness: converged once every non-witness member is in the UPI."""
    log = [rec(n, 2, ["a", "b", "c"], mode="cp", witnesses=("a",), t=5) for n in MEMBERS]
    conv = convergence(normalise(log), heal_time=10)
    assert conv["converged"] is True
    assert conv["time_to_converge"] == 0


@pytest.mark.parametrize("mode,witnesses,seed", [("ap", (), 1), ("ap", (), 2), ("cp", ("a",), 3)])
def test_simulator_logs_pass(mode: str, witnesses: tuple[str, ...], seed: int) -> None:
    """The chain-manager simulator's adoption logs pass exactly when its own checks do."""
    sim = pytest.importorskip("machi.sim.run")
    records: list[dict[str, Any]] = []
    result = sim.run(
        ["a", "b", "c"],
        mode=mode,
        seed=seed,
        witnesses=witnesses,
        clients=False,
        on_adopt=records.append,
    )
    r = check_projection_logs(records, mode=mode, all_members=["a", "b", "c"])
    assert (r.valid is True) == (not result.violations), (r.witness, result.violations)
    assert r.stats["records"] == result.adoptions
    conv = convergence(normalise(records, mode=mode, all_members=["a", "b", "c"]), heal_time=0)
    assert conv["converged"] == result.converged, conv


def test_check_projections_cli(tmp_path: Any) -> None:
    """The CLI reads per-node logs, prints the verdict, and exits 0 / 1 / 254."""
    import json

    from click.testing import CliRunner

    from harness.cli import main

    good = tmp_path / "a.jsonl"
    good.write_text("".join(json.dumps(r) + "\n" for r in sane_run()))
    res = CliRunner().invoke(main, ["check-projections", "--heal-time", "250", "--json", str(good)])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["valid"] is True and out["witness"]["convergence"]["converged"] is True
    bad = tmp_path / "b.jsonl"
    bad.write_text(
        json.dumps(rec("a", 1, ["a", "b"]))
        + "\n"
        + json.dumps(rec("a", 2, ["b", "a"], author="b"))
        + "\n"
    )
    res = CliRunner().invoke(main, ["check-projections", str(bad)])
    assert res.exit_code == 1
    assert "unsafe-transition" in res.output
    junk = tmp_path / "c.jsonl"
    junk.write_text("{not json\n")
    assert CliRunner().invoke(main, ["check-projections", str(junk)]).exit_code == 254
