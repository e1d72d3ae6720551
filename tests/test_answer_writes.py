"""How an answer leaves for the client: its head and a whole body in one write; a head with no body yet, at the end of the turn."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from typing import Any

import pytest

from mooltiproxy.http.protocol import HeadWithBody

from .conftest import AUTH, ProxyFactory
from .stubs.openai_upstream import OpenAIStub

Stub = tuple[OpenAIStub, str]


class Recording:
    """A transport that remembers each write as the socket would get it."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "a write after close"
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else None


def run_turns(*steps: Any, raw: Recording | None = None) -> Recording:
    """Each step (a function of the wrapped transport) in a turn of a real event loop of its own, then one more turn."""
    raw = raw or Recording()

    async def main() -> None:
        wrapped = HeadWithBody(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
        for step in steps:
            step(wrapped)
            await asyncio.sleep(0)
        await asyncio.sleep(0)

    asyncio.run(main())
    return raw


def test_a_head_and_its_body_in_the_same_turn_are_one_write() -> None:
    raw = run_turns(lambda t: (t.write(b"HEAD\r\n\r\n"), t.write(b"body")))
    assert raw.writes == [b"HEAD\r\n\r\nbody"]


def test_a_head_alone_leaves_at_the_end_of_its_turn_and_later_chunks_follow_it() -> None:
    raw = run_turns(lambda t: t.write(b"HEAD\r\n\r\n"), lambda t: t.write(b"chunk 1"), lambda t: t.write(b"chunk 2"))
    assert raw.writes == [b"HEAD\r\n\r\n", b"chunk 1", b"chunk 2"]


def test_a_large_body_is_not_copied_behind_the_head() -> None:
    big = b"x" * (HeadWithBody.JOIN_UP_TO + 1)
    raw = run_turns(lambda t: (t.write(b"HEAD\r\n\r\n"), t.write(big)))
    assert raw.writes == [b"HEAD\r\n\r\n", big]


def test_closing_sends_a_held_head_first_and_a_closed_transport_gets_nothing() -> None:
    raw = run_turns(lambda t: (t.write(b"HEAD\r\n\r\n"), t.close()))
    assert raw.writes == [b"HEAD\r\n\r\n"] and raw.closed

    raw = Recording()
    run_turns(lambda t: (t.write(b"HEAD\r\n\r\n"), raw.close()), raw=raw)  # the client left before the turn ended
    assert raw.writes == []


def test_everything_else_is_the_transports_own() -> None:
    def ask(t: HeadWithBody) -> None:
        assert t.get_extra_info("peername") == ("127.0.0.1", 1) and t.is_closing() is False

    run_turns(ask)


def data_segments_in(sock: socket.socket) -> int:
    """TCP segments with data this socket has received (Linux's ``tcpi_data_segs_in``, in ``struct tcp_info`` since 4.6)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    assert len(info) >= 156, "this kernel's tcp_info has no count of data segments"
    return int.from_bytes(info[152:156], sys.byteorder)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts segments with Linux's TCP_INFO")
def test_a_whole_answer_reaches_the_client_in_one_segment(openai_stub: Stub, start_proxy: ProxyFactory) -> None:
    """Real sockets: each answer on a kept-alive connection arrives as one TCP segment, its head and its body together."""
    proxy = start_proxy({"targets": {"default": "a", "a": {"url": openai_stub[1]}}})
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: " + AUTH["authorization"].encode()
               + b"\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        for _ in range(5):  # a kept-alive connection: every answer on it, not only the first
            before = data_segments_in(sock)
            sock.sendall(request)
            first = sock.recv(65536)
            head, _, rest = first.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 "), first
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
            assert len(rest) == length, f"the first read held {len(rest)} of the body's {length} bytes"
            assert json.loads(rest)["choices"][0]["message"]["content"] == "alpha says: hi"
            time.sleep(0.05)  # anything else the proxy wrote for this answer has arrived by now
            assert data_segments_in(sock) - before == 1
