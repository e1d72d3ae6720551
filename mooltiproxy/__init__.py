"""mooltiproxy: a config-driven translation proxy between the OpenAI API and LLM backends."""

from .app import create_app
from .config import Config, load
from .errors import MappingError
from .mapping import MapContext

__all__ = ["Config", "MapContext", "MappingError", "create_app", "load"]
__version__ = "0.1.0"
