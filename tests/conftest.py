"""Shared fixtures: stub upstreams and the real proxy, each on its own loopback port."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from mooltiproxy import create_app
from mooltiproxy.config import load
from mooltiproxy.server import uvicorn_config

from .servers import ServerThread, serve
from .stubs.openai_upstream import OpenAIStub

ROOT = Path(__file__).resolve().parent.parent
KEY = "test-master-key-0123456789"
AUTH = {"authorization": f"Bearer {KEY}"}
# An HTTP client that carries the proxy's master key, for tests that are not about the key.
http = httpx.Client(headers=AUTH, timeout=30)


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as s:
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


@pytest.fixture
def start_proxy(stack: ExitStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ProxyFactory:
    """Write ``config`` as config.yaml, build the app from it, serve it on a free port."""

    def start(config: dict[str, Any], *, env: dict[str, str] | None = None, transport: Any = None, host: str = "127.0.0.1",
              **options: Any) -> ServerThread:
        for k, v in {"MOOLTIPROXY_KEY": KEY, **(env or {})}.items():
            monkeypatch.setenv(k, v)
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        loaded = load(path)
        app = create_app(loaded, transport=transport)
        # The proxy's own server settings (header deadline, connection cap, trusted proxies, TLS), as `serve` runs it.
        return stack.enter_context(serve(app, host, config=uvicorn_config(app, loaded.server, host=host, log_level="warning",
                                                                            **options)))

    return start
