"""Goal: the FrameDecoder's zero-copy feed (get_buffer / buffer_updated, as an asyncio
BufferedProtocol drives it) and its copying feed (receive_data) split any byte stream into
the same frames, in order, however the stream is cut; the size limit holds before a body
is buffered; EOF inside a frame is a remote error; a big frame's payload is the buffer
the bytes were received into."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from machi.core import wire
from machi.core.errors import LocalProtocolError, RemoteProtocolError
from machi.core.status import Status
from machi.core.wire import Kind, Op

#: A small big-frame threshold so that tests cross it (and fill the small buffer) fast.
BIG = 256


def frame(rid: int, payload: bytes, meta: dict[str, object] | None = None) -> bytes:
    return wire.frame_bytes(Kind.RESPONSE, Op.READ, request_id=rid, flags=wire.FLAG_FINAL,
                            meta=meta, payload=payload)


def feed_zero_copy(d: wire.FrameDecoder, data: bytes, cuts: list[int]) -> None:
    """Write ``data`` through get_buffer/buffer_updated, never past a cut or a view's end
    (a transport's recv_into does the same)."""
    pos = 0
    for end in [*sorted(set(c for c in cuts if 0 < c < len(data))), len(data)]:
        while pos < end:
            view = d.get_buffer(-1)
            assert len(view) > 0
            n = min(len(view), end - pos)
            view[:n] = data[pos:pos + n]
            d.buffer_updated(n)
            pos += n


def drain(d: wire.FrameDecoder) -> list[wire.Frame]:
    out = []
    while True:
        item = d.next_frame()
        if isinstance(item, (wire.NeedData, wire.Closed)):
            return out
        assert isinstance(item, wire.Frame)
        out.append(item)


def payloads(frames: list[wire.Frame]) -> list[tuple[int, bytes]]:
    return [(f.request_id, bytes(f.payload)) for f in frames]


def stream_of(sizes: list[int]) -> tuple[bytes, list[tuple[int, bytes]]]:
    want = [(i + 1, bytes([i % 251]) * n) for i, n in enumerate(sizes)]
    return b"".join(frame(rid, p) for rid, p in want), want


def test_every_byte_boundary_zero_copy_and_copying() -> None:
    """Small, big and small frames (the big one crosses the threshold), cut in two at every
    byte boundary, decode to the same frames by both feeds."""
    data, want = stream_of([3, BIG + 17, 0, 40, 2 * BIG])
    for cut in range(len(data) + 1):
        d = wire.FrameDecoder(big_frame=BIG)
        feed_zero_copy(d, data, [cut])
        d.receive_data(b"")
        assert payloads(drain(d)) == want, cut
        assert d.next_frame() is wire.CLOSED
        c = wire.FrameDecoder(big_frame=BIG)
        for piece in (data[:cut], data[cut:]):
            if piece:  # b"" would mean EOF
                c.receive_data(piece)
        assert payloads(drain(c)) == want, cut


@given(st.lists(st.integers(0, 5 * BIG), max_size=12),
       st.lists(st.integers(0, 40 * BIG), max_size=30))
def test_any_frames_any_cuts(sizes: list[int], cuts: list[int]) -> None:
    """Random frame sizes (many fill and wrap the small buffer), random cut points."""
    data, want = stream_of(sizes)
    d = wire.FrameDecoder(big_frame=BIG)
    feed_zero_copy(d, data, cuts)
    got = drain(d)
    assert payloads(got) == want
    assert d.ready_bytes == 0 and d.buffered == 0


def test_big_frame_payload_is_the_receive_buffer() -> None:
    """The transport writes the rest of a big frame into a buffer of exactly that frame,
    and the payload handed out is a view of it (no copy after the kernel's)."""
    payload = bytes(range(256)) * 40
    data = frame(7, payload)
    d = wire.FrameDecoder(big_frame=BIG)
    feed_zero_copy(d, data[:100], [])
    view = d.get_buffer(-1)
    assert len(view) == len(data) - 100  # exactly the rest of the frame
    target = view.obj
    view[:] = data[100:]
    d.buffer_updated(len(data) - 100)
    (f,) = drain(d)
    assert f.payload == payload and f.payload.obj is target


def test_many_pipelined_replies_in_one_read() -> None:
    """Many complete frames in one buffer come out in order; ready_bytes counts them."""
    data, want = stream_of([10] * 100)
    d = wire.FrameDecoder()
    view = d.get_buffer(-1)
    assert len(view) >= len(data)
    view[:len(data)] = data
    d.buffer_updated(len(data))
    assert d.has_event and d.ready_bytes == len(data)
    assert payloads(drain(d)) == want
    assert not d.has_event and d.ready_bytes == 0


def test_oversized_frame_refused_before_its_body() -> None:
    """A prefix over the limit is refused after the frames before it, and no buffer of
    its size is ever allocated: the decoder keeps offering its small buffer."""
    ok = frame(1, b"x")
    d = wire.FrameDecoder(max_frame_size=10_000, big_frame=BIG)
    feed_zero_copy(d, ok + struct.pack(">I", 10_001), [])
    assert len(d.get_buffer(-1)) <= wire.SMALL_BUFFER_FACTOR * BIG
    assert payloads([d.next_frame()]) == [(1, b"x")]  # type: ignore[list-item]
    with pytest.raises(RemoteProtocolError) as ei:
        d.next_frame()
    assert ei.value.status is Status.TOO_LARGE
    d2 = wire.FrameDecoder(max_frame_size=10_000)
    d2.receive_data(struct.pack(">I", 3))  # shorter than a header
    with pytest.raises(RemoteProtocolError):
        d2.next_frame()


@pytest.mark.parametrize("cut", [2, 30, 100, 2 * BIG])
def test_disconnect_mid_frame_is_a_remote_error(cut: int) -> None:
    """EOF inside a small frame, a big frame's header or its body: RemoteProtocolError
    (after the complete frames before it); EOF at a boundary: CLOSED."""
    first = frame(1, b"ok")
    data = first + frame(2, b"z" * (3 * BIG))
    d = wire.FrameDecoder(big_frame=BIG)
    feed_zero_copy(d, data[:len(first) + cut], [])
    d.receive_data(b"")
    assert payloads([d.next_frame()]) == [(1, b"ok")]  # type: ignore[list-item]
    with pytest.raises(RemoteProtocolError, match="inside a frame"):
        d.next_frame()
    d2 = wire.FrameDecoder(big_frame=BIG)
    feed_zero_copy(d2, first, [])
    d2.receive_data(b"")
    assert len(drain(d2)) == 1 and d2.next_frame() is wire.CLOSED


def test_no_data_after_eof() -> None:
    d = wire.FrameDecoder()
    d.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        d.receive_data(b"x")
    with pytest.raises(LocalProtocolError):
        d.get_buffer(-1)


def test_connection_passes_the_zero_copy_feed_through() -> None:
    """wire.Connection exposes the same feed (what machi.wire_io's protocol calls)."""
    c = wire.Connection(wire.Role.CLIENT)
    s = wire.Connection(wire.Role.SERVER)
    hello = c.send_client_hello(b"c" * 32, "x")
    view = s.get_buffer(-1)
    view[:len(hello)] = hello
    s.buffer_updated(len(hello))
    assert s.has_event and s.ready_bytes == len(hello)
    assert isinstance(s.next_event(), wire.Hello)
    assert not s.has_event


def test_uninitialised_big_buffers_decode_the_same() -> None:
    """machi.wire_io.big_buffer (no zero-fill; numpy when installed) as the allocator:
    every cut of the stream still gives the same frames, and a bad allocator is refused."""
    from machi import wire_io

    wire_io.use_uninitialised_buffers()  # numpy arrays when installed
    try:
        data, want = stream_of([5, BIG + 1, 3 * BIG, 7])
        for cut in range(0, len(data) + 1, 7):
            d = wire.FrameDecoder(big_frame=BIG, alloc=wire_io.big_buffer)
            feed_zero_copy(d, data, [cut, cut + BIG])
            assert payloads(drain(d)) == want, cut
    finally:
        wire_io._alloc = wire.bytearray_alloc
    bad = wire.FrameDecoder(big_frame=BIG, alloc=lambda n: memoryview(bytes(n)))
    with pytest.raises(LocalProtocolError, match="allocator"):
        bad.receive_data(frame(1, b"x" * BIG)[:100])  # a big frame's start: allocate


def test_after_a_big_frame_the_next_read_is_a_small_probe() -> None:
    """After a big frame only a small window is offered (little of a following big frame
    is copied out of the small buffer); after small frames the whole buffer is."""
    d = wire.FrameDecoder(big_frame=BIG)
    assert len(d.get_buffer(-1)) == wire.SMALL_BUFFER_FACTOR * BIG
    feed_zero_copy(d, frame(1, b"b" * BIG), [100])  # read in two: its own buffer
    assert len(d.get_buffer(-1)) == BIG // 16
    feed_zero_copy(d, frame(2, b"s"), [])
    assert len(d.get_buffer(-1)) > BIG
    assert payloads(drain(d)) == [(1, b"b" * BIG), (2, b"s")]
