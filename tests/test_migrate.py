"""Users of the original mooltiproxy come along: its config.yaml is recognised, and `mooltiproxy migrate`
writes the equivalent, which then serves the original's clients on their old paths."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import openai
import pytest
import yaml

from .conftest import KEY, ProxyFactory
from .servers import serve
from .stubs.openai_upstream import OpenAIStub
from .stubs.tgi_upstream import TGIStub

# A config in the original's format (its sections and keys, values made up for the test).
ORIGINAL = """\
system:
  ssl: false
  debug: true
  port: 8000
  timeout: 30
  masterkey: OLD-literal-master-key-1234
cerbere:
  max_tries: 4
  whitelist: [10.0.0.5]
  blacklist: []
targets:
  default: local
  cloud:
    url: {cloud}/v1
    envkey: CLOUD_KEY
    mapping:
      /models:
      /completions:
      /chat/completions:
  local:
    url: {tgi}
    preserveMethod: true
    key: OLD-literal-upstream-key-5678
    mapping:
      /info:
      /generate:
      /chat/completions:
        path: /generate
        in: chatReqOpenAItoTGI
        out: chatAnsTGItoOpenAI
        prompter: fromTemplate
        template: Chatty
      /completions:
        path: /generate
        in: textReqOpenAItoTGI
        out: textAnsTGItoOpenAI
      /house:
        path: /generate
        in: houseMapper
templates:
  Chatty:
    preprompt: "### SYSTEM:\\n"
    start: ""
    system: "\\n### SYSTEM:\\n"
    user: "\\n### HUMAN:\\n"
    assistant: "\\n### RESPONSE:\\n"
"""


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mooltiproxy", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def test_check_says_it_is_the_original_format_and_migrate_writes_one_that_serves_the_old_clients(
        tmp_path: Path, stack: ExitStack, start_proxy: ProxyFactory) -> None:
    cloud, tgi = OpenAIStub(name="cloud"), TGIStub()
    cloud_url, tgi_url = stack.enter_context(serve(cloud.app())).url, stack.enter_context(serve(tgi.app())).url
    old = tmp_path / "old.yaml"
    old.write_text(ORIGINAL.format(cloud=cloud_url, tgi=tgi_url))

    checked = cli("check", "--config", str(old), env={"MOOLTIPROXY_KEY": KEY})
    assert checked.returncode == 1
    assert "this is a config of the original mooltiproxy" in checked.stderr and f"mooltiproxy migrate {old}" in checked.stderr

    new = tmp_path / "new.yaml"
    migrated = cli("migrate", str(old), str(new))
    assert migrated.returncode == 0, migrated.stderr
    notes = migrated.stdout
    assert "export MOOLTIPROXY_KEY" in notes and "export LOCAL_API_KEY" in notes
    assert "targets.local.mapping./house.in: the mapper houseMapper has no built-in equivalent" in notes
    text = new.read_text()
    assert "OLD-literal" not in text and "OLD-literal" not in notes  # secrets become variables, never copied
    env = {"MOOLTIPROXY_KEY": KEY, "LOCAL_API_KEY": "upstream-key", "CLOUD_KEY": "cloud-key"}
    assert cli("check", "--config", str(new), env=env).returncode == 0

    config = yaml.safe_load(text)
    assert config["auth"] == {"max_failures": 4, "whitelist": ["10.0.0.5"]}
    assert config["server"] == {"port": 8000, "timeout": 30}
    proxy = start_proxy(config, env=env)
    # An original client: base URL at the proxy's root, the default target, the template's layout.
    old_client = openai.OpenAI(base_url=proxy.url, api_key=KEY, max_retries=0)
    answer = old_client.chat.completions.create(model="m", messages=[{"role": "system", "content": "Be terse."},
                                                                    {"role": "user", "content": "Hi"}])
    assert answer.choices[0].message.content == "Hello there, friend."
    assert tgi.seen[-1]["inputs"] == "### SYSTEM:\nBe terse.\n### HUMAN:\nHi\n### RESPONSE:\n"
    assert "\n### HUMAN:\n" in tgi.seen[-1]["parameters"]["stop"]
    # ... its completions, and the cloud target by header, to the same upstream paths as before.
    assert old_client.completions.create(model="m", prompt="Once").choices[0].text == "Hello there, friend."
    cloud_answer = openai.OpenAI(base_url=proxy.url, api_key=KEY, max_retries=0, default_headers={"target": "cloud"})
    assert cloud_answer.chat.completions.create(model="m", messages=[{"role": "user", "content": "yo"}]).choices[0].message.content \
        == "cloud says: yo"
    assert cloud.seen[-1].path == "/v1/chat/completions" and cloud.seen[-1].headers["authorization"] == "Bearer cloud-key"
    # And a client of this version, at /v1, gets the same target.
    new_client = openai.OpenAI(base_url=proxy.url + "/v1", api_key=KEY, max_retries=0)
    assert new_client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}]).choices[0].message.content


def test_migrate_refuses_a_file_of_this_version_and_will_not_overwrite(tmp_path: Path) -> None:
    current = tmp_path / "config.yaml"
    current.write_text("targets: {default: a, a: {url: 'http://127.0.0.1:9'}}\n")
    refused = cli("migrate", str(current), str(tmp_path / "out.yaml"))
    assert refused.returncode == 1 and "is not a config of the original mooltiproxy" in refused.stderr
    old = tmp_path / "old.yaml"
    old.write_text("system: {port: 8000}\n")
    (tmp_path / "out.yaml").write_text("keep me")
    kept = cli("migrate", str(old), str(tmp_path / "out.yaml"))
    assert kept.returncode == 1 and (tmp_path / "out.yaml").read_text() == "keep me"


@pytest.mark.parametrize("data", [{"system": {}}, {"cerbere": {"max_tries": 3}}, {"targets": {"x": {"url": "u", "mapping": {}}}}])
def test_the_original_format_is_recognised_by_any_of_its_marks(data: dict[str, object]) -> None:
    from mooltiproxy.config.legacy import looks_legacy

    assert looks_legacy(data)
    assert not looks_legacy({"targets": {"x": {"url": "u", "routes": {}}}, "server": {"port": 1}})
