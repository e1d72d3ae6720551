"""The door, on real sockets: keys, bans, allow and deny lists, client addresses, limits, TLS, CORS."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from mooltiproxy import create_app, parse
from mooltiproxy.errors import ConfigError

from .conftest import AUTH, KEY, Clock, ProxyFactory, http, write_certificates
from .servers import read_answer
from .stubs.openai_upstream import OpenAIStub

Stub = tuple[OpenAIStub, str]
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
WRONG = "sk-guessing-0000"


def post(url: str, key: str | None = None, client: httpx.Client | None = None, **headers: str) -> httpx.Response:
    h = dict(headers)
    if key is not None:
        h["authorization"] = f"Bearer {key}"
    return (client or httpx).post(url + "/v1/chat/completions", json=BODY, headers=h)  # type: ignore[attr-defined, no-any-return]


def config(upstream: str, **sections: Any) -> dict[str, Any]:
    return {"targets": {"default": "a", "a": {"url": upstream}, "b": {"url": upstream}}, **sections}


# ------------------------------------------------------------------------------------------ keys


def test_key_required_in_either_header(openai_stub: Stub, start_proxy: ProxyFactory) -> None:
    url = start_proxy(config(openai_stub[1])).url
    missing = post(url)
    assert missing.status_code == 401
    error = missing.json()["error"]
    assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error"
    assert error["message"].startswith("No API key was sent.")
    wrong = post(url, WRONG)
    assert wrong.status_code == 401 and WRONG not in wrong.text and wrong.json()["error"]["message"].startswith("Incorrect API key.")
    assert post(url, KEY).status_code == 200
    assert httpx.post(url + "/v1/chat/completions", json=BODY, headers={"x-api-key": KEY}).status_code == 200
    assert httpx.get(url + "/health").status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key=WRONG, max_retries=0).models.list()


def test_master_key_must_be_set(tmp_path: Path) -> None:
    cfg = parse({}, environ={}, base_dir=tmp_path)
    with pytest.raises(ConfigError) as info:
        create_app(cfg)
    assert info.value.problems[0].startswith("auth.master_key_env: the environment variable MOOLTIPROXY_KEY is not set")
    assert "mooltiproxy keygen" in info.value.problems[0]
    env = {k: v for k, v in os.environ.items() if k != "MOOLTIPROXY_KEY"}
    result = subprocess.run([sys.executable, "-m", "mooltiproxy", "serve", "--port", "1"], capture_output=True, text=True,
                            cwd=tmp_path, env=env, timeout=60)
    assert result.returncode == 1 and "export MOOLTIPROXY_KEY=$(mooltiproxy keygen)" in result.stderr
    keygen = subprocess.run([sys.executable, "-m", "mooltiproxy", "keygen"], capture_output=True, text=True, timeout=60)
    assert keygen.returncode == 0 and len(keygen.stdout.strip()) >= 40


def test_named_keys_and_their_targets(openai_stub: Stub, start_proxy: ProxyFactory, caplog: pytest.LogCaptureFixture) -> None:
    url = start_proxy(config(openai_stub[1], auth={"keys": {"alice": {"key_env": "ALICE_KEY", "targets": ["a"]},
                                                             "bob": {"key_env": "BOB_KEY"}}}),
                      env={"ALICE_KEY": "alice-secret-key", "BOB_KEY": "bob-secret-key"}).url
    with caplog.at_level("INFO", logger="mooltiproxy.access"):
        assert post(url, "alice-secret-key").status_code == 200
        denied = post(url, "alice-secret-key", target="b")
        assert post(url, "bob-secret-key", target="b").status_code == 200
        time.sleep(0.05)
    assert denied.status_code == 403
    assert denied.json()["error"]["message"] == "The key 'alice' may not use target 'b'; it may use: a."
    lines = [r.getMessage() for r in caplog.records if r.name == "mooltiproxy.access"]
    assert any("key=alice" in line for line in lines) and any("key=bob" in line for line in lines)
    assert not any("secret" in line for line in lines)
    listed = httpx.get(url + "/v1/models", headers={"authorization": "Bearer alice-secret-key"}).json()
    assert [m["id"] for m in listed["data"]] == ["alpha-model"]  # a passes /v1/models through
    # A key that may not use the default target lists what it may use, rather than being refused.
    bound = start_proxy(config(openai_stub[1], auth={"keys": {"carol": {"key_env": "CAROL_KEY", "targets": ["b"]}}}),
                        env={"CAROL_KEY": "carol-secret-key"}).url
    own = httpx.get(bound + "/v1/models", headers={"authorization": "Bearer carol-secret-key"})
    assert own.status_code == 200 and [m["id"] for m in own.json()["data"]] == ["b"]
    admin = httpx.get(url + "/admin/bans", headers={"authorization": "Bearer bob-secret-key"})
    assert admin.status_code == 401 and "master key" in admin.json()["error"]["message"]  # as a wrong key would


def test_keys_are_compared_in_constant_time(openai_stub: Stub, start_proxy: ProxyFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    import hmac

    import mooltiproxy.guard.keys

    calls: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(mooltiproxy.guard.keys.hmac, "compare_digest", spy)
    url = start_proxy(config(openai_stub[1], auth={"keys": {"k": {"key_env": "K2"}}}), env={"K2": "another-key-123456"}).url
    post(url, WRONG)
    post(url, "x")
    # every configured key compared, as fixed-length digests, whatever the length of what was sent
    assert calls == [(32, 32), (32, 32), (32, 32), (32, 32)]


# ------------------------------------------------------------------------------------------ bans


def test_ban_after_failures_then_expiry(openai_stub: Stub, start_proxy: ProxyFactory, clock: Clock) -> None:
    stub = openai_stub[0]
    url = start_proxy(config(openai_stub[1], auth={"max_failures": 3, "window": 60, "ban": 2}), clock=clock).url
    assert [post(url, WRONG).status_code for _ in range(3)] == [401, 401, 401]
    before = len(stub.seen)
    banned = post(url, KEY)
    assert banned.status_code == 403
    error = banned.json()["error"]
    assert error["code"] == "address_banned" and "banned for another 2 s" in error["message"]
    assert banned.headers["retry-after"] == "2"
    assert len(stub.seen) == before  # nothing went upstream
    clock.advance(1.5)
    assert post(url, KEY).status_code == 403
    clock.advance(0.6)
    assert post(url, KEY).status_code == 200


def test_failures_decay_and_success_does_not_erase_them(openai_stub: Stub, start_proxy: ProxyFactory, clock: Clock) -> None:
    url = start_proxy(config(openai_stub[1], auth={"max_failures": 3, "window": 1, "ban": 30}), clock=clock).url
    post(url, WRONG)
    post(url, WRONG)
    clock.advance(1.1)  # both have aged out of the window
    post(url, WRONG)
    assert post(url, KEY).status_code == 200
    post(url, WRONG)
    assert post(url, KEY).status_code == 200  # two in the window: not yet
    post(url, WRONG)  # the third within the window, the success between them erased nothing
    assert post(url, KEY).status_code == 403


def test_whitelist_is_never_banned_but_needs_the_key(openai_stub: Stub, start_proxy: ProxyFactory) -> None:
    url = start_proxy(config(openai_stub[1], auth={"max_failures": 2, "whitelist": ["127.0.0.0/8"]})).url
    assert all(post(url, WRONG).status_code == 401 for _ in range(5))
    assert post(url, KEY).status_code == 200
    assert post(url).status_code == 401


def test_blacklist_refused_before_anything(openai_stub: Stub, start_proxy: ProxyFactory) -> None:
    url = start_proxy(config(openai_stub[1], auth={"blacklist": ["127.0.0.1/32"]})).url
    for r in (post(url, KEY), httpx.get(url + "/health")):
        assert r.status_code == 403 and r.json()["error"]["code"] == "address_blocked"


def test_ipv6(openai_stub: Stub, start_proxy: ProxyFactory) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    url = start_proxy(config(openai_stub[1], auth={"max_failures": 2, "ban": 60}), host="::1").url
    assert post(url, KEY).status_code == 200
    post(url, WRONG)
    post(url, WRONG)
    r = post(url, KEY)
    assert r.status_code == 403 and "::1 is banned" in r.json()["error"]["message"]
    blocked = start_proxy(config(openai_stub[1], auth={"blacklist": ["::1/128"]}), host="::1").url
    assert post(blocked, KEY).status_code == 403


def test_bans_survive_a_restart_and_the_cli_lifts_them(openai_stub: Stub, start_proxy: ProxyFactory, tmp_path: Path) -> None:
    cfg = config(openai_stub[1], auth={"max_failures": 1, "ban": 600})
    first = start_proxy(cfg)
    post(first.url, WRONG)
    assert post(first.url, KEY).status_code == 403
    second = start_proxy(cfg)  # same config folder, same state.db
    assert post(second.url, KEY).status_code == 403

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mooltiproxy", *args, "--config", str(tmp_path / "config.yaml"), "--url",
                               second.url], capture_output=True, text=True, timeout=60, env={**os.environ, "MOOLTIPROXY_KEY": KEY})

    listed = cli("bans")
    assert listed.returncode == 0 and listed.stdout.startswith("127.0.0.1\tbanned until ")
    assert cli("unban", "10.1.2.3").returncode == 1
    lifted = cli("unban", "127.0.0.1")
    assert lifted.returncode == 0 and "Unbanned 127.0.0.1." in lifted.stdout
    assert post(second.url, KEY).status_code == 200
    assert cli("bans").stdout.strip() == "No address is banned."


# ------------------------------------------------------------------------------- client address


def _from(address: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address))


def test_forwarded_for_believed_only_from_trusted_proxies(openai_stub: Stub, start_proxy: ProxyFactory) -> None:
    url = start_proxy(config(openai_stub[1], server={"trusted_proxies": ["127.0.0.1/32"]},
                             auth={"blacklist": ["10.9.9.9/32"]})).url
    spoofer = _from("127.0.0.2")
    # From an untrusted peer the header changes nothing: it is neither blocked as 10.9.9.9 nor let off as someone else.
    assert post(url, KEY, spoofer, **{"x-forwarded-for": "10.9.9.9"}).status_code == 200
    assert post(url, KEY, spoofer, **{"x-forwarded-for": "127.0.0.3"}).status_code == 200
    # From the trusted proxy it is believed, read from the right past trusted hops.
    assert post(url, KEY, _from("127.0.0.1"), **{"x-forwarded-for": "10.9.9.9"}).status_code == 403
    assert post(url, KEY, _from("127.0.0.1"), **{"x-forwarded-for": "10.9.9.9, 127.0.0.1"}).status_code == 403
    assert post(url, KEY, _from("127.0.0.1"), **{"x-forwarded-for": "10.9.9.9, 10.1.1.1"}).status_code == 200


def test_spoofed_header_cannot_dodge_a_ban(openai_stub: Stub, start_proxy: ProxyFactory) -> None:
    url = start_proxy(config(openai_stub[1], auth={"max_failures": 2})).url
    attacker = _from("127.0.0.2")
    for i in range(2):
        post(url, WRONG, attacker, **{"x-forwarded-for": f"10.0.0.{i}"})
    assert post(url, KEY, attacker, **{"x-forwarded-for": "10.0.0.99"}).status_code == 403
    assert post(url, KEY, _from("127.0.0.1")).status_code == 200  # a different peer is not affected


# ------------------------------------------------------------------------------------------ limits


def test_slow_header_client_is_cut_off_while_others_are_served(openai_stub: Stub, start_proxy: ProxyFactory) -> None:
    proxy = start_proxy(config(openai_stub[1], server={"header_timeout": 1}))
    slow = socket.create_connection(("127.0.0.1", proxy.port))
    started = time.monotonic()
    request = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
    got = b""
    slow.settimeout(0.2)
    for byte in request * 3:
        try:
            slow.send(bytes([byte]))
        except OSError:
            break
        assert post(proxy.url, KEY).status_code == 200  # everyone else is served meanwhile
        try:
            got += slow.recv(4096)
        except TimeoutError:
            continue
        if got:
            break
    elapsed = time.monotonic() - started
    got = read_answer(slow, got=got)
    assert got.startswith(b"HTTP/1.1 408 ") and b"server.header_timeout" in got
    assert 0.9 < elapsed < 5


def test_body_deadline(openai_stub: Stub, start_proxy: ProxyFactory) -> None:
    proxy = start_proxy(config(openai_stub[1], server={"body_timeout": 0.5}))
    sock = socket.create_connection(("127.0.0.1", proxy.port))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer %s\r\ncontent-length: 100\r\n\r\n{"
                 % KEY.encode())
    answer = read_answer(sock)
    assert answer.startswith(b"HTTP/1.1 408 ") and b"server.body_timeout" in answer


def test_connections_per_address_are_capped(openai_stub: Stub, start_proxy: ProxyFactory) -> None:
    proxy = start_proxy(config(openai_stub[1], server={"max_connections_per_ip": 3}))
    held = [socket.create_connection(("127.0.0.1", proxy.port)) for _ in range(3)]
    extra = socket.create_connection(("127.0.0.1", proxy.port))
    answer = read_answer(extra)
    assert answer.startswith(b"HTTP/1.1 429 ") and b"server.max_connections_per_ip" in answer
    for s in held:
        s.close()
    time.sleep(0.2)
    assert post(proxy.url, KEY).status_code == 200


def test_oversized_body_sent_in_chunks_is_refused_before_it_is_all_sent(openai_stub: Stub, start_proxy: ProxyFactory) -> None:
    proxy = start_proxy(config(openai_stub[1], server={"max_body": "4KiB"}))
    sock = socket.create_connection(("127.0.0.1", proxy.port))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer %s\r\n"
                 b"transfer-encoding: chunked\r\n\r\n" % KEY.encode())
    sock.settimeout(0.2)
    answer = b""
    sent = 0
    while not answer and sent < 1000:
        sock.sendall(b"400\r\n" + b"x" * 1024 + b"\r\n")  # 1 KiB chunks, no end in sight
        sent += 1
        with contextlib.suppress(TimeoutError):
            answer = sock.recv(4096)
    answer = read_answer(sock, got=answer)
    assert answer.startswith(b"HTTP/1.1 413 ") and b"server.max_body" in answer
    assert sent <= 8  # refused a few KiB in, not after the megabyte the client meant to send


# -------------------------------------------------------------------------------------- TLS, CORS


def test_https_with_a_certificate_made_at_test_time(openai_stub: Stub, start_proxy: ProxyFactory, tmp_path: Path) -> None:
    write_certificates(tmp_path)
    proxy = start_proxy(config(openai_stub[1], server={"tls": {"certfile": "cert.pem", "keyfile": "key.pem"}}))
    assert proxy.url.startswith("https://")
    with httpx.Client(verify=ssl.create_default_context(cafile=str(tmp_path / "ca.pem")), headers=AUTH) as client:
        assert client.post(proxy.url + "/v1/chat/completions", json=BODY).json()["choices"][0]["message"]["content"] == "alpha says: hi"
    trusted = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    with httpx.Client(verify=trusted) as tls_client:
        sdk = openai.OpenAI(base_url=proxy.url + "/v1", api_key=KEY, http_client=tls_client)
        assert sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": "tls"}]).choices[0].message.content
    with pytest.raises(httpx.ConnectError):
        httpx.get(proxy.url + "/health")  # not trusted without the CA


def test_cors_preflight(openai_stub: Stub, start_proxy: ProxyFactory) -> None:
    stub = openai_stub[0]
    url = start_proxy(config(openai_stub[1], server={"cors_origins": ["https://app.example.com"]})).url
    preflight = {"origin": "https://app.example.com", "access-control-request-method": "POST",
                 "access-control-request-headers": "authorization, content-type"}
    before = len(stub.seen)
    ok = httpx.options(url + "/v1/chat/completions", headers=preflight)
    assert ok.status_code == 204
    assert ok.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "POST" in ok.headers["access-control-allow-methods"]
    assert ok.headers["access-control-allow-headers"] == "authorization, content-type"
    refused = httpx.options(url + "/v1/chat/completions", headers={**preflight, "origin": "https://evil.example"})
    assert refused.status_code == 403 and "server.cors_origins" in refused.json()["error"]["message"]
    assert len(stub.seen) == before  # the upstream never saw a preflight
    actual = post(url, KEY, origin="https://app.example.com")
    assert actual.headers["access-control-allow-origin"] == "https://app.example.com"
    closed = start_proxy(config(openai_stub[1])).url
    assert httpx.options(closed + "/v1/chat/completions", headers=preflight).status_code == 403


# --------------------------------------------------------------------------------------- secrets


def test_no_secret_in_logs_or_files(openai_stub: Stub, start_proxy: ProxyFactory, tmp_path: Path,
                                    caplog: pytest.LogCaptureFixture) -> None:
    upstream_key = "sk-upstream-secret-77"
    with caplog.at_level("DEBUG"):
        url = start_proxy({"targets": {"default": "a", "a": {"url": openai_stub[1], "api_key_env": "UP"}},
                           "auth": {"max_failures": 2}}, env={"UP": upstream_key}).url
        post(url, KEY)
        http.post(url + "/v1/chat/completions?api_key=sk-in-query-secret", json=BODY)
        post(url, WRONG)
        post(url, WRONG)
        post(url, KEY)
        time.sleep(0.1)
    secrets = [KEY, WRONG, upstream_key, "sk-in-query-secret"]
    # What the proxy and its server logged (the test's own HTTP client logs the URLs it calls).
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith(("mooltiproxy", "uvicorn", "aiohttp")))
    assert "banned 127.0.0.1" in logged
    for secret in secrets:
        assert secret not in logged
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "config.yaml"]
    assert files, "the dataset folder holds the ban ledger at least"
    for path in files:
        data = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in data, f"{secret} found in {path}"
