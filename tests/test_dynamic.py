"""Dynamic host routing (``POST /{host[:port]}/{path}`` for hosts on the ``dynamic:`` list), and
``/v1/rerank`` relayed but not recorded."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import anthropic
import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from .conftest import KEY, ProxyFactory, http
from .dataset_kit import records
from .servers import serve
from .stubs.anthropic_upstream import AnthropicStub
from .stubs.openai_upstream import OpenAIStub

Stub = tuple[OpenAIStub, str]
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def hostport(url: str) -> str:
    return url.split("://", 1)[1]



@pytest.fixture
def claude(stack: ExitStack) -> tuple[AnthropicStub, str]:
    stub = AnthropicStub()
    return stub, stack.enter_context(serve(stub.app())).url


def test_a_listed_host_is_reached_with_its_own_key_and_recorded(openai_stub: Stub, claude: tuple[AnthropicStub, str],
                                                                start_proxy: ProxyFactory, tmp_path: Path) -> None:
    openai_host, claude_host = hostport(openai_stub[1]), hostport(claude[1])
    url = start_proxy({"dynamic": {openai_host: {"scheme": "http", "api_key_env": "DEEPSEEK_KEY"},
                                   claude_host: {"scheme": "http", "api_key_env": "ANTHROPIC_KEY", "auth": "x-api-key"}}},
                      env={"DEEPSEEK_KEY": "sk-deepseek-upstream", "ANTHROPIC_KEY": claude[0].key}).url
    client = openai.OpenAI(base_url=f"{url}/{openai_host}/v1", api_key=KEY, max_retries=0)
    answer = client.chat.completions.create(model="deepseek-chat", messages=[{"role": "user", "content": "hello"}])
    assert answer.choices[0].message.content == "alpha says: hello"
    seen = openai_stub[0].seen[-1]
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["authorization"] == "Bearer sk-deepseek-upstream"  # the host's key, never the proxy's
    assert KEY not in str(seen.headers)

    messages = anthropic.Anthropic(base_url=f"{url}/{claude_host}", api_key=KEY, max_retries=0)
    message = messages.messages.create(model="claude-x", max_tokens=20, messages=[{"role": "user", "content": "Hi"}])
    assert message.content[0].type == "text" and message.content[0].text == "Hello from Claude."
    assert claude[0].headers[-1]["x-api-key"] == claude[0].key and "authorization" not in claude[0].headers[-1]

    chat, msg = records(tmp_path / "datasets", 2)
    assert chat["meta"]["target"] == openai_host and chat["meta"]["endpoint"] == "/v1/chat/completions"
    assert chat["conversations"][-1] == {"from": "gpt", "value": "alpha says: hello"}
    assert msg["meta"]["target"] == claude_host and msg["meta"]["endpoint"] == "/v1/messages"
    assert msg["conversations"] == [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello from Claude."}]


def test_paths_without_v1_and_streams_go_through(openai_stub: Stub, start_proxy: ProxyFactory, tmp_path: Path) -> None:
    host = hostport(openai_stub[1])
    url = start_proxy({"dynamic": {host: {"scheme": "http"}}}).url
    with http.stream("POST", f"{url}/{host}/v1/chat/completions", json={**BODY, "stream": True}) as r:
        lines = [line for line in r.iter_lines() if line]
    assert r.status_code == 200 and lines[-1] == "data: [DONE]"
    other = http.get(f"{url}/{host}/v1/models")
    assert other.status_code == 200 and other.json()["data"]
    (record,) = records(tmp_path / "datasets", 1)
    assert record["conversations"][-1]["value"] == "alpha says: hi"


@pytest.mark.parametrize("host", ["api.evil.example", "169.254.169.254", "169.254.169.254:80", "[::1]:1", "127.0.0.1:1",
                                  "localhost:1"])
def test_hosts_not_on_the_list_are_refused_by_name(host: str, openai_stub: Stub, start_proxy: ProxyFactory) -> None:
    url = start_proxy({"dynamic": {hostport(openai_stub[1]): {"scheme": "http"}}}).url
    before = len(openai_stub[0].seen)
    refused = http.post(f"{url}/{host}/v1/chat/completions", json=BODY)
    assert refused.status_code == 403, refused.text
    error = refused.json()["error"]
    assert error["code"] == "host_not_allowed" and error["message"].startswith(f"{host} is not on this proxy's list")
    assert len(openai_stub[0].seen) == before


def test_a_listed_name_that_resolves_to_a_private_address_is_refused(openai_stub: Stub, start_proxy: ProxyFactory) -> None:
    port = hostport(openai_stub[1]).rsplit(":", 1)[1]
    url = start_proxy({"dynamic": {f"localhost:{port}": {"scheme": "http"}}}).url
    refused = http.post(f"{url}/localhost:{port}/v1/chat/completions", json=BODY)
    assert refused.status_code == 403
    assert "resolves to" in refused.json()["error"]["message"] and "not a public address" in refused.json()["error"]["message"]
    assert not openai_stub[0].seen
    # Listing the address itself allows it.
    url = start_proxy({"dynamic": {f"localhost:{port}": {"scheme": "http"}, f"127.0.0.1:{port}": {"scheme": "http"}}}).url
    assert http.post(f"{url}/localhost:{port}/v1/chat/completions", json=BODY).status_code == 200


@pytest.fixture
def redirector(stack: ExitStack, openai_stub: Stub) -> Iterator[str]:
    """A listed host that answers every request with a redirect to another (unlisted) host."""

    async def redirect(request: Request) -> Response:
        return RedirectResponse(openai_stub[1] + "/v1/chat/completions", status_code=307)

    yield stack.enter_context(serve(Starlette(routes=[Route("/{path:path}", redirect, methods=["POST"])]))).url


def test_a_redirect_to_another_host_is_not_followed(redirector: str, openai_stub: Stub, start_proxy: ProxyFactory) -> None:
    host = hostport(redirector)
    url = start_proxy({"dynamic": {host: {"scheme": "http"}}}).url
    answer = http.post(f"{url}/{host}/v1/chat/completions", json=BODY)
    assert answer.status_code == 307 and answer.headers["location"] == openai_stub[1] + "/v1/chat/completions"
    assert not openai_stub[0].seen  # the proxy went nowhere else


def test_the_scheme_comes_from_the_list_only(openai_stub: Stub, start_proxy: ProxyFactory) -> None:
    host = hostport(openai_stub[1])
    url = start_proxy({"dynamic": {host: {"scheme": "http"}}}).url
    for path in (f"/http:/{host}/v1/chat/completions", f"/https://{host}/v1/chat/completions"):
        assert http.post(url + path, json=BODY).status_code in (403, 404)
    assert not openai_stub[0].seen


def test_rerank_is_relayed_and_not_recorded(openai_stub: Stub, start_proxy: ProxyFactory, tmp_path: Path) -> None:
    url = start_proxy({"targets": {"default": "a", "a": {"url": openai_stub[1]}}}).url
    rerank = http.post(url + "/v1/rerank", json={"model": "jina-reranker-v2", "query": "q", "documents": ["a", "b"]})
    assert rerank.status_code == 200 and rerank.json() == {"path": "/v1/rerank", "query": ""}
    assert http.post(url + "/v1/chat/completions", json=BODY).status_code == 200
    found = records(tmp_path / "datasets", 1)
    time.sleep(0.3)
    assert [r["meta"]["endpoint"] for r in records(tmp_path / "datasets", 1)] == ["/v1/chat/completions"] == [
        r["meta"]["endpoint"] for r in found]


def test_dynamic_config_problems_are_listed() -> None:
    from mooltiproxy import parse
    from mooltiproxy.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        parse({"dynamic": {"http://api.x.com": {}, "api.y.com": {"scheme": "ftp", "auth": "basic", "api_key_env": "NOPE"}}},
              environ={})
    problems = info.value.problems
    assert any(p.startswith('dynamic["http://api.x.com"]: must be a host name or IP address') for p in problems), problems
    assert any(p.startswith('dynamic["api.y.com"].scheme: must be one of https, http') for p in problems), problems
    assert any(p.startswith('dynamic["api.y.com"].auth: must be one of bearer, x-api-key') for p in problems), problems
    with pytest.raises(ConfigError) as info:
        parse({"dynamic": {"api.z.com": {"api_key_env": "NOPE"}}}, environ={})
    assert info.value.problems[0].startswith('dynamic["api.z.com"].api_key_env: the environment variable NOPE is not set')


def test_a_key_limited_to_targets_may_be_given_a_dynamic_host(openai_stub: Stub, start_proxy: ProxyFactory) -> None:
    host = hostport(openai_stub[1])
    url = start_proxy({"targets": {"a": {"url": openai_stub[1]}}, "dynamic": {host: {"scheme": "http"}, "api.other.example": {}},
                       "auth": {"keys": {"bob": {"key_env": "BOB", "targets": [host]}}}}, env={"BOB": "bob-key-0123456789"}).url
    bob = {"authorization": "Bearer bob-key-0123456789"}
    assert http.post(f"{url}/{host}/v1/chat/completions", json=BODY, headers=bob).status_code == 200
    refused = http.post(f"{url}/api.other.example/v1/chat/completions", json=BODY, headers=bob)
    assert refused.status_code == 403 and "api.other.example" in refused.json()["error"]["message"]
