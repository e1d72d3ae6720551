"""Admin endpoints on the running proxy, for the master key only: list bans, lift one, reload the config."""

from __future__ import annotations

from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ..errors import BadRequest, Forbidden, NotFound
from ..guard.bans import normalize
from ..guard.keys import MASTER
from ..state.settings import Live


def _master_only(request: Request) -> None:
    if request.scope["mooltiproxy"].key_name != MASTER:
        raise Forbidden("The admin endpoints need the master key.", code="admin_only")


def routes(live: Live) -> list[Route]:
    ledger = live.ledger

    async def list_bans(request: Request) -> JSONResponse:
        _master_only(request)
        return JSONResponse({"bans": [
            {"address": b.address, "seconds_left": round(b.left(), 1), "failures": b.failures,
             "until": datetime.fromtimestamp(b.until, UTC).isoformat(timespec="seconds")}
            for b in ledger.bans()
        ]})

    async def unban(request: Request) -> JSONResponse:
        _master_only(request)
        address = normalize(request.path_params["address"])
        if not await ledger.unban(address):
            raise NotFound(f"{address} is not banned.", code="not_banned")
        return JSONResponse({"unbanned": address})

    async def reload(request: Request) -> JSONResponse:
        _master_only(request)
        if not live.reload():
            raise BadRequest("The config was not reloaded: it has problems (the proxy's log lists them) or there is no config file; "
                             "the running config stays.", code="reload_failed")
        return JSONResponse({"reloaded": str(live.settings.config.source), "targets": list(live.settings.router.targets)})

    return [
        Route("/admin/bans", list_bans, methods=["GET"]),
        Route("/admin/bans/{address:path}", unban, methods=["DELETE"]),
        Route("/admin/reload", reload, methods=["POST"]),
    ]
