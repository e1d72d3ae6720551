"""Custom mappers as users write them: the README's example run for real, and what a failing mapper does."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mooltiproxy import create_app, load

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
            assert answer.model == "toy-1"
            with pytest.raises(openai.BadRequestError) as info:
                client.chat.completions.create(model="toy-1", messages=[])
            assert "'messages' must be a non-empty list." in str(info.value)


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
