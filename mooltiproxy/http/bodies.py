"""Request and answer bodies: reading a request's body within its size and time limits, and JSON
that fails with a sentence (where it broke) instead of a traceback."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.types import Receive

from ..errors import BadRequest, ClientGone, PayloadTooLarge, UpstreamError


async def read_body(receive: Receive, limit: int, declared: int | None) -> bytes:
    """The whole request body, refused with 413 as soon as it is known to be over ``limit``. (The
    deadline for it to arrive is kept by the server's protocol: a timer per request costs nothing there.)"""
    if declared is not None and declared > limit:
        raise _too_large(limit)
    message = await receive()
    if message["type"] == "http.disconnect":
        # Before its first byte: the client left, ran out of time (408) or sent a body the server could not
        # parse. Nothing goes upstream from a body that did not arrive whole, not even an empty one.
        raise _gone()
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):
        if len(body) > limit:
            raise _too_large(limit)
        return body
    parts = [body]
    size = len(body)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _gone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        parts.append(chunk)
        if not message.get("more_body"):
            return b"".join(parts)


def _gone() -> ClientGone:
    return ClientGone("The request's body did not arrive whole: the client disconnected, ran out of time or sent a body "
                      "that could not be read.")


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is larger than the proxy accepts ({limit} bytes; server.max_body).")


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(
            f"The request body is not valid JSON ({exc}). Send a JSON object with Content-Type: application/json.",
            code="invalid_json",
        ) from None


def upstream_json(data: bytes, target: str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamError(
            f"The upstream of target '{target}' answered with something that is not JSON: {data[:100]!r}.",
            code="upstream_bad_answer",
        ) from None
