"""Goal: the sans-IO wire codec round-trips frames, enforces its limits and state rules,
and never fails on hostile bytes with anything but a ProtocolError."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from machi.core import wire
from machi.core.epoch import DUMMY_EPOCH_ID, EpochId
from machi.core.errors import BadArg, LocalProtocolError, ProtocolError, RemoteProtocolError
from machi.core.status import Status
from machi.core.wire import Kind, Op

NONCE_C = b"c" * 32
NONCE_S = b"s" * 32


def pair() -> tuple[wire.Connection, wire.Connection]:
    """A client and a server connection that have exchanged hellos."""
    c = wire.Connection(wire.Role.CLIENT)
    s = wire.Connection(wire.Role.SERVER)
    s.receive_data(c.send_client_hello(NONCE_C, "cli"))
    hello = s.next_event()
    assert isinstance(hello, wire.Hello) and hello.nonce == NONCE_C and hello.name == "cli"
    c.receive_data(s.send_server_hello(NONCE_S, "n1", auth_required=True))
    sh = c.next_event()
    assert isinstance(sh, wire.Hello) and sh.auth_required and sh.versions == (2,)
    assert c.state is wire.State.READY and s.state is wire.State.READY
    return c, s


def test_request_response_round_trip() -> None:
    """A request with meta and raw payload and its response arrive intact, byte-split."""
    c, s = pair()
    eid = EpochId(7, b"\x07" * 32)
    payload = bytes(range(256)) * 10
    head = c.send_request(42, Op.APPEND, epoch_id=eid, meta={"prefix": "p", "csum": "00"},
                          payload_size=len(payload))
    data = head + payload
    for i in range(0, len(data), 7):  # dribble the bytes in
        s.receive_data(data[i:i + 7])
    ev = s.next_event()
    assert isinstance(ev, wire.Request)
    f = ev.frame
    assert (f.op, f.request_id, f.epoch_id, f.meta) == (Op.APPEND, 42, eid, {"prefix": "p",
                                                                                "csum": "00"})
    assert f.payload == payload and isinstance(f.payload, memoryview)
    assert s.next_event() is wire.NEED_DATA
    c.receive_data(s.send_response(42, Op.APPEND, meta={"file": "f"}, final=True))
    r = c.next_event()
    assert isinstance(r, wire.Response) and r.frame.final and r.frame.meta == {"file": "f"}


def test_pipelined_and_streamed_frames() -> None:
    """Many frames in one buffer decode in order; non-final stream frames lack FINAL."""
    c, s = pair()
    buf = b"".join(c.send_request(i, Op.ECHO) for i in range(1, 6))
    s.receive_data(buf)
    ids = []
    while isinstance(ev := s.next_event(), wire.Request):
        ids.append(ev.frame.request_id)
    assert ids == [1, 2, 3, 4, 5]
    out = s.send_response(9, Op.CHECKSUM_LIST, final=False) + s.send_response(9, Op.CHECKSUM_LIST)
    c.receive_data(out)
    e1, e2 = c.next_event(), c.next_event()
    assert isinstance(e1, wire.Response) and isinstance(e2, wire.Response)
    assert (e1.frame.final, e2.frame.final) == (False, True)


def test_header_layout_is_as_documented() -> None:
    """Byte offsets match docs/protocol.md (length prefix, kind, op, ..., meta_len)."""
    eid = EpochId(3, b"\xab" * 32)
    raw = wire.frame_bytes(Kind.REQUEST, Op.READ, request_id=0x0102, epoch_id=eid,
                           meta={"a": 1}, payload=b"xyz")
    assert struct.unpack(">I", raw[0:4])[0] == len(raw) - 4
    assert raw[4] == 1 and raw[5] == Op.READ and raw[6] == 0 and raw[7] == 0
    assert struct.unpack(">Q", raw[8:16])[0] == 0x0102
    assert struct.unpack(">Q", raw[16:24])[0] == 3 and raw[24:56] == b"\xab" * 32
    meta_len = struct.unpack(">I", raw[56:60])[0]
    assert raw[60:60 + meta_len] == b'{"a":1}' and raw[60 + meta_len:] == b"xyz"


def test_oversize_frame_refused_from_the_prefix() -> None:
    """A length prefix above the limit fails before any body byte arrives."""
    d = wire.FrameDecoder(max_frame_size=1000)
    d.receive_data(struct.pack(">I", 1001))
    with pytest.raises(RemoteProtocolError) as ei:
        d.next_frame()
    assert ei.value.status is Status.TOO_LARGE
    with pytest.raises(wire.TooLarge):
        wire.encode_frame(Kind.REQUEST, Op.ECHO, payload_size=2000, max_frame_size=1000)


def test_first_frame_must_be_hello_and_roles_hold() -> None:
    """Requests before hello, responses to a server, requests to a client are remote errors."""
    s = wire.Connection(wire.Role.SERVER)
    s.receive_data(wire.frame_bytes(Kind.REQUEST, Op.ECHO))
    with pytest.raises(RemoteProtocolError):
        s.next_event()
    c, s = pair()
    s.receive_data(wire.frame_bytes(Kind.RESPONSE, Op.ECHO))
    with pytest.raises(RemoteProtocolError):
        s.next_event()
    c.receive_data(wire.frame_bytes(Kind.REQUEST, Op.ECHO))
    with pytest.raises(RemoteProtocolError):
        c.next_event()
    with pytest.raises(LocalProtocolError):
        c.send_response(1, Op.ECHO)
    with pytest.raises(LocalProtocolError):
        wire.Connection(wire.Role.CLIENT).send_request(1, Op.ECHO)


def test_version_mismatch_gets_protocol_error_hello() -> None:
    """A client offering only unknown versions gets a PROTOCOL_ERROR hello and CLOSED."""
    s = wire.Connection(wire.Role.SERVER)
    meta = {"protocol": "machi-py", "versions": [99], "nonce": NONCE_C.hex()}
    s.receive_data(wire.frame_bytes(Kind.HELLO, Op.HELLO, meta=meta))
    assert isinstance(s.next_event(), wire.Hello)
    out = s.send_server_hello(NONCE_S, "n", auth_required=False)
    assert s.state is wire.State.CLOSED
    c = wire.Connection(wire.Role.CLIENT)
    c.send_client_hello(NONCE_C)
    c.receive_data(out)
    h = c.next_event()
    assert isinstance(h, wire.Hello) and h.status is Status.PROTOCOL_ERROR


def test_bad_meta_is_a_recoverable_bad_request() -> None:
    """A request with non-JSON meta becomes BadRequest; the next frame still decodes."""
    c, s = pair()
    good = c.send_request(2, Op.ECHO)
    bad = bytearray(c.send_request(1, Op.ECHO, meta={"x": 1}))
    bad[60] = ord("[")  # meta no longer an object
    s.receive_data(bytes(bad) + good)
    ev = s.next_event()
    assert isinstance(ev, wire.BadRequest) and ev.request_id == 1
    ev2 = s.next_event()
    assert isinstance(ev2, wire.Request) and ev2.frame.request_id == 2


def test_unknown_op_decodes_for_an_unknown_op_reply() -> None:
    """An op number the codec does not know still decodes (the server answers UNKNOWN_OP)."""
    c, s = pair()
    s.receive_data(c.send_request(5, 200))
    ev = s.next_event()
    assert isinstance(ev, wire.Request) and ev.frame.op == 200 and ev.frame.known_op() is None


def test_truncated_stream_at_eof() -> None:
    """EOF mid-frame is a remote error; EOF at a boundary is CLOSED."""
    c, s = pair()
    s.receive_data(c.send_request(1, Op.ECHO)[:-3])
    s.receive_data(b"")
    with pytest.raises(RemoteProtocolError):
        s.next_event()
    _c2, s2 = pair()
    s2.receive_data(b"")
    assert s2.next_event() is wire.CLOSED


def test_request_field_table() -> None:
    """check_request_fields names missing, unknown and mistyped fields."""
    wire.check_request_fields(Op.READ, {"file": "f", "offset": 1024, "size": 3})
    for meta, word in [
        ({"file": "f", "offset": 1}, "size"),
        ({"file": "f", "offset": 1, "size": 2, "zap": 1}, "zap"),
        ({"file": "f", "offset": True, "size": 2}, "offset"),
        ({"file": "f", "offset": -1, "size": 2}, "offset"),
    ]:
        with pytest.raises(BadArg, match=word):
            wire.check_request_fields(Op.READ, meta)
    with pytest.raises(BadArg, match="kind"):
        wire.check_request_fields(Op.PROJ_LIST, {"kind": "both"})


def test_auth_proofs_are_keyed_and_role_bound() -> None:
    """Proofs depend on secret, role and both nonces."""
    p = wire.auth_proof(b"k", "client", NONCE_S, NONCE_C)
    assert p == wire.auth_proof(b"k", "client", NONCE_S, NONCE_C)
    assert p != wire.auth_proof(b"k2", "client", NONCE_S, NONCE_C)
    assert p != wire.auth_proof(b"k", "server", NONCE_S, NONCE_C)
    assert p != wire.auth_proof(b"k", "client", NONCE_C, NONCE_S)
    assert wire.proof_matches(p, bytes(p)) and not wire.proof_matches(p, b"x" * 32)


def test_epoch_defaults_and_range() -> None:
    """Requests without an epoch carry the dummy epoch; a bad epoch is a local error."""
    c, s = pair()
    s.receive_data(c.send_request(1, Op.LIST_FILES))
    ev = s.next_event()
    assert isinstance(ev, wire.Request) and ev.frame.epoch_id == DUMMY_EPOCH_ID
    with pytest.raises(LocalProtocolError):
        c.send_request(2, Op.READ, epoch_id=EpochId(1, b"short"))


@given(st.binary(max_size=400), st.integers(1, 64))
def test_fuzz_random_bytes_only_protocol_errors(data: bytes, step: int) -> None:
    """Random bytes fed to a server connection give events or a ProtocolError, nothing else."""
    s = wire.Connection(wire.Role.SERVER, max_frame_size=10_000)
    try:
        for i in range(0, len(data), step):
            s.receive_data(data[i:i + step])
            while not isinstance(s.next_event(), (wire.NeedData, wire.Closed)):
                pass
        s.receive_data(b"")
        while not isinstance(s.next_event(), (wire.NeedData, wire.Closed)):
            pass
    except ProtocolError:
        pass


@given(st.lists(st.tuples(st.integers(0, 99), st.integers(0, 40), st.binary(max_size=8)),
                max_size=6))
def test_fuzz_mutated_valid_frames(mutations: list[tuple[int, int, bytes]]) -> None:
    """Valid frames with bytes overwritten decode or raise ProtocolError; never crash."""
    c, s = pair()
    raw = bytearray(c.send_request(1, Op.READ, meta={"file": "f", "offset": 1, "size": 2})
                    + c.send_request(2, Op.ECHO, payload_size=3) + b"abc")
    for pos, ln, b in mutations:
        pos = pos % len(raw)
        raw[pos:pos + min(ln, len(b))] = b[:ln]
    try:
        s.receive_data(bytes(raw))
        s.receive_data(b"")
        while not isinstance(s.next_event(), (wire.NeedData, wire.Closed)):
            pass
    except ProtocolError:
        pass


def test_big_frame_read_to_its_end_is_taken_without_copy() -> None:
    """Reading exactly the size hint makes a big frame end at the buffer end; its payload
    is then a view of the received buffer (no copy), and decoding still round-trips."""
    c, s = pair()
    payload = os.urandom(300_000)
    data = c.send_request(1, Op.WRITE, meta={"file": "f", "offset": 1024, "csum": "00"},
                          payload_size=len(payload)) + payload
    pos = 0
    while pos < len(data):
        want = s.receive_size_hint(65536)
        s.receive_data(data[pos:pos + want])
        pos += want
        if pos < len(data):
            assert s.next_event() is wire.NEED_DATA
    assert want > 65536  # the last read asked for the rest of the big frame
    ev = s.next_event()
    assert isinstance(ev, wire.Request) and ev.frame.payload == payload
    assert isinstance(ev.frame.payload.obj, bytearray)  # the buffer itself, not a copy
