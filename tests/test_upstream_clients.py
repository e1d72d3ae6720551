"""The upstream clients against servers that answer in every way HTTP allows: the proxy's own HTTP/1.1 client
and the httpx seam, held to the same behaviour by the same tests (what only the pool of the proxy's own
client does, connection reuse and limits, is tested on it alone)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trustme

from mooltiproxy.errors import UpstreamError, UpstreamTimeout
from mooltiproxy.upstream.h1 import H1Client
from mooltiproxy.upstream.httpx_seam import HttpxClient

from .conftest import write_certificates
from .servers import serve
from .stubs.raw_upstream import raw_server

Client = H1Client | HttpxClient
CLIENTS = {"h1": H1Client, "httpx": HttpxClient}


@pytest.fixture(params=list(CLIENTS))
def make(request: pytest.FixtureRequest) -> Callable[[], Client]:
    """Each test that takes it runs once with each client."""
    return CLIENTS[request.param]  # type: ignore[return-value]


async def fetch(client: Client, url: str, body: bytes = b"{}", timeout: float = 5, method: str = "POST"
                ) -> tuple[int, bytes, list[bytes]]:
    resp = await client.send(method, url, [("content-type", "application/json")], body, timeout=timeout, connect_timeout=2,
                             target="t")
    chunks = [c async for c in resp.chunks()]
    await resp.aclose()
    return resp.status, b"".join(chunks), chunks


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_content_length_chunked_and_close_delimited_answers(make: Callable[[], Client]) -> None:
    answers = {
        b"/length": [b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"],
        b"/chunked": [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", b"3\r\nabc\r\n", b"2\r\nde\r\n", b"0\r\n\r\n"],
        b"/close": [b"HTTP/1.0 200 OK\r\n\r\nuntil the end"],
    }

    def handler(request: bytes) -> list[bytes]:
        return answers[request.split(b" ")[1]]

    with raw_server(handler, keep_open=False) as (port, _):
        async def go() -> None:
            client = make()
            base = f"http://127.0.0.1:{port}"
            assert (await fetch(client, base + "/length"))[:2] == (200, b"hello")
            assert (await fetch(client, base + "/chunked"))[:2] == (200, b"abcde")
            assert (await fetch(client, base + "/close"))[:2] == (200, b"until the end")
            await client.aclose()

        run(go())


def test_connections_are_reused_and_a_stale_one_is_replaced() -> None:
    def handler(request: bytes) -> list[bytes]:
        return [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]

    with raw_server(handler) as (port, stats):
        async def go() -> None:
            client = H1Client()
            url = f"http://127.0.0.1:{port}/x"
            for _ in range(5):
                assert (await fetch(client, url))[:2] == (200, b"ok")
            assert stats["connections"] == 1 and stats["requests"] == 5
            # The upstream drops the idle connection: the next request goes out on a fresh one, unharmed.
            for conn in client._idle[("http", "127.0.0.1", port)]:
                assert conn.transport is not None
                conn.transport.abort()
            await asyncio.sleep(0.05)
            assert (await fetch(client, url))[:2] == (200, b"ok")
            await client.aclose()

        run(go())


def test_a_request_that_meets_a_closing_pooled_connection_is_retried_on_a_fresh_one() -> None:
    """llama-server closes its connection after each stream, and the close can cross the next request: every
    pooled connection may be stale at once, so the one retry goes out on a new connection, never another pooled one."""
    def handler(request: bytes) -> list[bytes]:
        return [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]

    with raw_server(handler, answers_per_connection=1) as (port, stats):
        async def go() -> None:
            client = H1Client()
            url = f"http://127.0.0.1:{port}/x"
            # Three at once leave three pooled connections, each of which will close on its next request.
            assert [r[:2] for r in await asyncio.gather(*(fetch(client, url) for _ in range(3)))] == [(200, b"ok")] * 3
            assert len(client._idle[("http", "127.0.0.1", port)]) == 3
            assert (await fetch(client, url))[:2] == (200, b"ok")
            assert stats["unanswered"] == 1 and stats["connections"] == 4
            await client.aclose()

        run(go())


def test_stream_pieces_arrive_as_they_are_sent(make: Callable[[], Client]) -> None:
    def handler(request: bytes) -> list[bytes]:
        head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        return [head, *[b"%x\r\n%s\r\n" % (len(e), e) for e in (b"data: 1\n\n", b"data: 2\n\n")], b"0\r\n\r\n"]

    with raw_server(handler) as (port, _):
        async def go() -> None:
            client = make()
            status, body, chunks = await fetch(client, f"http://127.0.0.1:{port}/s")
            assert status == 200 and body == b"data: 1\n\ndata: 2\n\n" and len(chunks) == 2  # not held back until the end
            await client.aclose()

        run(go())


def test_errors_name_what_happened(make: Callable[[], Client]) -> None:
    def silent(request: bytes) -> list[bytes]:
        time.sleep(1)
        return []

    def cut(request: bytes) -> list[bytes]:
        return [b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part"]

    def switches(request: bytes) -> list[bytes]:
        return [b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"]

    async def go() -> None:
        client = make()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed_port = s.getsockname()[1]
        with pytest.raises(UpstreamError, match="connection refused"):
            await fetch(client, f"http://127.0.0.1:{closed_port}/")
        with pytest.raises(UpstreamError, match="does not resolve"):
            await fetch(client, "http://no-such-host.invalid/")
        with raw_server(silent) as (port, _), pytest.raises(UpstreamTimeout, match=r"did not answer within 0\.3 s"):
            await fetch(client, f"http://127.0.0.1:{port}/", timeout=0.3)
        with raw_server(cut, keep_open=False) as (port, _), pytest.raises(UpstreamError, match="broke off its answer"):
            await fetch(client, f"http://127.0.0.1:{port}/")
        started = time.monotonic()
        with raw_server(switches) as (port, _), pytest.raises(UpstreamError, match="switched to another protocol"):
            await fetch(client, f"http://127.0.0.1:{port}/", timeout=5)
        assert time.monotonic() - started < 2  # said at once, not after the timeout
        await client.aclose()

    run(go())


def test_tls_upstream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_certificates(tmp_path)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"over tls"})

    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))  # the default context trusts what this names
    with serve(app, ssl_certfile=str(tmp_path / "cert.pem"), ssl_keyfile=str(tmp_path / "key.pem")) as upstream:
        async def go() -> None:
            client = H1Client()
            status, body, _ = await fetch(client, f"https://127.0.0.1:{upstream.port}/")
            assert (status, body) == (200, b"over tls")
            await client.aclose()
            untrusted = H1Client()
            untrusted._ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # trusts only another authority
            untrusted._ssl.load_verify_locations(cadata=trustme.CA().cert_pem.bytes().decode())
            with pytest.raises(UpstreamError, match="TLS handshake failed"):
                await fetch(untrusted, f"https://127.0.0.1:{upstream.port}/")

        run(go())


def test_head_answers_have_no_body_whatever_they_announce(make: Callable[[], Client]) -> None:
    def handler(request: bytes) -> list[bytes]:
        return [b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1234\r\n\r\n"]

    with raw_server(handler) as (port, _):
        async def go() -> None:
            client = make()
            started = time.monotonic()
            status, body, _ = await fetch(client, f"http://127.0.0.1:{port}/v1/models", b"", method="HEAD")
            assert (status, body) == (200, b"") and time.monotonic() - started < 2
            assert (await fetch(client, f"http://127.0.0.1:{port}/v1/models", b"", method="HEAD"))[0] == 200  # and again
            await client.aclose()

        run(go())


def test_encoded_paths_and_queries_go_as_given(make: Callable[[], Client]) -> None:
    lines: list[bytes] = []

    def handler(request: bytes) -> list[bytes]:
        lines.append(request.split(b"\r\n", 1)[0])
        return [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]

    with raw_server(handler) as (port, _):
        async def go() -> None:
            client = make()
            for path in ("/v1/files/a%20b%3Fc%23d?x=%2F&y=1", "/v1/files/%E2%82%AC", "/v1/%2e%2e/x"):
                assert (await fetch(client, f"http://127.0.0.1:{port}{path}"))[0] == 200
            await client.aclose()

        run(go())
    assert lines == [b"POST /v1/files/a%20b%3Fc%23d?x=%2F&y=1 HTTP/1.1", b"POST /v1/files/%E2%82%AC HTTP/1.1",
                     b"POST /v1/%2e%2e/x HTTP/1.1"]


def test_large_bodies_both_ways(make: Callable[[], Client]) -> None:
    sizes: list[int] = []
    answer = b"z" * (12 * 1024 * 1024)

    def handler(request: bytes) -> list[bytes]:
        sizes.append(len(request.partition(b"\r\n\r\n")[2]))
        head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(answer)
        return [head, *[answer[i : i + 1024 * 1024] for i in range(0, len(answer), 1024 * 1024)]]

    with raw_server(handler) as (port, _):
        async def go() -> None:
            client = make()
            body = b"q" * (9 * 1024 * 1024)
            status, got, _ = await fetch(client, f"http://127.0.0.1:{port}/big", body, timeout=30)
            assert status == 200 and got == answer
            with pytest.raises(UpstreamError, match="more than 1048576 bytes"):
                resp = await client.send("POST", f"http://127.0.0.1:{port}/big", [], body, timeout=30, connect_timeout=2, target="t")
                try:
                    await resp.read(1024 * 1024)
                finally:
                    await resp.aclose()
            await client.aclose()

        run(go())
    assert sizes[0] == 9 * 1024 * 1024


def test_a_big_answer_read_slowly_is_held_in_small_pieces_and_reading_pauses() -> None:
    """A slow reader of a big answer: the client hands it over in pieces of at most 256 KiB (never one copy of all
    that waited) and stops reading from the upstream while 64 KiB or more wait, so the proxy holds about one read's
    worth a connection, whatever the answer's size (bench S7 measures it through the proxy)."""
    answer = bytes(range(256)) * (16 * 4096)  # 16 MiB, no piece alike at a given offset

    def handler(request: bytes) -> list[bytes]:
        return [b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(answer), answer]

    with raw_server(handler) as (port, _):
        async def go() -> None:
            client = H1Client()
            resp = await client.send("POST", f"http://127.0.0.1:{port}/big", [], b"{}", timeout=30, connect_timeout=2, target="t")
            conn = resp._conn
            assert conn is not None and conn.transport is not None
            pauses: list[int] = []

            class Counted:  # the connection's transport, its pauses counted (uvloop's transports take no new attributes)
                def __init__(self, transport: Any) -> None:
                    self.transport = transport

                def pause_reading(self) -> None:
                    pauses.append(conn.buffered)
                    self.transport.pause_reading()

                def __getattr__(self, name: str) -> Any:
                    return getattr(self.transport, name)

            conn.transport = Counted(conn.transport)  # type: ignore[assignment]
            pieces: list[bytes] = []
            held = 0
            async for piece in resp.chunks():
                pieces.append(piece)
                held = max(held, len(piece) + conn.buffered)
                await asyncio.sleep(0.002)  # the slow reader
            await resp.aclose()
            await client.aclose()
            assert b"".join(pieces) == answer
            assert max(map(len, pieces)) <= 256 * 1024
            # Reading stopped, again and again, once 64 KiB waited; what was held at once: one read past that mark.
            assert len(pauses) > 10 and min(pauses) > 64 * 1024
            assert held <= 64 * 1024 + 256 * 1024

        run(go())


def test_many_small_pieces_waiting_are_handed_over_joined() -> None:
    """Under load a streamed answer's pieces pile up between two reads of them: they go on joined (one write to
    the client for many), up to 256 KiB at a time."""
    events = [b"data: %05d\n\n" % i for i in range(20000)]
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"

    def handler(request: bytes) -> list[bytes]:
        return [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + chunked]

    with raw_server(handler) as (port, _):
        async def go() -> None:
            client = H1Client()
            resp = await client.send("POST", f"http://127.0.0.1:{port}/s", [], b"{}", timeout=30, connect_timeout=2, target="t")
            await asyncio.sleep(0.2)  # all of it has arrived, or as much as reading took before it paused
            pieces = [piece async for piece in resp.chunks()]
            await resp.aclose()
            await client.aclose()
            assert b"".join(pieces) == b"".join(events)
            assert len(pieces) < len(events) / 100
            assert max(map(len, pieces)) <= 256 * 1024

        run(go())
