"""Reading a config: YAML in, ``${ENV}`` interpolated, checked against the schema, typed out (``model.py``).

Every problem is collected, never only the first, each as ``path.to.key: sentence``. Keys and defaults are
in ``schema.py`` alone; secrets named by ``*_env`` keys are read from the environment here, once. What
needs more than the file to check (mappers, prompters, cards, backend types) is checked where the targets
are built, and reported with these: ``mooltiproxy.load`` (``state/settings.py``).
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Any

import voluptuous as vol
import yaml

from ..errors import ConfigError
from . import legacy
from .model import (
    AuthConfig,
    Config,
    DatasetConfig,
    DynamicHost,
    ModelAlias,
    NamedKey,
    ResponsesConfig,
    RouteConfig,
    ServerConfig,
    TargetConfig,
    TLSConfig,
)
from .schema import SCHEMA
from .validators import did_you_mean, format_path, split_host

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


def validate(data: Any, *, base_dir: Path | None = None, source: Path | None = None,
             environ: dict[str, str] | None = None) -> tuple[Config, list[str], dict[str, str]]:
    """Already-loaded YAML data checked against the schema, every section on its own so that one does not hide
    another's problems: the config (with defaults where a section failed), the problems found, and the
    environment variables read (which no message about the config may repeat: ``without_secrets``)."""
    if legacy.looks_legacy(data):  # the original mooltiproxy's file: said once, with the way to convert it
        defaults, _, nothing = validate({}, base_dir=base_dir, source=source, environ=environ)
        return defaults, [legacy.problem(str(source or "config.yaml"))], nothing
    env = dict(os.environ if environ is None else environ)
    used: dict[str, str] = {}
    data, problems = interpolate(data, env, used=used)
    clean, broken = _validate(data, problems)
    config = _build(clean, base_dir or Path.cwd(), source, env, problems)
    problems += _cross_check(config, broken)
    return config, problems, used


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


def read(path: str | Path | None = None) -> tuple[Any, Path | None]:
    """A config file's YAML data and where it is; without a path, ``config.yaml`` in the current folder if there is
    one, else no data (the built-in defaults)."""
    if path is None:
        if not Path("config.yaml").exists():
            return {}, None
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
    return data, path.resolve()


def _build(clean: dict[str, Any], base_dir: Path, source: Path | None, env: dict[str, str], problems: list[str]) -> Config:
    """The validated sections as typed records: the schema's keys and defaults as they are, plus what the file does
    not hold (paths resolved against its folder, secrets read from the environment, names taken from keys)."""
    server = dict(clean["server"])
    tls = server["tls"]
    if tls:
        server["tls"] = TLSConfig(certfile=_resolve(base_dir, tls["certfile"]), keyfile=_resolve(base_dir, tls["keyfile"]))

    auth = dict(clean["auth"])
    auth["keys"] = {
        name: NamedKey(**k, name=name, key=_secret(env, k["key_env"], ["auth", "keys", name, "key_env"], problems, "the key's value") or "")
        for name, k in auth["keys"].items()
    }
    auth["master_key"] = env.get(auth["master_key_env"]) or None

    dataset = dict(clean["dataset"])
    dataset["dir"] = _resolve(base_dir, dataset["dir"])

    targets = dict(clean["targets"])
    default = targets.pop("default", None)
    built_targets = {}
    for name, t in targets.items():
        key = _secret(env, t["api_key_env"], ["targets", name, "api_key_env"], problems, "the upstream's API key") \
            if t["api_key_env"] else None
        routes = {path: RouteConfig(**r) for path, r in t["routes"].items()}
        built_targets[name] = TargetConfig(**{**t, "routes": routes}, name=name, api_key=key)

    dynamic = {}
    for name, d in clean["dynamic"].items():
        key = _secret(env, d["api_key_env"], ["dynamic", name, "api_key_env"], problems, "the host's API key") \
            if d["api_key_env"] else None
        host, port = split_host(name) or (name, None)
        dynamic[name] = DynamicHost(**d, name=name, host=host, port=port or (443 if d["scheme"] == "https" else 80), api_key=key)

    return Config(server=ServerConfig(**server), auth=AuthConfig(**auth), dataset=DatasetConfig(**dataset), targets=built_targets,
                  default_target=default, models={alias: ModelAlias(**spec) for alias, spec in clean["models"].items()},
                  dynamic=dynamic, state=clean["state"], state_required=clean["state_required"], base_dir=base_dir, source=source,
                  responses=ResponsesConfig(**clean["responses"]))


def _secret(env: dict[str, str], name: str, at: list[str], problems: list[str], what: str) -> str | None:
    """The variable's value; a problem, naming the key and the variable, when it is not set."""
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
