"""Running one FLU in the foreground: open the store, listen (TCP, optional TLS), serve
metrics, stop gracefully on SIGTERM/SIGINT, close the store.

Owns the process-level lifecycle of a node.  Must not hold protocol or storage logic
(``machi.node.server`` and ``machi.storage`` do).
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import signal
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
from anyio.streams.tls import TLSListener

from machi.core.errors import ConfigError
from machi.memtune import keep_big_buffers
from machi.wire_io import FramedListener

from .config import NodeConfig
from .log import JsonLog, forward_stdlib_logging
from .metrics import Metrics, serve_metrics
from .server import FluNode

NONE_FLUSH_INTERVAL_MS = 50


def store_config(cfg: NodeConfig) -> Any:
    from machi.storage.flu_store import StoreConfig

    kw: dict[str, Any] = {"sync": cfg.sync, "namespace": cfg.namespace,
                          "test_ack_before_sync": cfg.test_canary == "ack-before-sync",
                          "test_epoch_reuse": cfg.test_canary == "epoch-reuse"}
    for key in ("group_commit_max_delay_ms", "group_commit_max_chunks", "max_file_size"):
        value = getattr(cfg, key)
        if value is not None:
            kw[key] = value
    return StoreConfig(**kw)


def server_ssl_context(cfg: NodeConfig) -> ssl.SSLContext | None:
    if cfg.tls_cert is None or cfg.tls_key is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"tls_cert/tls_key: {e}") from None
    return ctx


Attach = Callable[[FluNode, anyio.abc.TaskGroup], Awaitable[None]]


async def run_node(
    cfg: NodeConfig, log: JsonLog | None = None, *, attach: Attach | None = None,
    ignore_late_signals: bool = False,
) -> None:
    """Serve until SIGTERM/SIGINT; return after a graceful stop.

    ``attach(node, task_group)``, if given, runs once before the node listens: the place
    to set ``node.on_kick`` and start helpers (e.g. the chain manager) in the node's own
    task group, so they are cancelled when the node stops.

    The signal receiver stays open until the store is closed: a second SIGTERM/SIGINT
    during the graceful stop is logged and ignored (the stop is already bounded by
    ``stop_deadline_ms``).  ``ignore_late_signals`` (the daemon's ``main``) then ignores
    them for the rest of the process, which only exits from here on.
    """
    log = log or JsonLog(cfg.name, cfg.log_level)
    late = {signal.SIGTERM, signal.SIGINT}
    try:
        with anyio.open_signal_receiver(*late) as signals:
            try:
                await _serve(cfg, log, attach, signals)
            finally:
                if ignore_late_signals:
                    _ignore_before_leaving(late)
    finally:
        if ignore_late_signals:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def _ignore_before_leaving(late: set[signal.Signals]) -> None:
    """Ignore ``late`` for good while the signal receiver is still open.  Leaving the
    receiver removes asyncio's handlers, which resets them to the default action
    (terminate): a SIGTERM landing between that and a later SIG_IGN killed the stopped
    daemon (-15 instead of 0, seen under load).  Blocking the signals would not do: any
    other thread of the process (SQLite, worker threads) can take a process signal.  So
    the disposition becomes SIG_IGN first and the loop forgets its handlers, so that its
    removal (a no-op now) leaves SIG_IGN in place."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # pragma: no cover - run_node always runs in an event loop
        return
    handlers = getattr(loop, "_signal_handlers", None)
    for sig in late:
        signal.signal(sig, signal.SIG_IGN)
        if isinstance(handlers, dict):
            handlers.pop(sig, None)
    if isinstance(handlers, dict) and not handlers:
        signal.set_wakeup_fd(-1)  # as the loop does when its last handler goes


async def _ignore_signals(log: JsonLog, signals: Any) -> None:
    async for signum in signals:
        log.warning("signal ignored: graceful stop in progress",
                    signal=signal.Signals(signum).name)


async def _serve(cfg: NodeConfig, log: JsonLog, attach: Attach | None, signals: Any) -> None:
    from machi.storage.flu_store import FluStore
    from machi.storage.group_commit import CANARY_WRITEBACK_INTERVAL_MS

    forward_stdlib_logging(log)
    secret = cfg.secret()
    ssl_ctx = server_ssl_context(cfg)
    host, port = cfg.listen_address()
    metrics = Metrics(cfg.name)
    if cfg.test_canary:
        log.warning(f"TEST CANARY {cfg.test_canary} IS ON: this node breaks a guarantee on "
                    "purpose (test_canary, TEST ONLY; never in production)",
                    test_canary=cfg.test_canary)
    store = await FluStore.open(cfg.data_dir, store_config(cfg))
    try:
        node = FluNode(
            cfg.name, store, log=log, metrics=metrics, secret=secret, witness=cfg.witness,
            max_frame_size=cfg.max_frame_size, max_connections=cfg.max_connections,
            max_in_flight_per_connection=cfg.max_in_flight_per_connection,
            handshake_timeout_ms=cfg.handshake_timeout_ms,
            stop_deadline_ms=cfg.stop_deadline_ms,
        )
        await node.load_state()
        tcp = await anyio.create_tcp_listener(local_host=host, local_port=port)
        # plain TCP: connections on a BufferedProtocol (machi.wire_io, fewer copies)
        listener: anyio.abc.Listener[Any] = FramedListener(tcp)
        if ssl_ctx is not None:
            listener = TLSListener(tcp, ssl_ctx, standard_compatible=False,
                                   handshake_timeout=cfg.handshake_timeout_ms / 1000)
        bound = tcp.extra(anyio.abc.SocketAttribute.local_port)
        async with anyio.create_task_group() as tg:
            metrics_addr = cfg.metrics_address()
            if metrics_addr is not None:
                mlistener = await anyio.create_tcp_listener(
                    local_host=metrics_addr[0], local_port=metrics_addr[1])
                tg.start_soon(serve_metrics, metrics, mlistener)
            if attach is not None:
                await attach(node, tg)
            tg.start_soon(node.serve, listener)
            if cfg.test_canary == "ack-before-sync":
                tg.start_soon(store.background_flush, CANARY_WRITEBACK_INTERVAL_MS)
            elif cfg.sync == "none":
                # sync=none acknowledges before anything is on disk; commit metadata
                # (without fsync) every 50 ms so a crash loses a bounded window.
                tg.start_soon(store.background_flush, NONE_FLUSH_INTERVAL_MS)
            log.info("listening", host=host, port=bound, tls=ssl_ctx is not None,
                     auth=secret is not None, sync=cfg.sync, witness=cfg.witness,
                     metrics=cfg.metrics, data_dir=str(cfg.data_dir),
                     test_canary=cfg.test_canary or None)
            async for signum in signals:
                log.info("signal received", signal=signal.Signals(signum).name)
                tg.start_soon(_ignore_signals, log, signals)
                await node.stop()
                break
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await store.close()
        log.info("stopped")


def uvloop_available() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def main(cfg: NodeConfig) -> None:
    use_uvloop = cfg.uvloop and uvloop_available()
    if cfg.malloc_keep_buffers:
        keep_big_buffers()
    attach = None
    if cfg.chain_manager:
        from .chain_driver import attacher

        attach = attacher(cfg)
    anyio.run(functools.partial(run_node, cfg, attach=attach, ignore_late_signals=True),
              backend="asyncio",
              backend_options={"use_uvloop": use_uvloop})
