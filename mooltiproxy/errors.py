"""The exception tree of the proxy and the one place that renders it as an OpenAI error body.

Every error the proxy itself answers with is a ``ProxyError``. Code anywhere on a request's path raises
one; ``render`` / ``sse_event`` turn it into bytes. A broken configuration is a ``ConfigError`` instead:
it never reaches a client, it stops startup with every problem listed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import orjson


class ProxyError(Exception):
    """An error the proxy answers with, as ``{"error": {"message", "type", "param", "code"}}``."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        detail: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        # What only those who run the proxy should read (an upstream's address, config keys to change): added
        # to the message for the master key and in the log, left out for everyone else.
        self.detail = detail
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        if code is not None:
            self.code = code
        self.param = param
        self.headers = list(headers)

    def full_message(self) -> str:
        return f"{self.message} {self.detail}" if self.detail else self.message

    def body(self, full: bool = False) -> dict[str, dict[str, str | int | None]]:
        """The OpenAI error body; ``full`` adds the detail meant for the proxy's administrator."""
        message = self.full_message() if full else self.message
        return {"error": {"message": message, "type": self.type, "param": self.param, "code": self.code}}


class BadRequest(ProxyError):
    """The request cannot be understood or translated (400)."""

    status = 400
    type = "invalid_request_error"


class MappingError(BadRequest):
    """Raised by a mapper for input it cannot translate; the client gets a 400 with the sentence."""


class Unauthorized(ProxyError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class Forbidden(ProxyError):
    status = 403
    type = "permission_error"


class NotFound(ProxyError):
    status = 404
    type = "invalid_request_error"


class MethodNotAllowed(ProxyError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class PayloadTooLarge(ProxyError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class TooManyRequests(ProxyError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class Unavailable(ProxyError):
    """The proxy cannot serve right now for a reason of its own (503)."""

    status = 503
    type = "server_error"
    code = "unavailable"


class ClientGone(ProxyError):
    """The client disconnected before the exchange was over; nobody is left to read an answer."""

    status = 499
    type = "client_closed_request"


class UpstreamError(ProxyError):
    """The upstream could not be reached or answered in a way the proxy cannot use (502)."""

    status = 502
    type = "upstream_error"
    code = "upstream_unreachable"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class UpstreamStatus(ProxyError):
    """An upstream's own error, carried through with its status and message."""

    type = "upstream_error"
    code = None


class MapperFailed(UpstreamError):
    """A mapper raised something other than ``MappingError``: a bug in the mapper, not in the request."""

    code = "mapper_failed"


class StateDown(Exception):
    """The shared state (Redis) could not be reached for an operation; the caller falls back on local state."""


class ConfigError(Exception):
    """A configuration that cannot run, with every problem as ``path.to.key: sentence``."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


_JSON = (b"content-type", b"application/json")


def render(exc: ProxyError, request_id: str = "", *, full: bool = False,
           shape: Callable[[ProxyError, bool], Any] | None = None) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, headers and body of the HTTP answer for ``exc`` (``full``: with its detail, for the administrator), in
    OpenAI's shape or the one ``shape`` makes (the API of the path it was asked on)."""
    body = orjson.dumps(shape(exc, full) if shape is not None else exc.body(full))
    headers = [_JSON, (b"content-length", str(len(body)).encode())]
    if request_id:
        headers.append((b"x-request-id", request_id.encode()))
    headers.extend((k.lower().encode(), v.encode()) for k, v in exc.headers)
    return exc.status, headers, body


def sse_event(exc: ProxyError, full: bool = False) -> bytes:
    """The same error as one server-sent event, for a stream whose headers are already sent.

    The OpenAI SDK raises ``APIError`` on a ``data:`` payload whose ``error`` key is set, so a client
    never mistakes a broken stream for a short answer.
    """
    return b"data: " + orjson.dumps(exc.body(full)) + b"\n\n"
