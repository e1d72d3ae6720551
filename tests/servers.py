"""Real servers on loopback for the tests: any ASGI app under uvicorn in a thread, on a free port.

The suite starts and stops hundreds of them, so they stop at once when asked (uvicorn's own loop looks
for a stop only every 0.1 s), and a ``ServerStack`` asks all of a test's servers to stop together before
waiting for each: their shutdowns overlap instead of adding up.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, TypeVar

import uvicorn

T = TypeVar("T")


class _Server(uvicorn.Server):
    """uvicorn's server, woken as soon as it is told to stop instead of at its next tick."""

    _loop: asyncio.AbstractEventLoop | None = None
    _wake: asyncio.Event | None = None

    async def main_loop(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.1)

    def stop_soon(self) -> None:
        self.should_exit = True
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop ended meanwhile
                loop.call_soon_threadsafe(wake.set)


class ServerThread:
    """``app`` under uvicorn, or a ready ``uvicorn.Config`` (as the proxy builds its own) on a free port."""

    def __init__(self, app: Any, host: str = "127.0.0.1", config: uvicorn.Config | None = None, **options: Any) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.host = host
        self.port = self.sock.getsockname()[1]
        self.scheme = "https" if config is not None and config.ssl_certfile else "http"
        if config is None:
            config = uvicorn.Config(app, host=host, port=self.port, log_level="warning", lifespan="on", **options)
        self.server = _Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.01)
        return self

    def stop_soon(self) -> None:
        """Ask the server to stop, without waiting."""
        self.server.stop_soon()

    def stop(self) -> None:
        self.stop_soon()
        self.thread.join(10)
        self.sock.close()


@contextmanager
def serve(app: Any, host: str = "127.0.0.1", config: uvicorn.Config | None = None, **options: Any) -> Iterator[ServerThread]:
    server = ServerThread(app, host, config, **options).start()
    try:
        yield server
    finally:
        server.stop()


class ServerStack(ExitStack):
    """An ``ExitStack`` that, on leaving, tells every server entered in it to stop before unwinding, so that
    they shut down side by side."""

    def __init__(self) -> None:
        super().__init__()
        self.servers: list[ServerThread] = []

    def enter_context(self, cm: contextlib.AbstractContextManager[T]) -> T:
        entered = super().enter_context(cm)
        if isinstance(entered, ServerThread):
            self.servers.append(entered)
        return entered

    def __exit__(self, *exc: Any) -> bool:
        for server in self.servers:
            server.stop_soon()
        return super().__exit__(*exc)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def read_answer(sock: socket.socket, timeout: float = 5.0, got: bytes = b"") -> bytes:
    """One whole HTTP/1.1 answer from a raw socket: the head, then as many body bytes as it announces.

    A single ``recv`` may hold only the head (the server sends head and body in two writes), so tests that
    speak raw HTTP read through this instead of trusting one call; ``got`` is what they already read.
    """
    sock.settimeout(timeout)
    while b"\r\n\r\n" not in got:
        part = sock.recv(65536)
        if not part:
            return got
        got += part
    head, _, body = got.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")[1:]
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        part = sock.recv(65536)
        if not part:
            break
        body += part
    return head + b"\r\n\r\n" + body
