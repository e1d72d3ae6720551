"""mooltiproxy: a config-driven translation proxy between the OpenAI API and LLM backends.

What a mapper or a backend module needs is exported here: ``MapContext``, ``Fanout``, the errors a mapper
may raise, and ``helpers`` (building OpenAI answers and chunks, reading requests, rendering prompts).
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import create_app
    from .config.model import Config
    from .errors import MappingError, UpstreamError, UpstreamStatus
    from .state.settings import load, parse
    from .translate import helpers
    from .translate.mapping import Fanout, MapContext

# Imported when first asked for: a process that needs one part (the recorder process) does not load the whole proxy.
_WHERE = {"create_app": ".app", "Config": ".config.model", "MappingError": ".errors", "UpstreamError": ".errors",
          "UpstreamStatus": ".errors", "load": ".state.settings", "parse": ".state.settings", "helpers": ".translate.helpers",
          "Fanout": ".translate.mapping", "MapContext": ".translate.mapping"}


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'mooltiproxy' has no attribute {name!r}")
    import importlib

    module = importlib.import_module(where, __name__)
    value = module if name == "helpers" else getattr(module, name)
    globals()[name] = value
    return value


__all__ = ["Config", "Fanout", "MapContext", "MappingError", "UpstreamError", "UpstreamStatus", "create_app", "helpers", "load",
           "parse"]
__version__ = "0.1.0"
