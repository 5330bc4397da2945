"""Tests of the `machi append` / `machi read` option parsing: members lists and cluster
TOML files (docs/client.md), with clear errors for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from machi.cli import main
from machi.cli.chain_io import load_cluster, parse_members
from machi.core.errors import ConfigError


def test_parse_members() -> None:
    """NAME=HOST:PORT lists parse, IPv6 in brackets included; bad items are named."""
    assert parse_members("a=127.0.0.1:1, b=[::1]:2,") == {
        "a": ("127.0.0.1", 1), "b": ("::1", 2)}
    for bad in ("", "a", "a=h", "a=h:0", "a=h:1,a=h:2", ".x=h:1", "a=h:99999"):
        with pytest.raises(ConfigError):
            parse_members(bad)


def test_load_cluster(tmp_path: Path) -> None:
    """A cluster file gives members, a secret (relative path) and TLS settings."""
    (tmp_path / "secret").write_text("s3cret\n")
    f = tmp_path / "c.toml"
    f.write_text('secret_file = "secret"\n[members]\nn1 = "127.0.0.1:20401"\n'
                 'n2 = "127.0.0.1:20402"\n[tls]\nca = "/etc/ca.pem"\nserver_hostname = "m"\n')
    cfg = load_cluster(f)
    assert cfg.members == {"n1": ("127.0.0.1", 20401), "n2": ("127.0.0.1", 20402)}
    assert cfg.secret == b"s3cret"
    assert cfg.tls_ca == Path("/etc/ca.pem") and cfg.tls_hostname == "m"


@pytest.mark.parametrize("text", [
    "", "[members]\n", 'members = "a=h:1"\n', '[members]\nn1 = 5\n',
    '[members]\nn1 = "h:1"\n[tls]\ncafile = "x"\n', 'extra = 1\n[members]\nn1 = "h:1"\n',
    '[members]\nn1 = "h:1"\nsecret_file = "missing"\n', "not toml [",
    'secret_file = "missing"\n[members]\nn1 = "h:1"\n',
])
def test_bad_cluster_files(tmp_path: Path, text: str) -> None:
    """Every malformed cluster file is a ConfigError naming the problem."""
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ConfigError):
        load_cluster(f)


def test_cli_usage_errors(tmp_path: Path) -> None:
    """Bad member lists, both or neither of --members/--cluster, and empty input are usage
    errors (exit 2 with a message), not tracebacks."""
    r = CliRunner()
    res = r.invoke(main, ["append", "--members", "a=nohost", "--prefix", "p", "-"], input=b"x")
    assert res.exit_code == 2 and "HOST:PORT" in res.output
    res = r.invoke(main, ["append", "--prefix", "p", "-"], input=b"x")
    assert res.exit_code == 2 and "exactly one" in res.output
    res = r.invoke(main, ["append", "--members", "a=h:1", "--prefix", "p", "-"], input=b"")
    assert res.exit_code == 2 and "empty chunk" in res.output
    res = r.invoke(main, ["read", "--members", "a=h:1", "--file", "f", "--offset", "0",
                          "--size", "1", "--checksum", "zz"])
    assert res.exit_code == 2 and "checksum" in res.output
