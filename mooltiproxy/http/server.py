"""Running the proxy under uvicorn: one process, or several workers sharing one socket.

The uvicorn config carries the server settings (listen address, TLS, the protocol with its limits,
trusted proxies, the grace period for in-flight requests at shutdown). Workers each build their own app
from the same config file; they share bans, metrics and the dataset through the files beside the
dataset, and one dataset session chosen before they start.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import logging
import os
import signal
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn

from ..config.model import Config, ServerConfig
from ..ops.collector import tune_collector

if TYPE_CHECKING:
    from ..app import ProxyApp
from ..state.settings import load
from .protocol import ProxyServerConfig

WORKER_ENV = "MOOLTIPROXY_WORKER"  # how a worker process learns what to serve


def uvicorn_config(app: Any, server: ServerConfig, **overrides: Any) -> uvicorn.Config:
    options: dict[str, Any] = {
        "host": server.host,
        "port": server.port,
        "loop": _best("uvloop", "asyncio"),
        "log_config": None,
        "access_log": False,  # the proxy writes its own access line, with target and timings
        "server_header": False,
        # X-Forwarded-For is believed only from the configured proxies (uvicorn's default trusts 127.0.0.1).
        "proxy_headers": bool(server.trusted_proxies),
        "forwarded_allow_ips": [str(n) for n in server.trusted_proxies] or "",
        "lifespan": "on",
        "timeout_graceful_shutdown": server.shutdown_grace,
        "ssl_certfile": str(server.tls.certfile) if server.tls else None,
        "ssl_keyfile": str(server.tls.keyfile) if server.tls else None,
    }
    options.update(overrides)
    return ProxyServerConfig(app, header_timeout=server.header_timeout, body_timeout=server.body_timeout,
                             max_per_address=server.max_connections_per_ip, exempt=server.trusted_proxies, **options)


def _stop_cleanly() -> None:
    # uvicorn re-raises the signal that stopped it once it has shut down; a no-op handler makes a
    # requested stop end the process with status 0, as a clean shutdown should.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)


def run(app: Any, server: ServerConfig, *, tune: bool = True, **overrides: Any) -> None:
    """Serve until SIGTERM or Ctrl-C, let in-flight requests finish (up to ``server.shutdown_grace``), return.
    ``tune=False`` keeps Python's default garbage collection (the benchmark's comparison)."""
    _stop_cleanly()
    if tune:
        tune_collector()
    served = uvicorn.Server(uvicorn_config(app, server, **overrides))
    served.run()
    if not served.started:  # the app's startup failed (its error is logged above): not a clean exit, whatever the version
        raise SystemExit(3)  # uvicorn's own code for a failed startup


def run_workers(config: Config, workers: int, *, log_level: str, log_format: str) -> None:
    """``workers`` processes on one socket, each with its own app built from the same config."""
    from uvicorn.supervisors import Multiprocess

    os.environ[WORKER_ENV] = json.dumps({
        "config": str(config.source) if config.source else None,
        "host": config.server.host,
        "port": config.server.port,
        "session": config.dataset.session,
        "log_level": log_level,
        "log_format": log_format,
    })
    settings = uvicorn_config("mooltiproxy.http.server:worker_app", config.server, factory=True, workers=workers)
    sock = settings.bind_socket()
    _stop_cleanly()
    # uvicorn before 0.36 is told what each worker runs; later versions run a server of their own.
    if "target" in inspect.signature(Multiprocess).parameters:
        Multiprocess(settings, target=uvicorn.Server(settings).run, sockets=[sock]).run()  # type: ignore[call-arg, unused-ignore]
    else:
        Multiprocess(settings, sockets=[sock]).run()


def worker_app() -> ProxyApp:
    """The app of one worker process (uvicorn calls this factory in each)."""
    from ..app import create_app
    from ..ops.logs import setup_logging

    spec = json.loads(os.environ[WORKER_ENV])
    setup_logging(spec["log_level"], spec["log_format"])
    config = load(Path(spec["config"])) if spec["config"] else load()
    config = replace(config, server=replace(config.server, host=spec["host"], port=spec["port"]),
                     dataset=replace(config.dataset, session=spec["session"]))
    logging.getLogger("mooltiproxy").info("worker %d ready", os.getpid())
    app = create_app(config)
    tune_collector()
    return app


def _best(preferred: str, fallback: str) -> str:
    return preferred if importlib.util.find_spec(preferred) else fallback
