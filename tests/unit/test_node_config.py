"""Goal: node configuration rejects unknown keys and bad values by name, and command-line
flags override the TOML file."""

from __future__ import annotations

from pathlib import Path

import pytest

from machi.core.errors import ConfigError
from machi.node.config import build_config, load_file


def test_file_then_flags(tmp_path: Path) -> None:
    """Values come from the file ([node] table or top level); flags win; None = not given."""
    f = tmp_path / "n.toml"
    f.write_text('sync = "none"\n[node]\nname = "n1"\ndata_dir = "d"\nlisten = "127.0.0.1:7"\n'
                 "max_in_flight_per_connection = 8\n")
    cfg = build_config(load_file(f), {"sync": "always", "listen": None, "witness": None})
    assert (cfg.name, cfg.sync, cfg.listen, cfg.max_in_flight_per_connection) == (
        "n1", "always", "127.0.0.1:7", 8)
    assert cfg.data_dir == Path("d") and cfg.listen_address() == ("127.0.0.1", 7)


@pytest.mark.parametrize("text, key", [
    ('name = "n"\ndata_dir = "d"\nlisen = "x"\n', "lisen"),
    ('name = "n"\ndata_dir = "d"\n[node]\nsecret = "x"\n', "secret"),
])
def test_unknown_keys_are_named(tmp_path: Path, text: str, key: str) -> None:
    """An unknown key anywhere in the file is a ConfigError naming it."""
    f = tmp_path / "n.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=key):
        load_file(f)


@pytest.mark.parametrize("values, key", [
    ({"name": "n", "data_dir": "d", "sync": "sometimes"}, "sync"),
    ({"name": "bad/name", "data_dir": "d"}, "name"),
    ({"name": "n"}, "data_dir"),
    ({"name": "n", "data_dir": "d", "listen": "nohost"}, "listen"),
    ({"name": "n", "data_dir": "d", "max_frame_size": 10}, "max_frame_size"),
    ({"name": "n", "data_dir": "d", "witness": "yes"}, "witness"),
    ({"name": "n", "data_dir": "d", "tls_cert": "c"}, "tls_cert"),
    ({"name": "n", "data_dir": "d", "stop_deadline_ms": True}, "stop_deadline_ms"),
])
def test_bad_values_are_named(values: dict[str, object], key: str) -> None:
    """Wrong types, ranges and combinations name the offending key."""
    with pytest.raises(ConfigError, match=key):
        build_config(values, {})


def test_bad_toml_syntax(tmp_path: Path) -> None:
    """A TOML syntax error is a ConfigError naming the file."""
    f = tmp_path / "n.toml"
    f.write_text("name = \n")
    with pytest.raises(ConfigError, match=r"n\.toml"):
        load_file(f)
