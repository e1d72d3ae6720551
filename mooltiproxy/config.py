"""The configuration: YAML in, ``${ENV}`` interpolated, validated against the schema, typed out.

``load(path)`` returns a ``Config`` or raises ``ConfigError`` listing every problem at once as
``path.to.key: sentence``. Defaults live here, in the schema; ``config.template.yaml`` documents them
and a test keeps the two equal.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import voluptuous as vol
import yaml

from .errors import ConfigError
from .validators import (
    did_you_mean,
    duration,
    env_name,
    format_path,
    integer,
    list_of,
    mapping_of,
    one_of,
    optional_text,
    section,
    size,
    text,
    url,
)

TARGET_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]*"


@dataclass(frozen=True)
class TLSConfig:
    certfile: Path
    keyfile: Path


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    tls: TLSConfig | None = None
    timeout: float = 600.0
    connect_timeout: float = 10.0
    max_body: int = 8 * 1024 * 1024


@dataclass(frozen=True)
class RouteConfig:
    """One inbound path of a target, as the user wrote it (fields left out are ``None``)."""

    path: str | None = None
    stream_path: str | None = None
    method: str | None = None
    request: str | None = None
    answer: str | None = None
    stream: str | None = None
    error: str | None = None
    stream_format: str | None = None


@dataclass(frozen=True)
class TargetConfig:
    name: str
    url: str
    type: str = "openai"
    api_key_env: str | None = None
    api_key: str | None = field(default=None, repr=False)  # read from api_key_env when the config is loaded
    prompter: Any = None
    stop: tuple[str, ...] = ()
    character: str | None = None
    characters: dict[str, str] = field(default_factory=dict)
    user_name: str = "User"
    timeout: float | None = None
    headers: dict[str, str] = field(default_factory=dict)
    routes: dict[str, RouteConfig] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelAlias:
    target: str
    model: str | None = None  # the name sent upstream; None keeps the client's


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    targets: dict[str, TargetConfig] = field(default_factory=dict)
    default_target: str | None = None
    models: dict[str, ModelAlias] = field(default_factory=dict)
    base_dir: Path = field(default_factory=Path.cwd)
    source: Path | None = None

    def resolve_path(self, value: str | Path) -> Path:
        """A path from the config, relative to the config file's folder."""
        p = Path(os.path.expanduser(str(value)))
        return p if p.is_absolute() else self.base_dir / p


# ---------------------------------------------------------------------------------------------- schema

_ROUTE = section(
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


def _prompter(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict):
        return section(
            {
                vol.Required("template"): text(),
                vol.Optional("stop", default=[]): list_of(text()),
        vol.Optional("character", default=None): optional_text,
        vol.Optional("characters", default={}): mapping_of(text(pattern=r"[A-Za-z0-9_.-]+", hint="a character's name may hold "
                                                                "letters, digits, '_', '.' and '-' only"), text()),
        vol.Optional("user_name", default="User"): text(),
                vol.Optional("bos_token", default=""): text(),
                vol.Optional("eos_token", default=""): text(),
            },
            what="inline prompter",
        )(value)
    raise vol.Invalid("must be a preset name, a path to a .jinja or tokenizer_config.json file, or a mapping with a template")


_TARGET = section(
    {
        vol.Required("url"): url,
        vol.Optional("type", default="openai"): text(),
        vol.Optional("api_key_env", default=None): vol.Any(None, env_name),
        vol.Optional("prompter", default=None): _prompter,
        vol.Optional("stop", default=[]): list_of(text()),
        vol.Optional("character", default=None): optional_text,
        vol.Optional("characters", default={}): mapping_of(text(pattern=r"[A-Za-z0-9_.-]+", hint="a character's name may hold "
                                                                "letters, digits, '_', '.' and '-' only"), text()),
        vol.Optional("user_name", default="User"): text(),
        vol.Optional("timeout", default=None): vol.Any(None, duration()),
        vol.Optional("headers", default={}): mapping_of(text(), text()),
        vol.Optional("routes", default={}): mapping_of(
            text(pattern=r"/\S*", hint="a route's key must be an inbound path starting with /"), _ROUTE
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
            out[str(name)] = _TARGET(spec)
        except vol.MultipleInvalid as exc:
            for err in exc.errors:
                err.prepend([name])
            errors.extend(exc.errors)
        except vol.Invalid as exc:
            exc.prepend([name])
            errors.append(exc)
    if errors:
        raise vol.MultipleInvalid(errors)
    return out


def _model_alias(value: Any) -> Any:
    if isinstance(value, str):
        return {"target": value, "model": None}
    return section({vol.Required("target"): text(), vol.Optional("model", default=None): optional_text}, what="model alias")(
        value
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
            },
            what="server section",
        ),
        vol.Optional("targets", default={}): _targets,
        vol.Optional("models", default={}): mapping_of(text(), _model_alias),
    },
    what="file",
)


# ------------------------------------------------------------------------------------ interpolation

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(data: Any, environ: dict[str, str], path: tuple[Any, ...] = ()) -> tuple[Any, list[str]]:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string; ``$$`` is a literal ``$``."""
    problems: list[str] = []
    if isinstance(data, str):
        def sub(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            name, default = m.group(1), m.group(2)
            if name in environ:
                return environ[name]
            if default is not None:
                return default
            problems.append(
                f"{format_path(path)}: the environment variable {name} is not set (write ${{{name}:-default}} to give a default)"
            )
            return ""
        return _VAR.sub(sub, data), problems
    if isinstance(data, dict):
        out = {}
        for k, v in data.items():
            out[k], p = interpolate(v, environ, (*path, k))
            problems += p
        return out, problems
    if isinstance(data, list):
        items = []
        for i, v in enumerate(data):
            item, p = interpolate(v, environ, (*path, i))
            items.append(item)
            problems += p
        return items, problems
    return data, problems


# ------------------------------------------------------------------------------------------- loading


def parse(data: Any, *, base_dir: Path | None = None, source: Path | None = None, environ: dict[str, str] | None = None) -> Config:
    """Validate already-loaded YAML data into a ``Config``, with its targets checked as ``build_targets``
    would; every problem in the file is raised at once, not just the first section's."""
    from .targets import build_targets

    env = dict(os.environ if environ is None else environ)
    data, problems = interpolate(data, env)
    clean, broken = _validate(data, problems)
    config = _build(clean, base_dir or Path.cwd(), source, env, problems)
    problems += _cross_check(config, broken)
    try:
        build_targets(config)
    except ConfigError as exc:
        problems += exc.problems
    if problems:
        raise ConfigError(problems)
    return config


def _validate(data: Any, problems: list[str]) -> tuple[dict[str, Any], set[str]]:
    """Each section validated on its own, so one bad section does not hide problems in the others.
    A section (or target) that fails is replaced by its defaults (or left out) and reported."""
    sections: dict[str, Any] = SCHEMA.fields  # type: ignore[attr-defined]
    broken: set[str] = set()
    if not isinstance(data, dict):
        problems.append(f"(top level): must be a mapping of sections ({', '.join(sections)})")
        data = {}
    for key in data:
        if key not in sections:
            problems.append(f"{format_path([key])}: unknown key in this file{did_you_mean(str(key), sections)}; "
                            f"known keys: {', '.join(sections)}")
    clean: dict[str, Any] = {}
    for key, validator in sections.items():
        value = data.get(key)
        if key == "targets" and isinstance(value, dict):
            value = _split_targets(value, problems, broken)
        try:
            clean[key] = validator(value)
        except vol.MultipleInvalid as exc:
            problems += [f"{format_path([key, *e.path])}: {e.msg}" for e in exc.errors]
            clean[key] = validator(None)
        except vol.Invalid as exc:
            problems.append(f"{format_path([key, *exc.path])}: {exc.msg}")
            clean[key] = validator(None)
    return clean, broken


def _split_targets(value: dict[Any, Any], problems: list[str], broken: set[str]) -> dict[Any, Any]:
    """The targets that validate; the others are reported and their names remembered as broken."""
    good = {}
    for name, spec in value.items():
        try:
            _targets({name: spec})
            good[name] = spec
        except vol.MultipleInvalid as exc:
            problems += [f"{format_path(['targets', *e.path])}: {e.msg}" for e in exc.errors]
            broken.add(str(name))
    return good


def load(path: str | Path | None = None, *, environ: dict[str, str] | None = None) -> Config:
    """Load ``path``; without one, ``config.yaml`` in the current folder if present, else the defaults."""
    if path is None:
        if not Path("config.yaml").exists():
            return parse({}, environ=environ)
        path = "config.yaml"
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot be read ({exc.strerror or exc})"]) from None
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{path}: is not valid YAML{where}: {reason}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: must be a mapping of sections (server, targets, ...), not a {type(data).__name__}"])
    return parse(data, base_dir=path.resolve().parent, source=path.resolve(), environ=environ)


def _build(clean: dict[str, Any], base_dir: Path, source: Path | None, env: dict[str, str], problems: list[str]) -> Config:
    s = clean["server"]
    tls = None
    if s["tls"]:
        tls = TLSConfig(certfile=_resolve(base_dir, s["tls"]["certfile"]), keyfile=_resolve(base_dir, s["tls"]["keyfile"]))
    server = ServerConfig(
        host=s["host"], port=s["port"], tls=tls, timeout=s["timeout"], connect_timeout=s["connect_timeout"], max_body=s["max_body"]
    )
    raw_targets = dict(clean["targets"])
    default = raw_targets.pop("default", None)
    for name, t in raw_targets.items():
        if t["api_key_env"] and not env.get(t["api_key_env"]):
            problems.append(
                f"{format_path(['targets', name, 'api_key_env'])}: the environment variable {t['api_key_env']} is not set; "
                f"export it with the upstream's API key before starting"
            )
    targets = {
        name: TargetConfig(
            name=name,
            url=t["url"],
            type=t["type"],
            api_key_env=t["api_key_env"],
            api_key=env.get(t["api_key_env"]) if t["api_key_env"] else None,
            prompter=t["prompter"],
            stop=tuple(t["stop"]),
            character=t["character"],
            characters=t["characters"],
            user_name=t["user_name"],
            timeout=t["timeout"],
            headers=t["headers"],
            routes={p: RouteConfig(**r) for p, r in t["routes"].items()},
            options=t["options"],
        )
        for name, t in raw_targets.items()
    }
    models = {alias: ModelAlias(**spec) for alias, spec in clean["models"].items()}
    return Config(server=server, targets=targets, default_target=default, models=models, base_dir=base_dir, source=source)


def _resolve(base_dir: Path, value: str) -> Path:
    p = Path(os.path.expanduser(value))
    return p if p.is_absolute() else base_dir / p


def _cross_check(config: Config, broken: set[str]) -> list[str]:
    """Problems that need more than one key to see: names that must point at something that exists.
    A name pointing at a target that is itself broken is not reported twice."""
    problems = []
    names = list(config.targets) + sorted(broken)
    known = ", ".join(names) or "none are configured"
    if config.default_target is not None and config.default_target not in names:
        problems.append(
            f"targets.default: no target named '{config.default_target}'{did_you_mean(config.default_target, names)}; targets: {known}"
        )
    for alias, spec in config.models.items():
        if spec.target not in names:
            problems.append(
                f"{format_path(['models', alias])}: no target named '{spec.target}'{did_you_mean(spec.target, names)}; targets: {known}"
            )
    if config.server.tls:
        for key in ("certfile", "keyfile"):
            p = getattr(config.server.tls, key)
            if not p.is_file():
                problems.append(f"server.tls.{key}: no file at {p} (README, 'TLS', shows how to make one)")
    return problems
