"""Every error the proxy answers with: status, OpenAI body shape, a sentence that names what was asked."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import httpx
import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from .conftest import KEY, ProxyFactory, http
from .servers import free_port, serve
from .stubs.openai_upstream import OpenAIStub

Stub = tuple[OpenAIStub, str]
MSG = [{"role": "user", "content": "hello"}]


def error_of(r: httpx.Response) -> dict[str, Any]:
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert r.headers["content-type"] == "application/json"
    assert r.headers.get("x-request-id")
    return body["error"]  # type: ignore[no-any-return]


@pytest.fixture
def proxy(openai_stub: Stub, start_proxy: ProxyFactory) -> str:
    return start_proxy(
        {
            "server": {"max_body": "16KiB"},
            "targets": {
                "default": "local",
                "local": {"url": openai_stub[1], "timeout": 0.5},
                "down": {"url": f"http://127.0.0.1:{free_port()}"},
                "nowhere": {"url": "http://no-such-host.invalid:8080"},
            },
        }
    ).url


def test_unknown_target(proxy: str) -> None:
    r = http.post(proxy + "/v1/chat/completions", json={"model": "m", "messages": MSG}, headers={"target": "locl"})
    assert r.status_code == 404
    err = error_of(r)
    assert err["code"] == "target_not_found" and err["param"] == "target"
    assert "Unknown target 'locl'" in err["message"] and "did you mean 'local'" in err["message"]
    assert "local, down, nowhere" in err["message"]


def test_unmapped_path_and_wrong_method(proxy: str) -> None:
    r = http.post(proxy + "/v1/audio/speech", json={})
    assert r.status_code == 404
    err = error_of(r)
    assert err["code"] == "route_not_found"
    assert "/v1/audio/speech" in err["message"] and "/v1/chat/completions" in err["message"]
    r = http.get(proxy + "/v1/chat/completions")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert "serves /v1/chat/completions with POST, not GET" in error_of(r)["message"]
    r = http.post(proxy + "/health")
    assert r.status_code == 405 and "GET" in error_of(r)["message"]


def test_no_target_chosen(openai_stub: Stub, start_proxy: ProxyFactory) -> None:
    url = start_proxy({"targets": {"a": {"url": openai_stub[1]}}}).url
    r = http.post(url + "/v1/chat/completions", json={"model": "m", "messages": MSG})
    assert r.status_code == 404
    assert "No target was chosen: send a 'target' header naming one of a" in error_of(r)["message"]
    empty = start_proxy({}).url
    assert "No targets are configured" in error_of(http.post(empty + "/v1/chat/completions", json={}))["message"]


@pytest.mark.parametrize("status", [400, 401, 404, 429, 500, 503])
def test_upstream_errors_pass_through(proxy: str, status: int) -> None:
    r = http.post(
        proxy + "/v1/chat/completions",
        json={"model": "m", "messages": MSG, "stub": {"status": status, "error": f"upstream says {status}",
                                                      "headers": {"retry-after": "7"}}},
    )
    assert r.status_code == status
    assert error_of(r)["message"] == f"upstream says {status}"
    assert r.headers["retry-after"] == "7"


def test_sdk_sees_upstream_errors_as_its_own_exceptions(proxy: str) -> None:
    client = openai.OpenAI(base_url=proxy + "/v1", api_key=KEY, max_retries=0)
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="m", messages=MSG, extra_body={"stub": {"status": 429, "error": "slow down"}})
    assert "slow down" in str(info.value)


def test_upstream_down_unresolvable_and_slow(proxy: str) -> None:
    r = http.post(proxy + "/v1/chat/completions", json={"model": "m", "messages": MSG}, headers={"target": "down"})
    assert r.status_code == 502
    err = error_of(r)
    assert err["code"] == "upstream_unreachable"
    assert "target 'down'" in err["message"] and "connection refused" in err["message"]
    r = http.post(proxy + "/v1/chat/completions", json={"model": "m", "messages": MSG}, headers={"target": "nowhere"})
    assert r.status_code == 502 and "target 'nowhere'" in error_of(r)["message"]
    started = time.monotonic()
    r = http.post(proxy + "/v1/chat/completions", json={"model": "m", "messages": MSG, "stub": {"sleep": 3}})
    assert r.status_code == 504
    assert time.monotonic() - started < 2
    err = error_of(r)
    assert err["code"] == "upstream_timeout" and "target 'local'" in err["message"] and "0.5 s" in err["message"]


def test_bad_bodies(proxy: str) -> None:
    r = http.post(proxy + "/v1/chat/completions", content=b'{"model": "m", "messages": [}', headers={"content-type": "application/json"})
    assert r.status_code == 400
    err = error_of(r)
    assert err["code"] == "invalid_json" and "not valid JSON" in err["message"] and "column" in err["message"]
    r = http.post(proxy + "/v1/chat/completions", content=b'{"a": "\xff"}')
    assert r.status_code == 400 and "UTF-8" in error_of(r)["message"]
    r = http.post(proxy + "/v1/chat/completions", content=b"[" * 5000 + b"]" * 5000)
    assert r.status_code == 400 and error_of(r)["code"] == "invalid_json"


def test_body_too_large_with_and_without_length(proxy: str, openai_stub: Stub) -> None:
    before = len(openai_stub[0].seen)
    r = http.post(proxy + "/v1/chat/completions", content=b"x" * 17000)
    assert r.status_code == 413 and "server.max_body" in error_of(r)["message"]

    def chunks() -> Any:
        for _ in range(40):
            yield b"y" * 512

    r = http.post(proxy + "/v1/chat/completions", content=chunks())
    assert r.status_code == 413
    assert len(openai_stub[0].seen) == before  # nothing went upstream


def test_client_disconnect_cancels_the_upstream_stream(start_proxy: ProxyFactory) -> None:
    state = {"started": 0, "cancelled": 0, "finished": 0}

    async def slow(request: Request) -> StreamingResponse:
        async def gen() -> Any:
            state["started"] += 1
            try:
                for i in range(100):
                    yield f'data: {{"choices":[{{"index":0,"delta":{{"content":"{i}"}}}}]}}\n\n'
                    await asyncio.sleep(0.05)
                state["finished"] += 1
            except asyncio.CancelledError:
                state["cancelled"] += 1
                raise
        return StreamingResponse(gen(), media_type="text/event-stream")

    with serve(Starlette(routes=[Route("/v1/chat/completions", slow, methods=["POST"])])) as upstream:
        proxy = start_proxy({"targets": {"default": "a", "a": {"url": upstream.url}}})
        with http.stream("POST", proxy.url + "/v1/chat/completions", json={"model": "m", "messages": MSG, "stream": True}) as r:
            for _ in r.iter_lines():
                break
        deadline = time.monotonic() + 2
        while state["cancelled"] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert state == {"started": 1, "cancelled": 1, "finished": 0}


def test_client_disconnect_cancels_a_non_stream_request(start_proxy: ProxyFactory) -> None:
    state = {"upstream_saw_disconnect": 0}

    async def slow_upstream(scope: Any, receive: Any, send: Any) -> None:
        """Takes 5 s to answer, and notes when the proxy hangs up on it first."""
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        try:
            message = await asyncio.wait_for(receive(), 5)
            if message["type"] == "http.disconnect":
                state["upstream_saw_disconnect"] += 1
        except TimeoutError:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"{}"})

    with serve(slow_upstream) as upstream:
        proxy = start_proxy({"targets": {"default": "a", "a": {"url": upstream.url}}})
        sock = socket.create_connection(("127.0.0.1", proxy.port))
        body = b'{"model":"m","messages":[]}'
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     b"authorization: Bearer %s\r\ncontent-length: %d\r\n\r\n%s" % (KEY.encode(), len(body), body))
        time.sleep(0.3)
        sock.close()
        deadline = time.monotonic() + 2
        while state["upstream_saw_disconnect"] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert state["upstream_saw_disconnect"] == 1


def test_upstream_breaking_a_stream_ends_it_with_an_error_event(openai_stub: Stub, proxy: str) -> None:
    client = openai.OpenAI(base_url=proxy + "/v1", api_key=KEY, max_retries=0)
    got = []
    with pytest.raises(openai.APIError) as info:
        for chunk in client.chat.completions.create(
            model="m", messages=MSG, stream=True, extra_body={"stub": {"chunks": ["a", "b", "c", "d"], "drop_after": 2}}
        ):
            if chunk.choices:
                got.append(chunk.choices[0].delta.content)
    assert got == ["a", "b"]
    assert "broke off its answer" in str(info.value)

