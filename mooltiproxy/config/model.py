"""The typed configuration a validated file becomes. No defaults here: every key's default, type and
allowed values are in ``schema.py`` alone, and what it lets through fills these fields as they are.
The few fields not in the file are marked: values read from the environment, names taken from keys."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class TLSConfig:
    certfile: Path  # resolved against the config's folder
    keyfile: Path


@dataclass(frozen=True)
class ServerConfig:
    host: str
    port: int
    tls: TLSConfig | None
    timeout: float
    connect_timeout: float
    max_body: int
    max_answer: int
    max_fanout: int
    header_timeout: float
    body_timeout: float
    max_connections_per_ip: int
    shutdown_grace: float
    trusted_proxies: tuple[Network, ...]
    cors_origins: tuple[str, ...]


@dataclass(frozen=True)
class NamedKey:
    key_env: str
    targets: tuple[str, ...] | None  # None: every target
    rpm: int | None  # requests per minute, across instances sharing a state; None: no limit
    name: str = ""  # (from the key: auth.keys.NAME)
    key: str = field(default="", repr=False)  # (read from key_env)


@dataclass(frozen=True)
class AuthConfig:
    mode: str  # "passthrough": no key needed; the client's own key may go on to the upstream
    master_key_env: str
    max_failures: int
    window: float
    ban: float
    whitelist: tuple[Network, ...]
    blacklist: tuple[Network, ...]
    keys: dict[str, NamedKey]
    master_key: str | None = field(default=None, repr=False)  # (read from master_key_env; None when it is not set)


@dataclass(frozen=True)
class DatasetConfig:
    sink: str
    dsn: str | None = field(repr=False)  # the postgres sink's connection string (may hold a password)
    dir: Path  # resolved against the config's folder
    session: str | None  # None: a new session per server run
    record_errors: bool
    redact: tuple[str, ...]
    fsync: str
    queue: int
    max_text: int
    recorder: str = "process"  # where records are built: a process of their own, or the proxy's event loop


@dataclass(frozen=True)
class ResponsesConfig:
    """What ``/v1/responses`` keeps: a response stored (unless its request says ``store: false``) is kept this long."""

    store: bool
    retention: float


@dataclass(frozen=True)
class RouteConfig:
    """One inbound path of a target, as the user wrote it (fields left out are ``None``: the type's own)."""

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
    url: str
    type: str
    api_key_env: str | None
    prompter: Any
    stop: tuple[str, ...]
    character: str | None
    characters: dict[str, str]
    user_name: str
    timeout: float | None
    fallbacks: tuple[str, ...]
    retries: int
    max_connections: int
    retry_backoff: float
    cooldown: float
    cooldown_after: int
    headers: dict[str, str]
    forward_client_key: bool
    routes: dict[str, RouteConfig]
    options: dict[str, Any]
    name: str = ""  # (from the key: targets.NAME)
    api_key: str | None = field(default=None, repr=False)  # (read from api_key_env)


@dataclass(frozen=True)
class DynamicHost:
    """A host requests may name in their path (``POST /{host[:port]}/{path}``), from the ``dynamic:`` list."""

    scheme: str
    api_key_env: str | None
    auth: str  # how the key is sent: bearer (Authorization) or x-api-key
    forward_client_key: bool
    timeout: float | None
    name: str = ""  # (the key as listed: host or host:port, lower case)
    host: str = ""  # (from the key)
    port: int = 0  # (from the key; the scheme's when it has none)
    api_key: str | None = field(default=None, repr=False)  # (read from api_key_env)


@dataclass(frozen=True)
class ModelAlias:
    target: str
    model: str | None  # the name sent upstream; None keeps the client's


@dataclass(frozen=True)
class Config:
    server: ServerConfig
    auth: AuthConfig
    dataset: DatasetConfig
    targets: dict[str, TargetConfig]
    default_target: str | None
    models: dict[str, ModelAlias]
    dynamic: dict[str, DynamicHost]
    state: str | None = field(repr=False)  # a Redis URL shared by several instances (may hold a password)
    state_required: bool
    base_dir: Path
    source: Path | None
    responses: ResponsesConfig = ResponsesConfig(store=True, retention=30 * 86400.0)
    # The targets as the proxy runs them, built once while the file was checked (state/settings.py).
    built: Any = field(default=None, compare=False, repr=False)

    def resolve_path(self, value: str | Path) -> Path:
        """A path from the config, relative to the config file's folder."""
        p = Path(os.path.expanduser(str(value)))
        return p if p.is_absolute() else self.base_dir / p
