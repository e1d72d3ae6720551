"""Mapper functions: how a route names them, how they are found and checked, and what they are given.

A mapper is plain Python, sync or async::

    def chat_request(body: dict, ctx: MapContext) -> dict          # inbound body → upstream body
    def chat_answer(body: dict, ctx: MapContext) -> dict           # upstream body → inbound-API body
    async def chat_stream(events, ctx) -> AsyncIterator[dict]      # upstream events → inbound-API events

A name is ``module.function`` for a file in ``mappers/`` (the installed package first, then a
``mappers/`` folder beside the config file) or ``package.module:function`` for anything importable.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import inspect
import logging
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ..errors import MapperFailed, MappingError, ProxyError

if TYPE_CHECKING:
    from ..routing.targets import Target

log = logging.getLogger("mooltiproxy")

BUILT_IN = "mooltiproxy.mappers"  # the repository's mappers/ folder, installed under the package's name

__all__ = ["Fanout", "MapContext", "Mapper", "MapperLookupError", "MappingError", "mapper", "resolve"]


class Fanout(list[Any]):
    """What a request mapper returns when one inbound request needs several upstream calls: ``n`` > 1
    on a backend without ``n``, or a list of prompts. Each body is sent and mapped on its own; the
    answers come back to the client as one, their choices numbered in the order of the bodies.
    ``prompts`` says how many different prompts the bodies hold, so usage counts each prompt once."""

    def __init__(self, bodies: list[Any], *, prompts: int | None = None) -> None:
        super().__init__(bodies)
        self.prompts = len(bodies) if prompts is None else prompts


@dataclass(slots=True)
class MapContext:
    """What a mapper may need for one exchange, and nothing more."""

    target: Target
    path: str
    model: str | None
    request_id: str
    stream: bool = False
    prompter: Any = None
    character: Any = None  # the character card to lay into a chat (chosen by x-character), if any
    request: Any = None  # the inbound body, parsed; answer and stream mappers may look back at it
    upstream_status: int = 0
    upstream_headers: Mapping[str, str] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)  # handed from the request mapper to the others
    prompt: str | None = None  # the rendered prompt, when the request mapper made one (it is recorded)
    stop: list[str] = field(default_factory=list)  # stop strings in force, which answers are cut at
    upstream_path: str | None = None  # a request mapper may send the request elsewhere than the route's path


class MapperLookupError(Exception):
    """A mapper name that does not lead to a usable function; the message says why."""


@dataclass(frozen=True, slots=True)
class Mapper:
    """A resolved mapper: its name as configured and the function behind it."""

    name: str
    func: Callable[..., Any]
    is_async: bool

    async def __call__(self, body: Any, ctx: MapContext) -> Any:
        result = self.func(body, ctx)
        if self.is_async:
            result = await result
        return result

    def stream(self, events: AsyncIterator[Any], ctx: MapContext) -> AsyncIterator[Any]:
        return self.func(events, ctx)  # type: ignore[no-any-return]


def mapper(ref: str | Callable[..., Any], *, kind: str, base_dir: Path | None = None) -> Mapper:
    """A mapper from a backend's declaration (the function itself) or a config (its name), checked for ``kind``."""
    if not callable(ref):
        return resolve(ref, kind=kind, base_dir=base_dir)
    name = f"{ref.__module__.rpartition('.')[2]}.{ref.__name__}"
    _check_signature(name, ref, kind)
    return Mapper(name=name, func=ref, is_async=inspect.iscoroutinefunction(ref))


def resolve(name: str, *, kind: str, base_dir: Path | None = None) -> Mapper:
    """Find the function ``name`` and check it can serve as a ``kind`` mapper (request/answer/error/stream)."""
    if ":" in name:
        module_name, _, attr = name.partition(":")
        module = _import(module_name, name)
    else:
        module_name, dot, attr = name.rpartition(".")
        if not dot or not module_name or not attr:
            raise MapperLookupError(
                f"'{name}' is not a mapper name: write module.function for a file in mappers/, or package.module:function"
            )
        module = _from_mappers_folder(module_name, name, base_dir)
    func = getattr(module, attr, None)
    if func is None:
        public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_") and inspect.isfunction(v)
                        and v.__module__ == module.__name__)
        raise MapperLookupError(f"module '{module_name}' has no function '{attr}'; it has: {', '.join(public) or 'no functions'}")
    if not callable(func):
        raise MapperLookupError(f"'{name}' is not a function")
    _check_signature(name, func, kind)
    return Mapper(name=name, func=func, is_async=inspect.iscoroutinefunction(func))


def _check_signature(name: str, func: Callable[..., Any], kind: str) -> None:
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(None, None)
    except TypeError:
        raise MapperLookupError(f"'{name}' must take two arguments (body, ctx); its signature is {name.split('.')[-1]}{sig}") from None
    if kind == "stream":
        if not (inspect.isasyncgenfunction(func) or inspect.iscoroutinefunction(func)):
            raise MapperLookupError(
                f"'{name}' is used as a stream mapper, so it must be an async generator: async def f(events, ctx): ... yield event"
            )
    elif inspect.isasyncgenfunction(func) or inspect.isgeneratorfunction(func):
        raise MapperLookupError(f"'{name}' is a generator, but a {kind} mapper must return one body (use it as stream:)")


def _import(module_name: str, full: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise MapperLookupError(f"cannot import '{module_name}' for '{full}': no such module") from None
        raise MapperLookupError(f"cannot import '{module_name}' for '{full}': {exc}") from None
    except Exception as exc:  # a user's module may fail in any way while importing
        raise MapperLookupError(f"importing '{module_name}' for '{full}' failed: {type(exc).__name__}: {exc}") from None


def _from_mappers_folder(module_name: str, full: str, base_dir: Path | None) -> ModuleType:
    try:
        return importlib.import_module(f"{BUILT_IN}.{module_name}")
    except ModuleNotFoundError as exc:
        if exc.name not in (f"{BUILT_IN}.{module_name}", BUILT_IN, f"{BUILT_IN}.{module_name.split('.')[0]}"):
            raise MapperLookupError(f"importing mappers/{module_name}.py for '{full}' failed: {exc}") from None
    except Exception as exc:
        raise MapperLookupError(f"importing mappers/{module_name}.py for '{full}' failed: {type(exc).__name__}: {exc}") from None
    if base_dir is not None and (base_dir / "mappers" / (module_name.replace(".", "/") + ".py")).is_file():
        return user_module(module_name, base_dir, full)
    where = f" or {base_dir / 'mappers'}" if base_dir is not None else ""
    raise MapperLookupError(f"no mapper module '{module_name}' for '{full}': looked in the installed mappers package{where}")


# A config's own mappers/ folder is imported as a package of its own (so its modules import each other with
# ``from . import …``), named after the folder so that two configs never share a module.


def _user_package(base_dir: Path) -> str:
    return "mooltiproxy_user_mappers_" + hashlib.sha1(str(base_dir.resolve()).encode()).hexdigest()[:12]


def user_module(module_name: str, base_dir: Path, full: str | None = None) -> ModuleType:
    """``mappers/<module_name>.py`` beside the config, imported as part of the folder's package."""
    package = _user_package(base_dir)
    folder = base_dir / "mappers"
    if package not in sys.modules:
        init = folder / "__init__.py"
        spec = (importlib.util.spec_from_file_location(package, init, submodule_search_locations=[str(folder)]) if init.is_file()
                else importlib.machinery.ModuleSpec(package, None, is_package=True))
        assert spec is not None
        module = importlib.util.module_from_spec(spec)
        if not init.is_file():
            module.__path__ = [str(folder)]
        sys.modules[package] = module
        if spec.loader is not None:
            try:
                spec.loader.exec_module(module)
            except Exception as exc:
                del sys.modules[package]
                raise MapperLookupError(f"importing {init} failed: {type(exc).__name__}: {exc}") from None
    try:
        return importlib.import_module(f"{package}.{module_name}")
    except Exception as exc:  # a user's module may fail in any way while importing
        raise MapperLookupError(f"importing {folder / (module_name.replace('.', '/') + '.py')}"
                                f"{f' for {full!r}' if full else ''} failed: {type(exc).__name__}: {exc}") from None


def forget_user_modules(base_dir: Path) -> None:
    """Drop the config's own mapper modules, so that the next lookup reads their files again: a reloaded config
    runs the mapper code as it is now on disk (requests in flight keep the functions they started with)."""
    package = _user_package(base_dir)
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
        del sys.modules[name]


# ------------------------------------------------------------------------------------ calling them


async def run_stream_mapper(mapper: Mapper, events: AsyncIterator[Any], ctx: MapContext) -> AsyncGenerator[Any, None]:
    """Run a stream mapper, turning its failures into ``ProxyError`` the way ``call_mapper`` does."""
    gen = mapper.stream(events, ctx)
    try:
        async for event in gen:
            yield event
    except ProxyError:
        raise
    except Exception as exc:
        raise mapper_failed(mapper, exc) from None
    finally:
        aclose = getattr(gen, "aclose", None)
        if aclose is not None:
            await aclose()


async def call_mapper(mapper: Mapper, body: Any, ctx: MapContext) -> Any:
    """Call a mapper; ``MappingError`` (and any ``ProxyError``) passes through, anything else is the mapper's bug."""
    try:
        return await mapper(body, ctx)
    except ProxyError:
        raise
    except Exception as exc:
        raise mapper_failed(mapper, exc) from None


def mapper_failed(mapper: Mapper, exc: Exception) -> MapperFailed:
    log.error("mapper %s failed", mapper.name, exc_info=exc)
    return MapperFailed(
        f"The mapper '{mapper.name}' failed with {type(exc).__name__}: {exc}. This is a bug in the mapper; "
        f"the proxy's log has its traceback."
    )
