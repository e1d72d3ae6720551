"""A raw TCP upstream for tests that need answers no HTTP framework would send: exact bytes, in pieces,
broken off, doubled, oversized."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Handler = Callable[[bytes], list[bytes]]


@contextmanager
def raw_server(handler: Handler, *, keep_open: bool = True,
               answers_per_connection: int | None = None) -> Iterator[tuple[int, dict[str, int]]]:
    """A TCP server that answers each request with the byte pieces ``handler`` gives (sent one by one).

    With ``answers_per_connection``, a connection that has given that many answers meets the next request by
    closing without a word, as a keep-alive server does when its close crosses the client's next request.
    """
    stats = {"connections": 0, "requests": 0}
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    stop = threading.Event()

    def serve_one(conn: socket.socket) -> None:
        stats["connections"] += 1
        answered = 0
        buf = b""
        with conn:
            while not stop.is_set():
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buf += data
                while b"\r\n\r\n" in buf:
                    head, _, rest = buf.partition(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n"):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":")[1])
                    if len(rest) < length:
                        break
                    request, buf = head + b"\r\n\r\n" + rest[:length], rest[length:]
                    if answers_per_connection is not None and answered >= answers_per_connection:
                        stats["unanswered"] = stats.get("unanswered", 0) + 1
                        return
                    answered += 1
                    stats["requests"] += 1
                    try:
                        for piece in handler(request):
                            conn.sendall(piece)
                            time.sleep(0.01)
                    except OSError:
                        return  # the client stopped reading and left
                    if not keep_open:
                        return

    def accept() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=serve_one, args=(conn,), daemon=True).start()

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield port, stats
    finally:
        stop.set()
        t.join(2)
        sock.close()


