"""What a backend module declares: the extension point for a new backend API, built-ins included.

A backend is one module (``mappers/tgi.py``, or a file beside a user's config.yaml) whose ``BACKEND``
says everything the proxy needs to speak that API: the routes a target of this ``type:`` gets and the
mappers that translate them, the options it takes (validated at startup), how its key is sent, whether
chats need a prompter, and, when the proxy can also speak the API in front (answer a client of it), the
``Front`` for that, and when it records that API's exchanges relayed as they are, the ``Dialect``.
Built-in backends register through the ``mooltiproxy.backends`` entry point group, as an installed
package's backends do (``backends/registry.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..dataset.reassembly import StreamReassembler
    from ..errors import ProxyError

MapperRef = str | Callable[..., Any]  # a function, or its name as a config would write it (module.function)


@dataclass(frozen=True)
class Option:
    """One entry of a target's ``options:`` for this type."""

    validate: Callable[[Any], Any]  # raises voluptuous.Invalid with a sentence, or returns the value to use
    default: Any
    doc: str


@dataclass(frozen=True)
class RouteSpec:
    """One inbound path of a target of this type: where it goes upstream and what translates it (``None``:
    relayed as it is). A target's own ``routes:`` are merged over these, field by field."""

    path: str | None = None  # upstream path; None: the inbound path
    stream_path: str | None = None  # upstream path for "stream": true, when the backend has another one
    method: str = "POST"
    request: MapperRef | None = None
    answer: MapperRef | None = None
    stream: MapperRef | None = None
    error: MapperRef | None = None
    stream_format: str = "sse"  # sse | ndjson

    @classmethod
    def get(cls, path: str | None = None) -> RouteSpec:
        """A route relayed with GET."""
        return cls(path=path, method="GET")


@dataclass(frozen=True)
class Front:
    """The backend's API answered by the proxy, in front of any target: its requests become OpenAI ones on the
    target's ``base`` route, the OpenAI answers, streams and errors become its own again."""

    paths: tuple[str, ...]  # the inbound paths it answers
    base: str  # the OpenAI route it rides on
    request: MapperRef
    answer: MapperRef | None
    stream: MapperRef | None
    error: MapperRef | None  # an upstream's OpenAI error body -> this API's error body
    frame: Callable[[Any], bytes]  # one event of its stream, as bytes
    done: bytes  # what closes a stream that ended well (b"" for none)
    error_body: Callable[[ProxyError, bool], Any]  # the proxy's own error in this API's shape (full: with the detail)


@dataclass(frozen=True)
class Dialect:
    """How the recorder reads this API's exchanges when they are relayed untranslated (a Messages request to an
    Anthropic target): its request and answer in the OpenAI shape records are made from."""

    path: str  # the inbound path, e.g. /v1/messages
    suffix: str  # a dynamic host's path ending in this speaks the API too, e.g. /messages ("": no dynamic path does)
    request: Callable[[Any], dict[str, Any]]
    answer: Callable[[Any], dict[str, Any]]
    reassembler: Callable[[int | None], StreamReassembler]  # puts its stream back together, text capped at the limit
    kind: str = "chat"  # what its exchanges are recorded as: a chat, or a completion (a prompt and its text)


@dataclass(frozen=True)
class Backend:
    """A backend API: what ``type: <name>`` means."""

    name: str
    doc: str  # one line, for `mooltiproxy check` and the docs
    routes: Mapping[str, RouteSpec]
    options: Mapping[str, Option] = field(default_factory=dict)
    needs_prompter: bool = False  # chats become one prompt string: a target of this type needs a prompter
    auth: str = "bearer"  # how the target's key is sent: bearer (Authorization) or x-api-key
    headers: Mapping[str, str] = field(default_factory=dict)  # header sent upstream -> the option holding its value
    fronts: tuple[Front, ...] = ()
    dialects: tuple[Dialect, ...] = ()
