"""The FLU wire protocol as a sans-IO codec (h11 style): bytes in, events out; building a
frame returns bytes.  Specified in ``docs/protocol.md``.

Owns: the frame layout, the op and frame-kind numbers, the per-op request field table,
the hello/auth handshake rules, the per-connection state machine (who may send what
when), the frame-size limit (enforced from the length prefix, before the body is
buffered) and the authentication proofs.  Must not: touch sockets, clocks or global
randomness (nonces are parameters), nor know what a FLU does with a request.

Frame (all integers big-endian)::

    0   u32  frame_len     bytes after this field (= 56 + meta_len + payload_len)
    4   u8   kind          0 hello, 1 request, 2 response
    5   u8   op            Op
    6   u8   status        Status (responses; 0 otherwise)
    7   u8   flags         bit 0 FINAL (last frame of a response), others 0
    8   u64  request_id
    16  u64  epoch_number
    24  32B  epoch_csum
    56  u32  meta_len
    60  meta               UTF-8 JSON object (the op's fields), meta_len bytes
    60+meta_len  payload   raw bytes (chunk data), the rest of the frame

Errors: ``LocalProtocolError`` when *we* try to send something illegal,
``RemoteProtocolError`` when the peer did (the connection must then be closed; the
exception's ``status`` says what to answer if anything).  A request whose framing is
intact but whose meta is not a JSON object becomes a ``BadRequest`` event: the
connection survives and the server answers ``PROTOCOL_ERROR``.
"""

from __future__ import annotations

import enum
import hmac
import json
import struct
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import blake3

from .epoch import DUMMY_EPOCH_ID, EPOCH_CSUM_SIZE, EpochId
from .errors import BadArg, LocalProtocolError, RemoteProtocolError, TooLarge
from .status import Status

PROTOCOL_NAME: Final = "machi-py"
#: 1: single-chunk data ops; 2 adds APPEND_CHUNKS and WRITE_CHUNKS (multi-chunk requests).
PROTOCOL_VERSIONS: Final = (1, 2)
#: The first version that has the multi-chunk ops.
MULTI_CHUNK_VERSION: Final = 2
#: Bound on the chunks of one multi-chunk request (bytes are bounded by the frame limit).
MAX_CHUNKS_PER_REQUEST: Final = 1024
PREFIX_SIZE: Final = 4
HEADER_SIZE: Final = 60  # including the 4-byte length prefix
_AFTER_PREFIX: Final = HEADER_SIZE - PREFIX_SIZE
MAX_PAYLOAD_SIZE_DEFAULT: Final = 64 * 1024 * 1024
#: Default bound on ``frame_len``: 64 MiB of payload plus 1 MiB for header and meta.
MAX_FRAME_SIZE_DEFAULT: Final = MAX_PAYLOAD_SIZE_DEFAULT + 1024 * 1024
NONCE_SIZE: Final = 32
FLAG_FINAL: Final = 0x01
#: Frames of at least this many bytes get a receive buffer of their own (FrameDecoder).
BIG_FRAME: Final = 64 * 1024

_HEAD = struct.Struct(">IBBBBQQ32sI")
assert _HEAD.size == HEADER_SIZE
_PREFIX = struct.Struct(">I")
_U64_MAX: Final = 2**64 - 1


class Kind(enum.IntEnum):
    HELLO = 0
    REQUEST = 1
    RESPONSE = 2


class Op(enum.IntEnum):
    HELLO = 0
    AUTH = 1
    ECHO = 2
    APPEND = 3
    WRITE = 4
    READ = 5
    TRIM = 6
    CHECKSUM_LIST = 7
    LIST_FILES = 8
    WEDGE_STATUS = 9
    PROJ_WRITE = 10
    PROJ_READ = 11
    PROJ_READ_LATEST = 12
    PROJ_LATEST_EPOCH_ID = 13
    PROJ_LIST = 14
    PROJ_GET_ALL = 15
    KICK = 16
    REPAIR_RESET = 17
    CHAIN_VIEW = 18
    CHAIN_BOOTSTRAP = 19
    CHAIN_SET_MEMBERS = 20
    CHAIN_STATUS = 21
    APPEND_CHUNKS = 22  # protocol version >= 2
    WRITE_CHUNKS = 23  # protocol version >= 2


#: Data ops: epoch-checked (unless in SKIP_WEDGE_OPS) and refused by witnesses.
DATA_OPS: Final = frozenset(
    {Op.APPEND, Op.WRITE, Op.READ, Op.TRIM, Op.CHECKSUM_LIST, Op.REPAIR_RESET,
     Op.APPEND_CHUNKS, Op.WRITE_CHUNKS}
)
#: Ops a connection may use only when it negotiated at least this version.
OP_MIN_VERSION: Final[Mapping[Op, int]] = {
    Op.APPEND_CHUNKS: MULTI_CHUNK_VERSION, Op.WRITE_CHUNKS: MULTI_CHUNK_VERSION,
}
#: Ops that skip the epoch/wedge check (reference 2.3).
SKIP_WEDGE_OPS: Final = frozenset(
    {Op.AUTH, Op.ECHO, Op.WEDGE_STATUS, Op.LIST_FILES, Op.CHECKSUM_LIST}
)
PROJECTION_OPS: Final = frozenset(
    {
        Op.PROJ_WRITE, Op.PROJ_READ, Op.PROJ_READ_LATEST, Op.PROJ_LATEST_EPOCH_ID,
        Op.PROJ_LIST, Op.PROJ_GET_ALL,
    }
)
#: Ops whose response may span many frames (all but the last lack FLAG_FINAL).
STREAMED_OPS: Final = frozenset({Op.CHECKSUM_LIST})

_REQ = "required"
_OPT = "optional"
# op -> field -> (type, required?).  The one table of request fields (docs/protocol.md).
REQUEST_FIELDS: Final[Mapping[Op, Mapping[str, tuple[type, str]]]] = {
    Op.AUTH: {"proof": (str, _REQ)},
    Op.ECHO: {},
    Op.APPEND: {
        "prefix": (str, _REQ), "csum": (str, _REQ), "chunk_extra": (int, _OPT),
        "locator": (int, _OPT),
    },
    Op.WRITE: {"file": (str, _REQ), "offset": (int, _REQ), "csum": (str, _REQ)},
    Op.READ: {
        "file": (str, _REQ), "offset": (int, _REQ), "size": (int, _REQ),
        "needs_trimmed": (bool, _OPT),
    },
    Op.TRIM: {"file": (str, _REQ), "offset": (int, _REQ), "size": (int, _REQ)},
    Op.CHECKSUM_LIST: {"file": (str, _REQ), "batch_size": (int, _OPT),
                       "from_offset": (int, _OPT), "to_offset": (int, _OPT),
                       "summary": (bool, _OPT)},
    Op.LIST_FILES: {"changes": (bool, _OPT), "since": (int, _OPT)},
    Op.WEDGE_STATUS: {},
    Op.PROJ_WRITE: {"kind": (str, _REQ), "projection": (dict, _REQ)},
    Op.PROJ_READ: {"kind": (str, _REQ), "epoch_number": (int, _REQ)},
    Op.PROJ_READ_LATEST: {"kind": (str, _REQ)},
    Op.PROJ_LATEST_EPOCH_ID: {"kind": (str, _REQ)},
    Op.PROJ_LIST: {"kind": (str, _REQ)},
    Op.PROJ_GET_ALL: {"kind": (str, _REQ)},
    Op.KICK: {},
    Op.REPAIR_RESET: {"file": (str, _REQ), "offset": (int, _REQ), "size": (int, _REQ)},
    Op.CHAIN_VIEW: {"want_confirmed": (bool, _OPT)},
    Op.CHAIN_BOOTSTRAP: {
        "chain": (str, _REQ), "mode": (str, _REQ), "members": (dict, _REQ),
        "witnesses": (list, _OPT), "propose": (bool, _OPT),
    },
    Op.CHAIN_SET_MEMBERS: {"members": (dict, _REQ), "witnesses": (list, _OPT)},
    Op.CHAIN_STATUS: {},
    # chunks: [[size, csum, chunk_extra], ...] (see parse_append_chunks)
    Op.APPEND_CHUNKS: {"prefix": (str, _REQ), "chunks": (list, _REQ), "locator": (int, _OPT)},
    # chunks: [[offset, size, csum], ...] (see parse_write_chunks)
    Op.WRITE_CHUNKS: {"file": (str, _REQ), "chunks": (list, _REQ)},
}
PROJECTION_KINDS: Final = ("public", "private")


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame.  ``payload`` is a view into the frame's bytes (no copy)."""

    kind: Kind
    op: int  # an ``Op`` value, or an unknown number the server answers UNKNOWN_OP
    status: int
    flags: int
    request_id: int
    epoch_id: EpochId
    meta: dict[str, Any]
    payload: memoryview = field(repr=False)

    @property
    def final(self) -> bool:
        return bool(self.flags & FLAG_FINAL)

    def known_op(self) -> Op | None:
        try:
            return Op(self.op)
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class Hello:
    """The peer's hello.  From a client: ``versions`` offered.  From a server: the chosen
    ``version`` (0 with a non-OK status: no common version) and whether auth is needed."""

    versions: tuple[int, ...]
    nonce: bytes
    name: str
    auth_required: bool
    status: Status
    meta: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Request:
    frame: Frame


@dataclass(frozen=True, slots=True)
class Response:
    frame: Frame


@dataclass(frozen=True, slots=True)
class BadRequest:
    """A request frame with intact framing but an unusable meta section."""

    request_id: int
    op: int
    message: str


class NeedData:
    """Sentinel event: feed more bytes with ``receive_data``."""

    def __repr__(self) -> str:
        return "NEED_DATA"


class Closed:
    """Sentinel event: the peer closed cleanly at a frame boundary."""

    def __repr__(self) -> str:
        return "CLOSED"


NEED_DATA: Final = NeedData()
CLOSED: Final = Closed()
Event = Hello | Request | Response | BadRequest | NeedData | Closed


# ---- frame encoding ------------------------------------------------------------------
def encode_meta(meta: Mapping[str, Any] | None) -> bytes:
    if not meta:
        return b"{}"
    return json.dumps(meta, separators=(",", ":"), allow_nan=False).encode("utf-8")


def encode_frame(
    kind: Kind,
    op: int,
    *,
    request_id: int = 0,
    status: int = 0,
    flags: int = 0,
    epoch_id: EpochId = DUMMY_EPOCH_ID,
    meta: Mapping[str, Any] | None = None,
    payload_size: int = 0,
    max_frame_size: int = MAX_FRAME_SIZE_DEFAULT,
) -> bytes:
    """Header + meta of one frame; the caller sends ``payload_size`` payload bytes after it.

    Raises ``LocalProtocolError`` for out-of-range numbers and ``TooLarge`` for a frame
    that the limit forbids.
    """
    if not (0 <= op <= 255 and 0 <= status <= 255 and 0 <= flags <= 255):
        raise LocalProtocolError(f"op/status/flags out of range: {op}/{status}/{flags}")
    if not 0 <= request_id <= _U64_MAX:
        raise LocalProtocolError(f"request id {request_id} out of range")
    if not 0 <= epoch_id.number <= _U64_MAX or len(epoch_id.csum) != EPOCH_CSUM_SIZE:
        raise LocalProtocolError(f"malformed epoch id {epoch_id!r}")
    meta_bytes = encode_meta(meta)
    frame_len = _AFTER_PREFIX + len(meta_bytes) + payload_size
    if frame_len > max_frame_size:
        raise TooLarge(f"frame of {frame_len} bytes exceeds the limit of {max_frame_size}")
    head = _HEAD.pack(
        frame_len, kind, op, status, flags, request_id, epoch_id.number, epoch_id.csum,
        len(meta_bytes),
    )
    return head + meta_bytes


def frame_bytes(
    kind: Kind,
    op: int,
    *,
    payload: bytes | bytearray | memoryview = b"",
    **kw: Any,
) -> bytes:
    """A whole frame as one bytes object (small frames; big payloads use ``encode_frame``
    and a second send)."""
    return encode_frame(kind, op, payload_size=len(payload), **kw) + bytes(payload)


# ---- frame decoding ------------------------------------------------------------------
#: Makes the receive buffer of one big frame: a writable, byte-format view of ``n`` bytes
#: whose content does not matter (every byte is overwritten before it is read).
BufferAlloc = Callable[[int], memoryview]


def bytearray_alloc(n: int) -> memoryview:
    """The default ``BufferAlloc`` (zero-filled by Python; machi.wire_io passes one that
    is not when numpy is installed)."""
    return memoryview(bytearray(n))


#: A decoder's buffer for small frames holds this many big-frame thresholds (frames of
#: ``big_frame`` bytes or more get a buffer of their own).  Fixed size: a view handed to
#: a transport stays valid.
SMALL_BUFFER_FACTOR: Final = 4


class FrameDecoder:
    """Splits a byte stream into frames, with as few copies as the caller allows.

    Two ways to feed it: ``receive_data(bytes)`` (one copy into the decoder), or, for an
    asyncio ``BufferedProtocol``, ``get_buffer()`` -> the transport reads into that view ->
    ``buffer_updated(n)`` (no copy: the kernel writes into the decoder's memory).  Small
    frames share one fixed buffer and are copied out when complete; a frame of at least
    ``big_frame`` bytes (default ``BIG_FRAME``) gets a buffer of exactly its size
    (allocated once its length prefix passed the limit check) and the rest of it is read
    straight into that buffer, so its payload reaches the caller without a copy after the
    kernel's.

    The size limit is checked on the length prefix, so an oversized frame is refused
    before its body is buffered.  Complete frames wait in ``ready`` (in order) until
    ``next_frame``; a framing error found while splitting is raised by ``next_frame``
    after the frames before it.  The caller bounds ``ready_bytes`` (stops reading).
    """

    def __init__(
        self, max_frame_size: int = MAX_FRAME_SIZE_DEFAULT, *, big_frame: int = BIG_FRAME,
        alloc: BufferAlloc = bytearray_alloc,
    ) -> None:
        if big_frame < HEADER_SIZE:
            raise LocalProtocolError(f"big_frame {big_frame} is below the header size")
        self.max_frame_size = max_frame_size
        self.big_frame = big_frame
        self._alloc = alloc
        #: after a big frame the next read is offered only this window, so that little of
        #: a following big frame lands in the small buffer (and is copied out of it)
        self._probe = max(PREFIX_SIZE, big_frame // 16)
        self._after_big = False
        self._small = bytearray(SMALL_BUFFER_FACTOR * big_frame)
        self._small_view = memoryview(self._small)
        self._lo = 0  # unconsumed bytes of the small buffer: [_lo, _hi)
        self._hi = 0
        self._big: memoryview | None = None  # the big frame being read, prefix included
        self._big_fill = 0
        self._ready: deque[bytes | memoryview] = deque()
        self.ready_bytes = 0
        self._error: RemoteProtocolError | None = None
        self._eof = False

    @property
    def buffered(self) -> int:
        """Bytes held: complete frames not yet taken plus the partial frame."""
        return self.ready_bytes + self._hi - self._lo + self._big_fill

    @property
    def has_event(self) -> bool:
        """True when ``next_frame`` would return something other than ``NEED_DATA``."""
        return bool(self._ready) or self._error is not None or self._eof

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes (copied); ``b""`` means the peer closed its side."""
        if self._eof and data:
            raise LocalProtocolError("data received after EOF")
        if not data:
            self._eof = True
            return
        src = memoryview(data).cast("B")
        pos = 0
        while pos < len(src):
            dst = self.get_buffer()
            n = min(len(dst), len(src) - pos)
            dst[:n] = src[pos:pos + n]
            pos += n
            self.buffer_updated(n)

    def get_buffer(self, size_hint: int = -1) -> memoryview:
        """Where the next received bytes go (never empty)."""
        if self._eof:
            raise LocalProtocolError("data received after EOF")
        big = self._big
        if big is not None:
            return big[self._big_fill:]
        if self._error is not None:
            return self._small_view  # the connection is dying: bytes are dropped
        if self._lo == self._hi:
            self._lo = self._hi = 0
            if self._after_big:
                return self._small_view[:self._probe]
        elif len(self._small) - self._hi < self.big_frame:
            # Move the partial frame (< big_frame bytes) to the front.
            n = self._hi - self._lo
            assert n < self._lo  # source and destination do not overlap
            self._small[:n] = self._small_view[self._lo:self._hi]
            self._lo, self._hi = 0, n
        return self._small_view[self._hi:]

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` were written at the start of the last ``get_buffer`` view."""
        big = self._big
        if big is not None:
            self._big_fill += nbytes
            if self._big_fill == len(big):
                self._big, self._big_fill = None, 0
                self._after_big = True
                self._push(big)
            return
        if self._error is not None:
            return
        self._hi += nbytes
        self._split()

    def _push(self, raw: bytes | memoryview) -> None:
        self._ready.append(raw)
        self.ready_bytes += len(raw)

    def _split(self) -> None:
        """Move the complete frames of the small buffer to ``ready``; start a big frame's
        own buffer when the partial frame is big."""
        small, lo, hi = self._small, self._lo, self._hi
        while hi - lo >= PREFIX_SIZE:
            (frame_len,) = _PREFIX.unpack_from(small, lo)
            if frame_len > self.max_frame_size:
                self._error = _remote(
                    TooLarge,
                    f"frame of {frame_len} bytes exceeds the limit of {self.max_frame_size}")
                break
            if frame_len < _AFTER_PREFIX:
                self._error = RemoteProtocolError(
                    f"frame length {frame_len} is shorter than the header")
                break
            total = PREFIX_SIZE + frame_len
            if hi - lo >= total:
                self._push(bytes(self._small_view[lo:lo + total]))
                self._after_big = False
                lo += total
                continue
            if total >= self.big_frame:
                have = hi - lo
                big = self._alloc(total)
                if len(big) != total or big.readonly:
                    raise LocalProtocolError("the buffer allocator returned a bad buffer")
                big[:have] = self._small_view[lo:hi]
                self._big, self._big_fill = big, have
                lo = hi
            break
        if lo == hi:
            lo = hi = 0
        self._lo, self._hi = lo, hi

    def next_frame(self) -> Frame | BadRequest | NeedData | Closed:
        if self._ready:
            raw = self._ready.popleft()
            self.ready_bytes -= len(raw)
            return decode_frame(raw)
        if self._error is not None:
            raise self._error
        if not self._eof:
            return NEED_DATA
        partial = self._hi - self._lo + self._big_fill
        if partial:
            raise RemoteProtocolError(f"connection closed inside a frame ({partial} bytes)")
        return CLOSED

    def receive_size_hint(self, default: int) -> int:
        """How many bytes to ask a stream (``receive_data`` callers) for next: inside a big
        frame exactly the rest of it (nothing of the next frame is copied twice);
        otherwise ``default``."""
        if self._big is not None:
            return len(self._big) - self._big_fill
        return default


def _remote(cls: type[Exception], message: str) -> RemoteProtocolError:
    """A RemoteProtocolError whose status tells what to answer (e.g. TOO_LARGE)."""
    err = RemoteProtocolError(message)
    if cls is TooLarge:
        err.status = Status.TOO_LARGE
    return err


def decode_frame(raw: bytes | bytearray | memoryview) -> Frame | BadRequest:
    """Decode one complete frame (prefix included).  The payload is a view into ``raw``,
    which must not be modified afterwards."""
    if len(raw) < HEADER_SIZE:
        raise RemoteProtocolError("truncated frame header")
    frame_len, kind, op, status, flags, request_id, e_num, e_csum, meta_len = (
        _HEAD.unpack_from(raw, 0)
    )
    if frame_len + PREFIX_SIZE != len(raw):
        raise RemoteProtocolError("frame length does not match the data")
    try:
        kind_e = Kind(kind)
    except ValueError:
        raise RemoteProtocolError(f"unknown frame kind {kind}") from None
    if flags & ~FLAG_FINAL:
        raise RemoteProtocolError(f"unknown flags {flags:#x}")
    if meta_len > len(raw) - HEADER_SIZE:
        raise RemoteProtocolError(f"meta length {meta_len} exceeds the frame")
    view = memoryview(raw)
    meta_end = HEADER_SIZE + meta_len
    try:
        meta = json.loads(bytes(view[HEADER_SIZE:meta_end]))
        if not isinstance(meta, dict):
            raise ValueError("meta is not a JSON object")
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        if kind_e is Kind.REQUEST:
            return BadRequest(request_id, op, f"bad meta: {exc}")
        raise RemoteProtocolError(f"bad meta in a {kind_e.name.lower()} frame: {exc}") from None
    return Frame(
        kind_e, op, status, flags, request_id, EpochId(e_num, bytes(e_csum)), meta,
        view[meta_end:],
    )


# ---- request field validation --------------------------------------------------------
def check_request_fields(op: Op, meta: Mapping[str, Any]) -> None:
    """Raise ``BadArg`` naming the field when ``meta`` does not fit ``REQUEST_FIELDS``."""
    spec = REQUEST_FIELDS.get(op)
    if spec is None:
        raise BadArg(f"op {op.name} takes no request")
    unknown = set(meta) - set(spec)
    if unknown:
        raise BadArg(f"{op.name.lower()}: unknown fields {sorted(unknown)}")
    for name, (typ, need) in spec.items():
        if name not in meta:
            if need == _REQ:
                raise BadArg(f"{op.name.lower()}: missing field {name!r}")
            continue
        value = meta[name]
        if typ is int and (not isinstance(value, int) or isinstance(value, bool)):
            raise BadArg(f"{op.name.lower()}: field {name!r} must be an integer")
        if typ is int and not 0 <= value <= _U64_MAX:
            raise BadArg(f"{op.name.lower()}: field {name!r} out of range")
        if not isinstance(value, typ):
            raise BadArg(f"{op.name.lower()}: field {name!r} must be {typ.__name__}")
    kind = meta.get("kind")
    if kind is not None and kind not in PROJECTION_KINDS:
        raise BadArg(f"{op.name.lower()}: kind must be 'public' or 'private', not {kind!r}")


# ---- multi-chunk requests (protocol version 2) ----------------------------------------
@dataclass(frozen=True, slots=True)
class AppendChunkSpec:
    """One chunk of an APPEND_CHUNKS request: its bytes are ``payload[start:start+size]``."""

    start: int
    size: int
    csum: str  # tagged checksum, hex (parsed by the node)
    chunk_extra: int


@dataclass(frozen=True, slots=True)
class WriteChunkSpec:
    """One chunk of a WRITE_CHUNKS request: its bytes are ``payload[start:start+size]``."""

    start: int
    offset: int
    size: int
    csum: str


def _chunk_list(op: Op, meta: Mapping[str, Any]) -> list[Any]:
    chunks = meta.get("chunks")
    name = op.name.lower()
    if not isinstance(chunks, list) or not chunks:
        raise BadArg(f"{name}: chunks must be a non-empty list")
    if len(chunks) > MAX_CHUNKS_PER_REQUEST:
        raise BadArg(f"{name}: {len(chunks)} chunks, at most {MAX_CHUNKS_PER_REQUEST} "
                     "per request")
    return chunks


def _bad_chunk(message: str, index: int) -> BadArg:
    err = BadArg(message)
    err.chunk_index = index  # type: ignore[attr-defined]
    return err


def _uint(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _U64_MAX


def parse_append_chunks(meta: Mapping[str, Any], payload_size: int) -> list[AppendChunkSpec]:
    """The chunks of an APPEND_CHUNKS request; ``BadArg`` naming the chunk (by index) for a
    malformed entry, an empty chunk, or sizes that do not add up to the payload."""
    out: list[AppendChunkSpec] = []
    start = 0
    for i, c in enumerate(_chunk_list(Op.APPEND_CHUNKS, meta)):
        if not (isinstance(c, list) and len(c) == 3 and _uint(c[0]) and isinstance(c[1], str)
                and _uint(c[2])):
            raise _bad_chunk(f"append_chunks: chunk {i}: want [size, csum, chunk_extra], "
                             f"got {c!r}"[:300], i)
        if c[0] == 0:
            raise _bad_chunk(f"append_chunks: chunk {i}: empty chunk", i)
        out.append(AppendChunkSpec(start, c[0], c[1], c[2]))
        start += c[0]
    if start != payload_size:
        raise BadArg(f"append_chunks: chunk sizes add up to {start} bytes, payload has "
                     f"{payload_size}")
    return out


def parse_write_chunks(meta: Mapping[str, Any], payload_size: int) -> list[WriteChunkSpec]:
    """The chunks of a WRITE_CHUNKS request (offsets strictly ascending, not overlapping);
    ``BadArg`` naming the chunk otherwise."""
    out: list[WriteChunkSpec] = []
    start = 0
    end_prev = -1
    for i, c in enumerate(_chunk_list(Op.WRITE_CHUNKS, meta)):
        if not (isinstance(c, list) and len(c) == 3 and _uint(c[0]) and _uint(c[1])
                and isinstance(c[2], str)):
            raise _bad_chunk(f"write_chunks: chunk {i}: want [offset, size, csum], "
                             f"got {c!r}"[:300], i)
        offset, size = c[0], c[1]
        if size == 0:
            raise _bad_chunk(f"write_chunks: chunk {i}: empty chunk", i)
        if offset < end_prev:
            raise _bad_chunk(f"write_chunks: chunk {i}: offset {offset} overlaps or precedes "
                             f"the previous chunk (ends at {end_prev})", i)
        end_prev = offset + size
        out.append(WriteChunkSpec(start, offset, size, c[2]))
        start += size
    if start != payload_size:
        raise BadArg(f"write_chunks: chunk sizes add up to {start} bytes, payload has "
                     f"{payload_size}")
    return out


# ---- authentication --------------------------------------------------------------------
def _auth_key(secret: bytes) -> bytes:
    return blake3.blake3(secret, derive_key_context="machi-py 2026 wire auth v1").digest()


def auth_proof(secret: bytes, role: str, server_nonce: bytes, client_nonce: bytes) -> bytes:
    """Keyed blake3 over both nonces; ``role`` ("client" or "server") makes the two
    proofs differ, so a proof cannot be reflected back."""
    if role not in ("client", "server"):
        raise LocalProtocolError(f"bad auth role {role!r}")
    h = blake3.blake3(key=_auth_key(secret))
    h.update(role.encode() + b"\n" + server_nonce + client_nonce)
    return bytes(h.digest())


def proof_matches(expected: bytes, got: bytes) -> bool:
    return hmac.compare_digest(expected, got)


# ---- connection state machine --------------------------------------------------------
class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class State(enum.Enum):
    START = "start"  # nothing sent or received
    HELLO_SENT = "hello_sent"  # client: hello sent, waiting for the server's
    READY = "ready"  # both hellos exchanged
    CLOSED = "closed"  # hello refused, or a protocol error


class Connection:
    """One end of a connection.  Feed ``receive_data``; pull ``next_event``; build frames
    with ``send_*`` (which return bytes to write).  Authentication is enforced by the
    server on top of this (the codec only carries the AUTH op and computes proofs)."""

    def __init__(
        self, role: Role, *, max_frame_size: int = MAX_FRAME_SIZE_DEFAULT,
        alloc: BufferAlloc = bytearray_alloc,
    ) -> None:
        self.role = role
        self.state = State.START
        self.version = 0
        self.max_frame_size = max_frame_size
        self.peer_hello: Hello | None = None
        self._decoder = FrameDecoder(max_frame_size, alloc=alloc)
        self._sent_hello = False

    # -- receiving
    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes; ``b""`` means the peer closed its side."""
        self._decoder.receive_data(data)

    def receive_size_hint(self, default: int) -> int:
        """See ``FrameDecoder.receive_size_hint``."""
        return self._decoder.receive_size_hint(default)

    # the zero-copy feed (asyncio BufferedProtocol): see ``FrameDecoder``
    def get_buffer(self, size_hint: int = -1) -> memoryview:
        return self._decoder.get_buffer(size_hint)

    def buffer_updated(self, nbytes: int) -> None:
        self._decoder.buffer_updated(nbytes)

    @property
    def has_event(self) -> bool:
        """``next_event`` would return something other than ``NEED_DATA``."""
        return self._decoder.has_event

    @property
    def ready_bytes(self) -> int:
        """Bytes of complete frames received and not yet taken by ``next_event``."""
        return self._decoder.ready_bytes

    def next_event(self) -> Event:
        try:
            item = self._decoder.next_frame()
            if isinstance(item, (NeedData, Closed)):
                return item
            return self._accept(item)
        except RemoteProtocolError:
            self.state = State.CLOSED
            raise

    def _accept(self, item: Frame | BadRequest) -> Event:
        if self.state is State.CLOSED:
            raise RemoteProtocolError("frame after the connection was closed")
        if self.peer_hello is None:
            if isinstance(item, BadRequest) or item.kind is not Kind.HELLO:
                raise RemoteProtocolError("the first frame must be a hello")
            return self._accept_hello(item)
        if isinstance(item, BadRequest):
            if self.role is not Role.SERVER:
                raise RemoteProtocolError("a server sent a request")
            return item
        if item.kind is Kind.HELLO:
            raise RemoteProtocolError("a second hello")
        if item.kind is Kind.REQUEST:
            if self.role is not Role.SERVER:
                raise RemoteProtocolError("a server sent a request")
            return Request(item)
        if self.role is not Role.CLIENT:
            raise RemoteProtocolError("a client sent a response")
        return Response(item)

    def _accept_hello(self, f: Frame) -> Hello:
        m = f.meta
        if m.get("protocol") != PROTOCOL_NAME:
            raise RemoteProtocolError(f"not a {PROTOCOL_NAME} peer: {m.get('protocol')!r}")
        nonce = _hex_field(m, "nonce")
        if len(nonce) != NONCE_SIZE:
            raise RemoteProtocolError(f"hello nonce must be {NONCE_SIZE} bytes")
        name = m.get("name", "")
        if not isinstance(name, str):
            raise RemoteProtocolError("hello name must be a string")
        try:
            status = Status(f.status)
        except ValueError:
            raise RemoteProtocolError(f"unknown status {f.status} in hello") from None
        if self.role is Role.SERVER:
            versions = m.get("versions")
            if not isinstance(versions, list) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in versions
            ):
                raise RemoteProtocolError("client hello must offer a list of versions")
            hello = Hello(tuple(versions), nonce, name, False, status, m)
        else:
            if self.state is not State.HELLO_SENT:
                raise RemoteProtocolError("server hello before ours")
            version = m.get("version")
            if status is not Status.OK:
                self.state = State.CLOSED
                hello = Hello((), nonce, name, False, status, m)
                self.peer_hello = hello
                return hello
            if version not in PROTOCOL_VERSIONS:
                raise RemoteProtocolError(f"server chose unsupported version {version!r}")
            assert isinstance(version, int)
            self.version = version
            auth = m.get("auth", False)
            if not isinstance(auth, bool):
                raise RemoteProtocolError("hello auth must be a boolean")
            hello = Hello((version,), nonce, name, auth, status, m)
            self.state = State.READY
        self.peer_hello = hello
        return hello

    # -- sending
    def send_client_hello(self, nonce: bytes, name: str = "") -> bytes:
        if self.role is not Role.CLIENT or self._sent_hello:
            raise LocalProtocolError("only a client sends the first hello, once")
        _check_nonce(nonce)
        self._sent_hello = True
        self.state = State.HELLO_SENT
        meta = {
            "protocol": PROTOCOL_NAME, "versions": list(PROTOCOL_VERSIONS),
            "nonce": nonce.hex(), "name": name,
        }
        return frame_bytes(Kind.HELLO, Op.HELLO, meta=meta)

    def send_server_hello(self, nonce: bytes, name: str, *, auth_required: bool) -> bytes:
        """Answer the client's hello: the highest common version, or PROTOCOL_ERROR (after
        which the caller closes the connection)."""
        if self.role is not Role.SERVER or self._sent_hello or self.peer_hello is None:
            raise LocalProtocolError("a server answers the client's hello, once")
        _check_nonce(nonce)
        self._sent_hello = True
        common = set(self.peer_hello.versions) & set(PROTOCOL_VERSIONS)
        meta: dict[str, Any] = {
            "protocol": PROTOCOL_NAME, "nonce": nonce.hex(), "name": name,
            "auth": auth_required, "versions": list(PROTOCOL_VERSIONS),
        }
        if not common:
            self.state = State.CLOSED
            meta["version"] = 0
            meta["msg"] = f"no common protocol version; server speaks {list(PROTOCOL_VERSIONS)}"
            return frame_bytes(
                Kind.HELLO, Op.HELLO, status=Status.PROTOCOL_ERROR, flags=FLAG_FINAL, meta=meta
            )
        self.version = max(common)
        meta["version"] = self.version
        self.state = State.READY
        return frame_bytes(Kind.HELLO, Op.HELLO, flags=FLAG_FINAL, meta=meta)

    def send_request(
        self,
        request_id: int,
        op: int,
        *,
        epoch_id: EpochId = DUMMY_EPOCH_ID,
        meta: Mapping[str, Any] | None = None,
        payload_size: int = 0,
    ) -> bytes:
        """Header + meta of a request; send ``payload_size`` bytes of payload after it."""
        if self.role is not Role.CLIENT:
            raise LocalProtocolError("only a client sends requests")
        if self.state is not State.READY:
            raise LocalProtocolError(f"cannot send a request in state {self.state.value}")
        return encode_frame(
            Kind.REQUEST, op, request_id=request_id, epoch_id=epoch_id, meta=meta,
            payload_size=payload_size, max_frame_size=self.max_frame_size,
        )

    def send_response(
        self,
        request_id: int,
        op: int,
        status: int = Status.OK,
        *,
        epoch_id: EpochId = DUMMY_EPOCH_ID,
        meta: Mapping[str, Any] | None = None,
        payload_size: int = 0,
        final: bool = True,
    ) -> bytes:
        if self.role is not Role.SERVER:
            raise LocalProtocolError("only a server sends responses")
        if not self._sent_hello:
            raise LocalProtocolError("a response before the hello")
        return encode_frame(
            Kind.RESPONSE, op, request_id=request_id, status=status,
            flags=FLAG_FINAL if final else 0, epoch_id=epoch_id, meta=meta,
            payload_size=payload_size, max_frame_size=self.max_frame_size,
        )

    def send_error(
        self, request_id: int, op: int, status: Status, message: str,
        *, epoch_id: EpochId = DUMMY_EPOCH_ID, chunk_index: int | None = None,
    ) -> bytes:
        """An error response; ``chunk_index``: which chunk of a multi-chunk request was bad
        (meta field ``chunk``)."""
        if status is Status.OK:
            raise LocalProtocolError("send_error with OK")
        meta: dict[str, Any] = {"msg": message[:1000]}
        if chunk_index is not None:
            meta["chunk"] = chunk_index
        return self.send_response(request_id, op, status, epoch_id=epoch_id, meta=meta)


def _check_nonce(nonce: bytes) -> None:
    if len(nonce) != NONCE_SIZE:
        raise LocalProtocolError(f"nonce must be {NONCE_SIZE} bytes")


def _hex_field(meta: Mapping[str, Any], name: str) -> bytes:
    value = meta.get(name)
    if not isinstance(value, str):
        raise RemoteProtocolError(f"hello field {name!r} must be a hex string")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise RemoteProtocolError(f"hello field {name!r} is not hex") from None


def error_message(frame: Frame) -> str:
    msg = frame.meta.get("msg", "")
    return msg if isinstance(msg, str) else str(msg)
