"""Local recording mode (``auth.mode: passthrough``): a frontend's one key field holds the backend's key;
the proxy asks for none, forwards that key to targets that say so, records as usual, and refuses to run
where anyone could reach it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from mooltiproxy.dataset.sinks import read_jsonl

from .conftest import KEY, ProxyFactory
from .stubs.openai_upstream import OpenAIStub

Stub = tuple[OpenAIStub, str]
BACKEND_KEY = "tabby-backend-key-5521"


def local(upstream: str, **more: Any) -> dict[str, Any]:
    return {"auth": {"mode": "passthrough"},
            "targets": {"default": "tabby", "tabby": {"url": upstream, "forward_client_key": True}}, **more}


def test_the_clients_key_reaches_the_backend_and_the_exchange_is_recorded(openai_stub: Stub, start_proxy: ProxyFactory,
                                                                          tmp_path: Path) -> None:
    server = start_proxy(local(openai_stub[1]), env={"MOOLTIPROXY_KEY": ""})
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=BACKEND_KEY, max_retries=0)
    answer = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hello"}])
    assert answer.choices[0].message.content == "alpha says: hello"
    assert openai_stub[0].seen[-1].headers["authorization"] == f"Bearer {BACKEND_KEY}"
    stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "again"}], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "alpha says: again"
    deadline = time.monotonic() + 5
    found: list[dict[str, Any]] = []
    while len(found) < 2 and time.monotonic() < deadline:
        found = [r for f in (tmp_path / "datasets").glob("*.jsonl") for r in read_jsonl(f)]
        time.sleep(0.05)
    assert sorted(r["conversations"][0]["value"] for r in found) == ["again", "hello"]
    for path in tmp_path.rglob("*"):  # the forwarded key is in no record, no state file
        if path.is_file():
            assert BACKEND_KEY.encode() not in path.read_bytes(), path


def test_a_target_without_forward_client_key_keeps_its_own(openai_stub: Stub, openai_stub2: Stub, start_proxy: ProxyFactory) -> None:
    config = local(openai_stub[1])
    config["targets"]["other"] = {"url": openai_stub2[1], "api_key_env": "OTHER_KEY"}
    server = start_proxy(config, env={"OTHER_KEY": "sk-other-own"})
    r = httpx.post(server.url + "/v1/chat/completions", headers={"authorization": f"Bearer {BACKEND_KEY}", "target": "other"},
                   json={"model": "m", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 200
    assert openai_stub2[0].seen[-1].headers["authorization"] == "Bearer sk-other-own"
    # No key at all is fine too; the backend gets none.
    assert httpx.post(server.url + "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "x"}]}
                      ).status_code == 200
    assert "authorization" not in openai_stub[0].seen[-1].headers


def test_the_forwarded_key_is_never_logged(openai_stub: Stub, tmp_path: Path) -> None:
    from .conftest import proxy_process

    proc, url = proxy_process(tmp_path, local(openai_stub[1]), "--log-level", "debug", env={"MOOLTIPROXY_KEY": ""})
    try:
        r = httpx.post(url + "/v1/chat/completions?x=1", headers={"authorization": f"Bearer {BACKEND_KEY}"},
                       json={"model": "m", "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 200
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert "status=200 target=tabby key=client" in out
    assert BACKEND_KEY not in out


def test_the_master_key_still_opens_the_admin_endpoints(openai_stub: Stub, start_proxy: ProxyFactory) -> None:
    server = start_proxy(local(openai_stub[1]))
    assert httpx.get(server.url + "/admin/bans", headers={"authorization": f"Bearer {KEY}"}).status_code == 200
    refused = httpx.get(server.url + "/admin/bans", headers={"authorization": f"Bearer {BACKEND_KEY}"})
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "admin_only"
    # And the master key is never forwarded.
    httpx.post(server.url + "/v1/chat/completions", headers={"authorization": f"Bearer {KEY}"},
               json={"model": "m", "messages": [{"role": "user", "content": "x"}]})
    assert KEY not in str(openai_stub[0].seen[-1].headers)


def test_a_whitelist_admits_only_its_addresses(openai_stub: Stub, start_proxy: ProxyFactory) -> None:
    server = start_proxy(local(openai_stub[1], server={"trusted_proxies": ["127.0.0.1/32"]},
                               auth={"mode": "passthrough", "whitelist": ["192.168.1.0/24"]}))
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    assert httpx.post(server.url + "/v1/chat/completions", json=body, headers={"x-forwarded-for": "192.168.1.20"}).status_code == 200
    refused = httpx.post(server.url + "/v1/chat/completions", json=body, headers={"x-forwarded-for": "203.0.113.5"})
    assert refused.status_code == 403 and "203.0.113.5 is not on this proxy's auth.whitelist" in refused.json()["error"]["message"]


def cli(tmp_path: Path, config: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k != "MOOLTIPROXY_KEY"}
    return subprocess.run([sys.executable, "-m", "mooltiproxy", *args, "--config", str(tmp_path / "config.yaml")],
                          capture_output=True, text=True, timeout=60, env=env)


def test_passthrough_is_refused_on_every_interface_without_a_whitelist(tmp_path: Path) -> None:
    config = local("http://127.0.0.1:9", server={"host": "0.0.0.0"})
    for command in (["serve"], ["check"]):
        result = cli(tmp_path, config, *command)
        assert result.returncode == 1
        assert ("auth.mode: passthrough lets anyone who reaches the proxy use it without a key, so it runs only on a loopback "
                "address or with auth.whitelist naming its clients; server.host is 0.0.0.0.") in result.stderr
    result = cli(tmp_path, config, "serve", "--host", "0.0.0.0")
    assert result.returncode == 1 and "server.host is 0.0.0.0" in result.stderr
    config["auth"]["whitelist"] = ["10.0.0.0/8"]
    assert cli(tmp_path, config, "check").returncode == 0
    assert cli(tmp_path, local("http://127.0.0.1:9"), "check").returncode == 0  # loopback, no master key: fine


def test_forward_client_key_needs_passthrough() -> None:
    from mooltiproxy import parse
    from mooltiproxy.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        parse({"targets": {"a": {"url": "http://127.0.0.1:9", "forward_client_key": True}}}, environ={})
    assert info.value.problems == [
        "targets.a.forward_client_key: only auth.mode: passthrough forwards a client's key; with auth.mode: key the client's "
        "key is the proxy's own, which never leaves it"]
