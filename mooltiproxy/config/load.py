"""The configuration: YAML in, ``${ENV}`` interpolated, validated against the schema, typed out.

``load(path)`` returns a ``Config`` or raises ``ConfigError`` listing every problem at once as
``path.to.key: sentence``. Keys and defaults are in ``schema.py``; secrets named by ``*_env`` keys are
read from the environment here, once.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import voluptuous as vol
import yaml

from ..errors import ConfigError
from .schema import SCHEMA
from .validators import did_you_mean, format_path, split_host

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


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
    max_answer: int = 64 * 1024 * 1024
    max_fanout: int = 32
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    max_connections_per_ip: int = 1000
    shutdown_grace: float = 30.0
    trusted_proxies: tuple[Network, ...] = ()
    cors_origins: tuple[str, ...] = ()


@dataclass(frozen=True)
class NamedKey:
    name: str
    key_env: str
    key: str = field(default="", repr=False)
    targets: tuple[str, ...] | None = None  # None: every target
    rpm: int | None = None  # requests per minute, across instances sharing a state; None: no limit


@dataclass(frozen=True)
class AuthConfig:
    mode: str = "key"  # "passthrough": no key needed; the client's own key may go on to the upstream
    master_key_env: str = "MOOLTIPROXY_KEY"
    master_key: str | None = field(default=None, repr=False)  # None when the variable is not set
    max_failures: int = 5
    window: float = 600.0
    ban: float = 3600.0
    whitelist: tuple[Network, ...] = ()
    blacklist: tuple[Network, ...] = ()
    keys: dict[str, NamedKey] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetConfig:
    sink: str = "jsonl"
    dsn: str | None = field(default=None, repr=False)  # the postgres sink's connection string (may hold a password)
    dir: Path = Path("datasets")
    session: str | None = None  # None: a new session per server run
    record_errors: bool = False
    redact: tuple[str, ...] = ()
    fsync: str = "interval"
    queue: int = 10_000
    max_text: int = 16 * 1024 * 1024


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
    fallbacks: tuple[str, ...] = ()
    retries: int = 0
    max_connections: int = 1024
    retry_backoff: float = 0.5
    cooldown: float = 30.0
    cooldown_after: int = 3
    headers: dict[str, str] = field(default_factory=dict)
    forward_client_key: bool = False
    routes: dict[str, RouteConfig] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DynamicHost:
    """A host requests may name in their path (``POST /{host[:port]}/{path}``), from the ``dynamic:`` list."""

    name: str  # as listed: host or host:port, lower case
    host: str
    port: int  # the listed port, else the scheme's
    scheme: str = "https"
    api_key_env: str | None = None
    api_key: str | None = field(default=None, repr=False)
    auth: str = "bearer"  # how the key is sent: bearer (Authorization) or x-api-key
    forward_client_key: bool = False
    timeout: float | None = None


@dataclass(frozen=True)
class ModelAlias:
    target: str
    model: str | None = None  # the name sent upstream; None keeps the client's


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    targets: dict[str, TargetConfig] = field(default_factory=dict)
    default_target: str | None = None
    models: dict[str, ModelAlias] = field(default_factory=dict)
    dynamic: dict[str, DynamicHost] = field(default_factory=dict)
    state: str | None = field(default=None, repr=False)  # a Redis URL shared by several instances (may hold a password)
    state_required: bool = False
    base_dir: Path = field(default_factory=Path.cwd)
    source: Path | None = None

    def resolve_path(self, value: str | Path) -> Path:
        """A path from the config, relative to the config file's folder."""
        p = Path(os.path.expanduser(str(value)))
        return p if p.is_absolute() else self.base_dir / p


# ------------------------------------------------------------------------------------ interpolation

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(data: Any, environ: dict[str, str], path: tuple[Any, ...] = (),
                used: dict[str, str] | None = None) -> tuple[Any, list[str]]:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string; ``$$`` is a literal ``$``. ``used`` collects the
    variables read, with their values, so that no message about the config ever repeats one."""
    problems: list[str] = []
    if isinstance(data, str):
        def sub(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            name, default = m.group(1), m.group(2)
            if name in environ:
                if used is not None:
                    used[name] = environ[name]
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
            out[k], p = interpolate(v, environ, (*path, k), used)
            problems += p
        return out, problems
    if isinstance(data, list):
        items = []
        for i, v in enumerate(data):
            item, p = interpolate(v, environ, (*path, i), used)
            items.append(item)
            problems += p
        return items, problems
    return data, problems


_URL_PASSWORD = re.compile(r"(://[^/\s:@'\"]*:)[^@/\s'\"]+@")
_SHORTEST_SECRET = 4  # shorter values (a port, a flag) are left as they are: replacing them would garble the messages


def without_secrets(problems: list[str], used: dict[str, str]) -> list[str]:
    """The problems with every value that came from the environment named by its variable instead, and every
    password in a URL as ***: a config's problems reach terminals and logs, the values behind them must not."""
    values = sorted(((v, k) for k, v in used.items() if len(v) >= _SHORTEST_SECRET), key=lambda vk: -len(vk[0]))
    out = []
    for problem in problems:
        for value, name in values:
            problem = problem.replace(value, f"${{{name}}}")
        out.append(_URL_PASSWORD.sub(r"\1***@", problem))
    return out


# ------------------------------------------------------------------------------------------- loading


def parse(data: Any, *, base_dir: Path | None = None, source: Path | None = None, environ: dict[str, str] | None = None) -> Config:
    """Validate already-loaded YAML data into a ``Config``, with its targets checked as ``build_targets``
    would; every problem in the file is raised at once, not just the first section's."""
    from ..routing.targets import build_targets

    env = dict(os.environ if environ is None else environ)
    used: dict[str, str] = {}
    data, problems = interpolate(data, env, used=used)
    clean, broken = _validate(data, problems)
    config = _build(clean, base_dir or Path.cwd(), source, env, problems)
    problems += _cross_check(config, broken)
    try:
        build_targets(config)
    except ConfigError as exc:
        problems += exc.problems
    if problems:
        raise ConfigError(without_secrets(problems, used))
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
    validate = SCHEMA.fields["targets"]  # type: ignore[attr-defined]
    good = {}
    for name, spec in value.items():
        try:
            validate({name: spec})
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
    s = dict(clean["server"])
    if s["tls"]:
        s["tls"] = TLSConfig(certfile=_resolve(base_dir, s["tls"]["certfile"]), keyfile=_resolve(base_dir, s["tls"]["keyfile"]))
    s["trusted_proxies"] = tuple(s["trusted_proxies"])
    s["cors_origins"] = tuple(s["cors_origins"])
    server = ServerConfig(**s)

    a = dict(clean["auth"])
    keys = {}
    for name, k in a["keys"].items():
        value = _secret(env, k["key_env"], ["auth", "keys", name, "key_env"], problems, "the key's value")
        keys[name] = NamedKey(name=name, key_env=k["key_env"], key=value or "", targets=tuple(k["targets"]) if k["targets"] else None,
                              rpm=k["rpm"])
    auth = AuthConfig(
        mode=a["mode"], master_key_env=a["master_key_env"], master_key=env.get(a["master_key_env"]) or None, max_failures=a["max_failures"],
        window=a["window"], ban=a["ban"], whitelist=tuple(a["whitelist"]), blacklist=tuple(a["blacklist"]), keys=keys,
    )
    d = dict(clean["dataset"])
    dataset = DatasetConfig(**{**d, "dir": _resolve(base_dir, d["dir"]), "redact": tuple(d["redact"])})

    raw_targets = dict(clean["targets"])
    default = raw_targets.pop("default", None)
    for name, t in raw_targets.items():
        if t["api_key_env"]:
            _secret(env, t["api_key_env"], ["targets", name, "api_key_env"], problems, "the upstream's API key")
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
            fallbacks=tuple(t["fallbacks"]),
            retries=t["retries"],
            max_connections=t["max_connections"],
            retry_backoff=t["retry_backoff"],
            cooldown=t["cooldown"],
            cooldown_after=t["cooldown_after"],
            headers=t["headers"],
            forward_client_key=t["forward_client_key"],
            routes={p: RouteConfig(**r) for p, r in t["routes"].items()},
            options=t["options"],
        )
        for name, t in raw_targets.items()
    }
    models = {alias: ModelAlias(**spec) for alias, spec in clean["models"].items()}
    dynamic = {}
    for name, d in clean["dynamic"].items():
        if d["api_key_env"]:
            _secret(env, d["api_key_env"], ["dynamic", name, "api_key_env"], problems, "the host's API key")
        host, port = split_host(name) or (name, None)
        dynamic[name] = DynamicHost(name=name, host=host, port=port or (443 if d["scheme"] == "https" else 80), scheme=d["scheme"],
                                    api_key_env=d["api_key_env"], api_key=env.get(d["api_key_env"]) if d["api_key_env"] else None,
                                    auth=d["auth"], forward_client_key=d["forward_client_key"], timeout=d["timeout"])
    return Config(server=server, auth=auth, dataset=dataset, targets=targets, default_target=default, models=models,
                  dynamic=dynamic, state=clean["state"], state_required=clean["state_required"], base_dir=base_dir, source=source)


def _secret(env: dict[str, str], name: str, at: list[str], problems: list[str], what: str) -> str | None:
    value = env.get(name)
    if not value:
        problems.append(f"{format_path(at)}: the environment variable {name} is not set; export it with {what} before starting")
    return value


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
    for tc in config.targets.values():
        for i, fallback in enumerate(tc.fallbacks):
            if fallback not in names or fallback == tc.name:
                problems.append(
                    f"{format_path(['targets', tc.name, 'fallbacks', i])}: "
                    + ("a target cannot fall back on itself" if fallback == tc.name else
                       f"no target named '{fallback}'{did_you_mean(fallback, names)}; targets: {known}")
                )
    for named in config.auth.keys.values():
        for i, target in enumerate(named.targets or ()):
            if target not in names and target not in config.dynamic:
                problems.append(
                    f"{format_path(['auth', 'keys', named.name, 'targets', i])}: no target named '{target}'"
                    f"{did_you_mean(target, names)}; targets: {known}"
                )
    if config.auth.mode != "passthrough":
        for where in [f"targets.{t.name}" for t in config.targets.values() if t.forward_client_key] + [
                f"dynamic.{d.name}" for d in config.dynamic.values() if d.forward_client_key]:
            problems.append(f"{where}.forward_client_key: only auth.mode: passthrough forwards a client's key; with auth.mode: key the "
                            "client's key is the proxy's own, which never leaves it")
    if config.dataset.sink == "postgres":
        if not config.dataset.dsn:
            problems.append("dataset.dsn: the postgres sink needs a connection string; write dsn: ${MOOLTIPROXY_DSN} and export "
                            "MOOLTIPROXY_DSN=postgresql://user:password@host:5432/dbname")
        if importlib.util.find_spec("psycopg") is None:
            problems.append("dataset.sink: the postgres sink needs the psycopg package; install it with: "
                            "pip install 'mooltiproxy[postgres]'")
    if config.state is not None and importlib.util.find_spec("redis") is None:
        problems.append("state: a Redis state needs the redis package; install it with: pip install 'mooltiproxy[redis]'")
    if config.state_required and config.state is None:
        problems.append("state_required: there is no state to require; set state: redis://host:6379/0 or remove state_required")
    if config.server.tls:
        for key in ("certfile", "keyfile"):
            p = getattr(config.server.tls, key)
            if not p.is_file():
                problems.append(f"server.tls.{key}: no file at {p} (README, 'TLS', shows how to make one)")
    return problems
