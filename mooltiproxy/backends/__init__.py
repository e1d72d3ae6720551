"""Backends: one module per backend API declares it (``spec.py``), and the registry finds them."""

from ..config.validators import boolean, integer, maybe, one_of, optional_text, text
from .spec import Backend, Dialect, Front, Option, RouteSpec

# With the declarations, the validators an Option usually needs.
__all__ = ["Backend", "Dialect", "Front", "Option", "RouteSpec", "boolean", "integer", "maybe", "one_of", "optional_text", "text"]
