"""Tests of multi-chunk requests (protocol version 2): the codec's round trip, malformed
chunk lists, version negotiation, and the store's all-or-nothing append_chunks /
write_chunks on a real data dir."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from machi.core import wire
from machi.core.checksum import CsumTag, client_csum
from machi.core.epoch import DUMMY_EPOCH_ID, EpochId
from machi.core.errors import BadArg, BadChecksum, NotWritten, Written
from machi.core.wire import Kind, Op
from machi.storage.flu_store import FluStore, StoreConfig

E0 = DUMMY_EPOCH_ID
B = 1024
NONCE = b"n" * 32


def _pair(client_versions: tuple[int, ...] | None = None
          ) -> tuple[wire.Connection, wire.Connection]:
    c = wire.Connection(wire.Role.CLIENT)
    s = wire.Connection(wire.Role.SERVER)
    hello = c.send_client_hello(NONCE, "cli")
    if client_versions is not None:  # an older client: rewrite the offered versions
        meta = {"protocol": "machi-py", "versions": list(client_versions),
                "nonce": NONCE.hex(), "name": "old"}
        hello = wire.frame_bytes(Kind.HELLO, Op.HELLO, meta=meta)
    s.receive_data(hello)
    assert isinstance(s.next_event(), wire.Hello)
    c.receive_data(s.send_server_hello(NONCE, "n1", auth_required=False))
    assert isinstance(c.next_event(), wire.Hello)
    return c, s


def test_hello_negotiates_version_2_and_still_serves_version_1() -> None:
    """A current client and server agree on version 2; a version-1 client still gets 1."""
    c, s = _pair()
    assert c.version == s.version == 2
    _c1, s1 = _pair(client_versions=(1,))
    assert s1.version == 1


def test_append_chunks_frame_round_trip() -> None:
    """An APPEND_CHUNKS request with three chunks decodes to the same chunk specs and
    payload slices."""
    c, s = _pair()
    chunks = [b"abc", b"defgh", b"i"]
    meta = {"prefix": "p", "chunks": [[len(x), client_csum(x).hex(), e]
                                      for x, e in zip(chunks, [0, 7, 0], strict=True)]}
    head = c.send_request(5, Op.APPEND_CHUNKS, meta=meta, payload_size=9)
    s.receive_data(head + b"".join(chunks))
    ev = s.next_event()
    assert isinstance(ev, wire.Request)
    wire.check_request_fields(Op.APPEND_CHUNKS, ev.frame.meta)
    specs = wire.parse_append_chunks(ev.frame.meta, len(ev.frame.payload))
    got = [bytes(ev.frame.payload[x.start:x.start + x.size]) for x in specs]
    assert got == chunks
    assert [x.chunk_extra for x in specs] == [0, 7, 0]


@pytest.mark.parametrize(("chunks", "payload", "needle"), [
    ([[3, "01", 0], [3, "01", 0]], 5, "add up to 6"),  # count/size mismatch
    ([[3, "01", 0]], 4, "add up to 3"),
    ([], 0, "non-empty"),
    ([[0, "01", 0]], 0, "chunk 0: empty"),
    ([[1, "01"]], 1, "chunk 0: want"),
    ([[1, "01", 0], [1, 5, 0]], 2, "chunk 1: want"),
    ([[1, "01", -1]], 1, "chunk 0: want"),
    ([[True, "01", 0]], 1, "chunk 0: want"),
    ([[1, "01", 0]] * (wire.MAX_CHUNKS_PER_REQUEST + 1), wire.MAX_CHUNKS_PER_REQUEST + 1,
     "at most"),
])
def test_malformed_append_chunks_are_bad_arg(chunks: list[Any], payload: int,
                                             needle: str) -> None:
    """Malformed chunk lists are BAD_ARG naming the problem (and the chunk)."""
    with pytest.raises(BadArg, match=needle):
        wire.parse_append_chunks({"prefix": "p", "chunks": chunks}, payload)


@pytest.mark.parametrize(("chunks", "payload", "needle"), [
    ([[1024, 2, "01"], [1030, 2, "01"]], 3, "add up to 4"),
    ([[1024, 4, "01"], [1026, 2, "01"]], 6, "chunk 1: offset 1026 overlaps"),
    ([[1030, 2, "01"], [1024, 2, "01"]], 4, "chunk 1: offset 1024"),
    ([[1024, 0, "01"]], 0, "chunk 0: empty"),
    ([[1024, 1, 1]], 1, "chunk 0: want"),
])
def test_malformed_write_chunks_are_bad_arg(chunks: list[Any], payload: int,
                                            needle: str) -> None:
    """Write chunk lists must be well formed, ascending and not overlapping."""
    with pytest.raises(BadArg, match=needle) as ei:
        wire.parse_write_chunks({"file": "f", "chunks": chunks}, payload)
    if "chunk " in needle:
        assert ei.value.chunk_index == int(needle.split()[1].rstrip(":"))  # type: ignore


def test_error_response_names_the_chunk() -> None:
    """An error answer to a multi-chunk request carries the bad chunk's index."""
    c, s = _pair()
    c.receive_data(s.send_error(3, Op.APPEND_CHUNKS, wire.Status.BAD_CHECKSUM, "x",
                                chunk_index=2))
    ev = c.next_event()
    assert isinstance(ev, wire.Response) and ev.frame.meta == {"msg": "x", "chunk": 2}


# ---- the store ----------------------------------------------------------------------
@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[FluStore]:
    s = await FluStore.open(tmp_path / "flu", StoreConfig(max_file_size=B + 4096))
    try:
        yield s
    finally:
        await s.close()


@pytest.mark.anyio
async def test_append_chunks_is_contiguous_and_one_commit(store: FluStore) -> None:
    """Chunks land back to back (extra bytes included) in one file, each reads back as its
    own chunk with its own checksum, and one group commit covers them all."""
    data = [b"a" * 10, b"b" * 20, b"c" * 5]
    commits = store.stats()["commits"]
    await store.append("p", b"first", client_csum(b"first"), epoch_id=E0)  # mints the file
    commits = store.stats()["commits"]
    res = await store.append_chunks(
        "p", [(d, client_csum(d), x) for d, x in zip(data, [0, 3, 0], strict=True)],
        epoch_id=E0)
    assert store.stats()["commits"] == commits + 1
    offs = [pos.offset for pos, _ in res]
    assert offs == [B + 5, B + 15, B + 38]
    for (pos, cs), d in zip(res, data, strict=True):
        r = await store.read(pos.file, pos.offset, pos.size)
        assert [c.data for c in r.chunks] == [d] and r.chunks[0].csum == cs
        assert cs.tag is CsumTag.SERVER
    entries = [e async for b in store.checksum_list(res[0][0].file) for e in b]
    assert [(e.offset, e.size) for e in entries] == [(B, 5), (B + 5, 10), (B + 15, 20),
                                                      (B + 38, 5)]


@pytest.mark.anyio
async def test_append_chunks_bad_checksum_writes_nothing(store: FluStore) -> None:
    """One bad checksum fails the whole request (naming the chunk); EOF is unchanged."""
    pos, _ = await store.append("p", b"x", client_csum(b"x"), epoch_id=E0)
    before = await store.list_files()
    with pytest.raises(BadChecksum, match="chunk 1 of 3") as ei:
        await store.append_chunks("p", [(b"a", client_csum(b"a"), 0),
                                        (b"b", client_csum(b"B"), 0),
                                        (b"c", client_csum(b"c"), 0)], epoch_id=E0)
    assert ei.value.chunk_index == 1  # type: ignore[attr-defined]
    assert await store.list_files() == before
    with pytest.raises(BadArg, match="cannot fit"):
        await store.append_chunks("p", [(b"a" * 3000, client_csum(b"a" * 3000), 0)] * 2,
                                  epoch_id=EpochId(1, b"\x01" * 32))
    assert await store.list_files() == before
    nxt, _ = await store.append("p", b"y", client_csum(b"y"), epoch_id=E0)
    assert nxt.offset == pos.offset + 1


@pytest.mark.anyio
async def test_write_chunks_all_or_nothing_with_replays(store: FluStore) -> None:
    """Replays of stored chunks are OK next to new chunks; one conflicting chunk fails the
    request and none of the new chunks of that request is written."""
    res = await store.append_chunks("p", [(b"a" * 8, client_csum(b"a" * 8), 0),
                                          (b"b" * 8, client_csum(b"b" * 8), 0)], epoch_id=E0)
    f = res[0][0].file
    cs = await store.write_chunks(f, [(B, b"a" * 8, client_csum(b"a" * 8)),
                                      (B + 100, b"n" * 4, client_csum(b"n" * 4))])
    assert cs[0] == res[0][1]
    with pytest.raises(Written, match="chunk 1 of 2") as ei:
        await store.write_chunks(f, [(B + 50, b"z" * 4, client_csum(b"z" * 4)),
                                     (B + 100, b"X" * 4, client_csum(b"X" * 4))])
    assert ei.value.chunk_index == 1  # type: ignore[attr-defined]
    with pytest.raises(NotWritten):
        await store.read(f, B + 50, 4)
    with pytest.raises(BadArg, match="chunk 1 of 2"):
        await store.write_chunks(f, [(B + 300, b"q" * 4, client_csum(b"q" * 4)),
                                     (B + 302, b"r" * 4, client_csum(b"r" * 4))])
    with pytest.raises(BadChecksum, match="chunk 0 of 1"):
        await store.write_chunks(f, [(B + 400, b"q", client_csum(b"Q"))])
    r = await store.read(f, B + 100, 4)
    assert r.chunks[0].data == b"n" * 4
