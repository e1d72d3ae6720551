"""Random bodies thrown at every endpoint: whatever comes in, the proxy itself never answers 5xx.

A 5xx is the proxy's own when it carries no ``x-mooltiproxy-overhead-ms`` header (relayed and
translated upstream answers do); none may appear, and no mapper may fail (``mapper_failed``)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import AUTH, proxy_factory
from .servers import ServerStack, serve
from .stubs.anthropic_upstream import AnthropicStub
from .stubs.openai_upstream import OpenAIStub
from .stubs.tgi_upstream import TGIStub

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=25,
)
MESSAGE_KEYS = st.sampled_from(["role", "content", "name", "tool_calls", "tool_call_id"])
message = st.dictionaries(MESSAGE_KEYS, json_values | st.sampled_from(["user", "assistant", "system", "tool", "developer", "x"]),
                          max_size=4)
chatlike = st.fixed_dictionaries(
    {"model": json_values | st.just("m"), "messages": st.lists(message, max_size=4) | json_values},
    optional={k: json_values for k in ("stream", "max_tokens", "temperature", "top_p", "n", "stop", "seed", "tools", "tool_choice",
                                       "presence_penalty", "frequency_penalty", "stream_options", "response_format", "prompt",
                                       "max_completion_tokens", "logprobs", "suffix", "echo")},
)
anthropic_like = st.fixed_dictionaries(
    {"model": st.just("m"), "max_tokens": json_values | st.integers(1, 50), "messages": st.lists(message, max_size=3) | json_values},
    optional={k: json_values for k in ("system", "stream", "stop_sequences", "tools", "tool_choice", "temperature")},
)
tgi_like = st.fixed_dictionaries({"inputs": json_values | st.text(max_size=20)}, optional={"parameters": json_values})
raw = st.binary(max_size=200) | st.sampled_from([b"{", b'{"a": "\xff\xfe"}', b"[" * 3000, b"null", b'"x"', b"1e999999"])


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Any:
    mp = pytest.MonkeyPatch()
    stack = ServerStack()
    try:
        openai_url = stack.enter_context(serve(OpenAIStub().app())).url
        tgi_url = stack.enter_context(serve(TGIStub().app())).url
        claude = AnthropicStub()
        claude_url = stack.enter_context(serve(claude.app())).url
        factory = proxy_factory(stack, tmp_path_factory.mktemp("fuzz"), mp)
        server = factory({"targets": {"default": "o", "o": {"url": openai_url},
                                      "t": {"type": "tgi", "url": tgi_url, "prompter": "llama2-chat"},
                                      "a": {"type": "anthropic", "url": claude_url, "api_key_env": "ANT"}},
                          "server": {"max_body": "64KiB"}}, env={"ANT": claude.key})
        yield server.url
    finally:
        stack.close()
        mp.undo()


ENDPOINTS = [("/v1/chat/completions", "o"), ("/v1/chat/completions", "t"), ("/v1/chat/completions", "a"), ("/v1/completions", "o"),
             ("/v1/completions", "t"), ("/v1/embeddings", "o"), ("/v1/messages", "o"), ("/v1/messages", "t"), ("/v1/messages", "a"),
             ("/generate", "o"), ("/generate_stream", "o"), ("/", "o"), ("/v1/models", "o"), ("/admin/bans", "o")]


def check(r: httpx.Response) -> None:
    if r.status_code >= 500:
        assert "x-mooltiproxy-overhead-ms" in r.headers, f"the proxy's own {r.status_code}: {r.text[:300]}"
    try:
        body = r.json()
    except ValueError:
        return
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        assert body["error"].get("code") != "mapper_failed", body


def post(url: str, path: str, target: str, content: bytes) -> None:
    with httpx.Client(headers={**AUTH, "target": target, "content-type": "application/json"}, timeout=30) as client:
        r = client.post(url + path, content=content)
        check(r)


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@SETTINGS
@given(body=chatlike, index=st.integers(0, len(ENDPOINTS) - 1))
def test_chatlike_bodies(proxy: str, body: dict[str, Any], index: int) -> None:
    path, target = ENDPOINTS[index]
    post(proxy, path, target, json.dumps(body).encode())


@SETTINGS
@given(body=anthropic_like, target=st.sampled_from(["o", "t", "a"]))
def test_messages_bodies(proxy: str, body: dict[str, Any], target: str) -> None:
    post(proxy, "/v1/messages", target, json.dumps(body).encode())


@SETTINGS
@given(body=tgi_like, path=st.sampled_from(["/generate", "/generate_stream", "/"]))
def test_tgi_bodies(proxy: str, body: dict[str, Any], path: str) -> None:
    post(proxy, path, "o", json.dumps(body).encode())


@SETTINGS
@given(content=raw | json_values.map(lambda v: json.dumps(v).encode()), index=st.integers(0, len(ENDPOINTS) - 1))
def test_anything_at_all(proxy: str, content: bytes, index: int) -> None:
    path, target = ENDPOINTS[index]
    post(proxy, path, target, content)


def _cut_by_hand(pieces: list[str], stops: list[str]) -> str:
    """What a stream cut at its first stop string sends: the whole text, up to the first stop string in it."""
    text = "".join(pieces)
    ends = [i for i in (text.find(s) for s in stops if s) if i != -1]
    return text[:min(ends)] if ends else text


@settings(max_examples=400, deadline=None)
@given(pieces=st.lists(st.text(alphabet="ab<>/s[]INST", max_size=6), max_size=12),
       stops=st.lists(st.text(alphabet="ab<>/s[]INST", min_size=1, max_size=6), max_size=4))
def test_stop_strings_cut_a_stream_wherever_its_pieces_break(pieces: list[str], stops: list[str]) -> None:
    """Whatever the pieces and stop strings (overlapping, one inside another, split over pieces), what the cutter
    lets out is the text up to the first stop string, and nothing of a stop string is ever sent before it is ruled out."""
    from mooltiproxy.translate.helpers import StopCutter

    cutter = StopCutter(stops)
    sent = ""
    for piece in pieces:
        sent += cutter.feed(piece)
        assert _cut_by_hand(pieces, stops).startswith(sent)
    sent += cutter.flush()
    assert sent == _cut_by_hand(pieces, stops)
