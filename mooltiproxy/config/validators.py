"""Voluptuous validators that speak in sentences, and the formatting of a problem's path.

The config schema is built from these so that every problem reads as ``path.to.key: sentence``
and an unknown key comes with a "did you mean" when one is close.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

import voluptuous as vol

Validator = Callable[[Any], Any]


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` when a choice is close to ``word``, else an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def format_path(path: Iterable[Any]) -> str:
    """``targets.local.routes["/v1/chat"].request``: dotted where a key is a plain word."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z0-9_-]+", str(part)):
            out += f".{part}" if out else str(part)
        else:
            out += f'["{part}"]'
    return out or "(top level)"


def _key_name(key: Any) -> str:
    return str(key.schema) if isinstance(key, vol.Marker) else str(key)


def section(fields: Mapping[Any, Any], *, what: str = "section") -> Validator:
    """A mapping with exactly these keys: unknown keys are reported, each with a suggestion."""
    schema = vol.Schema(dict(fields), extra=vol.ALLOW_EXTRA)
    names = [_key_name(k) for k in fields]

    def validate(value: Any) -> dict[str, Any]:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise vol.Invalid(f"must be a mapping of keys to values, not {_kind(value)}")
        errors: list[vol.Invalid] = [
            vol.Invalid(f"unknown key in this {what}{did_you_mean(str(key), names)}; known keys: {', '.join(names)}", path=[key])
            for key in value
            if str(key) not in names
        ]
        out: dict[str, Any] = {}
        try:
            out = schema(value)
        except vol.MultipleInvalid as exc:
            errors.extend(exc.errors)
        if errors:
            raise vol.MultipleInvalid(errors)
        return {k: v for k, v in out.items() if str(k) in names}

    validate.fields = {_key_name(k): v for k, v in fields.items()}  # type: ignore[attr-defined]
    return validate


def under(key: Any, exc: vol.Invalid) -> list[vol.Invalid]:
    """The problems ``exc`` holds (one, or each of several), placed under ``key`` of the value checked."""
    found = list(exc.errors) if isinstance(exc, vol.MultipleInvalid) else [exc]
    for err in found:
        err.prepend([key])
    return found


def mapping_of(key: Validator, value: Validator) -> Validator:
    """A mapping whose keys and values are each validated; every bad entry is reported."""

    def validate(data: Any) -> dict[Any, Any]:
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise vol.Invalid(f"must be a mapping, not {_kind(data)}")
        errors: list[vol.Invalid] = []
        out: dict[Any, Any] = {}
        for k, v in data.items():
            try:
                k2 = key(k)
            except vol.Invalid as exc:
                errors.append(vol.Invalid(exc.msg, path=[k]))
                continue
            try:
                out[k2] = value(v)
            except vol.Invalid as exc:
                errors.extend(under(k, exc))
        if errors:
            raise vol.MultipleInvalid(errors)
        return out

    return validate


def list_of(item: Validator) -> Validator:
    """A list (or a single value, as a list of one) of what ``item`` accepts, as a tuple."""
    def validate(data: Any) -> tuple[Any, ...]:
        if data is None:
            return ()
        if isinstance(data, str):
            data = [data]
        if not isinstance(data, (list, tuple)):
            raise vol.Invalid(f"must be a list, not {_kind(data)}")
        errors: list[vol.Invalid] = []
        out = []
        for i, v in enumerate(data):
            try:
                out.append(item(v))
            except vol.Invalid as exc:
                errors.extend(under(i, exc))
        if errors:
            raise vol.MultipleInvalid(errors)
        return tuple(out)

    return validate


def _kind(value: Any) -> str:
    if value is None:
        return "empty"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "true/false", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__
    )


def text(*, pattern: str | None = None, hint: str = "") -> Validator:
    def validate(value: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise vol.Invalid(f"must be a string, not {_kind(value)}")
        out = str(value)
        if pattern and not re.fullmatch(pattern, out):
            raise vol.Invalid(hint or f"must match {pattern}")
        return out

    return validate


def optional_text(value: Any) -> str | None:
    return None if value is None else str(text()(value))


def maybe(validator: Validator) -> Validator:
    """``validator``, or null. (voluptuous's ``Any(None, v)`` would hide ``v``'s sentence behind "not a valid value".)"""

    def validate(value: Any) -> Any:
        return None if value is None else validator(value)

    return validate


def integer(*, min: int | None = None, max: int | None = None) -> Validator:
    def validate(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise vol.Invalid(f"must be a whole number, not {_kind(value)} {value!r}")
        if min is not None and value < min:
            raise vol.Invalid(f"must be at least {min}, not {value}")
        if max is not None and value > max:
            raise vol.Invalid(f"must be at most {max}, not {value}")
        return value

    return validate


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise vol.Invalid(f"must be true or false, not {_kind(value)} {value!r}")
    return value


def one_of(*choices: str) -> Validator:
    def validate(value: Any) -> str:
        if value not in choices:
            raise vol.Invalid(f"must be one of {', '.join(choices)}, not {value!r}{did_you_mean(str(value), choices)}")
        return str(value)

    return validate


_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
               "kib": 1024, "mib": 1024**2, "gib": 1024**3}


def size(value: Any) -> int:
    """Bytes, from ``8388608``, ``8MiB``, ``512KiB`` or ``2MB``."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _SIZE_UNITS or isinstance(value, bool):
        raise vol.Invalid(f"must be a size such as 8MiB, 512KiB or a number of bytes, not {value!r}")
    result = int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    if result <= 0:
        raise vol.Invalid(f"must be more than 0 bytes, not {value!r}")
    return result


_DURATION_UNITS = {"": 1, "s": 1, "ms": 0.001, "m": 60, "min": 60, "h": 3600, "d": 86400}


def duration(*, allow_zero: bool = False) -> Validator:
    """Seconds, from a number or ``30s`` / ``10m`` / ``1h`` / ``250ms``."""

    def validate(value: Any) -> float:
        if isinstance(value, bool):
            raise vol.Invalid(f"must be a number of seconds, not {value!r}")
        if isinstance(value, (int, float)):
            seconds = float(value)
        else:
            m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", str(value))
            if not m or m.group(2) not in _DURATION_UNITS:
                raise vol.Invalid(f"must be a number of seconds or a duration such as 30s, 10m, 1h, not {value!r}")
            seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        if seconds < 0 or (seconds == 0 and not allow_zero):
            raise vol.Invalid(f"must be more than 0 seconds, not {value!r}")
        return seconds

    return validate


def url(value: Any) -> str:
    if not isinstance(value, str):
        raise vol.Invalid(f"must be a URL such as http://127.0.0.1:8080, not {_kind(value)}")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise vol.Invalid(f"must be an http:// or https:// URL with a host, such as http://127.0.0.1:8080, not {value!r}")
    if parts.query or parts.fragment:
        raise vol.Invalid("must not carry a query string or fragment; put per-route paths under routes")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise vol.Invalid(f"has a port that is not a number: {value!r}") from None
    return value.rstrip("/")


_HOSTNAME = re.compile(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")


def split_host(value: str) -> tuple[str, int | None] | None:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` as (lower-case host, port or None); None if it is none of those."""
    text = value.strip().lower()
    host, port = text, None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        host, rest = text[1:end], text[end + 1:]
        if rest:
            if not rest.startswith(":"):
                return None
            host, port = host, _port(rest[1:])
            if port is None:
                return None
        try:
            if ipaddress.ip_address(host).version != 6:
                return None
        except ValueError:
            return None
        return host, port
    if text.count(":") == 1:
        host, _, digits = text.partition(":")
        port = _port(digits)
        if port is None:
            return None
    elif ":" in text:
        return None
    try:
        ipaddress.ip_address(host)
        return host, port
    except ValueError:
        pass
    return (host, port) if _HOSTNAME.fullmatch(host) else None


def _port(digits: str) -> int | None:
    return int(digits) if digits.isdigit() and 0 < int(digits) < 65536 else None


def host_port(value: Any) -> str:
    """A host the proxy may route to by name: ``api.example.com``, ``api.example.com:8443``, ``127.0.0.1:9000``."""
    if not isinstance(value, str) or split_host(value) is None:
        raise vol.Invalid(f"must be a host name or IP address with an optional port, such as api.deepseek.com or 127.0.0.1:9000, "
                          f"not {value!r}")
    return value.strip().lower()


def redis_url(value: Any) -> str:
    if not isinstance(value, str):
        raise vol.Invalid(f"must be a Redis URL such as redis://127.0.0.1:6379/0, not {_kind(value)}")
    parts = urlsplit(value)
    if parts.scheme not in ("redis", "rediss", "unix") or not (parts.hostname or parts.path):
        raise vol.Invalid(f"must be a redis://, rediss:// or unix:// URL such as redis://127.0.0.1:6379/0, not {redacted(value)!r}")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise vol.Invalid(f"has a port that is not a number: {redacted(value)!r}") from None
    return value


def postgres_dsn(value: Any) -> str:
    """A PostgreSQL connection string, as a URL (postgresql://user@host/db) or as key=value pairs."""
    if not isinstance(value, str) or not value.strip():
        raise vol.Invalid("must be a PostgreSQL connection string such as postgresql://user:password@127.0.0.1:5432/mooltiproxy")
    if "://" in value and urlsplit(value).scheme not in ("postgresql", "postgres"):
        raise vol.Invalid(f"must be a postgresql:// URL or key=value pairs, not {redacted(value)!r}")
    if "://" not in value and "=" not in value:
        raise vol.Invalid("must be a postgresql:// URL or key=value pairs such as 'host=127.0.0.1 dbname=mooltiproxy'")
    return value


def redacted(value: str) -> str:
    """A connection URL or key=value string with its password replaced by ***, fit for a message or a log."""
    if "://" in value:
        parts = urlsplit(value)
        if parts.password:
            netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
            return parts._replace(netloc=netloc).geturl()
        return value
    return re.sub(r"(password\s*=\s*)(\S+)", r"\1***", value)


def network(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An address or CIDR block, IPv4 or IPv6."""
    try:
        return ipaddress.ip_network(str(value), strict=False)
    except ValueError:
        raise vol.Invalid(f"must be an IP address or CIDR block such as 10.0.0.0/8 or ::1, not {value!r}") from None


def env_name(value: Any) -> str:
    return str(text(pattern=r"[A-Za-z_][A-Za-z0-9_]*", hint=f"must be the name of an environment variable, not {value!r}")(value))
