"""The parts of a running proxy a config reload replaces, and the reload itself.

Requests read ``Live.settings`` once, at their start, and keep what they read: a reload swaps in new
settings for the requests that come after it while those in flight finish on the old ones. A config
that does not validate changes nothing; every problem is logged. Server and dataset settings (where it
listens, its TLS, where records go) need a restart, and a reload that changes them says so.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..backends import registry
from ..backends.spec import Dialect
from ..config.load import read, validate, without_secrets
from ..config.model import Config, Network
from ..errors import ConfigError
from ..guard.bans import BanLedger, is_loopback
from ..guard.keys import Keyring
from ..routing.dynamic import DynamicHosts
from ..routing.fronts import FrontRoute, build_fronts
from ..routing.router import Router
from ..routing.targets import build_targets
from ..translate.mapping import forget_user_modules

if TYPE_CHECKING:
    from ..guard.limits import RateLimits
    from .redis import RedisState

log = logging.getLogger("mooltiproxy")


@dataclass(frozen=True)
class Settings:
    """What requests need from one config, built once: a request reads them at its start and keeps them."""

    config: Config
    router: Router
    keyring: Keyring
    blacklist: tuple[Network, ...]
    cors_origins: frozenset[str]
    dynamic: DynamicHosts
    fronts: Mapping[str, FrontRoute]  # the paths the proxy answers in another API
    dialects: Mapping[str, Dialect]  # the APIs recorded from their relayed bytes, by inbound path
    passthrough: bool = False  # auth.mode: passthrough


def parse(data: Any, *, base_dir: Path | None = None, source: Path | None = None, environ: dict[str, str] | None = None) -> Config:
    """A config from already-loaded YAML data, checked whole: the file against the schema, and its targets built
    (mappers imported, prompters compiled, backend types found) to be used as they are by ``build_settings``.
    ``ConfigError`` lists every problem at once, never a value read from the environment."""
    if base_dir is not None:
        forget_user_modules(base_dir)  # the config's own mappers are read again with it
    config, problems, used = validate(data, base_dir=base_dir, source=source, environ=environ)
    targets, target_problems = build_targets(config)
    problems += target_problems
    if problems:
        raise ConfigError(without_secrets(problems, used))
    return replace(config, built=targets)


def load(path: str | Path | None = None, *, environ: dict[str, str] | None = None) -> Config:
    """``path`` (without one, ``config.yaml`` in the current folder if present, else the defaults), checked whole."""
    data, source = read(path)
    return parse(data, base_dir=source.parent if source else None, source=source, environ=environ)


def build_settings(config: Config) -> Settings:
    """Everything requests need from a config; ``ConfigError`` when it cannot run."""
    auth = config.auth
    passthrough = auth.mode == "passthrough"
    if passthrough:
        if not (is_loopback(config.server.host) or auth.whitelist):
            raise ConfigError([
                f"auth.mode: passthrough lets anyone who reaches the proxy use it without a key, so it runs only on a loopback "
                f"address or with auth.whitelist naming its clients; server.host is {config.server.host}. Set server.host: "
                f"127.0.0.1 (or serve --host 127.0.0.1), or list your clients' addresses under auth.whitelist."
            ])
    elif auth.master_key is None:
        raise ConfigError([
            f"auth.master_key_env: the environment variable {auth.master_key_env} is not set, and the proxy does not run "
            f"without its key. Run: export {auth.master_key_env}=$(mooltiproxy keygen) — then give that key to your clients."
        ])
    targets = config.built
    if targets is None:  # a Config made without parse(): build (and check) its targets now
        targets, problems = build_targets(config)
        if problems:
            raise ConfigError(problems)
    backends = {**registry.installed(), **{t.backend.name: t.backend for t in targets.values() if t.backend is not None}}
    dialects = registry.dialects(backends.values())
    router = Router(targets, config.default_target, config.models)
    keyring = Keyring(auth.master_key, [(k.name, k.key, k.targets, k.rpm) for k in auth.keys.values()])
    return Settings(config=config, router=router, keyring=keyring, blacklist=auth.blacklist,
                    cors_origins=frozenset(config.server.cors_origins),
                    dynamic=DynamicHosts(config.dynamic, config.server, dialects), fronts=build_fronts(backends.values()),
                    dialects=dialects, passthrough=passthrough)


class Live:
    def __init__(self, settings: Settings, ledger: BanLedger, limits: RateLimits | None = None) -> None:
        self.settings = settings
        self.ledger = ledger
        self.limits = limits
        self.state: RedisState | None = None  # instances sharing a Redis hear of each other's reloads
        self.reloads = 0

    def reload(self, path: Path | None = None, *, tell_others: bool = True) -> bool:
        """Load the config again (from ``path``, else where it came from); keep the old one if it is broken.
        Other instances sharing a state read theirs again too, unless this reload is their word."""
        old = self.settings.config
        source = path or old.source
        if source is None:
            log.warning("reload asked for, but the proxy runs on the built-in defaults: there is no config file to read")
            return False
        try:
            settings = build_settings(load(source))
        except ConfigError as exc:
            log.error("config %s NOT reloaded, %d problem(s); the running config stays:\n  %s", source, len(exc.problems),
                      "\n  ".join(exc.problems))
            return False
        new = settings.config
        for section in ("server", "dataset", "state", "state_required"):
            if getattr(new, section) != getattr(old, section):
                log.warning("config %s: changes under '%s' take effect at the next restart", source, section)
        auth = new.auth
        self.ledger.configure(max_failures=auth.max_failures, window=auth.window, ban=auth.ban, whitelist=auth.whitelist)
        self.settings = settings
        self.reloads += 1
        log.info("config %s reloaded: targets %s", source, ", ".join(settings.router.targets) or "none")
        if tell_others and self.state is not None:
            self.state.reloaded()
        return True

    async def watch(self, interval: float = 1.0) -> None:
        """Reload when the config file changes (its modification time or size)."""
        source = self.settings.config.source
        if source is None:
            return
        seen = _stamp(source)
        while True:
            await asyncio.sleep(interval)
            stamp = _stamp(source)
            if stamp != seen and stamp is not None:
                seen = stamp
                self.reload(source)


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size
