"""mooltiproxy: a config-driven translation proxy between the OpenAI API and LLM backends.

What a mapper or a backend module needs is exported here: ``MapContext``, ``Fanout``, the errors a mapper
may raise, and ``helpers`` (building OpenAI answers and chunks, reading requests, rendering prompts).
"""

from .app import create_app
from .config.model import Config
from .errors import MappingError, UpstreamError, UpstreamStatus
from .state.settings import load, parse
from .translate import helpers
from .translate.mapping import Fanout, MapContext

__all__ = ["Config", "Fanout", "MapContext", "MappingError", "UpstreamError", "UpstreamStatus", "create_app", "helpers", "load",
           "parse"]
__version__ = "0.1.0"
