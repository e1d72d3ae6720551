"""Dynamic host routing: ``POST /{host[:port]}/{path}`` goes to ``{scheme}://{host[:port]}/{path}`` when the
host is on the ``dynamic:`` list, with no target to configure for it.

Safe against request forgery by construction: a request names a host, never a URL; only a host on the
list is reached, by the scheme the list gives; the proxy follows no redirect (an upstream's 3xx goes
back to the client as it is). A listed host name is resolved by the proxy itself, and a connection is
made to the address it checked (no second lookup an attacker's DNS could answer differently): an
address that is loopback, private, link-local or otherwise not public is refused unless that very
address is on the list too. The API a path speaks is recognised for the dataset: ``…/chat/completions``
and ``…/completions`` are OpenAI's, a dialect's suffix (``…/messages``: the Anthropic Messages API) its
own; the rest is relayed and not recorded.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass

from ..backends.spec import Dialect
from ..config.model import DynamicHost, ServerConfig
from ..config.validators import split_host
from ..dataset.records import CHAT, COMPLETION
from ..errors import Forbidden, MethodNotAllowed, UpstreamError
from .targets import Route, Target, auth_header

_RESOLVED_FOR = 30.0  # seconds a host's checked address is reused
METHODS = ("GET", "POST", "HEAD")  # what a model API is reached with; anything else is refused, not relayed


@dataclass(frozen=True, slots=True)
class Destination:
    host: DynamicHost
    target: Target
    route: Route


def looks_like_host(segment: str) -> bool:
    """Whether a path's first segment names a host (``api.example.com``, ``127.0.0.1:9000``, ``localhost``)
    rather than one of the proxy's own paths (``v1``, ``generate``)."""
    return "." in segment or ":" in segment or segment.startswith("[") or segment == "localhost"


OTHER = "other"  # the route of a dynamic path in no API the proxy knows: metrics are labelled by host and route, never by path


def endpoint(path: str, dialects: Mapping[str, Dialect] = {}) -> str:
    """The inbound endpoint a dynamic path speaks, for recording and metrics: ``other`` if none. (Any client may
    send any path; labelled by their paths, the metrics would grow a series per path without end.)"""
    for inbound, dialect in dialects.items():
        if dialect.suffix and path.endswith(dialect.suffix):
            return inbound
    if path.endswith("/chat/completions"):
        return CHAT
    if path.endswith("/completions"):
        return COMPLETION
    return OTHER


class DynamicHosts:
    def __init__(self, hosts: Mapping[str, DynamicHost], server: ServerConfig, dialects: Mapping[str, Dialect] = {}) -> None:
        self.dialects = dialects
        self.by_address = {(h.host, h.port): h for h in hosts.values()}
        # Listed addresses with their ports: listing 127.0.0.1:9000 lets a name resolve to 127.0.0.1 only on port 9000.
        self.listed_ips = {(ipaddress.ip_address(h.host), h.port) for h in hosts.values() if _is_ip(h.host)}
        self.targets = {h.name: _target(h, server) for h in hosts.values()}
        self._resolved: dict[tuple[str, int], tuple[float, str]] = {}

    @staticmethod
    def claims(path: str) -> bool:
        """Whether ``path`` starts with a host, so ``match`` decides where it goes (or refuses it)."""
        end = path.find("/", 1)
        return looks_like_host(path[1:end] if end > 0 else path[1:])

    def match(self, path: str, method: str, raw_path: bytes | None = None) -> Destination | None:
        """Where ``path`` goes, if it starts with a host; ``Forbidden`` for a host that is not listed. The address
        to connect to is found (and checked) by ``address``, once the request may use the host at all. The rest
        of the path goes upstream as the client sent it (``raw_path``, still percent-encoded): decoded, a
        ``%20`` would break the request line and a ``%3F`` would start a query."""
        segment, slash, rest = path[1:].partition("/")
        if not looks_like_host(segment):
            return None
        parsed = split_host(segment)
        host = self._listed(parsed) if parsed is not None else None
        if host is None:
            raise Forbidden(
                f"{segment} is not on this proxy's list of hosts a request may name (dynamic: in config.yaml); "
                f"ask its administrator to add it.", code="host_not_allowed",
            )
        if method not in METHODS:
            raise MethodNotAllowed(f"A host named in the path is reached with {', '.join(METHODS)} only, not {method}.",
                                   headers=[("Allow", ", ".join(METHODS))])
        if raw_path is not None:
            _, slash_raw, rest_raw = raw_path.decode("latin-1")[1:].partition("/")
            upstream_path = slash_raw + rest_raw if rest_raw else "/"
        else:
            upstream_path = slash + rest if rest else "/"
        route = Route(inbound=endpoint(slash + rest, self.dialects), method=method, path=upstream_path)
        return Destination(host, self.targets[host.name], route)

    def _listed(self, parsed: tuple[str, int | None]) -> DynamicHost | None:
        name, port = parsed
        if port is not None:
            return self.by_address.get((name, port))
        return self.by_address.get((name, 443)) or self.by_address.get((name, 80))

    async def address(self, host: DynamicHost) -> str | None:
        """The checked address to connect to for ``host`` (None when the host is an address itself)."""
        if _is_ip(host.host):
            return None  # an address on the list is allowed as it is
        key = (host.host, host.port)
        cached = self._resolved.get(key)
        now = time.monotonic()
        if cached is not None and now - cached[0] < _RESOLVED_FOR:
            return cached[1]
        try:
            found = await asyncio.get_running_loop().getaddrinfo(host.host, host.port, type=socket.SOCK_STREAM)
        except socket.gaierror:
            raise UpstreamError(f"The host {host.name} (dynamic:) could not be reached: its name does not resolve.") from None
        addresses = [str(info[4][0]) for info in found]
        for address in addresses:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
            if not ip.is_global and (ip, host.port) not in self.listed_ips:
                raise Forbidden(
                    f"{host.name} resolves to {address}, which is not a public address; the proxy reaches such an address "
                    f"only when the address itself, with port {host.port}, is on its dynamic: list.", code="host_not_allowed",
                )
        self._resolved[key] = (now, addresses[0])
        return addresses[0]


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _target(host: DynamicHost, server: ServerConfig) -> Target:
    shown = f"[{host.host}]" if ":" in host.host else host.host
    default = 443 if host.scheme == "https" else 80
    url = f"{host.scheme}://{shown}" + ("" if host.port == default else f":{host.port}")
    return Target(
        name=host.name, type="dynamic", url=url, timeout=host.timeout or server.timeout, connect_timeout=server.connect_timeout,
        headers=(auth_header(host.auth, host.api_key),) if host.api_key else (), routes={}, auth=host.auth,
        forward_client_key=host.forward_client_key,
    )
