"""Starting without a config file: ``serve --target URL`` builds a one-target config from its flags, and
``mooltiproxy init`` writes a commented ``config.yaml`` from the template to grow into.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..config.model import Config
from ..errors import ConfigError
from ..state.settings import parse

TARGET = "main"  # the name of the one target the flags describe


def target_spec(url: str, type: str | None = None, prompter: str | None = None, api_key_env: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"url": url}
    if type:
        spec["type"] = type
    if prompter:
        spec["prompter"] = prompter
    if api_key_env:
        spec["api_key_env"] = api_key_env
    return spec


def one_target(spec: dict[str, Any]) -> Config:
    """Every default, and one target (named ``main``, the default) as the flags describe it; problems are
    reported as the flags they came from."""
    try:
        return parse({"targets": {"default": TARGET, TARGET: spec}}, environ=dict(os.environ), base_dir=Path.cwd())
    except ConfigError as exc:
        raise ConfigError([_as_flag(p) for p in exc.problems]) from None


def _as_flag(problem: str) -> str:
    for key, flag in (("url", "--target"), ("type", "--type"), ("prompter", "--prompter"), ("api_key_env", "--api-key-env")):
        prefix = f"targets.{TARGET}.{key}:"
        if problem.startswith(prefix):
            return f"{flag}:{problem[len(prefix):]}"
    return problem


def template() -> str:
    return resources.files("mooltiproxy.config").joinpath("template.yaml").read_text(encoding="utf-8")


def write_config(path: Path, spec: dict[str, Any] | None, *, force: bool) -> None:
    """The template as ``path``, with the target ``spec`` (when given) filled in as the default; the file is
    checked as ``serve`` would load it before it is written."""
    if path.exists() and not force:
        raise ConfigError([f"{path}: already exists; edit it, or run init with --force to replace it with the template"])
    text = template()
    if spec is not None:
        anchor = "targets:\n  default: null "
        assert anchor in text, "the template's targets section moved"
        line = yaml.safe_dump({TARGET: spec}, default_flow_style=True, sort_keys=False).strip()[1:-1]
        text = text.replace(anchor, f"targets:\n  {line}   # written by mooltiproxy init\n  default: {TARGET} ", 1)
    data = yaml.safe_load(text) or {}
    try:
        parse(data, environ={**os.environ, **_placeholders(spec)}, base_dir=path.resolve().parent)
    except ConfigError as exc:
        raise ConfigError([f"{path} would not load: {p}" for p in exc.problems]) from None
    path.write_text(text, encoding="utf-8")


def _placeholders(spec: dict[str, Any] | None) -> dict[str, str]:
    """A key variable named by the flags need not be set yet to write the file (it must be to serve)."""
    name = (spec or {}).get("api_key_env")
    return {name: "set-before-serving"} if name and name not in os.environ else {}
