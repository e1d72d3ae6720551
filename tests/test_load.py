"""Load with bad neighbours: 500 concurrent streams while one client trickles its headers and another
reads nothing. Everyone else is served in full, the trickler is cut off at the header deadline, the
proxy reads no further upstream than the silent client lets it, and its memory stays bounded.

The proxy runs as ``mooltiproxy serve`` in its own process, so its memory is its own; nobody reads its
log pipe while the load runs, which must not stall it either."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from .conftest import KEY, proxy_process
from .servers import serve

STREAMS = 500
CHUNKS = 8
BIG_CHUNK = 16 * 1024
BIG_CHUNKS = 8192  # 128 MiB: far beyond every socket buffer between the silent client and the upstream


def _kernel_buffers() -> int:
    """The most the kernel may hold between the upstream and the silent client: the upstream's send buffer,
    the proxy's receive and send buffers (and the silent client's 4 KiB)."""
    try:
        wmem = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
        rmem = int(Path("/proc/sys/net/ipv4/tcp_rmem").read_text().split()[2])
    except (OSError, IndexError, ValueError):
        return 64 * 2**20
    return 2 * wmem + rmem


class Upstream:
    """Streams ``CHUNKS`` short pieces for a normal request and 128 MiB for one that asks for ``big``,
    counting how far it got, so the test can see how much the proxy pulled for the silent client."""

    def __init__(self) -> None:
        self.big_sent = 0
        self.big_ended = threading.Event()

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"])])

    async def chat(self, request: Request) -> StreamingResponse:
        body = await request.json()
        big = body.get("big", False)
        return StreamingResponse(self._big() if big else self._small(body["messages"][-1]["content"]), media_type="text/event-stream")

    @staticmethod
    def _event(content: str, finish: str | None = None) -> str:
        chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                 "choices": [{"index": 0, "delta": {"content": content} if content else {}, "finish_reason": finish}]}
        return "data: " + json.dumps(chunk) + "\n\n"

    async def _small(self, who: str) -> AsyncIterator[str]:
        for i in range(CHUNKS):
            yield self._event(f"{who}:{i} ")
            await asyncio.sleep(0.05)
        yield self._event("", "stop") + "data: [DONE]\n\n"

    async def _big(self) -> AsyncIterator[str]:
        piece = self._event("x" * BIG_CHUNK)
        try:
            for _ in range(BIG_CHUNKS):
                yield piece
                self.big_sent += len(piece)
        finally:
            self.big_ended.set()


def _request(port: int, body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    return (f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nauthorization: Bearer {KEY}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(data)}\r\nconnection: close\r\n\r\n").encode() + data


async def _one_stream(port: int, who: str) -> str:
    """A whole streamed answer over a plain socket (HTTP/1.1, chunked, closed at the end): the text it carried."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_request(port, {"model": "m", "stream": True, "messages": [{"role": "user", "content": who}]}))
    raw = await reader.read(-1)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    text = []
    for line in body.split(b"\n"):
        if line.startswith(b"data: {"):
            text.append(json.loads(line[6:])["choices"][0]["delta"].get("content") or "")
    assert b"data: [DONE]" in body
    return "".join(text)


async def _many(port: int, prefix: str, n: int) -> list[str]:
    return await asyncio.wait_for(asyncio.gather(*(_one_stream(port, f"{prefix}{i}") for i in range(n))), 120)


def test_500_streams_beside_a_trickler_and_a_silent_client(tmp_path: Path) -> None:
    upstream = Upstream()
    with serve(upstream.app()) as up:
        proc, url = proxy_process(tmp_path, {"targets": {"default": "a", "a": {"url": up.url}},
                                             "server": {"header_timeout": 3}, "dataset": {"fsync": "never"}})
        port = int(url.rsplit(":", 1)[1])
        memory = psutil.Process(proc.pid)
        try:
            # Warm: the first requests build what every later one reuses.
            asyncio.run(_many(port, "warm", 20))
            baseline = memory.memory_info().rss

            # The silent client: asks for 128 MiB and reads none of it, on a socket with a small receive buffer.
            silent = socket.socket()
            silent.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            silent.connect(("127.0.0.1", port))
            silent.sendall(_request(port, {"model": "m", "stream": True, "big": True, "messages": [{"role": "user", "content": "big"}]}))

            # The trickler: one header byte every 0.2 s, for ever, watching for the proxy's answer in between.
            trickler = socket.create_connection(("127.0.0.1", port))
            trickler.settimeout(0.2)
            connected = time.monotonic()
            cut: list[tuple[float, bytes]] = []

            def trickle() -> None:
                answer = b""
                for byte in b"POST /v1/chat/completions HTTP/1.1\r\nx-slow: " + b"a" * 10_000:
                    try:
                        trickler.send(bytes([byte]))
                        chunk = trickler.recv(4096)
                    except TimeoutError:
                        continue
                    except OSError:
                        chunk = b""
                    answer += chunk
                    if not chunk:
                        cut.append((time.monotonic() - connected, answer))
                        return

            trickling = threading.Thread(target=trickle, daemon=True)
            trickling.start()

            peak = baseline
            stop = threading.Event()

            def sample() -> None:
                nonlocal peak
                while not stop.is_set():
                    peak = max(peak, memory.memory_info().rss)
                    time.sleep(0.05)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            started = time.monotonic()

            answers = asyncio.run(_many(port, "c", STREAMS))
            took = time.monotonic() - started
            stop.set()
            sampler.join()

            assert answers == ["".join(f"c{i}:{j} " for j in range(CHUNKS)) for i in range(STREAMS)]
            # The trickler is cut off at the header deadline (3 s), long before its headers could end.
            trickling.join(15)
            assert cut, "the trickler was never cut off"
            after, answer = cut[0]
            assert after < 3 + 2 and answer.startswith(b"HTTP/1.1 408"), (after, answer[:200])
            # The silent client holds its stream open, yet the proxy pulled only what the socket buffers hold.
            assert not upstream.big_ended.is_set()
            pulled = upstream.big_sent
            bound = _kernel_buffers() + 8 * 2**20  # and a little the proxy itself holds
            assert pulled < bound, f"the proxy pulled {pulled} bytes (more than {bound}) for a client that reads nothing"
            grew = (peak - baseline) / 2**20
            # 500 open streams cost the proxy some memory; the bound is generous, and what matters is that it
            # does not scale with what the silent client refuses to read (128 MiB).
            assert grew < 64, f"the proxy's memory grew by {grew:.0f} MiB"
            print(f"\n{STREAMS} streams in {took:.1f}s; trickler cut after {after:.1f}s; "
                  f"proxy RSS {baseline / 2**20:.0f} MiB -> peak {peak / 2**20:.0f} MiB; "
                  f"pulled for the silent client {pulled / 2**20:.1f} MiB of 128")
            silent.close()
            trickler.close()
            assert upstream.big_ended.wait(10), "the silent client left, yet its upstream stream went on"
        finally:
            proc.terminate()
            out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
