"""Goal: the chain driver's peer connections use TLS and the shared secret when the node
is configured with them: three TLS-only, secret-only daemons on loopback (no plain or
unauthenticated peer connection can work) bootstrap, converge, take appends through a
TLS ChainClient, and converge again without a killed member."""

from __future__ import annotations

import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from machi.client.chain_client import ChainClient
from machi.client.flu_client import FluClient
from machi.core.errors import MachiError
from machi.core.wire import Op
from machi.node.config import FAST_CHAIN_TOML
from machi.node.process import NodeProcess
from tests.integration.tls_certs import self_signed

pytestmark = pytest.mark.timeout(120)
NAMES = ("a", "b", "c")
SECRET = b"chain tls secret 0123456789"
CONVERGE_TIMEOUT_S = 30.0  # a bound under load, not a performance target


@pytest.mark.parametrize("ip_san", [True, False])
def test_tls_and_secret_chain_converges_and_serves(tmp_path: Path, ip_san: bool) -> None:
    """With an IP SAN the peers are checked against their address; without one, against
    ``tls_server_hostname = "localhost"`` from the node config."""
    cert, key = self_signed(tmp_path, ip_san=ip_san)
    (tmp_path / "secret").write_bytes(SECRET + b"\n")
    toml = FAST_CHAIN_TOML + ("" if ip_san else 'tls_server_hostname = "localhost"\n')
    (tmp_path / "node.toml").write_text(toml)
    nodes = {n: NodeProcess(n, tmp_path / n, sync="none", extra_args=[
        "--config", str(tmp_path / "node.toml"), "--tls-cert", str(cert),
        "--tls-key", str(key), "--secret-file", str(tmp_path / "secret")]) for n in NAMES}
    ctx = ssl.create_default_context(cafile=str(cert))
    hostname = None if ip_san else "localhost"
    try:
        for x in nodes.values():
            x.start(wait=False)
        for x in nodes.values():
            x.wait_ready()
        members = ",".join(f"{n}={x.address}" for n, x in nodes.items())
        if ip_san:
            r = subprocess.run(
                [sys.executable, "-m", "machi.cli", "chain", "bootstrap", "--chain", "c1",
                 "--mode", "ap", "--members", members, "--secret-file",
                 str(tmp_path / "secret"), "--tls-ca", str(cert)],
                capture_output=True, text=True, timeout=60, check=False)
            assert r.returncode == 0, r.stdout + r.stderr
        else:  # the CLI checks addresses; bootstrap by hand with the hostname
            anyio.run(_bootstrap, nodes, ctx, hostname)

        async def status(n: str) -> dict[str, Any] | None:
            x = nodes[n]
            try:
                async with FluClient(x.host, x.port, secret=SECRET, ssl_context=ctx,
                                     tls_hostname=hostname, timeout_ms=1000) as c:
                    return await c.chain_admin(Op.CHAIN_STATUS, {})
            except MachiError:
                return None

        async def converged(up: tuple[str, ...]) -> dict[str, Any]:
            t0 = time.monotonic()
            sts: list[dict[str, Any] | None] = []
            while time.monotonic() - t0 < CONVERGE_TIMEOUT_S:
                sts = [await status(n) for n in up]
                ids = {(s["epoch"], s["epoch_csum"]) if s else None for s in sts}
                if all(s and s["confirmed"] and set(s["upi"]) == set(up)
                       and not s["repairing"] for s in sts) and len(ids) == 1:
                    assert sts[0] is not None
                    return sts[0]
                await anyio.sleep(0.1)
            logs = "\n".join(x.log_tail(10) for x in nodes.values())
            raise AssertionError(f"no convergence on {up}: {sts}\n{logs}")

        async def go() -> None:
            await converged(NAMES)
            seeds = {n: (x.host, x.port) for n, x in nodes.items()}
            async with ChainClient(seeds, secret=SECRET, tls=ctx, tls_hostname=hostname,
                                   op_timeout_ms=10_000) as cc:
                pos = await cc.append("tls", b"over tls")
                assert await cc.read(pos.file, pos.offset, pos.size) == b"over tls"
            nodes["c"].kill()
            st = await converged(("a", "b"))
            assert st["upi"] == ["a", "b"]

        anyio.run(go)
    finally:
        for x in nodes.values():
            x.kill()


async def _bootstrap(nodes: dict[str, NodeProcess], ctx: ssl.SSLContext,
                     hostname: str | None) -> None:
    members = {n: x.address for n, x in nodes.items()}
    for i, x in enumerate(nodes.values()):
        async with FluClient(x.host, x.port, secret=SECRET, ssl_context=ctx,
                             tls_hostname=hostname, timeout_ms=5000) as c:
            await c.chain_admin(Op.CHAIN_BOOTSTRAP, {
                "chain": "c1", "mode": "ap", "members": members,
                "propose": i == len(nodes) - 1})
