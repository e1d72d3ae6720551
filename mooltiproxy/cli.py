"""The ``mooltiproxy`` command: ``serve`` and ``check``."""

from __future__ import annotations

import argparse
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
    serve.add_argument("--session", help="append to this dataset session (default: dataset.session, else a new one)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes sharing the port (default: 1)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--log-format", default="text", choices=["text", "json"], help="plain lines or one JSON object per line")
    serve.set_defaults(run=_serve)

    check = sub.add_parser("check", help="validate a config, import every mapper and prompter it names")
    _config_arg(check)
    check.set_defaults(run=_check)

    render = sub.add_parser("render", help="print the prompt and stop strings a chat request would produce, without calling the backend")
    _config_arg(render)
    render.add_argument("--target", "-t", required=True, help="the target whose route and prompter to use")
    render.add_argument("--character", help="a character the target offers (as the x-character header would pick)")
    render.add_argument("--json", action="store_true", help="print {prompt, stop, upstream} as JSON")
    render.add_argument("messages", type=Path, help="a JSON file: a list of messages, or a whole request body")
    render.set_defaults(run=_render)

    keygen = sub.add_parser("keygen", help="print a strong random key for MOOLTIPROXY_KEY (or a named key)")
    keygen.set_defaults(run=_keygen)

    bans = sub.add_parser("bans", help="list the addresses the running proxy has banned")
    _admin_args(bans)
    bans.set_defaults(run=_bans)

    unban = sub.add_parser("unban", help="lift a ban on the running proxy")
    _admin_args(unban)
    unban.add_argument("address", help="the banned IP address")
    unban.set_defaults(run=_unban)

    from . import dataset_cli

    dataset_cli.add_commands(sub)

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
    from .app import create_app

    config = _load(args)
    app = create_app(config)  # everything serve would refuse, refused here too
    where = config.source or "built-in defaults"
    names = ", ".join(f"{t.name} ({t.type})" for t in app.state.live.settings.router.targets.values()) or "none"
    print(f"{where}: OK. Targets: {names}.")
    return 0


def _render(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from .errors import ProxyError
    from .mapping import MapContext
    from .validators import did_you_mean

    config = _load(args)
    targets = build_targets(config)
    target = targets.get(args.target)
    if target is None:
        print(f"No target named '{args.target}'{did_you_mean(args.target, targets)}; targets: {', '.join(targets) or 'none'}.",
              file=sys.stderr)
        return 1
    try:
        data = json.loads(args.messages.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"{args.messages}: cannot be read as JSON ({exc})", file=sys.stderr)
        return 1
    body = data if isinstance(data, dict) else {"messages": data}
    body.setdefault("model", target.name)
    path = "/v1/completions" if "prompt" in body and "messages" not in body else "/v1/chat/completions"
    route = target.routes.get(path)
    if route is None or route.request is None:
        print(f"Target '{target.name}' passes {path} through unchanged: no prompt is rendered.")
        return 0
    try:
        ctx = MapContext(target=target, path=path, model=body.get("model"), request_id="render", stream=bool(body.get("stream")),
                         prompter=target.prompter, character=target.pick_character(args.character), request=body)
        upstream = asyncio.run(route.request(body, ctx))
    except ProxyError as exc:
        print(f"This request would be refused with {exc.status}: {exc.message}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"prompt": ctx.prompt, "stop": ctx.stop, "upstream": upstream}, ensure_ascii=False, indent=2))
        return 0
    print(f"--- prompt ({len(ctx.prompt or '')} characters) ---")
    print(ctx.prompt)
    print("--- stop strings ---")
    print(json.dumps(ctx.stop, ensure_ascii=False))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from .app import create_app
    from .logs import setup_logging
    from .recorder import new_session
    from .server import run, run_workers

    config = _load(args)
    server = config.server
    if args.host or args.port is not None:
        server = replace(server, host=args.host or server.host, port=server.port if args.port is None else args.port)
        config = replace(config, server=server)
    if args.session:
        config = replace(config, dataset=replace(config.dataset, session=args.session))
    setup_logging(args.log_level, args.log_format)
    if args.workers > 1:
        create_app(config)  # refuse a config that cannot run before any worker starts
        # One session for every worker, so they append to one dataset file.
        config = replace(config, dataset=replace(config.dataset, session=config.dataset.session or new_session()))
        run_workers(config, args.workers, log_level=args.log_level, log_format=args.log_format)
        return 0
    run(create_app(config), server)
    return 0


def _keygen(args: argparse.Namespace) -> int:
    from .keys import new_key

    print(new_key())
    return 0


def _admin_args(p: argparse.ArgumentParser) -> None:
    _config_arg(p)
    p.add_argument("--url", help="the proxy's base URL (default: from server.host, server.port and server.tls)")


def _admin(args: argparse.Namespace, method: str, path: str) -> int:
    """Call an admin endpoint of the running proxy with the master key from the environment."""
    import json
    import os

    import httpx

    config = _load(args)
    key = os.environ.get(config.auth.master_key_env)
    if not key:
        print(f"The environment variable {config.auth.master_key_env} is not set: the admin endpoints need the master key.",
              file=sys.stderr)
        return 1
    server = config.server
    host = "127.0.0.1" if server.host in ("0.0.0.0", "::", "") else server.host
    if ":" in host:
        host = f"[{host}]"
    base = args.url or f"{'https' if server.tls else 'http'}://{host}:{server.port}"
    verify: str | bool = str(server.tls.certfile) if server.tls and not args.url else True
    try:
        r = httpx.request(method, base.rstrip("/") + path, headers={"authorization": f"Bearer {key}"}, verify=verify, timeout=10)
    except httpx.HTTPError as exc:
        print(f"Cannot reach the proxy at {base}: {exc}", file=sys.stderr)
        return 1
    body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
    if r.status_code >= 400:
        print(body.get("error", {}).get("message") or f"The proxy answered {r.status_code}.", file=sys.stderr)
        return 1
    if method == "GET":
        bans = body.get("bans", [])
        for ban in bans:
            print(f"{ban['address']}\tbanned until {ban['until']} ({ban['seconds_left']:.0f} s left, {ban['failures']} failures)")
        if not bans:
            print("No address is banned.")
    else:
        print(json.dumps(body) if not body.get("unbanned") else f"Unbanned {body['unbanned']}.")
    return 0


def _bans(args: argparse.Namespace) -> int:
    return _admin(args, "GET", "/admin/bans")


def _unban(args: argparse.Namespace) -> int:
    from urllib.parse import quote

    return _admin(args, "DELETE", "/admin/bans/" + quote(args.address, safe=""))
