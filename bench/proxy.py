"""Run mooltiproxy for a benchmark, with another upstream client than the one it ships with.

    python -m bench.proxy --config FILE --port P --client aiohttp|httpx|httpx-aiohttp

``mooltiproxy serve`` uses its own HTTP/1.1 client (mooltiproxy/h1.py); these exist so the harness
can show why (RESULTS.md).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from typing import Any

from mooltiproxy.app import create_app
from mooltiproxy.config import load
from mooltiproxy.server import run


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
    p.add_argument("--client", default="aiohttp", choices=["aiohttp", "httpx", "httpx-aiohttp"])
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    config = replace(load(args.config), server=replace(load(args.config).server, port=args.port))
    if args.client == "aiohttp":
        from .aiohttp_client import AiohttpClient

        app = create_app(config, upstream=AiohttpClient)
    else:
        app = create_app(config, transport=transport(args.client))
    run(app, config.server)


if __name__ == "__main__":
    main()
