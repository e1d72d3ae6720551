"""Shared fixtures: stub upstreams and the real proxy, each on its own loopback port."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from mooltiproxy import create_app, load
from mooltiproxy.http.server import uvicorn_config

from .servers import ServerStack, ServerThread, free_port, serve
from .stubs.openai_upstream import OpenAIStub

ROOT = Path(__file__).resolve().parent.parent
KEY = "test-master-key-0123456789"
AUTH = {"authorization": f"Bearer {KEY}"}
# An HTTP client that carries the proxy's master key, for tests that are not about the key.
http = httpx.Client(headers=AUTH, timeout=30)


class Clock:
    """A wall clock a test moves forward (``advance``) instead of sleeping; starts at the real time."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ServerStack() as s:
        yield s


@pytest.fixture
def openai_stub(stack: ExitStack) -> tuple[OpenAIStub, str]:
    stub = OpenAIStub(name="alpha")
    server = stack.enter_context(serve(stub.app()))
    return stub, server.url


@pytest.fixture
def openai_stub2(stack: ExitStack) -> tuple[OpenAIStub, str]:
    stub = OpenAIStub(name="beta")
    server = stack.enter_context(serve(stub.app()))
    return stub, server.url


ProxyFactory = Callable[..., ServerThread]


def proxy_factory(stack: ExitStack, directory: Path, monkeypatch: pytest.MonkeyPatch) -> ProxyFactory:
    """A function that writes ``config`` as config.yaml in ``directory``, builds the app from it and serves it on a free port.

    Plain so that module-scoped fixtures can share one proxy; ``start_proxy`` is the per-test form."""

    def start(config: dict[str, Any], *, env: dict[str, str] | None = None, transport: Any = None, host: str = "127.0.0.1",
              clock: Callable[[], float] = time.time, **options: Any) -> ServerThread:
        for k, v in {"MOOLTIPROXY_KEY": KEY, **(env or {})}.items():
            monkeypatch.setenv(k, v)
        path = directory / "config.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        loaded = load(path)
        app = create_app(loaded, transport=transport, clock=clock)
        # The proxy's own server settings (header deadline, connection cap, trusted proxies, TLS), as `serve` runs it.
        return stack.enter_context(serve(app, host, config=uvicorn_config(app, loaded.server, host=host, log_level="warning",
                                                                            **options)))

    return start


@pytest.fixture
def start_proxy(stack: ExitStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ProxyFactory:
    """Write ``config`` as config.yaml, build the app from it, serve it on a free port."""
    return proxy_factory(stack, tmp_path, monkeypatch)


def proxy_process(directory: Path, config: dict[str, Any], *args: str, env: dict[str, str] | None = None,
                  new_session: bool = False) -> tuple[subprocess.Popen[str], str]:
    """``mooltiproxy serve`` in its own process with ``config`` (written to ``directory``), once it answers /health and,
    with ``--workers N``, once every worker has written its metrics snapshot (the first worker up answers /health while
    the others may not listen yet). ``new_session``: in a process group of its own, as a terminal starts it (Ctrl-C
    signals the group whole)."""
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mooltiproxy", "serve", "--config", str(path), "--port", str(port), *args],
                            env={**os.environ, "MOOLTIPROXY_KEY": KEY, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=new_session)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    workers = int(args[args.index("--workers") + 1]) if "--workers" in args else 1
    snapshots = directory / "datasets" / "metrics"
    while True:
        try:
            httpx.get(url + "/health")
            break
        except httpx.TransportError:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.1)
    if workers > 1:
        wait_for(lambda: len(list(snapshots.glob("worker-*.json"))) >= workers, 30, "every worker to start")
    return proc, url


def metric(url: str, name: str) -> float:
    """A gauge or counter without labels from the proxy's /metrics (0 when it is not there)."""
    found = re.search(rf"^{name} (\S+)$", http.get(url + "/metrics").text, re.M)
    return float(found.group(1)) if found else 0.0


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until ``check()`` held; fails the test saying ``what`` did not happen within ``timeout``."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, f"{what} within {timeout} s"
        time.sleep(0.02)
    return time.monotonic() - started


def write_certificates(folder: Path) -> None:
    """A test CA (``ca.pem``) and a certificate it signed for 127.0.0.1 and localhost (``cert.pem``, ``key.pem``)."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(folder / "cert.pem"))
    cert.private_key_pem.write_to_path(str(folder / "key.pem"))
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
