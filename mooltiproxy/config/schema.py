"""The config file's schema: every key, its type and its default, in voluptuous validators.

``config.py`` loads a file and turns what this schema accepts into typed settings; this module only
says what is allowed. ``config.template.yaml`` documents the same keys, and a test keeps the two equal.
"""

from __future__ import annotations

import re
from typing import Any

import voluptuous as vol

from .validators import (
    boolean,
    duration,
    env_name,
    host_port,
    integer,
    list_of,
    mapping_of,
    maybe,
    network,
    one_of,
    optional_text,
    postgres_dsn,
    redis_url,
    section,
    size,
    text,
    under,
    url,
)

TARGET_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
_NAME = text(pattern=r"[A-Za-z0-9_.-]+", hint="a name may hold letters, digits, '_', '.' and '-' only")

ROUTE = section(
    {
        vol.Optional("path"): text(pattern=r"/\S*", hint="must be a path starting with /"),
        vol.Optional("stream_path"): text(pattern=r"/\S*", hint="must be a path starting with /"),
        vol.Optional("method"): one_of("GET", "POST", "PUT", "DELETE", "PATCH"),
        vol.Optional("request"): optional_text,
        vol.Optional("answer"): optional_text,
        vol.Optional("stream"): optional_text,
        vol.Optional("error"): optional_text,
        vol.Optional("stream_format"): one_of("sse", "ndjson"),
    },
    what="route",
)

_INLINE_PROMPTER = section(
    {
        vol.Required("template"): text(),
        vol.Optional("stop", default=[]): list_of(text()),
        vol.Optional("bos_token", default=""): text(),
        vol.Optional("eos_token", default=""): text(),
    },
    what="inline prompter",
)


def _prompter(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict):
        return _INLINE_PROMPTER(value)
    raise vol.Invalid("must be a preset name, a path to a .jinja or tokenizer_config.json file, or a mapping with a template")


TARGET = section(
    {
        vol.Required("url"): url,
        vol.Optional("type", default="openai"): text(),
        vol.Optional("api_key_env", default=None): maybe(env_name),
        vol.Optional("prompter", default=None): _prompter,
        vol.Optional("stop", default=[]): list_of(text()),
        vol.Optional("character", default=None): optional_text,
        vol.Optional("characters", default={}): mapping_of(_NAME, text()),
        vol.Optional("user_name", default="User"): text(),
        vol.Optional("timeout", default=None): maybe(duration()),
        vol.Optional("fallbacks", default=[]): list_of(text()),
        vol.Optional("retries", default=0): integer(min=0, max=10),
        vol.Optional("max_connections", default=1024): integer(min=1),
        vol.Optional("retry_backoff", default=0.5): duration(allow_zero=True),
        vol.Optional("cooldown", default=30): duration(allow_zero=True),
        vol.Optional("cooldown_after", default=3): integer(min=1),
        vol.Optional("headers", default={}): mapping_of(text(), text()),
        vol.Optional("forward_client_key", default=False): boolean,
        vol.Optional("routes", default={}): mapping_of(
            text(pattern=r"/\S*", hint="a route's key must be an inbound path starting with /"), ROUTE
        ),
        vol.Optional("options", default={}): mapping_of(text(), lambda v: v),
    },
    what="target",
)


def _targets(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise vol.Invalid("must be a mapping of target names to targets")
    errors: list[vol.Invalid] = []
    out: dict[str, Any] = {}
    for name, spec in value.items():
        if name == "default":
            if spec is not None and not isinstance(spec, str):
                errors.append(vol.Invalid("must be the name of a target", path=[name]))
            out[name] = spec
            continue
        if not re.fullmatch(TARGET_NAME, str(name)):
            errors.append(vol.Invalid("a target's name may hold letters, digits, '_', '.' and '-' only", path=[name]))
            continue
        try:
            out[str(name)] = TARGET(spec)
        except vol.Invalid as exc:
            errors.extend(under(name, exc))
    if errors:
        raise vol.MultipleInvalid(errors)
    return out


def _model_alias(value: Any) -> Any:
    if isinstance(value, str):
        return {"target": value, "model": None}
    return section({vol.Required("target"): text(), vol.Optional("model", default=None): optional_text}, what="model alias")(
        value
    )


def _regex(value: Any) -> str:
    pattern = str(text()(value))
    try:
        re.compile(pattern)
    except re.error as exc:
        raise vol.Invalid(f"is not a valid regular expression: {exc}") from None
    return pattern


def _key_name(value: Any) -> str:
    name = str(_NAME(value))
    if name == "master":
        raise vol.Invalid("'master' is the name of the master key; give this key another name")
    return name


NAMED_KEY = section(
    {
        vol.Required("key_env"): env_name,
        vol.Optional("targets", default=None): maybe(list_of(text())),
        vol.Optional("rpm", default=None): maybe(integer(min=1)),
    },
    what="key",
)

DYNAMIC_HOST = section(
    {
        vol.Optional("scheme", default="https"): one_of("https", "http"),
        vol.Optional("api_key_env", default=None): maybe(env_name),
        vol.Optional("auth", default="bearer"): one_of("bearer", "x-api-key"),
        vol.Optional("forward_client_key", default=False): boolean,
        vol.Optional("timeout", default=None): maybe(duration()),
    },
    what="dynamic host",
)

SCHEMA = section(
    {
        vol.Optional("server", default={}): section(
            {
                vol.Optional("host", default="127.0.0.1"): text(),
                vol.Optional("port", default=8000): integer(min=0, max=65535),
                vol.Optional("tls", default=None): vol.Any(
                    None,
                    section({vol.Required("certfile"): text(), vol.Required("keyfile"): text()}, what="tls section"),
                ),
                vol.Optional("timeout", default=600): duration(),
                vol.Optional("connect_timeout", default=10): duration(),
                vol.Optional("max_body", default="8MiB"): size,
                vol.Optional("max_answer", default="64MiB"): size,
                vol.Optional("max_fanout", default=32): integer(min=1),
                vol.Optional("header_timeout", default=10): duration(),
                vol.Optional("body_timeout", default=60): duration(),
                vol.Optional("max_connections_per_ip", default=1000): integer(min=1),
                vol.Optional("shutdown_grace", default=30): duration(allow_zero=True),
                vol.Optional("trusted_proxies", default=[]): list_of(network),
                vol.Optional("cors_origins", default=[]): list_of(
                    text(pattern=r"\*|https?://[^/\s]+", hint="must be an origin such as https://app.example.com, or *")
                ),
            },
            what="server section",
        ),
        vol.Optional("auth", default={}): section(
            {
                vol.Optional("mode", default="key"): one_of("key", "passthrough"),
                vol.Optional("master_key_env", default="MOOLTIPROXY_KEY"): env_name,
                vol.Optional("max_failures", default=5): integer(min=1),
                vol.Optional("window", default=600): duration(),
                vol.Optional("ban", default=3600): duration(),
                vol.Optional("whitelist", default=[]): list_of(network),
                vol.Optional("blacklist", default=[]): list_of(network),
                vol.Optional("keys", default={}): mapping_of(_key_name, NAMED_KEY),
            },
            what="auth section",
        ),
        vol.Optional("dynamic", default={}): mapping_of(host_port, DYNAMIC_HOST),
        vol.Optional("state", default=None): maybe(redis_url),
        vol.Optional("state_required", default=False): lambda v: False if v is None else boolean(v),
        vol.Optional("targets", default={}): _targets,
        vol.Optional("models", default={}): mapping_of(text(), _model_alias),
        vol.Optional("responses", default={}): section(
            {
                vol.Optional("store", default=True): boolean,
                vol.Optional("retention", default="30d"): duration(),
            },
            what="responses section",
        ),
        vol.Optional("dataset", default={}): section(
            {
                vol.Optional("sink", default="jsonl"): one_of("jsonl", "sqlite", "postgres", "none"),
                vol.Optional("dsn", default=None): maybe(postgres_dsn),
                vol.Optional("dir", default="datasets"): text(),
                vol.Optional("session", default=None): maybe(_NAME),
                vol.Optional("record_errors", default=False): boolean,
                vol.Optional("redact", default=[]): list_of(_regex),
                vol.Optional("fsync", default="interval"): one_of("always", "interval", "never"),
                vol.Optional("queue", default=10000): integer(min=1),
                vol.Optional("recorder", default="process"): one_of("process", "loop"),
                vol.Optional("max_text", default="16MiB"): size,
            },
            what="dataset section",
        ),
    },
    what="file",
)

