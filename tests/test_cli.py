"""The ``mooltiproxy`` command as a user runs it: check and serve, in real subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai

from .conftest import KEY, ROOT, http
from .servers import free_port, serve
from .stubs.openai_upstream import OpenAIStub


def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mooltiproxy", *args], capture_output=True, text=True, cwd=cwd, timeout=60,
        env={**os.environ, "MOOLTIPROXY_KEY": KEY, **(env or {})},
    )


def test_check_passes_on_the_template() -> None:
    result = run("check", "--config", str(ROOT / "config.template.yaml"))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_check_lists_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "config.yaml"
    bad.write_text(
        "server: {port: eighty}\n"
        "targets:\n"
        "  default: locl\n"
        "  local: {url: 'http://127.0.0.1:8080', type: tgj}\n"
        "  gpt: {url: 'https://api.openai.com', api_key_env: SURELY_UNSET_KEY,\n"
        "        routes: {/v1/chat/completions: {request: my_mappers.missing}}}\n"
    )
    result = run("check", "--config", str(bad))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[0] == f"{bad} has 5 problems:"
    assert "  server.port: must be a whole number, not a string 'eighty'" in lines
    assert any(line.startswith("  targets.default: no target named 'locl' (did you mean 'local'?)") for line in lines)
    assert any(line.startswith("  targets.local.type: must be one of anthropic, kobold, llamacpp, ollama, openai, tei, tgi")
               for line in lines)
    assert any(line.startswith("  targets.gpt.api_key_env: the environment variable SURELY_UNSET_KEY is not set") for line in lines)
    assert any("targets.gpt.routes[\"/v1/chat/completions\"].request: no mapper module 'my_mappers'" in line for line in lines)


def test_check_finds_a_mapper_beside_the_config(tmp_path: Path) -> None:
    (tmp_path / "mappers").mkdir()
    (tmp_path / "mappers" / "house.py").write_text("def req(body, ctx):\n    return body\n\ndef three(a, b, c):\n    return a\n")
    cfg = tmp_path / "config.yaml"
    head = "targets:\n  a:\n    url: http://127.0.0.1:9\n    routes:\n      /v1/chat/completions: "
    cfg.write_text(head + "{request: house.req}\n")
    assert run("check", "--config", str(cfg)).returncode == 0
    cfg.write_text(head + "{request: house.three, answer: house.nope}\n")
    result = run("check", "--config", str(cfg))
    assert result.returncode == 1
    assert "must take two arguments (body, ctx)" in result.stderr
    assert "module 'house' has no function 'nope'; it has: req, three" in result.stderr


def test_serve_runs_the_proxy(tmp_path: Path) -> None:
    stub = OpenAIStub(name="served")
    with serve(stub.app()) as upstream:
        port = free_port()
        cfg = tmp_path / "config.yaml"
        cfg.write_text(f"targets:\n  default: a\n  a: {{url: '{upstream.url}'}}\n")
        proc = subprocess.Popen(
            [sys.executable, "-m", "mooltiproxy", "serve", "--config", str(cfg), "--port", str(port)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "MOOLTIPROXY_KEY": KEY},
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 20
            while True:
                try:
                    if http.get(base + "/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline and proc.poll() is None, "proxy did not start"
                time.sleep(0.1)
            client = openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0)
            answer = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
            assert answer.choices[0].message.content == "served says: hi"
        finally:
            proc.terminate()
            out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert "POST /v1/chat/completions status=200 target=a" in out


def test_serve_refuses_a_broken_config(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("targets: {a: {url: nope}}\n")
    result = run("serve", "--config", str(cfg))
    assert result.returncode == 1
    assert "targets.a.url: must be an http:// or https:// URL" in result.stderr
