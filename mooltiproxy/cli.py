"""The ``mooltiproxy`` command: ``serve`` and ``check``."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

from . import __version__
from .config import Config, load
from .errors import ConfigError
from .targets import build_targets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mooltiproxy", description="A config-driven translation proxy for LLM APIs.")
    parser.add_argument("--version", action="version", version=f"mooltiproxy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the proxy")
    _config_arg(serve)
    serve.add_argument("--host", help="address to listen on (default: server.host)")
    serve.add_argument("--port", type=int, help="port to listen on (default: server.port)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(run=_serve)

    check = sub.add_parser("check", help="validate a config, import every mapper and prompter it names")
    _config_arg(check)
    check.set_defaults(run=_check)

    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except ConfigError as exc:
        _print_problems(args, exc)
        return 1


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", "-c", type=Path, help="config file (default: ./config.yaml if present, else the built-in defaults)"
    )


def _print_problems(args: argparse.Namespace, exc: ConfigError) -> None:
    source = getattr(args, "config", None) or (Path("config.yaml") if Path("config.yaml").exists() else "the configuration")
    n = len(exc.problems)
    print(f"{source} has {n} problem{'s' if n != 1 else ''}:", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)


def _load(args: argparse.Namespace) -> Config:
    return load(args.config)


def _check(args: argparse.Namespace) -> int:
    config = _load(args)
    targets = build_targets(config)
    where = config.source or "built-in defaults"
    names = ", ".join(f"{t.name} ({t.type})" for t in targets.values()) or "none"
    print(f"{where}: OK. Targets: {names}.")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from .app import create_app
    from .server import run

    config = _load(args)
    server = config.server
    if args.host or args.port is not None:
        server = replace(server, host=args.host or server.host, port=server.port if args.port is None else args.port)
        config = replace(config, server=server)
    _setup_logging(args.log_level)
    run(create_app(config), server)
    return 0


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
