"""Run mooltiproxy for a benchmark with one part swapped, so the harness can show what each choice is worth.

    python -m bench.proxy --config FILE --port P --client h1|aiohttp|httpx|httpx-aiohttp [--gc tuned|default]

``mooltiproxy serve`` uses its own HTTP/1.1 client (mooltiproxy/h1.py) and tuned garbage collection
(ops/collector.py); ``--client`` swaps the first, ``--gc default`` undoes the second. Logging is set
up as ``serve`` sets it up, so an access line per request costs the same in every variant.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from mooltiproxy import load
from mooltiproxy.app import create_app
from mooltiproxy.http.server import run
from mooltiproxy.ops.logs import setup_logging


def transport(kind: str) -> Any:
    import httpx

    if kind == "httpx":
        return httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=None, max_keepalive_connections=1000))
    if kind == "httpx-aiohttp":
        import aiohttp
        from httpx_aiohttp import AiohttpTransport

        return AiohttpTransport(client=lambda: aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)))
    raise SystemExit(f"unknown client {kind}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--client", default="aiohttp", choices=["h1", "aiohttp", "httpx", "httpx-aiohttp"])
    p.add_argument("--gc", default="tuned", choices=["tuned", "default"])
    p.add_argument("--log-level", default="info")
    args = p.parse_args()
    setup_logging(args.log_level)
    loaded = load(args.config)
    config = replace(loaded, server=replace(loaded.server, port=args.port))
    if args.client == "h1":
        app = create_app(config)
    elif args.client == "aiohttp":
        from .aiohttp_client import AiohttpClient

        app = create_app(config, upstream=AiohttpClient)
    else:
        app = create_app(config, transport=transport(args.client))
    run(app, config.server, tune=args.gc == "tuned")


if __name__ == "__main__":
    main()
