"""How the benchmark and the demo start their FLU daemons.

Owns the extra ``machi node run`` arguments they need: the daemon's own chain manager is
switched off (when this version of the daemon has one), because the bench measures the
FLU data path at one fixed epoch and the demo installs its projections itself.  Must not:
start or stop processes (``machi.node.process`` does).
"""

from __future__ import annotations

from pathlib import Path


def node_args(config_dir: Path, name: str) -> list[str]:
    """``--config FILE`` with ``chain_manager = false`` if the daemon knows that key."""
    from machi.node.config import KNOWN_KEYS

    if "chain_manager" not in KNOWN_KEYS:
        return []
    config_dir.mkdir(parents=True, exist_ok=True)
    path = config_dir / f"{name}.toml"
    path.write_text("# written by machi bench/demo: projections are installed by hand\n"
                    "chain_manager = false\n")
    return ["--config", str(path)]
