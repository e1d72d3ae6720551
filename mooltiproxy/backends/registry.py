"""Which backends exist: those installed (the ``mooltiproxy.backends`` entry point group, the built-ins
among them) and those a config brings in a module of its own (``type: NAME`` for ``mappers/NAME.py``
beside config.yaml, defining ``BACKEND``).

Everything that used to be a list kept by hand is derived from here: the types a target may have, the
fronts the proxy answers in, and the dialects the recorder reads.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Mapping
from importlib.metadata import entry_points
from pathlib import Path

from ..config.validators import did_you_mean
from ..translate.mapping import MapperLookupError, user_module
from .spec import Backend, Dialect, Front

log = logging.getLogger("mooltiproxy")

GROUP = "mooltiproxy.backends"


class BackendLookupError(Exception):
    """A ``type:`` that names no backend; the message says which exist."""


@functools.cache
def installed() -> Mapping[str, Backend]:
    """The backends of every installed package, by name (read once per process)."""
    found: dict[str, Backend] = {}
    for entry in entry_points(group=GROUP):
        try:
            backend = entry.load()
        except Exception:  # another package's broken backend must not stop the proxy
            log.exception("the backend %s (%s) could not be loaded; it is left out", entry.name, entry.value)
            continue
        if not isinstance(backend, Backend):
            log.error("the entry point %s (%s) is not a mooltiproxy Backend; it is left out", entry.name, entry.value)
            continue
        found[backend.name] = backend
    return found


def find(name: str, base_dir: Path | None) -> Backend:
    """The backend ``type: name`` means: an installed one, else ``BACKEND`` in ``mappers/name.py`` beside the config."""
    backend = installed().get(name)
    if backend is not None:
        return backend
    if base_dir is not None and (base_dir / "mappers" / f"{name}.py").is_file():
        try:
            module = user_module(name, base_dir)
        except MapperLookupError as exc:
            raise BackendLookupError(str(exc)) from None
        declared = getattr(module, "BACKEND", None)
        if not isinstance(declared, Backend):
            raise BackendLookupError(f"mappers/{name}.py beside the config has no BACKEND = mooltiproxy.backends.Backend(...)")
        return declared
    raise BackendLookupError(f"must be one of {', '.join(sorted(installed()))}, or a backend module mappers/{name}.py beside the "
                             f"config, not {name!r}{did_you_mean(name, installed())}")


def fronts(backends: Iterable[Backend]) -> dict[str, Front]:
    """Every path the proxy answers in another API, and the front that does."""
    return {path: front for backend in backends for front in backend.fronts for path in front.paths}


def dialects(backends: Iterable[Backend]) -> dict[str, Dialect]:
    return {dialect.path: dialect for backend in backends for dialect in backend.dialects}
