"""Config loading: the template is the defaults, env interpolation, and every problem listed at once."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any

import pytest
import voluptuous as vol
import yaml

from mooltiproxy import load, parse
from mooltiproxy.backends.registry import installed
from mooltiproxy.config.schema import DYNAMIC_HOST, NAMED_KEY, ROUTE, SCHEMA, TARGET
from mooltiproxy.errors import ConfigError

from .conftest import ROOT

TEMPLATE = ROOT / "config.template.yaml"


def problems_of(data: dict[str, Any], environ: dict[str, str] | None = None, tmp: Path | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(data, environ=environ or {}, base_dir=tmp)
    return info.value.problems


def test_template_loads_and_equals_the_built_in_defaults() -> None:
    from_template = load(TEMPLATE, environ={})
    defaults = parse({}, environ={}, base_dir=TEMPLATE.resolve().parent)  # relative paths resolve beside the file
    assert from_template.server == defaults.server
    assert from_template.auth == defaults.auth
    assert from_template.dataset == defaults.dataset
    assert from_template.targets == defaults.targets == {}
    assert from_template.models == defaults.models
    assert from_template.default_target is None
    assert from_template.dynamic == defaults.dynamic == {}
    assert from_template.state is defaults.state is None and from_template.state_required is defaults.state_required is False


def _keys(validator: Any) -> dict[str, Any]:
    fields = getattr(validator, "fields", None)
    if fields is None and isinstance(validator, vol.Any):
        for v in validator.validators:
            if getattr(v, "fields", None):
                return dict(v.fields)
    return dict(fields or {})


def test_template_documents_every_key() -> None:
    text = TEMPLATE.read_text()
    missing = []

    def walk(validator: Any, where: str) -> None:
        for key, sub in _keys(validator).items():
            if f"{key}:" not in text:
                missing.append(f"{where}{key}")
            walk(sub, f"{where}{key}.")

    walk(SCHEMA, "")
    walk(TARGET, "targets.NAME.")
    walk(ROUTE, "targets.NAME.routes.PATH.")
    walk(NAMED_KEY, "auth.keys.NAME.")
    walk(DYNAMIC_HOST, "dynamic.HOST.")
    for type_name, backend in installed().items():
        for option in backend.options:
            if f"{option}:" not in text:
                missing.append(f"targets.NAME.options.{option} (type {type_name})")
    assert not missing, f"keys not documented in config.template.yaml: {missing}"


def _defaults(validator: Any, **required: Any) -> dict[str, Any]:
    """The keys a section's schema fills in when the file leaves them out, with the value it puts there."""
    return {key: value for key, value in validator(required).items() if key not in required}


def test_the_template_shows_each_commented_key_with_its_default() -> None:
    """Where the template shows a key only in a commented example (a target's keys, a route's, a named key's, a
    dynamic host's, each type's options), the value shown is the schema's default: one place for defaults."""
    shown: dict[str, list[Any]] = {}
    for line in TEMPLATE.read_text().splitlines():
        m = re.match(r"\s*#\s+([A-Za-z_]+): (.*?)(?:\s+#.*)?$", line)
        if m:
            with contextlib.suppress(yaml.YAMLError):
                shown.setdefault(m.group(1), []).append(yaml.safe_load(m.group(2)))
    wrong = []
    for where, defaults in (("targets.NAME", _defaults(TARGET, url="http://x")), ("targets.NAME.routes.PATH", _defaults(ROUTE)),
                            ("auth.keys.NAME", _defaults(NAMED_KEY, key_env="X")), ("dynamic.HOST", _defaults(DYNAMIC_HOST))):
        for key, default in defaults.items():
            values = [list(v) if isinstance(v, list) else v for v in shown.get(key, [])]
            expected = list(default) if isinstance(default, (list, tuple)) else default
            if expected not in values:
                wrong.append(f"{where}.{key}: shown as {values or 'nothing'}, default {expected!r}")
    for type_name, backend in installed().items():
        for option, spec in backend.options.items():
            if spec.default not in shown.get(option, []) and str(spec.default) not in map(str, shown.get(option, [])):
                wrong.append(f"targets.NAME.options.{option} (type {type_name}): shown as {shown.get(option)}, default {spec.default!r}")
    assert not wrong, wrong


def test_env_interpolation() -> None:
    config = parse(
        {"targets": {"a": {"url": "http://${HOST}:${PORT:-9000}", "headers": {"x-cost": "$$5"}}}},
        environ={"HOST": "127.0.0.1"},
    )
    assert config.targets["a"].url == "http://127.0.0.1:9000"
    assert config.targets["a"].headers == {"x-cost": "$5"}


def test_missing_env_var_is_a_problem_with_its_path() -> None:
    problems = problems_of({"targets": {"a": {"url": "http://${NOPE}"}}})
    assert problems[0].startswith("targets.a.url: the environment variable NOPE is not set")


def test_sizes_and_durations() -> None:
    config = parse({"server": {"max_body": "512KiB", "timeout": "2m", "connect_timeout": "250ms"}}, environ={})
    assert config.server.max_body == 512 * 1024
    assert config.server.timeout == 120
    assert config.server.connect_timeout == 0.25
    assert parse({"server": {"max_body": 1000}}, environ={}).server.max_body == 1000


def test_every_problem_is_reported_at_once() -> None:
    problems = problems_of(
        {
            "sever": {"port": 1},
            "server": {"port": "eighty", "max_body": "lots", "timout": 5},
            "targets": {
                "default": "locl",
                "local": {"url": "localhost:8080", "typ": "tgi"},
                "bad name!": {"url": "http://x"},
            },
            "models": {"m": "ghost"},
        }
    )
    text = "\n".join(problems)
    assert "sever: unknown key in this file (did you mean 'server'?)" in text
    assert "server.port: must be a whole number" in text
    assert "server.max_body: must be a size such as 8MiB" in text
    assert "server.timout: unknown key in this server section (did you mean 'timeout'?)" in text
    assert "targets.local.url: must be an http:// or https:// URL" in text
    assert "targets.local.typ: unknown key in this target (did you mean 'type'?)" in text
    assert '["bad name!"]' in text
    assert "targets.default: no target named 'locl' (did you mean 'local'?)" in text
    assert "models.m: no target named 'ghost'" in text
    assert len(problems) == 9, problems


def test_cross_references_are_checked() -> None:
    problems = problems_of({"targets": {"default": "locl", "local": {"url": "http://127.0.0.1:1"}}, "models": {"m": "ghost"}})
    assert problems == [
        "targets.default: no target named 'locl' (did you mean 'local'?); targets: local",
        "models.m: no target named 'ghost'; targets: local",
    ]


def test_target_problems_from_presets_keys_and_mappers() -> None:
    problems = problems_of(
        {
            "targets": {
                "a": {"url": "http://127.0.0.1:1", "type": "opnai"},
                "b": {"url": "http://127.0.0.1:1", "api_key_env": "NOT_SET_KEY", "options": {"colour": 1}},
                "c": {
                    "url": "http://127.0.0.1:1",
                    "options": {"colour": 1},  # the target's own mappers may read options its type does not know
                    "routes": {"/v1/chat/completions": {"request": "nosuchmodule.f", "answer": "json.loads"}},
                },
            }
        }
    )
    text = "\n".join(problems)
    assert "targets.a.type: must be one of anthropic, kobold, llamacpp, ollama, openai, tei, tgi" in text
    assert "(did you mean 'openai'?)" in text
    assert "targets.b.api_key_env: the environment variable NOT_SET_KEY is not set" in text
    assert "targets.b.options.colour: unknown option for type openai" in text and "targets.c.options" not in text
    assert 'targets.c.routes["/v1/chat/completions"].request: no mapper module \'nosuchmodule\'' in text
    assert 'targets.c.routes["/v1/chat/completions"].answer: no mapper module \'json\'' in text


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("server:\n  port: [1\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert "is not valid YAML at line" in info.value.problems[0]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path / "nope.yaml")
    assert "cannot be read" in info.value.problems[0]


def test_no_config_file_means_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load().targets == {}
    (tmp_path / "config.yaml").write_text("server: {port: 9999}\n")
    assert load().server.port == 9999


def test_routes_merge_over_the_preset() -> None:
    config = parse(
        {"targets": {"a": {"url": "http://h", "routes": {"/v1/chat/completions": {"path": "/infer"}, "/v1/rank": {}}}}},
        environ={},
    )
    target = config.built["a"]
    assert target.routes["/v1/chat/completions"].path == "/infer"
    assert target.routes["/v1/rank"].path == "/v1/rank"
    assert target.routes["/v1/models"].method == "GET"
    assert target.routes["/v1/embeddings"].passthrough


def test_shared_state_and_postgres_keys_are_checked() -> None:
    problems = problems_of({"state": "http://127.0.0.1:6379", "state_required": "maybe",
                            "auth": {"keys": {"alice": {"key_env": "ALICE", "rpm": 0}}},
                            "dataset": {"sink": "postgres", "dsn": "mysql://root:pw-in-dsn@db/x"}}, environ={"ALICE": "k" * 20})
    assert "state: must be a redis://, rediss:// or unix:// URL such as redis://127.0.0.1:6379/0, not 'http://127.0.0.1:6379'" in problems
    assert any(p.startswith("state_required: must be true or false") for p in problems)
    assert any(p.startswith("auth.keys.alice.rpm: ") for p in problems)
    assert "dataset.dsn: must be a postgresql:// URL or key=value pairs, not 'mysql://root:***@db/x'" in problems
    assert not any("pw-in-dsn" in p for p in problems)


def test_a_postgres_sink_needs_a_dsn_and_a_required_state_needs_a_state() -> None:
    problems = problems_of({"dataset": {"sink": "postgres"}, "state_required": True})
    assert any(p.startswith("dataset.dsn: the postgres sink needs a connection string; write dsn: ${MOOLTIPROXY_DSN}") for p in problems)
    assert "state_required: there is no state to require; set state: redis://host:6379/0 or remove state_required" in problems


def test_state_and_key_limits_load() -> None:
    config = parse({"state": "redis://:pw@127.0.0.1:6379/2", "state_required": True,
                    "auth": {"keys": {"alice": {"key_env": "ALICE", "rpm": 60}}},
                    "dataset": {"sink": "postgres", "dsn": "host=127.0.0.1 dbname=mp password=x"}}, environ={"ALICE": "k" * 20})
    assert config.state == "redis://:pw@127.0.0.1:6379/2" and config.state_required is True
    assert config.auth.keys["alice"].rpm == 60
    assert config.dataset.dsn == "host=127.0.0.1 dbname=mp password=x"
    assert "pw" not in repr(config) and "password=x" not in repr(config)  # secrets stay out of reprs (and tracebacks)
