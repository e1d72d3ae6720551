"""SSE and NDJSON parsing: whole events back, whatever the network did to the bytes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from mooltiproxy.translate import sse

STREAM = (
    b": keep-alive\n\n"
    b"data: {\"a\": 1}\n\n"
    b"data:{\"b\": 2}\r\n\r\n"
    b"event: message_start\ndata: {\"c\":\ndata: 3}\nid: 7\nretry: 10\n\n"
    b"data: {\"d\": \"\xc3\xa9\xe2\x82\xac\"}\r\r"
    b"data: [DONE]\n\n"
)
EXPECTED = [
    (None, b'{"a": 1}'),
    (None, b'{"b": 2}'),
    (b"message_start", b'{"c":\n3}'),
    (None, '{"d": "é€"}'.encode()),
    (None, b"[DONE]"),
]


def parse_in_pieces(data: bytes, size: int) -> list[tuple[bytes | None, bytes]]:
    p = sse.SSEParser()
    out = []
    for i in range(0, len(data), size):
        out += p.feed(data[i : i + size])
    return out + p.close()


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_sse_any_chunking(size: int) -> None:
    assert parse_in_pieces(STREAM, size) == EXPECTED


def test_sse_split_at_every_byte_boundary() -> None:
    for cut in range(1, len(STREAM)):
        p = sse.SSEParser()
        assert p.feed(STREAM[:cut]) + p.feed(STREAM[cut:]) + p.close() == EXPECTED, cut


def test_sse_event_without_final_blank_line() -> None:
    p = sse.SSEParser()
    assert p.feed(b'data: {"x": 1}') == []
    assert p.close() == [(None, b'{"x": 1}')]


def test_ndjson_any_chunking() -> None:
    data = b'{"a":1}\n{"b":2}\r\n\n{"c":3}'
    for cut in range(1, len(data)):
        p = sse.NDJSONParser()
        got = p.feed(data[:cut]) + p.feed(data[cut:]) + p.close()
        assert [d for _, d in got] == [b'{"a":1}', b'{"b":2}', b'{"c":3}'], cut


def test_events_decodes_json_and_stops_at_done() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(STREAM), 5):
            yield STREAM[i : i + 5]

    async def collect() -> list[object]:
        return [e async for e in sse.events(chunks())]

    assert asyncio.run(collect()) == [{"a": 1}, {"b": 2}, {"c": 3}, {"d": "é€"}]

    async def broken() -> AsyncIterator[bytes]:
        yield b"data: not json\n\n"

    async def collect_broken() -> list[object]:
        return [e async for e in sse.events(broken())]

    with pytest.raises(sse.NotJSON):
        asyncio.run(collect_broken())

    async def good() -> AsyncIterator[bytes]:
        yield b'data: {"a": 1}\n\ndata: [DONE]\n\ndata: {"after": 1}\n\n'

    async def collect_good() -> list[object]:
        return [e async for e in sse.events(good())]

    assert asyncio.run(collect_good()) == [{"a": 1}]


def test_framing() -> None:
    assert sse.frame({"a": "é"}) == 'data: {"a":"é"}\n\n'.encode()
    assert sse.frame_named("ping", {"type": "ping"}) == b'event: ping\ndata: {"type":"ping"}\n\n'
