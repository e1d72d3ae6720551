"""Running an app under uvicorn with the config's server settings (listen address, TLS, loop, parser)."""

from __future__ import annotations

import importlib.util
import signal
from typing import Any

import uvicorn

from .config import ServerConfig
from .protocol import guarded_protocol


def uvicorn_config(app: Any, server: ServerConfig, **overrides: Any) -> uvicorn.Config:
    options: dict[str, Any] = {
        "host": server.host,
        "port": server.port,
        "loop": _best("uvloop", "asyncio"),
        "http": guarded_protocol(header_timeout=server.header_timeout, max_per_address=server.max_connections_per_ip,
                                 exempt=server.trusted_proxies),
        "log_config": None,
        "access_log": False,  # the proxy writes its own access line, with target and timings
        "server_header": False,
        # X-Forwarded-For is believed only from the configured proxies (uvicorn's default trusts 127.0.0.1).
        "proxy_headers": bool(server.trusted_proxies),
        "forwarded_allow_ips": [str(n) for n in server.trusted_proxies] or "",
        "lifespan": "on",
        "ssl_certfile": str(server.tls.certfile) if server.tls else None,
        "ssl_keyfile": str(server.tls.keyfile) if server.tls else None,
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)


def run(app: Any, server: ServerConfig, **overrides: Any) -> None:
    """Serve until SIGTERM or Ctrl-C, then shut down cleanly and return."""
    # uvicorn re-raises the signal that stopped it once it has shut down; a no-op handler makes a
    # requested stop end the process with status 0, as a clean shutdown should.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    uvicorn.Server(uvicorn_config(app, server, **overrides)).run()


def _best(preferred: str, fallback: str) -> str:
    return preferred if importlib.util.find_spec(preferred) else fallback
