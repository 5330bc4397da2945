"""The FLU daemon: listener, per-connection tasks, request dispatch to the store, the
epoch/wedge rule, authentication, graceful stop.

Owns: the node's ``WedgeState`` (changed only through ``machi.core.wedge``), the
connections and their bounded in-flight request tasks, the mapping of wire ops to
``FluStore`` calls, the ``on_kick`` hook for the chain manager, logs and metrics.
Must not: decide anything about chains (the chain manager does), or let one bad peer
hurt another (every connection failure stays inside that connection's task).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc

from machi.core import wire
from machi.core.checksum import TaggedCsum
from machi.core.epoch import EpochId
from machi.core.errors import (
    BadArg,
    BadChecksum,
    MachiError,
    NotWritten,
    RemoteProtocolError,
    TooLarge,
    UnknownOp,
    error_for_status,
)
from machi.core.projection import Projection, projection_from_json
from machi.core.ranges import MIN_OFFSET
from machi.core.status import Status
from machi.core.wedge import (
    Kind,
    WedgeState,
    after_projection_write,
    check_epoch,
    initial_state,
    recheck_epoch,
)
from machi.core.wire import Op
from machi.wire_io import WireStream, as_wire_stream, big_buffer, join_small

from .log import JsonLog
from .metrics import Metrics

CHECKSUM_LIST_BATCH_MAX = 4096
#: Projection payloads above this are refused (a projection is a few KiB at most).
PROJECTION_META_MAX = 1024 * 1024


@dataclass(slots=True, eq=False)
class _Peer:
    """One accepted connection."""

    stream: WireStream
    proto: wire.Connection
    address: str
    send_lock: anyio.Lock = field(default_factory=lambda: anyio.Lock(fast_acquire=True))
    read_scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    request_scope: anyio.CancelScope | None = None
    done: anyio.Event = field(default_factory=anyio.Event)


@dataclass(frozen=True, slots=True)
class Reply:
    meta: dict[str, Any] | None = None
    payload: list[bytes | memoryview] = field(default_factory=list)


Handler = Callable[[wire.Frame, _Peer], Awaitable[Reply | None]]


class FluNode:
    """One FLU serving a ``FluStore`` over the wire protocol."""

    def __init__(
        self,
        name: str,
        store: Any,
        *,
        log: JsonLog,
        metrics: Metrics | None = None,
        secret: bytes | None = None,
        witness: bool = False,
        max_frame_size: int = wire.MAX_FRAME_SIZE_DEFAULT,
        max_connections: int = 1024,
        max_in_flight_per_connection: int = 64,
        handshake_timeout_ms: int = 5_000,
        stop_deadline_ms: int = 5_000,
    ) -> None:
        self.name = name
        self.store = store
        self.log = log
        self.metrics = metrics or Metrics(name)
        self.secret = secret
        self.witness = witness
        self.max_frame_size = max_frame_size
        self.max_connections = max_connections
        self.max_in_flight = max_in_flight_per_connection
        self.handshake_timeout_s = handshake_timeout_ms / 1000
        self.stop_deadline_s = stop_deadline_ms / 1000
        self.state = WedgeState(True, EpochId(0, bytes(32)))
        #: called (synchronously) when someone asks the chain manager to run now: the KICK
        #: op, and a request that wedged the node with a newer epoch.
        self.on_kick: Callable[[], None] | None = None
        #: called (synchronously) after a public projection was written over the wire: the
        #: chain driver starts its manager when the projection names this node.
        self.on_public_write: Callable[[Projection], None] | None = None
        #: the chain driver's admin entry (CHAIN_BOOTSTRAP / CHAIN_SET_MEMBERS /
        #: CHAIN_STATUS): ``await chain_admin(op, meta) -> reply meta``.
        self.chain_admin: Callable[[Op, dict[str, Any]], Awaitable[dict[str, Any]]] | None = None
        #: the fitness reports the chain manager last published, as CHAIN_VIEW serves
        #: them (set by the chain driver: each with its ``age_ms`` at serving time)
        self.fitness_view: Callable[[], list[dict[str, Any]]] = list
        #: newest private projection annotated ``confirmed`` (CP zerf basis)
        self.confirmed_private: Projection | None = None
        #: AP: this node restarted inside the UPI of its latest private projection and
        #: waits for a new epoch (chain_manager.restart_needs_new_epoch); set and cleared
        #: by the chain driver, served by CHAIN_VIEW
        self.restarted = False
        self._peers: set[_Peer] = set()
        self._stopping = False
        self._accept_scope = anyio.CancelScope()
        self.metrics.gauges = self._gauges
        stats = getattr(store, "stats", None)
        if callable(stats):
            self.metrics.store_stats = stats
        if hasattr(store, "epoch_guard"):
            store.epoch_guard = self._append_epoch_guard
        self._handlers: dict[Op, Handler] = {
            Op.ECHO: self._echo, Op.APPEND: self._append, Op.WRITE: self._write,
            Op.READ: self._read, Op.TRIM: self._trim, Op.CHECKSUM_LIST: self._checksum_list,
            Op.LIST_FILES: self._list_files, Op.WEDGE_STATUS: self._wedge_status,
            Op.PROJ_WRITE: self._proj_write, Op.PROJ_READ: self._proj_read,
            Op.PROJ_READ_LATEST: self._proj_read_latest,
            Op.PROJ_LATEST_EPOCH_ID: self._proj_latest_epoch_id,
            Op.PROJ_LIST: self._proj_list, Op.PROJ_GET_ALL: self._proj_get_all,
            Op.KICK: self._kick, Op.REPAIR_RESET: self._repair_reset,
            Op.CHAIN_VIEW: self._chain_view, Op.CHAIN_BOOTSTRAP: self._chain_admin,
            Op.CHAIN_SET_MEMBERS: self._chain_admin, Op.CHAIN_STATUS: self._chain_admin,
            Op.APPEND_CHUNKS: self._append_chunks, Op.WRITE_CHUNKS: self._write_chunks,
        }

    # ---- state ---------------------------------------------------------------------------
    async def load_state(self) -> None:
        """The start-up wedge state from the projection store (``initial_state``)."""
        try:
            latest_private = await self.store.projection_read_latest("private")
        except NotWritten:
            latest_private = None
        public = await self.store.projection_latest_epoch_id("public")
        self.state = initial_state(latest_private, public.number)
        for p in reversed(await self.store.projection_get_all("private")):
            if p.dbg2.get("confirmed"):
                self.confirmed_private = p
                break
        self.log.info("wedge state loaded", **self._state_fields())

    def _state_fields(self) -> dict[str, Any]:
        s = self.state
        return {
            "wedged": s.wedged, "epoch": s.epoch_id.short(), "mode": s.mode,
            "public_epoch": s.public_epoch_number, "witness": self.witness,
        }

    def _set_state(self, new: WedgeState, why: str) -> None:
        if new != self.state:
            self.state = new
            self.log.info(f"wedge state changed: {why}", **self._state_fields())

    def _gauges(self) -> dict[str, float]:
        return {
            "wedged": int(self.state.wedged), "epoch": self.state.epoch_id.number,
            "public_epoch": self.state.public_epoch_number,
        }

    async def _kick(self, frame: wire.Frame, peer: _Peer) -> Reply:
        self._poke()
        return Reply()

    def _poke(self) -> None:
        if self.on_kick is not None:
            try:
                self.on_kick()
            except Exception as e:  # the hook belongs to someone else; never kill a request
                self.log.error("on_kick hook failed", error=repr(e))

    # ---- listener ------------------------------------------------------------------------
    async def serve(self, listener: anyio.abc.Listener[Any]) -> None:
        """Accept connections until ``stop`` (every connection runs in its own task)."""
        async with anyio.create_task_group() as tg:
            with self._accept_scope:
                await listener.serve(self._handle, task_group=tg)
            with anyio.CancelScope(shield=True):
                await listener.aclose()
            # accepting stopped: the task group waits for the connections to finish

    async def stop(self) -> None:
        """Graceful stop: stop accepting, stop reading requests, give in-flight requests
        ``stop_deadline_ms`` to finish, then cancel them."""
        if self._stopping:
            return
        self._stopping = True
        self.log.info("stopping", connections=len(self._peers))
        self._accept_scope.cancel()
        for peer in list(self._peers):
            peer.read_scope.cancel()
        with anyio.move_on_after(self.stop_deadline_s):
            for peer in list(self._peers):
                await peer.done.wait()
        late = [p for p in self._peers if not p.done.is_set()]
        for peer in late:
            if peer.request_scope is not None:
                peer.request_scope.cancel()
        if late:
            self.log.warning("stop deadline passed: cancelled in-flight requests",
                             connections=len(late))

    # ---- one connection ------------------------------------------------------------------
    async def _handle(self, raw_stream: Any) -> None:
        """One connection: an anyio byte stream (TLS, tests) or a ``FramedStream``."""
        stream = as_wire_stream(raw_stream)
        address = _peer_address(stream)
        proto = wire.Connection(wire.Role.SERVER, max_frame_size=self.max_frame_size,
                                alloc=big_buffer)
        peer = _Peer(stream, proto, address)
        if self._stopping or len(self._peers) >= self.max_connections:
            self.log.warning("connection refused", peer=address, stopping=self._stopping,
                             connections=len(self._peers))
            with anyio.CancelScope(shield=True):
                await stream.aclose()
            return
        self._peers.add(peer)
        self.metrics.connections_open += 1
        self.metrics.connections_total += 1
        try:
            await self._connection(peer)
        except Exception as e:  # one connection's failure must never reach the listener
            self.log.error("connection failed", peer=address, error=repr(e))
        finally:
            self._peers.discard(peer)
            self.metrics.connections_open -= 1
            peer.done.set()
            with anyio.CancelScope(shield=True):
                await stream.aclose()

    async def _connection(self, peer: _Peer) -> None:
        try:
            with anyio.fail_after(self.handshake_timeout_s):
                if not await self._handshake(peer):
                    return
        except TimeoutError:
            self.log.info("handshake timed out", peer=peer.address)
            return
        except RemoteProtocolError as e:
            await self._protocol_error(peer, e)
            return
        except _Gone:
            return
        pool = _Workers(self, peer)
        async with anyio.create_task_group() as tg:
            peer.request_scope = tg.cancel_scope
            try:
                with peer.read_scope:
                    try:
                        await self._read_loop(peer, tg, pool)
                    except RemoteProtocolError as e:
                        await self._protocol_error(peer, e)
                    except _Gone:
                        pass
            finally:
                pool.close()  # the workers finish what they hold, then exit

    async def _read_loop(self, peer: _Peer, tg: anyio.abc.TaskGroup, pool: _Workers) -> None:
        while True:
            ev = await self._next_event(peer)
            if isinstance(ev, wire.Closed):
                return
            if isinstance(ev, wire.BadRequest):
                self.metrics.protocol_errors += 1
                await self._send_error(peer, ev.request_id, ev.op, Status.PROTOCOL_ERROR,
                                       ev.message)
                continue
            assert isinstance(ev, wire.Request)
            # Backpressure: with every worker busy and the pool at its bound, this waits
            # (and the connection is not read) until a worker is free.
            await pool.submit(tg, ev.frame)

    async def _next_event(self, peer: _Peer) -> wire.Event:
        while True:
            ev = peer.proto.next_event()
            if not isinstance(ev, wire.NeedData):
                return ev
            before = peer.stream.bytes_received
            try:
                await peer.stream.receive_into(peer.proto)
            except anyio.ClosedResourceError:
                raise _Gone() from None
            self.metrics.bytes_in += peer.stream.bytes_received - before

    async def _handshake(self, peer: _Peer) -> bool:
        """Hello both ways, then (with a secret) the AUTH exchange.  False: close."""
        ev = await self._next_event(peer)
        if isinstance(ev, wire.Closed):
            return False
        assert isinstance(ev, wire.Hello)
        server_nonce = os.urandom(wire.NONCE_SIZE)
        await self._raw_send(peer, [peer.proto.send_server_hello(
            server_nonce, self.name, auth_required=self.secret is not None)])
        if peer.proto.state is wire.State.CLOSED:
            self.log.info("hello refused: no common version", peer=peer.address,
                          offered=list(ev.versions))
            return False
        if self.secret is None:
            return True
        req = await self._next_event(peer)
        if isinstance(req, wire.Closed):
            return False
        if not isinstance(req, wire.Request) or req.frame.op != Op.AUTH:
            rid, op = 0, 0
            if isinstance(req, wire.BadRequest):
                rid, op = req.request_id, req.op
            elif isinstance(req, wire.Request):
                rid, op = req.frame.request_id, req.frame.op
            await self._send_error(peer, rid, op, Status.AUTH_REQUIRED,
                                   "this node requires authentication")
            self.log.warning("unauthenticated request refused", peer=peer.address)
            return False
        f = req.frame
        want = wire.auth_proof(self.secret, "client", server_nonce, ev.nonce)
        try:
            got = bytes.fromhex(str(f.meta.get("proof", "")))
        except ValueError:
            got = b""
        if not wire.proof_matches(want, got):
            await self._send_error(peer, f.request_id, f.op, Status.AUTH_FAILED,
                                   "authentication failed")
            self.log.warning("authentication failed", peer=peer.address)
            return False
        proof = wire.auth_proof(self.secret, "server", server_nonce, ev.nonce)
        await self._raw_send(peer, [peer.proto.send_response(
            f.request_id, Op.AUTH, meta={"proof": proof.hex()}, epoch_id=self.state.epoch_id)])
        return True

    async def _protocol_error(self, peer: _Peer, e: RemoteProtocolError) -> None:
        """Tell the peer what went wrong (request id 0) and let the caller close."""
        self.metrics.protocol_errors += 1
        self.log.warning("protocol error, closing connection", peer=peer.address,
                         status=e.status.name, error=e.message)
        with contextlib.suppress(_Gone, MachiError):
            if peer.proto.peer_hello is not None and peer.proto.state is not wire.State.START:
                await self._send_error(peer, 0, 0, e.status, e.message)

    # ---- sending -------------------------------------------------------------------------
    async def _raw_send(self, peer: _Peer, parts: list[bytes | bytearray | memoryview]) -> None:
        try:
            if peer.stream.atomic_send:
                await peer.stream.send_parts(parts)
            else:
                async with peer.send_lock:
                    await peer.stream.send_parts(parts)
            self.metrics.bytes_out += sum(map(len, parts))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            raise _Gone() from None

    async def _send_error(
        self, peer: _Peer, request_id: int, op: int, status: Status, message: str,
        *, chunk_index: int | None = None,
    ) -> None:
        await self._raw_send(peer, [peer.proto.send_error(
            request_id, op, status, message, epoch_id=self.state.epoch_id,
            chunk_index=chunk_index)])

    async def _send_reply(
        self, peer: _Peer, f: wire.Frame, reply: Reply, *, final: bool = True
    ) -> None:
        size = sum(len(p) for p in reply.payload)
        head = peer.proto.send_response(
            f.request_id, f.op, Status.OK, epoch_id=self.state.epoch_id, meta=reply.meta,
            payload_size=size, final=final,
        )
        await self._raw_send(peer, join_small(head, reply.payload))

    # ---- requests ------------------------------------------------------------------------
    async def _serve_request(self, peer: _Peer, f: wire.Frame) -> None:
        t0 = time.perf_counter()
        op_name = _OP_NAMES.get(f.op, "unknown")
        status = Status.OK
        try:
            reply = await self._dispatch(f, peer)
            if reply is not None:
                await self._send_reply(peer, f, reply)
        except MachiError as e:
            status = e.status
            if status is Status.PARTITION:  # never tell a peer "partition": that is ours
                status = Status.BAD_JOSS
            with contextlib.suppress(_Gone, MachiError):
                await self._send_error(peer, f.request_id, f.op, status, e.message,
                                       chunk_index=getattr(e, "chunk_index", None))
        except _Gone:
            status = Status.PARTITION
        except Exception as e:
            status = Status.BAD_JOSS
            self.log.error("request failed", op=op_name, error=repr(e), peer=peer.address)
            with contextlib.suppress(_Gone, MachiError):
                await self._send_error(peer, f.request_id, f.op, status,
                                       f"internal error: {type(e).__name__}")
        finally:
            self.metrics.observe(op_name, status.name, time.perf_counter() - t0)

    async def _dispatch(self, f: wire.Frame, peer: _Peer) -> Reply | None:
        op = _OPS.get(f.op)
        if op is None or op is Op.HELLO:
            raise UnknownOp(f"unknown op {f.op}")
        if op is Op.AUTH:
            raise BadArg("auth is only allowed as the first request")
        if wire.OP_MIN_VERSION.get(op, 1) > peer.proto.version:
            raise UnknownOp(f"op {op.name.lower()} needs protocol version "
                            f"{wire.OP_MIN_VERSION[op]}; this connection speaks "
                            f"{peer.proto.version}")
        wire.check_request_fields(op, f.meta)
        if op in wire.DATA_OPS:
            if self.witness:
                raise BadArg("this node is a witness: no data operations")
            if op not in wire.SKIP_WEDGE_OPS:
                new, st = check_epoch(self.state, f.epoch_id)
                if new != self.state:
                    self._set_state(new, f"request at epoch {f.epoch_id.short()}")
                    self._poke()
                if st is not Status.OK:
                    raise error_for_status(st, f"node epoch {self.state.epoch_id.short()}, "
                                               f"request epoch {f.epoch_id.short()}")
        return await self._handlers[op](f, peer)

    def _append_epoch_guard(self, epoch_id: EpochId) -> None:
        """The store's re-check inside the append path (reference 2.3 step 6)."""
        st = recheck_epoch(self.state, epoch_id)
        if st is not Status.OK:
            raise error_for_status(st, f"append re-check: node epoch "
                                       f"{self.state.epoch_id.short()}"
                                       f"{' (wedged)' if self.state.wedged else ''}, "
                                       f"request epoch {epoch_id.short()}")

    async def _echo(self, f: wire.Frame, peer: _Peer) -> Reply:
        return Reply(payload=[f.payload])

    async def _append(self, f: wire.Frame, peer: _Peer) -> Reply:
        m = f.meta
        pos, csum = await self.store.append(
            m["prefix"], f.payload, _parse_csum(m["csum"]), epoch_id=f.epoch_id,
            chunk_extra=m.get("chunk_extra", 0), locator=m.get("locator", 0),
        )
        return Reply({"file": pos.file, "offset": pos.offset, "size": pos.size,
                      "csum": csum.hex()})

    async def _append_chunks(self, f: wire.Frame, peer: _Peer) -> Reply:
        m = f.meta
        specs = wire.parse_append_chunks(m, len(f.payload))
        chunks = [(f.payload[c.start:c.start + c.size], _chunk_csum(c.csum, i, len(specs)),
                   c.chunk_extra) for i, c in enumerate(specs)]
        res = await self.store.append_chunks(
            m["prefix"], chunks, epoch_id=f.epoch_id, locator=m.get("locator", 0))
        return Reply({"file": res[0][0].file,
                      "chunks": [[pos.offset, pos.size, csum.hex()] for pos, csum in res]})

    async def _write_chunks(self, f: wire.Frame, peer: _Peer) -> Reply:
        m = f.meta
        specs = wire.parse_write_chunks(m, len(f.payload))
        chunks = [(c.offset, f.payload[c.start:c.start + c.size],
                   _chunk_csum(c.csum, i, len(specs))) for i, c in enumerate(specs)]
        csums = await self.store.write_chunks(m["file"], chunks)
        return Reply({"csums": [c.hex() for c in csums]})

    async def _write(self, f: wire.Frame, peer: _Peer) -> Reply:
        m = f.meta
        csum = await self.store.write(m["file"], m["offset"], f.payload, _parse_csum(m["csum"]))
        return Reply({"csum": csum.hex()})

    async def _read(self, f: wire.Frame, peer: _Peer) -> Reply:
        m = f.meta
        limit = self.max_frame_size - 1024 * 1024
        if m["size"] > limit:
            raise TooLarge(f"read of {m['size']} bytes exceeds the limit of {limit}")
        res = await self.store.read(m["file"], m["offset"], m["size"],
                                    needs_trimmed=m.get("needs_trimmed", False))
        chunks = [[c.file, c.offset, len(c.data), c.csum.hex()] for c in res.chunks]
        return Reply(
            {"chunks": chunks, "trimmed": [list(t) for t in res.trimmed],
             "partial": bool(res.partial)},
            [c.data for c in res.chunks],
        )

    async def _trim(self, f: wire.Frame, peer: _Peer) -> Reply:
        m = f.meta
        await self.store.trim(m["file"], m["offset"], m["size"])
        return Reply()

    async def _repair_reset(self, f: wire.Frame, peer: _Peer) -> Reply:
        """CP repair only (docs/repair.md): allowed when this FLU is repairing in its
        current projection (the epoch check already matched the request's epoch)."""
        try:
            p = await self.store.projection_read_latest("private")
        except NotWritten:
            p = None
        if p is None or p.epoch_id != self.state.epoch_id or self.name not in p.repairing:
            raise BadArg(f"repair_reset: {self.name} is not repairing in its current projection")
        m = f.meta
        n = await self.store.repair_reset(m["file"], m["offset"], m["size"])
        self.log.warning("repair reset", file=m["file"], offset=m["offset"], size=m["size"],
                         chunks=n, epoch=p.epoch_id.short())
        return Reply({"chunks": n})

    async def _checksum_list(self, f: wire.Frame, peer: _Peer) -> Reply:
        """Streamed: one frame per batch (not final), then an empty final frame.  With
        ``summary``: one final frame, the summary of the entries (anti-entropy)."""
        if f.meta.get("summary"):
            s = await self.store.checksum_summary(
                f.meta["file"], from_offset=f.meta.get("from_offset", MIN_OFFSET),
                to_offset=f.meta.get("to_offset"))
            return Reply({"summary": None if s is None else list(s)})
        if "to_offset" in f.meta:
            raise BadArg("to_offset goes only with summary")
        batch_size = min(max(1, f.meta.get("batch_size", CHECKSUM_LIST_BATCH_MAX)),
                         CHECKSUM_LIST_BATCH_MAX)
        async for batch in self.store.checksum_list(
                f.meta["file"], batch_size=batch_size,
                from_offset=f.meta.get("from_offset", MIN_OFFSET)):
            # a fourth element (1) only on chunks whose stored copy is known corrupt
            entries = [[e.offset, e.size, None if e.csum is None else e.csum.hex(),
                        *((1,) if e.corrupt else ())] for e in batch]
            await self._send_reply(peer, f, Reply({"entries": entries}), final=False)
        return Reply({"entries": []})

    async def _list_files(self, f: wire.Frame, peer: _Peer) -> Reply:
        if f.meta.get("changes"):  # AP anti-entropy: [name, size, low] and a new token
            if self.witness:
                return Reply({"files": [], "token": 0})
            token, rows = await self.store.list_file_changes(f.meta.get("since"))
            return Reply({"files": [[n, s, low] for n, s, low in rows], "token": token})
        files = [] if self.witness else await self.store.list_files()
        return Reply({"files": [[n, s] for n, s in files]})

    async def _wedge_status(self, f: wire.Frame, peer: _Peer) -> Reply:
        s = self.state
        return Reply({
            "wedged": s.wedged, "epoch_id": s.epoch_id.to_json(), "mode": s.mode,
            "witness": self.witness, "name": self.name,
            "public_epoch_number": s.public_epoch_number,
        })

    async def _proj_write(self, f: wire.Frame, peer: _Peer) -> Reply:
        kind = f.meta["kind"]
        try:
            p = projection_from_json(f.meta["projection"])
        except ValueError as e:
            raise BadArg(f"bad projection: {e}") from None
        await self.write_projection(kind, p)
        if kind == "public" and self.on_public_write is not None:
            try:
                self.on_public_write(p)
            except Exception as e:  # the hook belongs to someone else
                self.log.error("on_public_write hook failed", error=repr(e))
        return Reply()

    async def write_projection(self, kind: Kind, p: Projection) -> None:
        """Store ``p`` and apply the wedge rule (the wire op and the chain driver)."""
        await self.store.projection_write(kind, p)
        self._set_state(after_projection_write(self.state, kind, p),
                        f"{kind} projection {p.epoch_id.short()} written")
        if kind == "private" and p.dbg2.get("confirmed") and (
            self.confirmed_private is None
            or p.epoch_number >= self.confirmed_private.epoch_number
        ):
            self.confirmed_private = p

    def set_wedge_state(self, new: WedgeState, why: str) -> None:
        """For the chain driver: a state computed with ``machi.core.wedge``."""
        self._set_state(new, why)

    async def _chain_view(self, f: wire.Frame, peer: _Peer) -> Reply:
        out: dict[str, Any] = {"fitness": self.fitness_view(), "restarted": self.restarted}
        for kind in ("public", "private"):
            try:
                out[kind] = (await self.store.projection_read_latest(kind)).to_json()
            except NotWritten:
                out[kind] = None
        conf = self.confirmed_private if f.meta.get("want_confirmed") else None
        out["private_confirmed"] = None if conf is None else conf.to_json()
        return Reply(out)

    async def _chain_admin(self, f: wire.Frame, peer: _Peer) -> Reply:
        if self.chain_admin is None:
            raise BadArg("no chain manager runs on this node")
        op = f.known_op()
        assert op is not None
        return Reply(await self.chain_admin(op, f.meta))

    async def _proj_read(self, f: wire.Frame, peer: _Peer) -> Reply:
        p = await self.store.projection_read(f.meta["kind"], f.meta["epoch_number"])
        return Reply({"projection": p.to_json()})

    async def _proj_read_latest(self, f: wire.Frame, peer: _Peer) -> Reply:
        p = await self.store.projection_read_latest(f.meta["kind"])
        return Reply({"projection": p.to_json()})

    async def _proj_latest_epoch_id(self, f: wire.Frame, peer: _Peer) -> Reply:
        eid = await self.store.projection_latest_epoch_id(f.meta["kind"])
        return Reply({"epoch_id": eid.to_json()})

    async def _proj_list(self, f: wire.Frame, peer: _Peer) -> Reply:
        return Reply({"epochs": list(await self.store.projection_list(f.meta["kind"]))})

    async def _proj_get_all(self, f: wire.Frame, peer: _Peer) -> Reply:
        ps = await self.store.projection_get_all(f.meta["kind"])
        return Reply({"projections": [p.to_json() for p in ps]})


class _Workers:
    """Per-connection request workers, started on demand up to the in-flight bound.

    Handing a request to an idle worker is much cheaper than spawning a task per request;
    workers live as long as the connection.  The hand-over is a bare future per idle
    worker, resolved by the read loop without yielding (an anyio memory stream cost two
    extra loop rounds per request: a checkpoint on each side).  With every worker busy
    and the pool at its bound, ``submit`` waits (backpressure: the connection is not read
    meanwhile) until a worker is idle again.
    """

    def __init__(self, node: FluNode, peer: _Peer) -> None:
        self.node = node
        self.peer = peer
        self.workers = 0
        self._idle: deque[asyncio.Future[wire.Frame | None]] = deque()
        self._free: asyncio.Future[None] | None = None  # the read loop waits for a worker
        self._closed = False

    async def submit(self, tg: anyio.abc.TaskGroup, frame: wire.Frame) -> None:
        while True:
            while self._idle:
                fut = self._idle.popleft()
                if not fut.done():  # (a cancelled worker's future is done)
                    fut.set_result(frame)
                    return
            if self.workers < self.node.max_in_flight:
                self.workers += 1
                tg.start_soon(self._work, frame)
                return
            free = self._free = asyncio.get_running_loop().create_future()
            try:
                await free
            finally:
                self._free = None

    def close(self) -> None:
        """No more requests: idle workers exit now, busy ones after their request."""
        self._closed = True
        while self._idle:
            fut = self._idle.popleft()
            if not fut.done():
                fut.set_result(None)

    def _wake_submitter(self) -> None:
        free = self._free
        if free is not None and not free.done():
            free.set_result(None)

    async def _work(self, frame: wire.Frame | None) -> None:
        try:
            while frame is not None:
                await self.node._serve_request(self.peer, frame)
                if self._closed:
                    return
                fut = asyncio.get_running_loop().create_future()
                self._idle.append(fut)
                self._wake_submitter()
                frame = await fut
        finally:
            self.workers -= 1
            self._wake_submitter()


class _Gone(Exception):
    """The peer's stream is closed or broken: nothing more can be sent."""


def _parse_csum(text: str) -> TaggedCsum:
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise BadArg("csum must be hex") from None
    try:
        return TaggedCsum.from_bytes(raw)
    except ValueError as e:
        raise BadChecksum(str(e)) from None


def _chunk_csum(text: str, index: int, count: int) -> TaggedCsum:
    try:
        return _parse_csum(text)
    except MachiError as e:
        out = type(e)(f"chunk {index} of {count}: {e.message}; nothing written")
        out.chunk_index = index  # type: ignore[attr-defined]
        raise out from None


#: wire op number -> Op and its metric name (an enum call per request is not free)
_OPS: dict[int, Op] = {int(op): op for op in Op}
_OP_NAMES: dict[int, str] = {int(op): op.name.lower() for op in Op}


def _peer_address(stream: WireStream) -> str:
    try:
        addr = stream.extra(anyio.abc.SocketAttribute.remote_address)
    except Exception:
        return "?"
    if isinstance(addr, tuple):
        return f"{addr[0]}:{addr[1]}"
    return str(addr)


__all__ = ["FluNode", "Reply"]
