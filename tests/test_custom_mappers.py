"""Custom mappers as users write them: the README's example run for real, and what a failing mapper does."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mooltiproxy import create_app, load
from mooltiproxy.errors import ConfigError

from .conftest import KEY, ROOT, http
from .servers import serve


def readme_example(name: str) -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"<!-- example: {re.escape(name)} -->\n```\w+\n(.*?)```", text, re.S)
    assert m, f"README has no example for {name}"
    return m.group(1)


def toy_upstream(seen: list[Any]) -> Starlette:
    async def infer(request: Request) -> JSONResponse:
        body = await request.json()
        seen.append(body)
        return JSONResponse({"output": f"{len(body['text'])} characters in"})

    return Starlette(routes=[Route("/infer", infer, methods=["POST"])])


@pytest.fixture(autouse=True)
def master_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOOLTIPROXY_KEY", KEY)


def test_the_readme_mapper_example_works_as_written(tmp_path: Path) -> None:
    (tmp_path / "mappers").mkdir()
    (tmp_path / "mappers" / "my_mappers.py").write_text(readme_example("mappers/my_mappers.py"))
    seen: list[Any] = []
    with serve(toy_upstream(seen)) as upstream:
        config_text = readme_example("config.yaml").replace("http://127.0.0.1:9000", upstream.url)
        (tmp_path / "config.yaml").write_text(config_text)
        with serve(create_app(load(tmp_path / "config.yaml"))) as proxy:
            client = openai.OpenAI(base_url=proxy.url + "/v1", api_key=KEY, max_retries=0)
            answer = client.chat.completions.create(model="toy-1", messages=[{"role": "user", "content": "hello"}])
            assert seen[-1] == {"text": "user: hello\nassistant:", "max_length": 200}
            assert answer.choices[0].message.content == "22 characters in"
            assert answer.model == "toy-1" and answer.id.startswith("chatcmpl-") and answer.choices[0].finish_reason == "stop"
            with pytest.raises(openai.BadRequestError) as info:
                client.chat.completions.create(model="toy-1", messages=[])
            assert "'messages' is empty" in str(info.value)
            # A tool-call turn (an assistant message with no content) and its result are laid out, not a 502.
            calls = [{"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}]
            client.chat.completions.create(model="toy-1", messages=[
                {"role": "user", "content": "Weather?"}, {"role": "assistant", "content": None, "tool_calls": calls},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"}])
            assert seen[-1]["text"] == ('user: Weather?\nassistant:  [called weather({"city": "Oslo"})]\ntool: sunny\nassistant:')
            # The route has no stream mapper: a stream request gets the whole answer as a stream, not JSON.
            chunks = list(client.chat.completions.create(model="toy-1", messages=[{"role": "user", "content": "hi"}], stream=True,
                                                         stream_options={"include_usage": True}))
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "19 characters in"
            assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


async def _async_stream(url: str) -> str:
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    stream = await client.chat.completions.create(model="toy-1", messages=[{"role": "user", "content": "hey"}], stream=True)
    text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
    await client.close()
    return text


def test_check_notes_a_route_without_a_stream_mapper(tmp_path: Path) -> None:
    (tmp_path / "mappers").mkdir()
    (tmp_path / "mappers" / "my_mappers.py").write_text(readme_example("mappers/my_mappers.py"))
    (tmp_path / "config.yaml").write_text(readme_example("config.yaml"))
    result = subprocess.run([sys.executable, "-m", "mooltiproxy", "check", "--config", str(tmp_path / "config.yaml")],
                            env={**os.environ, "MOOLTIPROXY_KEY": KEY}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "note: targets.toy.routes./v1/chat/completions: no stream mapper" in result.stdout


def test_the_readme_backend_in_one_file_works_as_written(tmp_path: Path) -> None:
    (tmp_path / "mappers").mkdir()
    (tmp_path / "mappers" / "toy.py").write_text(readme_example("mappers/toy.py"))
    seen: list[Any] = []
    with serve(toy_upstream(seen)) as upstream:
        (tmp_path / "config.yaml").write_text(readme_example("config.yaml (toy type)").replace("http://127.0.0.1:9000", upstream.url))
        with serve(create_app(load(tmp_path / "config.yaml"))) as proxy:
            client = openai.OpenAI(base_url=proxy.url + "/v1", api_key=KEY, max_retries=0)
            answer = client.chat.completions.create(model="toy-1", messages=[{"role": "user", "content": "hello"}])
            assert answer.choices[0].message.content == "22 characters in"
            assert seen[-1] == {"text": "user: hello\nassistant:", "max_length": 50}  # the target's option
            assert asyncio.run(_async_stream(proxy.url)) == "20 characters in"
    # Its options are checked like a built-in type's.
    (tmp_path / "config.yaml").write_text("targets:\n  t: {type: toy, url: http://127.0.0.1:9, options: {max_length: 0, colour: 1}}\n")
    with pytest.raises(ConfigError) as info:
        load(tmp_path / "config.yaml")
    assert info.value.problems == ["targets.t.options.max_length: must be at least 1, not 0",
                                   "targets.t.options.colour: unknown option for type toy; its options: max_length"]


def test_an_installed_package_registers_a_backend_through_the_entry_point(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "toy_backends").mkdir(parents=True)
    (site / "toy_backends" / "__init__.py").write_text(readme_example("mappers/toy.py"))
    dist = site / "toy_backends-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-backends\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[mooltiproxy.backends]\ntoy = toy_backends:BACKEND\n")
    (tmp_path / "config.yaml").write_text("targets:\n  default: t\n  t: {type: toy, url: http://127.0.0.1:9}\n")
    result = subprocess.run([sys.executable, "-m", "mooltiproxy", "check", "--config", str(tmp_path / "config.yaml")],
                            env={**os.environ, "PYTHONPATH": str(site), "MOOLTIPROXY_KEY": KEY}, capture_output=True, text=True,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Targets: t (toy)" in result.stdout
    types = subprocess.run([sys.executable, "-m", "mooltiproxy", "serve", "--help"], env={**os.environ, "PYTHONPATH": str(site)},
                           capture_output=True, text=True).stdout
    assert "toy" in " ".join(types.split())


def test_mapper_code_is_read_again_when_the_config_reloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mappers").mkdir()
    (tmp_path / "mappers" / "__init__.py").write_text("")
    (tmp_path / "mappers" / "wording.py").write_text("PREFIX = 'first'\n")
    (tmp_path / "mappers" / "house.py").write_text(  # a relative import within the config's own mapper package
        "from . import wording\n\ndef answer(body, ctx):\n    return {'said': wording.PREFIX + ': ' + body['output']}\n")
    seen: list[Any] = []
    with serve(toy_upstream(seen)) as upstream:
        path = tmp_path / "config.yaml"
        path.write_text(f"targets:\n  default: t\n  t:\n    url: {upstream.url}\n    routes:\n      /infer: {{answer: house.answer}}\n")
        with serve(create_app(load(path))) as proxy:
            assert http.post(proxy.url + "/infer", json={"text": "abc"}).json() == {"said": "first: 3 characters in"}
            (tmp_path / "mappers" / "wording.py").write_text("PREFIX = 'second'\n")
            assert http.post(proxy.url + "/admin/reload").status_code == 200
            assert http.post(proxy.url + "/infer", json={"text": "abc"}).json() == {"said": "second: 3 characters in"}


def test_a_failing_mapper_is_a_502_naming_it_with_the_traceback_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "mappers").mkdir()
    (tmp_path / "mappers" / "broken.py").write_text(
        "def request(body, ctx):\n    return body\n\n"
        "async def answer(body, ctx):\n    return body['no_such_key']\n"
    )
    (tmp_path / "config.yaml").write_text(
        "targets:\n  default: t\n  t:\n    url: URL\n    routes:\n      /infer: {request: broken.request, answer: broken.answer}\n"
    )
    seen: list[Any] = []
    with serve(toy_upstream(seen)) as upstream:
        path = tmp_path / "config.yaml"
        path.write_text(path.read_text().replace("URL", upstream.url))
        with serve(create_app(load(path))) as proxy, caplog.at_level("ERROR", logger="mooltiproxy"):
            r = http.post(proxy.url + "/infer", json={"text": "x"})
    assert r.status_code == 502
    error = r.json()["error"]
    assert error["code"] == "mapper_failed"
    assert "The mapper 'broken.answer' failed with KeyError: 'no_such_key'" in error["message"]
    logged = [rec for rec in caplog.records if rec.name == "mooltiproxy" and "broken.answer" in rec.getMessage()]
    assert logged and logged[0].exc_info is not None
