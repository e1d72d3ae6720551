"""The OpenAI SDK through the running proxy to OpenAI-compatible stubs: pass-through, routing, streaming."""

from __future__ import annotations

import time

import openai
import pytest

from .conftest import KEY, ProxyFactory, http
from .stubs.openai_upstream import OpenAIStub

Stub = tuple[OpenAIStub, str]
MSG = [{"role": "user", "content": "hello"}]


def sdk(proxy_url: str, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy_url + "/v1", api_key=KEY, default_headers=headers, max_retries=0)


@pytest.fixture
def two_targets(openai_stub: Stub, openai_stub2: Stub, start_proxy: ProxyFactory) -> str:
    return start_proxy(
        {
            "targets": {
                "default": "a",
                "a": {"url": openai_stub[1], "api_key_env": "A_KEY"},
                "b": {"url": openai_stub2[1]},
            },
            "models": {"beta-model": "b", "renamed": {"target": "b", "model": "real-name"}},
        },
        env={"A_KEY": "sk-upstream-a"},
    ).url


def test_chat_completions_non_stream(openai_stub: Stub, two_targets: str) -> None:
    answer = sdk(two_targets).chat.completions.create(model="m", messages=MSG)
    assert answer.choices[0].message.content == "alpha says: hello"
    assert answer.usage is not None and answer.usage.total_tokens == 7


def test_streaming_chunks_arrive_before_the_upstream_has_finished(openai_stub: Stub, two_targets: str) -> None:
    stub = openai_stub[0]
    stream = sdk(two_targets).chat.completions.create(
        model="m", messages=MSG, stream=True, extra_body={"stub": {"chunks": ["one ", "two ", "three"], "delay": 0.4}}
    )
    first_at = None
    pieces = []
    for chunk in stream:
        if first_at is None:
            first_at = time.monotonic()
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    assert pieces == ["one ", "two ", "three"]
    assert stub.finished_streams == 1
    # The first chunk reached the client ~0.8 s before the upstream sent its last one.
    assert first_at is not None and stub.stream_finished_at - first_at > 0.5


def test_completions_embeddings_and_models(two_targets: str) -> None:
    client = sdk(two_targets)
    assert client.completions.create(model="m", prompt="once").choices[0].text == "alpha continues: once"
    streamed = "".join(c.choices[0].text for c in client.completions.create(model="m", prompt="upon", stream=True))
    assert streamed == "alpha continues: upon"
    emb = client.embeddings.create(model="e", input=["ab", "abc"])
    assert [d.embedding[2] for d in emb.data] == [2.0, 3.0]
    assert [m.id for m in client.models.list()] == ["alpha-model"]  # the default target passes /v1/models through


def test_header_picks_the_target_else_alias_else_default(openai_stub: Stub, openai_stub2: Stub, two_targets: str) -> None:
    client = sdk(two_targets)
    via_header = client.chat.completions.create(model="m", messages=MSG, extra_headers={"target": "b"})
    assert via_header.choices[0].message.content.startswith("beta")
    assert sdk(two_targets, target="b").chat.completions.create(model="m", messages=MSG).choices[0].message.content.startswith("beta")
    via_alias = client.chat.completions.create(model="beta-model", messages=MSG)
    assert via_alias.choices[0].message.content.startswith("beta")
    assert openai_stub2[0].seen[-1].body["model"] == "beta-model"
    client.chat.completions.create(model="renamed", messages=MSG)
    assert openai_stub2[0].seen[-1].body["model"] == "real-name"
    assert client.chat.completions.create(model="other", messages=MSG).choices[0].message.content.startswith("alpha")
    # the header wins over the alias
    header_wins = client.chat.completions.create(model="beta-model", messages=MSG, extra_headers={"target": "a"})
    assert header_wins.choices[0].message.content.startswith("alpha")


def test_what_goes_upstream(openai_stub: Stub, openai_stub2: Stub, two_targets: str) -> None:
    stub = openai_stub[0]
    http.post(
        two_targets + "/v1/chat/completions?api-version=7",
        json={"model": "m", "messages": MSG, "min_p": 0.1, "repetition_penalty": 1.1, "custom": {"deep": [1, 2]}},
        headers={"x-api-key": "client-x", "connection": "keep-alive, x-hop",
                 "x-hop": "1", "cookie": "s=1", "x-custom": "kept", "openai-organization": "org"},
    ).raise_for_status()
    seen = stub.seen[-1]
    assert seen.body["min_p"] == 0.1 and seen.body["repetition_penalty"] == 1.1 and seen.body["custom"] == {"deep": [1, 2]}
    assert seen.query == "api-version=7"
    assert seen.headers["authorization"] == "Bearer sk-upstream-a"  # the target's key, never the proxy's own
    assert "x-api-key" not in seen.headers and "cookie" not in seen.headers and "x-hop" not in seen.headers
    assert "target" not in seen.headers
    assert seen.headers["x-custom"] == "kept" and seen.headers["openai-organization"] == "org"
    http.post(two_targets + "/v1/chat/completions", json={"model": "m", "messages": MSG}, headers={"target": "b"})
    assert "authorization" not in openai_stub2[0].seen[-1].headers  # target b has no key: nothing is sent


def test_response_headers(two_targets: str) -> None:
    r = http.post(two_targets + "/v1/chat/completions", json={"model": "m", "messages": MSG}, headers={"x-request-id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    assert float(r.headers["x-mooltiproxy-overhead-ms"]) >= 0
    r2 = http.post(two_targets + "/v1/chat/completions", json={"model": "m", "messages": MSG}, headers={"x-request-id": "bad id; spaces"})
    assert len(r2.headers["x-request-id"]) == 24


def test_path_masquerade_and_extra_routes(openai_stub: Stub, start_proxy: ProxyFactory) -> None:
    url = openai_stub[1]
    proxy = start_proxy(
        {"targets": {"default": "a", "a": {"url": url, "routes": {"/v1/chat/completions": {"path": "/infer"}, "/v1/rerank": {}}}}}
    )
    r = http.post(proxy.url + "/v1/chat/completions?x=1", json={"model": "m", "messages": MSG})
    assert r.json() == {"path": "/infer", "query": "x=1"}
    assert http.post(proxy.url + "/v1/rerank", json={"query": "q", "documents": []}).json()["path"] == "/v1/rerank"


def test_own_models_listing_when_no_target_passes_it_through(openai_stub: Stub, start_proxy: ProxyFactory) -> None:
    proxy = start_proxy(
        {"targets": {"a": {"url": openai_stub[1]}, "b": {"url": openai_stub[1], "routes": {"/v1/models": {"path": "/v1/nope"}}}},
         "models": {"llama": "a"}}
    )
    listed = [m.id for m in sdk(proxy.url).models.list()]
    assert listed == ["a", "b", "llama"]
    assert [m.id for m in sdk(proxy.url, target="a").models.list()] == ["alpha-model"]


def test_health_needs_nothing(two_targets: str) -> None:
    assert http.get(two_targets + "/health").json() == {"status": "ok"}


def test_access_log_line(two_targets: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="mooltiproxy.access"):
        http.post(two_targets + "/v1/chat/completions?key=sk-secret-in-query", json={"model": "m", "messages": MSG},
                   headers={"target": "b"})
        time.sleep(0.05)
    lines = [r.getMessage() for r in caplog.records if r.name == "mooltiproxy.access"]
    assert len(lines) == 1
    line = lines[0]
    assert "POST /v1/chat/completions status=200 target=b" in line
    assert "upstream_ms=" in line and "total_ms=" in line
    assert "secret" not in line and KEY not in line
