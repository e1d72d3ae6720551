"""``create_app(config, transport=...)``: the upstream replaced by an ``httpx.MockTransport``."""

from __future__ import annotations

import json

import httpx
from starlette.testclient import TestClient

from mooltiproxy import create_app, parse

from .conftest import AUTH, KEY


def test_mock_transport_carries_requests_and_errors() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/v1/embeddings":
            raise httpx.ConnectError("refused", request=request)
        body = json.loads(request.content)
        return httpx.Response(200, json={"echo": body["messages"][0]["content"]}, headers={"x-request-id": "up-1"})

    config = parse({"targets": {"default": "m", "m": {"url": "http://upstream.test", "api_key_env": "K"}}},
                   environ={"K": "sk-k", "MOOLTIPROXY_KEY": KEY})
    app = create_app(config, transport=httpx.MockTransport(handler))
    with TestClient(app, headers=AUTH) as client:
        r = client.post("/v1/chat/completions", json={"model": "x", "messages": [{"role": "user", "content": "yo"}]})
        assert r.json() == {"echo": "yo"}
        assert r.headers["x-upstream-request-id"] == "up-1"
        assert seen[0].url == "http://upstream.test/v1/chat/completions"
        assert seen[0].headers["authorization"] == "Bearer sk-k"
        r = client.post("/v1/embeddings", json={"model": "x", "input": "a"})
        assert r.status_code == 502
        assert "target 'm'" in r.json()["error"]["message"]
