"""Node configuration: the TOML file (``tomllib``), its keys, defaults and validation.

Owns: the set of known keys (an unknown key is a ``ConfigError`` naming it), their types
and bounds, and the rule "command-line flags override the file".  Must not: open sockets
or the store.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from machi.core import wire
from machi.core.errors import ConfigError
from machi.core.projection import valid_name

SYNC_MODES = ("always", "batch", "none")
LOG_LEVELS = ("debug", "info", "warning", "error")
#: TEST ONLY fault switches (key ``test_canary``; "" = off): each breaks one guarantee on
#: purpose so a harness run can prove its checkers catch it (docs/node.md, "Test canaries")
TEST_CANARIES = ("ack-before-sync", "skip-repair", "epoch-reuse")

#: Short chain-manager timers (node config keys) for tests, demos and benchmarks on one
#: machine: chains converge in about a second instead of several.
FAST_CHAIN_TOML = """\
chain_tick_base_ms = 100
chain_tick_spread_ms = 200
chain_tick_jitter_ms = 20
chain_reread_ms = 20
chain_kick_wait_ms = 60
chain_read_timeout_ms = 300
chain_round_timeout_ms = 1000
chain_stability_time_ms = 400
chain_loop_hold_ms = 1500
"""


@dataclass(frozen=True, slots=True)
class NodeConfig:
    name: str = ""
    listen: str = "127.0.0.1:4000"
    data_dir: Path = Path()
    metrics: str | None = None
    sync: str = "batch"
    secret_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: CA file the chain driver (and repair) verify peers with; default: tls_cert itself
    #: (a cluster sharing one self-signed certificate).  Only used when tls_cert is set.
    tls_ca: Path | None = None
    #: the name peers' certificates are checked against (default: the peer's host)
    tls_server_hostname: str | None = None
    witness: bool = False
    namespace: str = ""
    max_frame_size: int = wire.MAX_FRAME_SIZE_DEFAULT
    max_connections: int = 1024
    max_in_flight_per_connection: int = 64
    handshake_timeout_ms: int = 5_000
    stop_deadline_ms: int = 5_000
    group_commit_max_delay_ms: int | None = None
    group_commit_max_chunks: int | None = None
    max_file_size: int | None = None
    log_level: str = "info"
    uvloop: bool = True
    #: glibc malloc keeps big buffers instead of mmap/munmap per chunk (machi.memtune)
    malloc_keep_buffers: bool = True
    # chain manager (docs/chain-manager.md, "Running in the daemon")
    chain_manager: bool = True
    chain_auto_join: bool = False
    chain_tick_base_ms: int = 200
    chain_tick_spread_ms: int = 400
    chain_tick_jitter_ms: int = 50
    chain_reread_ms: int = 25
    chain_kick_wait_ms: int = 100
    chain_read_timeout_ms: int = 500
    chain_round_timeout_ms: int = 2_000
    chain_stability_time_ms: int = 1_000
    chain_loop_hold_ms: int = 5_000
    chain_fitness_stale_ms: int = 60_000
    #: a peer is unreachable after this many missed reads in a row and twice
    #: chain_read_timeout_ms without an answer (doubled per recent drop, docs)
    chain_unreachable_misses: int = 3
    #: AP anti-entropy pass of a stable chain every this many ms (0 = off; docs/repair.md)
    chain_ap_anti_entropy_interval_ms: int = 5_000
    projection_log_max_bytes: int = 16 * 1024 * 1024
    #: TEST ONLY: one of TEST_CANARIES breaks a guarantee on purpose ("" = off)
    test_canary: str = ""

    def secret(self) -> bytes | None:
        if self.secret_file is None:
            return None
        try:
            raw = self.secret_file.read_bytes().strip()
        except OSError as e:
            raise ConfigError(f"secret_file: cannot read {self.secret_file}: {e}") from None
        if len(raw) < 16:
            raise ConfigError("secret_file: the secret must be at least 16 bytes")
        return raw

    def listen_address(self) -> tuple[str, int]:
        return parse_host_port(self.listen, "listen")

    def metrics_address(self) -> tuple[str, int] | None:
        return None if self.metrics is None else parse_host_port(self.metrics, "metrics")


_PATH_KEYS = {"data_dir", "secret_file", "tls_cert", "tls_key", "tls_ca"}
_INT_KEYS = {
    "max_frame_size": (wire.HEADER_SIZE + 1024, 2**31),
    "max_connections": (1, 1_000_000),
    "max_in_flight_per_connection": (1, 100_000),
    "handshake_timeout_ms": (1, 3_600_000),
    "stop_deadline_ms": (0, 3_600_000),
    "group_commit_max_delay_ms": (0, 60_000),
    "group_commit_max_chunks": (1, 1_000_000),
    "max_file_size": (4096, 2**63 - 1),
    "chain_tick_base_ms": (1, 600_000),
    "chain_tick_spread_ms": (0, 600_000),
    "chain_tick_jitter_ms": (0, 600_000),
    "chain_reread_ms": (1, 600_000),
    "chain_kick_wait_ms": (1, 600_000),
    "chain_read_timeout_ms": (1, 600_000),
    "chain_round_timeout_ms": (2, 600_000),
    "chain_stability_time_ms": (0, 3_600_000),
    "chain_loop_hold_ms": (0, 3_600_000),
    "chain_fitness_stale_ms": (1, 86_400_000),
    "chain_unreachable_misses": (1, 1_000),
    "chain_ap_anti_entropy_interval_ms": (0, 86_400_000),
    "projection_log_max_bytes": (4096, 2**40),
}
KNOWN_KEYS = frozenset(f.name for f in fields(NodeConfig))


def parse_host_port(text: str, key: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{key}: bad address {text!r}, want HOST:PORT")
    return host.strip("[]"), int(port)


def _coerce(key: str, value: Any) -> Any:
    if value is None:
        return None
    if key in _PATH_KEYS:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{key}: want a path string, got {value!r}")
        return Path(value)
    if key in _INT_KEYS:
        lo, hi = _INT_KEYS[key]
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise ConfigError(f"{key}: want an integer in [{lo}, {hi}], got {value!r}")
        return value
    if key in ("witness", "uvloop", "chain_manager", "chain_auto_join", "malloc_keep_buffers"):
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: want true or false, got {value!r}")
        return value
    if not isinstance(value, str):
        raise ConfigError(f"{key}: want a string, got {value!r}")
    return value


def build_config(file_values: dict[str, Any], overrides: dict[str, Any]) -> NodeConfig:
    """Merge the file's values with command-line overrides (``None`` = not given)."""
    values: dict[str, Any] = {}
    for source in (file_values, {k: v for k, v in overrides.items() if v is not None}):
        for key, value in source.items():
            if key not in KNOWN_KEYS:
                raise ConfigError(f"unknown config key {key!r}")
            values[key] = _coerce(key, value)
    cfg = replace(NodeConfig(), **values)
    validate(cfg)
    return cfg


def load_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from None
    node = data.pop("node", None)
    if node is not None:  # keys may sit at the top level or in a [node] table
        if not isinstance(node, dict):
            raise ConfigError("[node] must be a table")
        data.update(node)
    for key in data:
        if key not in KNOWN_KEYS:
            raise ConfigError(f"{path}: unknown config key {key!r}")
    return data


def validate(cfg: NodeConfig) -> None:
    if not valid_name(cfg.name):
        raise ConfigError(f"name: bad node name {cfg.name!r} (1-64 of [A-Za-z0-9_.-])")
    if cfg.sync not in SYNC_MODES:
        raise ConfigError(f"sync: want one of {SYNC_MODES}, got {cfg.sync!r}")
    if cfg.log_level not in LOG_LEVELS:
        raise ConfigError(f"log_level: want one of {LOG_LEVELS}, got {cfg.log_level!r}")
    if cfg.test_canary and cfg.test_canary not in TEST_CANARIES:
        raise ConfigError(f"test_canary: want one of {TEST_CANARIES} (TEST ONLY) or \"\", "
                          f"got {cfg.test_canary!r}")
    if cfg.data_dir == Path():
        raise ConfigError("data_dir: required")
    if (cfg.tls_cert is None) != (cfg.tls_key is None):
        raise ConfigError("tls_cert and tls_key go together")
    cfg.listen_address()
    cfg.metrics_address()
    if cfg.chain_read_timeout_ms >= cfg.chain_round_timeout_ms:
        raise ConfigError("chain_read_timeout_ms must be below chain_round_timeout_ms")
