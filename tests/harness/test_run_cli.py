"""`machi-harness test` exit statuses without a cluster: a run that cannot be made (bad hosts
file, unreachable host) exits 3 with one line on stderr and no traceback, and still stores
results.json with `setup_error` once its store folder exists; usage errors exit 254 like
`machi-harness check`.

The unreachable host is 127.0.0.1 port 1 (nothing listens there): no packet leaves the
machine and no process is started.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CLI = str(Path(sys.executable).parent / "machi-harness")


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, "test", *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd)


def test_an_unreachable_host_exits_3_with_one_line_and_stores_setup_error(
    tmp_path: Path,
) -> None:
    """A host nobody answers on: exit 3, one `could not run` line, results.json names it."""
    hosts = tmp_path / "hosts.toml"
    hosts.write_text(f'[defaults]\nwork_dir = "{tmp_path}/w"\ndata_dir = "{tmp_path}/d"\n'
                     'connect_timeout_s = 2\n'
                     '[[hosts]]\nname = "n1"\naddress = "127.0.0.1"\nport = 1\n')
    store = tmp_path / "store"
    p = _cli("--hosts", "ssh", "--hosts-file", str(hosts), "--nodes", "1", "--store",
             str(store), "--nemesis", "none", "--time-limit", "1", "--seed", "1", cwd=tmp_path)
    assert p.returncode == 3, (p.stdout, p.stderr[-3000:])
    assert "Traceback" not in p.stderr
    errors = [ln for ln in p.stderr.splitlines() if "could not run" in ln]
    assert len(errors) == 1 and "n1" in errors[0] and "127.0.0.1:1" in errors[0], p.stderr
    run_dir = (store / "chunks-cp" / "latest").resolve()
    res = json.loads((run_dir / "results.json").read_text())
    assert "127.0.0.1:1" in res["setup_error"] and res["valid"] == "unknown"
    assert res["checks"]["final_phase"]["setup_error"] == res["setup_error"]
    assert (run_dir / "index.html").exists()


def test_a_bad_hosts_file_exits_3_before_any_store_folder(tmp_path: Path) -> None:
    """A hosts file without an address: exit 3, one line naming the problem, nothing stored."""
    hosts = tmp_path / "hosts.toml"
    hosts.write_text('[[hosts]]\nname = "n1"\n')
    store = tmp_path / "store"
    p = _cli("--hosts", "ssh", "--hosts-file", str(hosts), "--store", str(store), cwd=tmp_path)
    assert p.returncode == 3, (p.stdout, p.stderr)
    assert p.stderr.strip().splitlines() == [
        f"could not run: ssh hosts: {hosts}: hosts[0]: `address` (a string) is required"]
    assert not store.exists()


def test_usage_errors_exit_254_like_the_checker_and_help_says_so(tmp_path: Path) -> None:
    """A bad --nemesis value (checked by the command) and a bad --nodes (checked by click)
    exit 254, never 2 (= unknown); --help lists every exit status."""
    from harness.hosts import netns

    default_cluster = netns.state_dir_default()
    had_cluster = default_cluster.exists()
    for args in (["--nemesis", "partition,bogus"], ["--nodes", "0"], ["--mix", "x=1"],
                 ["--concurrency", "zero"]):
        p = _cli(*args, cwd=tmp_path)
        assert p.returncode == 254, (args, p.returncode, p.stderr)
        assert "Traceback" not in p.stderr
        # a usage error never brings up (and leaves behind) the default netns cluster
        assert had_cluster or not default_cluster.exists(), args
    p = subprocess.run([CLI, "check", "--model", "no-such-model", "x"], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 254  # the checker's usage status, the same number
    text = " ".join(_cli("--help", cwd=tmp_path).stdout.split())
    assert "0 valid, 1 invalid, 2 unknown, 3 could not run" in text and "254 usage" in text
