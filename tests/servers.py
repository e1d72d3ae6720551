"""Real servers on loopback for the tests: any ASGI app under uvicorn in a thread, on a free port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn


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
        self.server = uvicorn.Server(config)
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

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


@contextmanager
def serve(app: Any, host: str = "127.0.0.1", config: uvicorn.Config | None = None, **options: Any) -> Iterator[ServerThread]:
    server = ServerThread(app, host, config, **options).start()
    try:
        yield server
    finally:
        server.stop()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
