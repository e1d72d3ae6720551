"""Starting with no config file: ``serve --target URL`` and ``mooltiproxy init``, as a newcomer types them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai

from mooltiproxy import load
from mooltiproxy.dataset.sinks import read_jsonl

from .conftest import KEY
from .servers import free_port, serve
from .stubs.openai_upstream import OpenAIStub
from .stubs.tgi_upstream import TGIStub


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mooltiproxy", *args], capture_output=True, text=True, cwd=cwd, timeout=60,
                          env={**os.environ, "MOOLTIPROXY_KEY": KEY})


@contextmanager
def serving(*args: str, cwd: Path) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mooltiproxy", "serve", "--port", str(port), *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "MOOLTIPROXY_KEY": KEY})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url + "/health")
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.stdout else ""
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out


def test_serve_target_runs_with_no_config_file_and_records(tmp_path: Path) -> None:
    stub = OpenAIStub(name="quick")
    with serve(stub.app()) as upstream, serving("--target", upstream.url, "--session", "first-day", cwd=tmp_path) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        answer = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content == "quick says: hi"
    (record,) = read_jsonl(tmp_path / "datasets" / "first-day.jsonl")
    assert record["meta"]["target"] == "main" and record["conversations"][-1]["value"] == "quick says: hi"


def test_serve_target_with_a_type_and_a_prompter(tmp_path: Path) -> None:
    tgi = TGIStub()
    with serve(tgi.app()) as upstream, serving("--target", upstream.url, "--type", "tgi", "--prompter", "llama2-chat",
                                                cwd=tmp_path) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        answer = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content == "Hello there, friend."
    assert tgi.seen[-1]["inputs"] == "[INST] hi [/INST]"  # (the server adds the <s> itself)


def test_serve_target_flags_are_checked(tmp_path: Path) -> None:
    result = run("serve", "--target", "localhost:5000", cwd=tmp_path)
    assert result.returncode == 1
    assert "--target: must be an http:// or https:// URL with a host" in result.stderr
    result = run("serve", "--type", "tgi", cwd=tmp_path)
    assert result.returncode == 1 and "--type: describes the target given with --target URL; add --target" in result.stderr
    result = run("serve", "--target", "http://127.0.0.1:9", "--type", "tgi", cwd=tmp_path)
    assert result.returncode == 1 and "--prompter: type tgi takes one prompt string" in result.stderr
    result = run("serve", "--target", "http://127.0.0.1:9", "--type", "tgo", cwd=tmp_path)
    assert result.returncode == 1 and "did you mean 'tgi'" in result.stderr
    assert "--type: must be one of anthropic, kobold, llamacpp, ollama, openai, tei, tgi" in result.stderr


def test_init_writes_the_template_and_will_not_overwrite(tmp_path: Path) -> None:
    result = run("init", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    written = (tmp_path / "config.yaml").read_text()
    assert written.startswith("# mooltiproxy configuration.") and "mooltiproxy serve --config config.yaml" in result.stdout
    assert run("check", "--config", "config.yaml", cwd=tmp_path).returncode == 0
    again = run("init", cwd=tmp_path)
    assert again.returncode == 1 and "config.yaml: already exists; edit it, or run init with --force" in again.stderr
    (tmp_path / "config.yaml").write_text("# mine\n")
    assert run("init", "--force", cwd=tmp_path).returncode == 0
    assert (tmp_path / "config.yaml").read_text() == written


def test_init_with_a_target_is_ready_to_serve(tmp_path: Path) -> None:
    tgi = TGIStub()
    with serve(tgi.app()) as upstream:
        result = run("init", "--target", upstream.url, "--type", "tgi", "--prompter", "llama2-chat", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        config = load(tmp_path / "config.yaml", environ={})
        assert config.default_target == "main" and config.targets["main"].type == "tgi"
        assert "# Targets are the servers" in (tmp_path / "config.yaml").read_text()  # still the whole commented template
        with serving("--config", "config.yaml", cwd=tmp_path) as url:
            answer = httpx.post(url + "/v1/chat/completions", headers={"authorization": f"Bearer {KEY}"},
                                json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
            assert answer.json()["choices"][0]["message"]["content"] == "Hello there, friend."
