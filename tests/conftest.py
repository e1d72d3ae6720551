"""Shared fixtures: stub upstreams and the real proxy, each on its own loopback port."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml

from mooltiproxy import create_app
from mooltiproxy.config import load

from .servers import ServerThread, serve
from .stubs.openai_upstream import OpenAIStub

ROOT = Path(__file__).resolve().parent.parent


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

    def start(config: dict[str, Any], *, env: dict[str, str] | None = None, transport: Any = None, **options: Any) -> ServerThread:
        for k, v in (env or {}).items():
            monkeypatch.setenv(k, v)
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        app = create_app(load(path), transport=transport)
        return stack.enter_context(serve(app, **options))

    return start
