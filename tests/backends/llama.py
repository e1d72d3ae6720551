"""llama.cpp's ``llama-server`` as the tests run it: the binary and tiny models ``llama_server.py`` built, on a free
loopback port. Missing, the tests that need it skip with the command that builds it (and fail under CI)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from ..servers import free_port
from . import llama_server

BUILD = "python3 tests/backends/llama_server.py"


def require() -> Path:
    """The server binary, once it and the tiny models are built; else skip (fail under CI) saying how to build them."""
    if not llama_server.ready():
        message = (f"llama-server and its tiny models are not built in {llama_server.cache()}; "
                   f"`{BUILD}` builds them (about 5 min on 2 cores, once)")
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return llama_server.server_binary()


class LlamaServer:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.proc, self.url, self.log = proc, url, log

    def slots(self) -> list[dict[str, object]]:
        """What each of the server's slots is doing (``is_processing``: a generation holds it)."""
        return httpx.get(self.url + "/slots", timeout=5).json()  # type: ignore[no-any-return]


@contextmanager
def running(tmp: Path, model: str = "qwen2", *args: str, slots: int = 2, context: int = 1024) -> Iterator[LlamaServer]:
    """llama-server with the tiny ``model`` on a free port, until the block ends."""
    binary = require()
    port = free_port()
    log = tmp / f"llama-server-{port}.log"
    argv = [str(binary), "-m", str(llama_server.model(model)), "--alias", "tiny-random-llama", "--host", "127.0.0.1",
            "--port", str(port), "-c", str(context), "-np", str(slots), "-t", "1", "--slots", *args]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:  # the port opens before the model is loaded; /health says 503 until then
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"llama-server did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)
        yield LlamaServer(proc, url, log)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
