"""mooltiproxy: a config-driven translation proxy between the OpenAI API and LLM backends.

What a mapper or a backend module needs is exported here: ``MapContext``, ``Fanout``, the errors a mapper
may raise, and ``helpers`` (building OpenAI answers and chunks, reading requests, rendering prompts).
"""

from .app import create_app
from .config.load import Config, load
from .errors import MappingError, UpstreamError, UpstreamStatus
from .translate import helpers
from .translate.mapping import Fanout, MapContext

__all__ = ["Config", "Fanout", "MapContext", "MappingError", "UpstreamError", "UpstreamStatus", "create_app", "helpers", "load"]
__version__ = "0.1.0"
