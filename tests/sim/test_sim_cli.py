"""Tests of the `machi sim` command: output formats, exit status, bad arguments."""

from __future__ import annotations

import json
import pathlib

from click.testing import CliRunner

from machi.cli import main


def test_json_lines_then_verdict(tmp_path: pathlib.Path) -> None:
    """--json prints one JSON line per adopted projection, then the verdict; exit 0."""
    scenario = tmp_path / "s.json"
    scenario.write_text(json.dumps([{"partitions": [["a", "b"]], "ticks": 1500}]))
    res = CliRunner().invoke(main, ["sim", "--nodes", "a,b,c", "--mode", "cp", "--witnesses",
                                    "a", "--seed", "4", "--scenario", str(scenario), "--json"])
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in res.output.splitlines()]
    final = lines[-1]
    assert final == {"converged": True, "ticks_to_converge": final["ticks_to_converge"],
                     "violations": [], "lost_acked_writes": 0}
    keys = {"node", "epoch", "epoch_csum", "author", "upi", "repairing", "down",
            "witnesses", "tick"}
    assert lines[:-1] and all(set(x) == keys for x in lines[:-1])


def test_text_mode_fixed_columns_and_determinism() -> None:
    """Without --json: one fixed-column line per state change, identical per seed."""
    args = ["sim", "--nodes", "a,b,c", "--mode", "ap", "--seed", "2", "--no-clients"]
    r1, r2 = CliRunner().invoke(main, args), CliRunner().invoke(main, args)
    assert r1.exit_code == 0 and r1.output == r2.output
    adopt = [x for x in r1.output.splitlines() if " adopt " in x]
    assert adopt and all(x[8] == " " and x[9:15].strip() in "abc" for x in adopt)
    assert "converged=True" in r1.output.splitlines()[-1]


def test_bad_arguments_are_clear_errors(tmp_path: pathlib.Path) -> None:
    """Bad names, witnesses in AP mode and malformed scenarios exit 2 with a message."""
    runner = CliRunner()
    bad = runner.invoke(main, ["sim", "--nodes", "a,,a", "--mode", "ap"])
    assert bad.exit_code == 2 and "duplicate" in bad.output
    ap_wit = runner.invoke(main, ["sim", "--nodes", "a,b", "--mode", "ap", "--witnesses", "a"])
    assert ap_wit.exit_code == 2 and "cp mode" in ap_wit.output
    scenario = tmp_path / "bad.json"
    scenario.write_text(json.dumps([{"partitions": [["a", "z"]], "ticks": 10}]))
    res = runner.invoke(main, ["sim", "--nodes", "a,b", "--mode", "ap", "--scenario",
                               str(scenario)])
    assert res.exit_code == 2 and "bad partition" in res.output


def test_no_convergence_exits_1_with_the_verdict(tmp_path: pathlib.Path) -> None:
    """A heal too short to converge in (--heal-ticks-max 1; convergence needs 500 stable
    ticks) ends the run not converged: exit 1, and the verdict says so in both formats."""
    scenario = tmp_path / "s.json"
    scenario.write_text(json.dumps([{"partitions": [["a", "b"]], "ticks": 500}]))
    args = ["sim", "--nodes", "a,b,c", "--mode", "ap", "--seed", "3", "--no-clients",
            "--scenario", str(scenario)]
    runner = CliRunner()
    text = runner.invoke(main, [*args, "--heal-ticks-max", "1"])
    assert text.exit_code == 1, text.output
    last = text.output.splitlines()[-1]
    assert "converged=False" in last and "ticks_to_converge=-1" in last
    assert "violations=0" in last
    js = runner.invoke(main, [*args, "--heal-ticks-max", "1", "--json"])
    assert js.exit_code == 1, js.output
    assert json.loads(js.output.splitlines()[-1]) == {
        "converged": False, "ticks_to_converge": -1, "violations": [], "lost_acked_writes": 0}
    ok = runner.invoke(main, args)
    assert ok.exit_code == 0 and "converged=True" in ok.output.splitlines()[-1]
    bad = runner.invoke(main, [*args, "--heal-ticks-max", "0"])
    assert bad.exit_code == 2 and "heal-ticks-max" in bad.output
