"""Server-sent events and NDJSON: incremental parsing of what upstreams send, and framing of what we send.

The parsers take bytes as they come off the network — an event split across reads, several events in
one read, ``\\r\\n`` or ``\\n`` line ends — and give back whole events, following the WHATWG rules
(comments skipped, one space after ``data:`` dropped, multi-line data joined with ``\\n``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"


class SSEParser:
    """Feed bytes, get back ``(event, data)`` pairs for every event completed so far.

    Linear in what it is fed: a line still open is kept as its pieces and joined once its end arrives (joining
    the held bytes to every new piece would cost a 10 MB line the square of its length). ``max_line`` bounds
    what an open line may hold: past it the line is dropped, and ``overflowed`` says so."""

    __slots__ = ("_data", "_event", "_held", "_open", "max_line", "overflowed")

    def __init__(self, max_line: int | None = None) -> None:
        self._open: list[bytes] = []  # the pieces of the line not ended yet
        self._held = 0
        self._data: list[bytes] = []
        self._event: bytes | None = None
        self.max_line = max_line
        self.overflowed = False

    def feed(self, chunk: bytes) -> list[tuple[bytes | None, bytes]]:
        if b"\n" not in chunk and b"\r" not in chunk:
            self._hold(chunk)
            return []
        buf = b"".join((*self._open, chunk)) if self._open else chunk
        self._open, self._held = [], 0
        if b"\r" in buf:
            # A lone \r at the very end may be the first half of \r\n: decide once more bytes arrive.
            hold = buf.endswith(b"\r")
            if hold:
                buf = buf[:-1]
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            lines = buf.split(b"\n")
            self._hold(lines.pop() + (b"\r" if hold else b""))
        else:
            lines = buf.split(b"\n")
            self._hold(lines.pop())
        out: list[tuple[bytes | None, bytes]] = []
        for line in lines:
            if not line:
                if self._data:
                    out.append((self._event, b"\n".join(self._data)))
                    self._data = []
                self._event = None
                continue
            if line[0] == 58:  # ":" comment (keep-alive)
                continue
            name, sep, value = line.partition(b":")
            if sep and value[:1] == b" ":
                value = value[1:]
            if name == b"data":
                self._data.append(value)
            elif name == b"event":
                self._event = value
        return out

    def _hold(self, piece: bytes) -> None:
        if not piece:
            return
        if self.max_line is not None and self._held + len(piece) > self.max_line:
            self.overflowed = True
            self._open, self._held = [b"::"], 2  # the rest of the line is read as a comment, and skipped
            return
        self._open.append(piece)
        self._held += len(piece)

    def close(self) -> list[tuple[bytes | None, bytes]]:
        """Events left when the stream ends without a final blank line."""
        out = self.feed(b"\n\n") if (self._open or self._data) else []
        self._open, self._held = [], 0
        return out


class NDJSONParser:
    """Feed bytes, get back every complete line (one JSON document each)."""

    __slots__ = ("_tail",)

    def __init__(self) -> None:
        self._tail = b""

    def feed(self, chunk: bytes) -> list[tuple[bytes | None, bytes]]:
        buf = self._tail + chunk if self._tail else chunk
        lines = buf.split(b"\n")
        self._tail = lines.pop()
        return [(None, line) for line in (ln.strip() for ln in lines) if line]

    def close(self) -> list[tuple[bytes | None, bytes]]:
        tail, self._tail = self._tail.strip(), b""
        return [(None, tail)] if tail else []


def parser(fmt: str) -> SSEParser | NDJSONParser:
    return NDJSONParser() if fmt == "ndjson" else SSEParser()


class NotJSON(ValueError):
    """An upstream event whose data is not JSON."""


async def events(chunks: AsyncIterator[bytes], fmt: str = "sse") -> AsyncIterator[Any]:
    """Decoded JSON events from a byte stream; ends at the stream's end or at an OpenAI ``[DONE]``."""
    p = parser(fmt)
    async for chunk in chunks:
        for _, data in p.feed(chunk):
            if data == b"[DONE]":
                return
            yield _decode(data)
    for _, data in p.close():
        if data == b"[DONE]":
            return
        yield _decode(data)


def _decode(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        raise NotJSON(f"the upstream sent an event that is not JSON: {data[:80]!r}") from None


def frame(event: Any) -> bytes:
    """One OpenAI-style ``data:`` event."""
    return b"data: " + orjson.dumps(event) + b"\n\n"


def frame_named(name: str, event: Any) -> bytes:
    """One event with an ``event:`` line, as the Anthropic API sends them."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


def frame_tgi(event: Any) -> bytes:
    """One event as TGI's ``/generate_stream`` writes it (no space after the colon)."""
    return b"data:" + orjson.dumps(event) + b"\n\n"


def frame_typed(event: Any) -> bytes:
    """An event named by its own ``type`` field (the Anthropic Messages stream)."""
    return frame_named(str(event.get("type", "message")), event)
