"""What an attacker at the door found, each finding (F1…F21) as the user or the attacker meets it: the real
proxy on loopback, real clients, stubs and raw sockets for upstreams that misbehave."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from mooltiproxy import parse
from mooltiproxy.dataset.reviews import Reviews
from mooltiproxy.dataset.sinks import read_jsonl
from mooltiproxy.errors import ConfigError
from mooltiproxy.ops.metrics import MAX_SERIES, Metrics
from mooltiproxy.translate.sse import SSEParser
from mooltiproxy.upstream.h1 import H1Client

from .conftest import AUTH, KEY, ProxyFactory, http, metric, wait_for
from .servers import serve
from .stubs.raw_upstream import raw_server

BIG = 10 * 1024 * 1024


def wait_for_records(folder: Path, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        found = [r for f in folder.glob("*.jsonl") for r in read_jsonl(f)]
        if len(found) >= n:
            break
        time.sleep(0.05)
    return found
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


async def big_answers(scope: Any, receive: Any, send: Any) -> None:
    """10 MB answers, whole (content-length) or as a stream of SSE events, sent as fast as the socket takes them."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    if scope["path"].endswith("/stream"):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        event = b"data: " + b'{"choices": [{"index": 0, "delta": {"content": "' + b"x" * 8000 + b'"}}]}\n\n'
        sent = 0
        while sent < BIG:
            await send({"type": "http.response.body", "body": event, "more_body": True})
            sent += len(event)
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
        return
    text = b"y" * BIG
    body = b'{"id": "c", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": "' + text \
        + b'"}, "finish_reason": "stop"}]}'
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


@pytest.mark.parametrize("stream", [False, True])
def test_f1_a_large_answer_to_a_late_reader_arrives_whole(stack: ExitStack, start_proxy: ProxyFactory, stream: bool) -> None:
    upstream = stack.enter_context(serve(big_answers)).url
    path = "/v1/chat/completions/stream" if stream else "/v1/chat/completions"
    url = start_proxy({"targets": {"default": "big", "big": {"url": upstream, "timeout": 5,
                                                             "routes": {"/v1/chat/completions": {"path": path}}}},
                       "dataset": {"sink": "none"}}).url
    started = time.monotonic()
    body = {"model": "m", "messages": [{"role": "user", "content": "everything"}], "stream": stream}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, headers=AUTH, timeout=30) as answer:
        time.sleep(2)  # the client starts reading late: the proxy's writes block, reading from the upstream pauses
        data = answer.read()
    assert answer.status_code == 200
    if stream:
        assert data.endswith(b"data: [DONE]\n\n") and b'"error"' not in data[-2000:]
        assert len(data) >= BIG
    else:
        assert len(data) > BIG and data.endswith(b'"finish_reason": "stop"}]}')
    assert time.monotonic() - started < 5  # at the pace of the slower side, not after the read timeout


# ------------------------------------------------------------------------ upstreams that misbehave (F7, F19)


def ok(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


def test_f19_a_second_answer_to_one_request_is_not_merged_into_it(start_proxy: ProxyFactory) -> None:
    first, smuggled = b'{"first": true}', b'{"smuggled": true}'
    answers = iter([[ok(first) + ok(smuggled)], [ok(b'{"second": true}')]])
    with raw_server(lambda request: next(answers)) as (port, stats):
        url = start_proxy({"targets": {"default": "raw", "raw": {"url": f"http://127.0.0.1:{port}"}},
                           "dataset": {"sink": "none"}}).url
        answer = http.post(url + "/v1/embeddings", json={"input": "x"})
        assert answer.status_code == 200 and answer.content == first
        assert answer.headers.get_list("content-length") == [str(len(first))]
        # The next request is not answered with what was smuggled: that connection was dropped.
        again = http.post(url + "/v1/embeddings", json={"input": "y"})
        assert again.content == b'{"second": true}'
        assert stats["connections"] == 2


def test_f7_oversized_upstream_headers_and_bodies_are_a_clear_502(start_proxy: ProxyFactory) -> None:
    huge_headers = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n" + b"x-filler: " + b"a" * 100_000 + b"\r\n\r\n{}"
    error_body = b'{"error": {"message": "' + b"e" * (2 * 1024 * 1024) + b'"}}'
    huge_error = b"HTTP/1.1 500 Oops\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(error_body), error_body)
    tgi_answer = b'{"generated_text": "' + b"t" * (3 * 1024 * 1024) + b'", "details": null}'
    answers = {b"/headers": [huge_headers], b"/error": [huge_error], b"/generate": [ok(tgi_answer)]}
    with raw_server(lambda request: answers[request.split(b" ")[1]], keep_open=False) as (port, _):
        base = f"http://127.0.0.1:{port}"
        url = start_proxy({"server": {"max_answer": "1MiB"}, "dataset": {"sink": "none"}, "targets": {
            "default": "h",
            "h": {"url": base, "routes": {"/v1/embeddings": {"path": "/headers"}, "/v1/rerank": {"path": "/error"}}},
            "t": {"url": base, "type": "tgi", "prompter": "chatml"}}}).url
        r = http.post(url + "/v1/embeddings", json={"input": "x"})
        assert r.status_code == 502 and "headers were larger than 64 KiB" in r.json()["error"]["message"]
        r = http.post(url + "/v1/rerank", json={"query": "x"})
        assert r.status_code == 502 and "more than 1048576 bytes" in r.json()["error"]["message"]
        r = http.post(url + "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                      headers={"target": "t"})
        assert r.status_code == 502 and "server.max_answer" in r.json()["error"]["message"]


# ------------------------------------------------------------------------------------ dynamic hosts (F10, F13, F17)


def test_f10_a_dynamic_host_gets_the_path_as_the_client_sent_it(start_proxy: ProxyFactory) -> None:
    lines: list[bytes] = []

    def remember(request: bytes) -> list[bytes]:
        lines.append(request.split(b"\r\n", 1)[0])
        return [ok(b"{}")]

    with raw_server(remember) as (port, _):
        url = start_proxy({"dynamic": {f"127.0.0.1:{port}": {"scheme": "http"}}, "dataset": {"sink": "none"}}).url
        for path in ("/v1/files/a%20b%3Fc%23d", "/v1/files/%E2%82%AC", "/v1/files/%2e%2e/x"):
            assert http.post(f"{url}/127.0.0.1:{port}{path}?q=1", json={}).status_code == 200
    assert lines == [b"POST /v1/files/a%20b%3Fc%23d?q=1 HTTP/1.1", b"POST /v1/files/%E2%82%AC?q=1 HTTP/1.1",
                     b"POST /v1/files/%2e%2e/x?q=1 HTTP/1.1"]


def test_f13_a_listed_address_admits_a_name_only_on_its_own_port(openai_stub: tuple[Any, str], start_proxy: ProxyFactory) -> None:
    port = int(openai_stub[1].rsplit(":", 1)[1])
    url = start_proxy({"dynamic": {f"localhost:{port}": {"scheme": "http"}, "127.0.0.1:1": {"scheme": "http"}}}).url
    refused = http.post(f"{url}/localhost:{port}/v1/chat/completions", json=BODY)
    assert refused.status_code == 403 and f"with port {port}" in refused.json()["error"]["message"]
    url = start_proxy({"dynamic": {f"localhost:{port}": {"scheme": "http"}, f"127.0.0.1:{port}": {"scheme": "http"}}}).url
    assert http.post(f"{url}/localhost:{port}/v1/chat/completions", json=BODY).status_code == 200


def test_f17_dynamic_hosts_take_get_post_and_head_only_and_head_is_answered(openai_stub: tuple[Any, str],
                                                                          start_proxy: ProxyFactory) -> None:
    host = openai_stub[1].split("://", 1)[1]
    url = start_proxy({"dynamic": {host: {"scheme": "http"}}}).url
    for method in ("TRACE", "DELETE", "PUT", "OPTIONS"):
        r = http.request(method, f"{url}/{host}/v1/models")
        assert r.status_code == 405 and r.headers["allow"] == "GET, POST, HEAD", method
    started = time.monotonic()
    head = http.head(f"{url}/{host}/v1/models")
    assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"]) > 0
    assert time.monotonic() - started < 2  # answered, not left to wait for a body
    assert http.get(f"{url}/{host}/v1/models").json()["data"][0]["id"] == "alpha-model"


# ------------------------------------------------------------------------------- the request body (F8)


@pytest.mark.parametrize("how", ["disconnect", "timeout", "malformed"])
def test_f8_a_body_that_did_not_arrive_whole_never_goes_upstream(openai_stub: tuple[Any, str], start_proxy: ProxyFactory,
                                                                 caplog: pytest.LogCaptureFixture, how: str) -> None:
    stub, upstream = openai_stub
    server = start_proxy({"targets": {"default": "a", "a": {"url": upstream}}, "server": {"body_timeout": 0.5}})
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\n"
            "content-type: application/json\r\n").encode()
    caplog.set_level("INFO", "mooltiproxy.access")
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        if how == "malformed":
            sock.sendall(head + b"transfer-encoding: chunked\r\n\r\nzz-not-a-chunk\r\n")
        else:
            sock.sendall(head + b"content-length: 100\r\n\r\n")
        if how == "disconnect":
            time.sleep(0.2)
            sock.shutdown(socket.SHUT_RDWR)
        sock.settimeout(3)
        with contextlib.suppress(OSError):
            while sock.recv(65536):
                pass
    deadline = time.monotonic() + 5
    while not any("/v1/chat/completions" in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stub.seen == []  # nothing, not even an empty POST, went upstream
    lines = [r.getMessage() for r in caplog.records if "/v1/chat/completions" in r.getMessage()]
    assert len(lines) == 1 and "status=499" in lines[0], [r.getMessage() for r in caplog.records]


# ------------------------------------------------------------------------------------ keys, bans, admin (F2, F3, F11, F15, F18)

ALICE = "alice-key-0123456789"


def keyed(key: str, **headers: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}", **headers}


def test_f2_a_fallback_is_no_way_around_a_keys_targets(openai_stub: tuple[Any, str], openai_stub2: tuple[Any, str],
                                                        start_proxy: ProxyFactory) -> None:
    (alpha, alpha_url), (beta, beta_url) = openai_stub, openai_stub2
    alpha.fail = (500, "alpha is down")
    url = start_proxy({"targets": {"default": "a", "a": {"url": alpha_url, "fallbacks": ["b"]}, "b": {"url": beta_url}},
                       "auth": {"keys": {"alice": {"key_env": "ALICE", "targets": ["a"]}}}}, env={"ALICE": ALICE}).url
    refused = httpx.post(url + "/v1/chat/completions", json=BODY, headers=keyed(ALICE))
    assert refused.status_code == 500 and "alpha is down" in refused.text  # a's own failure, not b's answer
    assert beta.seen == []
    # The master key may use b, so it falls back there.
    assert http.post(url + "/v1/chat/completions", json=BODY).json()["choices"][0]["message"]["content"] == "beta says: hi"


def test_f3_a_page_on_another_site_cannot_get_its_visitors_banned(openai_stub: tuple[Any, str], start_proxy: ProxyFactory) -> None:
    url = start_proxy({"targets": {"default": "a", "a": {"url": openai_stub[1]}}, "auth": {"max_failures": 3}}).url
    browser = {"origin": "https://evil.example", "sec-fetch-site": "cross-site", "sec-fetch-mode": "no-cors"}
    for _ in range(10):  # seven <img> tags and then some, each a keyless GET or POST
        assert httpx.get(url + "/v1/models", headers=browser).status_code == 401
        assert httpx.post(url + "/v1/chat/completions", content=b"x=1", headers=browser).status_code == 401
    assert http.post(url + "/v1/chat/completions", json=BODY).status_code == 200  # not banned
    for _ in range(3):  # wrong keys, which no cross-site page can send, still count
        httpx.post(url + "/v1/chat/completions", json=BODY, headers=keyed("sk-wrong-0000"))
    assert http.post(url + "/v1/chat/completions", json=BODY).status_code == 403


def test_f11_a_banned_admin_on_this_machine_gets_in_with_the_master_key_but_cannot_guess(
        openai_stub: tuple[Any, str], start_proxy: ProxyFactory) -> None:
    url = start_proxy({"targets": {"default": "a", "a": {"url": openai_stub[1]}},
                       "auth": {"max_failures": 2, "keys": {"alice": {"key_env": "ALICE"}}}}, env={"ALICE": ALICE}).url
    for _ in range(2):
        httpx.post(url + "/v1/chat/completions", json=BODY, headers=keyed("sk-wrong-0000"))
    assert http.post(url + "/v1/chat/completions", json=BODY).status_code == 403  # banned
    assert http.get(url + "/admin/bans").status_code == 200  # the admin can still list and lift bans
    # A named key and a wrong key get the same answer at /admin/: neither tells which keys are real.
    named, wrong = (httpx.get(url + "/admin/bans", headers=keyed(k)) for k in (ALICE, "sk-wrong-1111"))
    assert named.status_code == wrong.status_code == 401 and named.json() == wrong.json()
    # ... and guesses run out: after max_failures wrong keys during the ban, /admin/ is banned like the rest.
    httpx.get(url + "/admin/bans", headers=keyed("sk-wrong-2222"))
    assert http.get(url + "/admin/bans").status_code == 403


def test_f15_in_passthrough_mode_wrong_keys_at_the_admin_endpoints_count(openai_stub: tuple[Any, str],
                                                                          start_proxy: ProxyFactory) -> None:
    url = start_proxy({"targets": {"default": "a", "a": {"url": openai_stub[1], "forward_client_key": True}},
                       "auth": {"mode": "passthrough", "max_failures": 3}}).url
    for _ in range(3):
        assert httpx.get(url + "/admin/bans", headers=keyed("sk-guess-0000")).status_code == 401
    assert httpx.post(url + "/v1/chat/completions", json=BODY).status_code == 403  # the guesser is banned


def test_f18_a_restricted_key_is_told_only_what_concerns_it(openai_stub: tuple[Any, str], start_proxy: ProxyFactory) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{s.getsockname()[1]}"
    url = start_proxy({"targets": {"default": "a", "a": {"url": down}, "secret-internal": {"url": openai_stub[1]}},
                       "auth": {"keys": {"alice": {"key_env": "ALICE", "targets": ["a"]}}}}, env={"ALICE": ALICE}).url
    assert httpx.get(url + "/metrics", headers=keyed(ALICE)).status_code == 403
    assert http.get(url + "/metrics").status_code == 200
    unknown = httpx.post(url + "/v1/chat/completions", json=BODY, headers=keyed(ALICE, target="nope")).json()["error"]["message"]
    assert "Known targets: a." in unknown and "secret-internal" not in unknown
    alice = httpx.post(url + "/v1/chat/completions", json=BODY, headers=keyed(ALICE)).json()["error"]["message"]
    master = http.post(url + "/v1/chat/completions", json=BODY).json()["error"]["message"]
    assert "could not be reached: connection refused" in alice and down not in alice and "targets.a.url" not in alice
    assert down in master and "targets.a.url" in master


# ------------------------------------------------------------------------------------------- recording (F4)


def test_f4_one_odd_record_costs_no_other_and_is_kept_itself(openai_stub: tuple[Any, str], start_proxy: ProxyFactory,
                                                              tmp_path: Path) -> None:
    url = start_proxy({"targets": {"default": "a", "a": {"url": openai_stub[1]}}, "dataset": {"dir": str(tmp_path / "ds")}}).url
    deep: Any = {"type": "string"}
    for _ in range(300):  # orjson reads 1024 levels but writes only 254
        deep = {"type": "object", "properties": {"x": deep}}
    bodies = [{**BODY, "messages": [{"role": "user", "content": f"exchange {i}"}]} for i in range(8)]
    bodies[3]["response_format"] = {"type": "json_schema", "json_schema": {"name": "deep", "schema": deep}}
    with ThreadPoolExecutor(8) as pool:  # together, so that they are recorded in one batch
        assert all(r.status_code == 200 for r in pool.map(lambda b: http.post(url + "/v1/chat/completions", json=b), bodies))
    records = wait_for_records(tmp_path / "ds", 8)
    assert sorted(r["conversations"][-2]["value"] for r in records) == [f"exchange {i}" for i in range(8)]
    odd = next(r for r in records if r["conversations"][-2]["value"] == "exchange 3")
    assert odd["meta"]["altered"] and "kept as JSON text" in odd["meta"]["altered"][0]
    node: Any = odd["meta"]["params"]["response_format"]
    depth = 0
    while isinstance(node, dict):  # down the schema to where it was cut: the rest is kept as its JSON text
        node = next(v for v in node.values() if isinstance(v, (dict, str)) and v not in ("object", "json_schema", "deep"))
        depth += 1
    assert isinstance(node, str) and depth > 60
    assert isinstance(json.loads(node), dict) and '{"type":"string"}' in node  # the innermost level, whole
    # the recorder process reports its counts a moment after it writes
    wait_for(lambda: metric(url, "mooltiproxy_dataset_records_altered_total") == 1, 5, "the altered record counted")
    metrics = http.get(url + "/metrics").text
    assert "mooltiproxy_dataset_records_lost_total 0" in metrics and "mooltiproxy_dataset_records_altered_total 1" in metrics


# ------------------------------------------------------------------------------------------ logs, config (F9, F12)


def test_f9_a_path_cannot_forge_a_line_in_the_access_log(openai_stub: tuple[Any, str], start_proxy: ProxyFactory,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    url = start_proxy({"targets": {"default": "a", "a": {"url": openai_stub[1]}}}).url
    caplog.set_level("INFO", "mooltiproxy.access")
    http.get(url + "/v1/models%0a10.0.0.9%20POST%20/v1/chat/completions%20status=200")
    deadline = time.monotonic() + 3
    while not caplog.records and time.monotonic() < deadline:
        time.sleep(0.02)
    line = logging.Formatter().format(caplog.records[-1])
    assert "\n" not in line and "/v1/models\\x0a10.0.0.9 POST" in line


def test_f12_config_problems_name_the_variable_never_its_value(tmp_path: Path) -> None:
    secret, password = "up-SECRET-value-77", "pg-Pa55word"
    env = {"UPSTREAM_URL": secret, "PORT": "not-a-port", "DSN": f"postgresql://me:{password}@db:5432/x",
           "MOOLTIPROXY_KEY": KEY}
    config = {"server": {"port": "${PORT}"}, "targets": {"a": {"url": "${UPSTREAM_URL}"},
                                                         "b": {"url": f"ftp://me:{password}@host/"}},
              "dataset": {"sink": "postgres", "dsn": "${DSN}", "fsync": "${UPSTREAM_URL}"}}
    with pytest.raises(ConfigError) as raised:
        parse(config, environ=env)
    text = "\n".join(raised.value.problems)
    assert secret not in text and password not in text and "not-a-port" not in text
    assert "${UPSTREAM_URL}" in text and "targets.a.url" in text and "dataset.fsync" in text and "server.port" in text


def test_f20_one_keys_conversation_is_never_threaded_onto_anothers(openai_stub: tuple[Any, str], start_proxy: ProxyFactory,
                                                                   tmp_path: Path) -> None:
    from mooltiproxy.dataset.exports import threads

    url = start_proxy({"targets": {"default": "a", "a": {"url": openai_stub[1]}}, "dataset": {"dir": str(tmp_path / "ds")},
                       "auth": {"keys": {"alice": {"key_env": "ALICE"}}}}, env={"ALICE": ALICE}).url
    opening = [{"role": "user", "content": "Hello!"}]
    first = http.post(url + "/v1/chat/completions", json={**BODY, "messages": opening}).json()["choices"][0]["message"]
    wait_for_records(tmp_path / "ds", 1)
    # alice sends a history identical to the master key's conversation so far, and goes on from it
    follow = [*opening, first, {"role": "user", "content": "And then?"}]
    httpx.post(url + "/v1/chat/completions", json={**BODY, "messages": follow}, headers=keyed(ALICE))
    httpx.post(url + "/v1/chat/completions", json={**BODY, "messages": opening}, headers=keyed(ALICE))
    records = wait_for_records(tmp_path / "ds", 3)
    master = next(r for r in records if r["meta"]["key_name"] == "master")
    for r in records:
        if r["meta"]["key_name"] == "alice":
            assert r["meta"]["parent"] is None and r["meta"]["thread"] != master["meta"]["thread"]
    assert all(len({r["meta"]["key_name"] for r in members}) == 1 for members in threads(records).values())


def test_f21_every_file_beside_the_dataset_is_private(openai_stub: tuple[Any, str], start_proxy: ProxyFactory,
                                                      tmp_path: Path) -> None:
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "reviews.db").touch(mode=0o644)  # as an earlier version left it
    url = start_proxy({"targets": {"default": "a", "a": {"url": openai_stub[1]}}, "dataset": {"dir": str(folder)}}).url
    http.post(url + "/v1/chat/completions", json=BODY)
    record = wait_for_records(folder, 1)[0]
    http.get(url + "/metrics")
    Reviews.beside(folder).set_status(record["id"], "accepted")  # as the review page does
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"reviews.db", "state.db", f"worker-{os.getpid()}.json"}
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: "0o600" for p in files}


# ------------------------------------------------------------------------------------------ one huge event (F16)


def test_f16_one_huge_event_costs_its_length_and_its_record_is_capped(stack: ExitStack, start_proxy: ProxyFactory,
                                                                      tmp_path: Path) -> None:
    parser = SSEParser()
    line = b"data: " + b"x" * 8_000_000
    started = time.process_time()
    for i in range(0, len(line), 1024):  # as a relayed stream arrives: a 8 MB line in 1 KiB reads
        assert parser.feed(line[i : i + 1024]) == []
    assert parser.feed(b"\n\n") == [(None, b"x" * 8_000_000)]
    assert time.process_time() - started < 1.0  # linear: joining the held bytes to each read cost the square (minutes)

    async def one_huge_event(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        text = "y" * 3_000_000
        event = b'data: {"choices": [{"index": 0, "delta": {"content": "' + text.encode() + b'"}, "finish_reason": null}]}\n\n'
        for i in range(0, len(event), 4096):
            await send({"type": "http.response.body", "body": event[i : i + 4096], "more_body": True})
        await send({"type": "http.response.body", "body": b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}'
                    b"\n\ndata: [DONE]\n\n"})

    upstream = stack.enter_context(serve(one_huge_event)).url
    url = start_proxy({"targets": {"default": "a", "a": {"url": upstream}},
                       "dataset": {"dir": str(tmp_path / "ds"), "max_text": "1MiB"}}).url
    answer = http.post(url + "/v1/chat/completions", json={**BODY, "stream": True})
    assert len(answer.content) > 3_000_000 and answer.content.endswith(b"data: [DONE]\n\n")  # the client gets all of it
    record = wait_for_records(tmp_path / "ds", 1)[0]
    assert record["meta"]["truncated"] is True and len(record["conversations"][-1]["value"]) <= 1024 * 1024
    assert record["meta"]["cut_short"] is False


# -------------------------------------------------------------------------------------------------- fan-out (F5)


def test_f5_upstream_calls_per_request_are_capped(start_proxy: ProxyFactory, stack: ExitStack) -> None:
    from .stubs.tgi_upstream import TGIStub

    tgi = TGIStub()
    url = start_proxy({"targets": {"default": "t", "t": {"type": "tgi", "url": stack.enter_context(serve(tgi.app())).url,
                                                         "prompter": "chatml"}}, "server": {"max_fanout": 16}}).url
    refused = http.post(url + "/v1/completions", json={"model": "m", "prompt": [f"p{i}" for i in range(20)], "n": 2})
    assert refused.status_code == 400 and "server.max_fanout" in refused.json()["error"]["message"]
    assert "40 calls" in refused.json()["error"]["message"] and tgi.seen == []
    ok = http.post(url + "/v1/completions", json={"model": "m", "prompt": [f"p{i}" for i in range(8)], "n": 2})
    assert ok.status_code == 200 and len(ok.json()["choices"]) == 16


def test_f5_connections_to_a_target_are_capped_and_idle_ones_closed(start_proxy: ProxyFactory) -> None:
    def slow(request: bytes) -> list[bytes]:
        time.sleep(0.2)
        return [ok(b'{"data": []}')]

    with raw_server(slow) as (port, stats):
        url = start_proxy({"targets": {"default": "a", "a": {"url": f"http://127.0.0.1:{port}", "max_connections": 2}},
                           "dataset": {"sink": "none"}}).url
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda i: http.post(url + "/v1/embeddings", json={"input": str(i)}), range(8)))
        assert [a.status_code for a in answers] == [200] * 8
        assert stats["connections"] == 2 and stats["requests"] == 8

    async def idle_ones_are_closed() -> None:
        with raw_server(lambda request: [ok(b"{}")]) as (port, _):
            client = H1Client(idle=0.2)
            calls = [client.send("POST", f"http://127.0.0.1:{port}/", [], b"{}", timeout=5, connect_timeout=2, target="t")
                     for _ in range(5)]
            for resp in await asyncio.gather(*calls):
                await resp.read()
                await resp.aclose()
            assert client.open_connections() == 5
            await asyncio.sleep(0.5)
            assert client.open_connections() == 0
            await client.aclose()

    asyncio.run(idle_ones_are_closed())


# --------------------------------------------------------------------------------------------- review page (F14)


def test_f14_logging_out_ends_the_session_not_only_the_cookie(stack: ExitStack, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from .dataset_kit import sample, start_review_proxy
    from .test_ui import csrf, log_in

    sample(tmp_path / "datasets")
    url = str(start_review_proxy(stack, tmp_path, monkeypatch).url)
    with httpx.Client(base_url=url) as browser:
        assert log_in(browser).status_code == 303
        session = browser.cookies["mooltiproxy_ui"]
        assert browser.get("/ui/threads").status_code == 200
        assert browser.post("/ui/logout", data={"csrf": csrf(browser)}).status_code == 303
    copied = httpx.get(url + "/ui/threads", cookies={"mooltiproxy_ui": session})  # a copy of the cookie, kept from before
    assert copied.status_code == 303 and copied.headers["location"].startswith("/ui/login")
    with httpx.Client(base_url=url) as again:  # logging in again gives a new session that works
        log_in(again)
        assert again.get("/ui/threads").status_code == 200


# ------------------------------------------------------------------------------------------------ metrics (F6)


def test_f6_metrics_are_labelled_by_host_and_route_never_by_path(openai_stub: tuple[Any, str], start_proxy: ProxyFactory) -> None:
    host = openai_stub[1].split("://", 1)[1]
    url = start_proxy({"dynamic": {host: {"scheme": "http"}}}).url
    for i in range(300):
        http.post(f"{url}/{host}/v1/files/{i}/content", json={})
    http.post(f"{url}/{host}/v1/chat/completions", json=BODY)
    series = [line for line in http.get(url + "/metrics").text.splitlines() if line.startswith("mooltiproxy_requests_total{")]
    assert any('route="other"' in line and f'target="{host}"' in line and line.endswith(" 300") for line in series)
    assert len(series) <= 3, series
    # However many label values arrive, one process keeps a bounded number of series.
    metrics = Metrics(None)
    for i in range(MAX_SERIES * 3):
        metrics.request(f"t{i}", "/v1/chat/completions", 200, 1.0, 2.0)
    assert len(metrics.requests) <= MAX_SERIES + 1 and metrics.requests[("(other)", "(other)", "200")] == MAX_SERIES * 2
