"""The Jinja sandbox prompters render in: transformers' chat-template dialect, with bounded output and time.

The environment is ``ImmutableSandboxedEnvironment`` with ``trim_blocks``, ``lstrip_blocks``,
``loopcontrols``, ``raise_exception``, ``strftime_now``, a non-escaping ``tojson`` and a no-op
``{% generation %}`` — what transformers' ``apply_chat_template`` uses. On top, what a template could
use to exhaust memory or time is bounded: ranges (Jinja's ``MAX_RANGE``), the results of ``*``, ``**``
and ``%``, string padding, ``replace``, ``join``, values kept in a ``namespace`` (the only way a value
can grow across a loop's turns, so concatenation is bounded there), and the render's own time.
Templates come from the operator's config, so these are guards against mistakes and careless
templates copied from the Hub, not a jail for a hostile author. The presets shipped with the project
render in ``Trusted``, the same dialect without the sandbox.
"""

from __future__ import annotations

import json
import re
import threading
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.parser
import jinja2.runtime
import jinja2.utils
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = ["Limits", "Refused", "Sandbox", "TooBig", "Trusted"]


@dataclass(frozen=True)
class Limits:
    """How much one render may build and how long it may take."""

    max_chars: int = 1024 * 1024
    max_seconds: float = 5.0


class Refused(jinja2.TemplateError):
    """The template called ``raise_exception``: it refuses these messages."""


class TooBig(SecurityError):
    """A render that would build more than its limits allow."""


class _Generation(jinja2.ext.Extension):
    """``{% generation %}…{% endgeneration %}`` marks assistant text for training masks; rendering keeps the body."""

    tags = {"generation"}  # noqa: RUF012 - Jinja reads this class attribute

    def parse(self, parser: jinja2.parser.Parser) -> list[jinja2.nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


class _Dict:
    """``dict(...)`` for templates, without handing them the ``dict`` type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


def _raise_exception(message: Any) -> None:
    raise Refused(str(message))


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False) -> str:
    # Jinja's own tojson escapes <, >, & and ' for HTML and sorts keys; templates expect plain json.dumps.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


# The dialect chat templates are written in (transformers' environment), trusted or sandboxed alike.
_DIALECT: dict[str, Any] = {"trim_blocks": True, "lstrip_blocks": True, "extensions": [_Generation, jinja2.ext.loopcontrols]}


def _add_helpers(env: jinja2.Environment) -> None:
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now


_PADDING = frozenset({"ljust", "rjust", "center", "zfill", "expandtabs"})
_WIDTH = re.compile(r"\d+")


# Callables that can take no context, environment or eval context (attributes cannot be set on them, so none carries
# Jinja's pass_context mark): a method of a str, list or dict, a built-in function.
_PLAIN_CALLABLES = (types.BuiltinMethodType, types.MethodWrapperType, types.MethodDescriptorType)


class _TrustedContext(jinja2.runtime.Context):
    """Jinja's context, calling a built-in method (``content.strip()``, ``message.get('x')``) without first looking
    for what Jinja would pass it: two attribute lookups and two dictionary removals a call, for an answer that is
    always "nothing". Everything else goes through Jinja's own ``call``."""

    def call(__self, __obj: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if type(__obj) in _PLAIN_CALLABLES:
            kwargs.pop("_loop_vars", None)
            kwargs.pop("_block_vars", None)
            try:
                return __obj(*args, **kwargs)
            except StopIteration:
                return __self.environment.undefined("value was undefined because a callable raised a StopIteration exception")
        return super().call(__obj, *args, **kwargs)


class Trusted(jinja2.Environment):
    """The same dialect without the sandbox, for the presets shipped in ``prompters/``: they are part of
    this project and reviewed like its code, and the sandbox's checks doubled their render time. A render
    runs whole (``render``) and is measured after: a preset's output grows with its messages, never beyond."""

    context_class = _TrustedContext

    def __init__(self, limits: Limits) -> None:
        super().__init__(**_DIALECT)
        self.limits = limits
        _add_helpers(self)

    def render(self, template: jinja2.Template, context: dict[str, Any]) -> str:
        rendered = template.render(context)
        if len(rendered) > self.limits.max_chars:
            raise TooBig(f"the prompt would be longer than {self.limits.max_chars} characters")
        return rendered


class Sandbox(ImmutableSandboxedEnvironment):
    """transformers' environment, with the amplifiers a template could use to exhaust memory or time bounded."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def __init__(self, limits: Limits) -> None:
        super().__init__(**_DIALECT)
        self.limits = limits
        # Per thread: one prompter may render in several threads at once.
        self._renders = threading.local()
        _add_helpers(self)
        for name in ("center", "indent", "join", "replace", "format", "wordwrap"):
            self.filters[name] = self._checked_filter(self.filters[name])
        self.globals["dict"] = _Dict()
        self.globals["namespace"] = self._namespace_class()

    # -- budget --------------------------------------------------------------------------------------

    def render(self, template: jinja2.Template, context: dict[str, Any]) -> str:
        """``template`` rendered piece by piece, stopped as soon as its output or its time exceeds the limits."""
        limit = self.limits.max_chars
        chunks: list[str] = []
        total = 0
        self._renders.deadline = time.monotonic() + self.limits.max_seconds
        self._renders.ticks = 0
        try:
            for chunk in template.generate(context):
                total += len(chunk)
                if total > limit:
                    raise TooBig(f"the prompt would be longer than {limit} characters")
                self.tick()
                chunks.append(chunk)
        finally:
            self._renders.deadline = None
        return "".join(chunks)

    def tick(self) -> None:
        # The clock is read every 64 operations: often enough to stop a runaway template within
        # milliseconds of its deadline, rarely enough not to slow the templates that behave.
        renders = self._renders
        ticks = getattr(renders, "ticks", 0) + 1
        renders.ticks = ticks
        if ticks & 63 == 0:
            deadline = getattr(renders, "deadline", None)
            if deadline is not None and time.monotonic() > deadline:
                raise TooBig(f"the template ran for more than {self.limits.max_seconds:g} seconds")

    def check_size(self, value: Any, what: str) -> Any:
        if isinstance(value, (str, list, tuple)) and len(value) > self.limits.max_chars:
            raise TooBig(f"{what} would be longer than {self.limits.max_chars} characters")
        return value

    def _check_widths(self, fmt: str, what: str) -> None:
        if any(int(w) > self.limits.max_chars for w in _WIDTH.findall(fmt)):
            raise TooBig(f"{what} asks for a width larger than {self.limits.max_chars} characters")

    def _check_join(self, sep: str, items: Any) -> list[str]:
        # Items are counted one by one, so a generator of huge strings is stopped before it is all built.
        out: list[str] = []
        total = 0
        for item in items:
            text = item if isinstance(item, str) else str(item)
            total += len(text) + (len(sep) if out else 0)
            if total > self.limits.max_chars:
                raise TooBig(f"join would be longer than {self.limits.max_chars} characters")
            out.append(text)
        return out

    def _check_replace(self, text: str, old: Any, new: Any, count: Any = -1) -> None:
        if not isinstance(old, str) or not isinstance(new, str):
            return
        hits = text.count(old) if old else len(text) + 1
        if isinstance(count, int) and count >= 0:
            hits = min(hits, count)
        if len(text) + hits * (len(new) - len(old)) > self.limits.max_chars:
            raise TooBig(f"replace would build more than {self.limits.max_chars} characters")

    # -- hooks the compiled template calls -------------------------------------------------------------

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        self.tick()
        if operator == "*":
            self._check_repeat(left, right)
            self._check_repeat(right, left)
            if _is_int(left) and _is_int(right) and left.bit_length() + right.bit_length() > 4096:
                raise TooBig("a multiplication would build a number of more than 4096 bits")
        elif operator == "**":
            if _is_int(left) and _is_int(right) and abs(left) > 1 and right * left.bit_length() > 4096:
                raise TooBig("a power would build a number of more than 4096 bits")
        elif operator == "+":
            if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
                self._check_length(len(left) + len(right), "a concatenation")
        elif operator == "%" and isinstance(left, str):
            self._check_widths(left, "a % format")
        return self.check_size(super().call_binop(context, operator, left, right), f"the result of {operator}")

    def _check_repeat(self, seq: Any, times: Any) -> None:
        if isinstance(seq, (str, list, tuple)) and _is_int(times) and times > 0:
            # A list repeated holds references, but printing or joining it builds every copy.
            unit = sum(len(x) if isinstance(x, str) else 1 for x in seq) if not isinstance(seq, str) else len(seq)
            self._check_length(unit * times, "a repetition")

    def _check_length(self, length: int, what: str) -> None:
        if length > self.limits.max_chars:
            raise TooBig(f"{what} would be longer than {self.limits.max_chars} characters")

    def call(__self, __context: jinja2.runtime.Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        __self.tick()
        for arg in (*args, *kwargs.values()):
            __self.check_size(arg, "an argument")
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):
            name = getattr(__obj, "__name__", "")
            if name in _PADDING:
                widths = [a for a in (*args, *kwargs.values()) if _is_int(a)]
                if any(w > __self.limits.max_chars for w in widths):
                    raise TooBig(f"{name}() asks for a width larger than {__self.limits.max_chars} characters")
            elif name == "join" and args:
                args = (__self._check_join(owner, args[0]), *args[1:])
            elif name == "replace" and len(args) >= 2:
                __self._check_replace(owner, *args[:3])
        return __self.check_size(super().call(__context, __obj, *args, **kwargs), "a call's result")

    def getattr(self, obj: Any, attribute: str) -> Any:
        self.tick()
        if isinstance(obj, str) and attribute in ("format", "format_map"):
            self._check_widths(obj, "a format string")
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        self.tick()
        if isinstance(obj, str) and argument in ("format", "format_map"):
            self._check_widths(obj, "a format string")
        return super().getitem(obj, argument)

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        # Jinja would hand back a blank that only fails when used further; refuse at once instead.
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")

    def _checked_filter(self, func: Callable[..., Any]) -> Callable[..., Any]:
        name = getattr(func, "__name__", "")

        def checked(*args: Any, **kwargs: Any) -> Any:
            self.tick()
            values = [a for a in args if not isinstance(a, (jinja2.runtime.Context, jinja2.nodes.EvalContext, jinja2.Environment))]
            numbers = [a for a in (*values[1:], *kwargs.values()) if _is_int(a)]
            if name in ("do_center", "do_indent", "do_wordwrap") and any(n > self.limits.max_chars for n in numbers):
                raise TooBig(f"a filter asks for a width larger than {self.limits.max_chars} characters")
            if name == "do_indent" and values and isinstance(values[0], str) and numbers:
                self._check_length(len(values[0]) + values[0].count("\n") * max(numbers), "indent")
            if name == "do_format" and values and isinstance(values[0], str):
                self._check_widths(values[0], "a format string")
            if name == "do_replace" and len(values) >= 3 and isinstance(values[0], str):
                self._check_replace(values[0], *values[1:4])
            if name == "do_join" and 1 <= len(values) <= 2 and "attribute" not in kwargs:
                sep = str(values[1] if len(values) == 2 else kwargs.get("d", ""))
                return sep.join(self._check_join(sep, values[0]))
            return self.check_size(func(*args, **kwargs), "a filter's result")

        for attr in ("jinja_pass_arg",):
            if hasattr(func, attr):
                setattr(checked, attr, getattr(func, attr))
        return checked

    def _namespace_class(self) -> type[jinja2.utils.Namespace]:
        env = self

        class TemplateNamespace(jinja2.utils.Namespace):
            """A namespace that stores no dunder names and no value beyond the size limit."""

            def __init__(*args: Any, **kwargs: Any) -> None:  # the same signature trick as Jinja's Namespace
                self, args = args[0], args[1:]
                attrs = dict(*args, **kwargs)
                for name, value in attrs.items():
                    TemplateNamespace._check(name, value)
                jinja2.utils.Namespace.__init__(self, attrs)

            def __setitem__(self, name: str, value: Any) -> None:
                TemplateNamespace._check(name, value)
                jinja2.utils.Namespace.__setitem__(self, name, value)

            @staticmethod
            def _check(name: Any, value: Any) -> None:
                if isinstance(name, str) and name.startswith("_"):
                    raise SecurityError(f"a namespace cannot hold the underscore-prefixed name {name!r}")
                env.tick()
                env.check_size(value, f"namespace value {name!r}")

        return TemplateNamespace


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
