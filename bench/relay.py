"""A minimal aiohttp relay: what a plain asyncio proxy in Python does on the same layout, for comparison.

    python -m bench.relay --port P --upstream http://127.0.0.1:N

Every request is sent to the upstream with its method, path, query and body, over aiohttp's pooled client
(no connection limit, as the proxy has none below its 1024), and the answer's body is returned with its
status and content type, and the request's ``x-request-id`` echoed as the proxy does. No authentication,
no access log, no recording: the floor of an aiohttp server and client in one process, on uvloop.
"""

from __future__ import annotations

import argparse

import aiohttp
from aiohttp import web


def build(upstream: str) -> web.Application:
    async def start(app: web.Application) -> None:
        app["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)

    async def stop(app: web.Application) -> None:
        await app["session"].close()

    async def relay(request: web.Request) -> web.Response:
        body = await request.read()
        headers = {"content-type": request.headers.get("content-type", "application/json")}
        session: aiohttp.ClientSession = request.app["session"]
        async with session.request(request.method, upstream + request.path_qs, data=body, headers=headers) as answer:
            data = await answer.read()
            out = {"content-type": answer.headers.get("content-type", "")}
            rid = request.headers.get("x-request-id")
            if rid is not None:  # echoed, as the proxy does, so a load generator can pair answers with requests
                out["x-request-id"] = rid
            return web.Response(body=data, status=answer.status, headers=out)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_route("*", "/{tail:.*}", relay)
    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True)
    args = p.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(build(args.upstream.rstrip("/")), host=args.host, port=args.port, access_log=None, print=None, backlog=4096)


if __name__ == "__main__":
    main()
