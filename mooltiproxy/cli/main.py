"""The ``mooltiproxy`` command: ``serve``, ``init``, ``check``, ``render``, ``keygen``, the admin commands
(``bans``, ``unban``) and ``dataset``."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from .. import __version__
from ..backends import registry
from ..config.model import Config
from ..errors import ConfigError
from ..routing.targets import notes
from ..state.settings import load


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mooltiproxy", description="A config-driven translation proxy for LLM APIs.")
    parser.add_argument("--version", action="version", version=f"mooltiproxy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    types = ", ".join(sorted(registry.installed()))

    serve = sub.add_parser("serve", help="run the proxy")
    _config_arg(serve)
    serve.add_argument("--target", metavar="URL", help="run with no config file: one target at this URL, everything else at its "
                       "default (recording on)")
    serve.add_argument("--type", help=f"with --target: the target's type ({types}; default openai)")
    serve.add_argument("--prompter", help="with --target: the prompt template for chats (llama2-chat, chatml, ...)")
    serve.add_argument("--api-key-env", metavar="VAR", help="with --target: the environment variable holding the upstream's key")
    serve.add_argument("--host", help="address to listen on (default: server.host)")
    serve.add_argument("--port", type=int, help="port to listen on (default: server.port)")
    serve.add_argument("--session", help="append to this dataset session (default: dataset.session, else a new one)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes sharing the port (default: 1)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--log-format", default="text", choices=["text", "json"], help="plain lines or one JSON object per line")
    serve.set_defaults(run=_serve)

    init = sub.add_parser("init", help="write a commented config.yaml from the template, to edit")
    init.add_argument("--config", "-c", type=Path, default=Path("config.yaml"), help="where to write it (default: config.yaml)")
    init.add_argument("--force", action="store_true", help="replace the file if it exists")
    init.add_argument("--target", metavar="URL", help="fill in a first target at this URL, as the default")
    init.add_argument("--type", help=f"with --target: the target's type ({types})")
    init.add_argument("--prompter", help="with --target: the prompt template for chats")
    init.add_argument("--api-key-env", metavar="VAR", help="with --target: the environment variable holding the upstream's key")
    init.set_defaults(run=_init)

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

    migrate = sub.add_parser("migrate", help="write the equivalent of an original mooltiproxy config.yaml (system:, cerbere:, "
                             "mapping:) and list what is left to do by hand")
    migrate.add_argument("old", type=Path, help="the original config file")
    migrate.add_argument("new", type=Path, help="where to write the new one")
    migrate.add_argument("--force", action="store_true", help="replace NEW if it exists")
    migrate.set_defaults(run=_migrate)

    keygen = sub.add_parser("keygen", help="print a strong random key for MOOLTIPROXY_KEY (or a named key)")
    keygen.set_defaults(run=_keygen)

    bans = sub.add_parser("bans", help="list the addresses the running proxy has banned")
    _admin_args(bans)
    bans.set_defaults(run=_bans)

    unban = sub.add_parser("unban", help="lift a ban on the running proxy")
    _admin_args(unban)
    unban.add_argument("address", help="the banned IP address")
    unban.set_defaults(run=_unban)

    from . import dataset as dataset_cli

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
    from ..app import create_app

    config = _load(args)
    app = create_app(config)  # everything serve would refuse, refused here too
    _reach(config, redis=True)
    where = config.source or "built-in defaults"
    targets = app.runtime.live.settings.router.targets.values()
    names = ", ".join(f"{t.name} ({t.type})" for t in targets) or "none"
    print(f"{where}: OK. Targets: {names}.")
    for note in (note for target in targets for note in notes(target)):
        print(f"  note: {note}")
    return 0


def _render(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from ..config.validators import did_you_mean
    from ..errors import ProxyError
    from ..translate.mapping import MapContext

    config = _load(args)
    targets = config.built
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
    from ..app import create_app
    from ..dataset.recorder import new_session
    from ..http.server import run, run_workers
    from ..ops.logs import setup_logging

    spec = _target_flags(args)
    config = _quick_config(args, spec) if spec is not None else _load(args)
    server = config.server
    if args.host or args.port is not None:
        server = replace(server, host=args.host or server.host, port=server.port if args.port is None else args.port)
        config = replace(config, server=server)
    if args.session:
        config = replace(config, dataset=replace(config.dataset, session=args.session))
    setup_logging(args.log_level, args.log_format)
    _reach(config, redis=False)  # an unreachable Redis is survived (and logged); an unreachable dataset database is not
    if args.workers > 1:
        create_app(config)  # refuse a config that cannot run before any worker starts
        # One session for every worker, so they append to one dataset file.
        config = replace(config, dataset=replace(config.dataset, session=config.dataset.session or new_session()))
        run_workers(config, args.workers, log_level=args.log_level, log_format=args.log_format)
        return 0
    run(create_app(config), server)
    return 0


def _target_flags(args: argparse.Namespace) -> dict[str, Any] | None:
    """The target ``--target URL`` and its companion flags describe, if given."""
    from . import quickstart

    flags = [f for f in ("type", "prompter", "api_key_env") if getattr(args, f)]
    if flags and not args.target:
        raise ConfigError([f"--{flags[0].replace('_', '-')}: describes the target given with --target URL; add --target"])
    return quickstart.target_spec(args.target, args.type, args.prompter, args.api_key_env) if args.target else None


def _quick_config(args: argparse.Namespace, spec: dict[str, Any]) -> Config:
    from . import quickstart

    if args.config is not None:
        raise ConfigError(["--target: runs without a config file; leave out --config, or put the target in the file"])
    if args.workers > 1:
        raise ConfigError(["--workers: needs a config file for its workers to read; write one with: mooltiproxy init --target URL"])
    return quickstart.one_target(spec)


def _migrate(args: argparse.Namespace) -> int:
    import yaml

    from ..config import legacy
    from ..config.load import read

    data, _ = read(args.old)
    if not legacy.looks_legacy(data):
        print(f"{args.old} is not a config of the original mooltiproxy (no system:, cerbere: or mapping:); "
              f"`mooltiproxy check --config {args.old}` checks it as it is.", file=sys.stderr)
        return 1
    if args.new.exists() and not args.force:
        print(f"{args.new} exists; pass --force to replace it.", file=sys.stderr)
        return 1
    converted, notes = legacy.migrate(data)
    class Dumper(yaml.SafeDumper):
        """Strings with line breaks (a template's layout) as literal blocks, which read as they render."""

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)

    Dumper.add_representer(str, text)
    header = f"# Written by `mooltiproxy migrate` from {args.old.name}; every key and its default: config.template.yaml\n"
    args.new.write_text(header + yaml.dump(converted, Dumper=Dumper, sort_keys=False, allow_unicode=True, width=120),
                        encoding="utf-8")
    print(f"{args.new}: written. Left to do by hand:")
    for note in notes:
        print(f"  - {note}")
    print(f"Then: mooltiproxy check --config {args.new}")
    return 0


def _init(args: argparse.Namespace) -> int:
    from . import quickstart

    spec = _target_flags(args)
    quickstart.write_config(args.config, spec, force=args.force)
    print(f"Wrote {args.config}: every setting with its default, commented. Next:")
    if spec is None:
        print("  1. add a target under 'targets:' (the commented example shows how)")
    print(f"  {'2' if spec is None else '1'}. export MOOLTIPROXY_KEY=$(mooltiproxy keygen)")
    print(f"  {'3' if spec is None else '2'}. mooltiproxy serve --config {args.config}")
    return 0


def _reach(config: Config, *, redis: bool) -> None:
    """The services the config names answer: the dataset's PostgreSQL, and (for ``check``) the shared Redis."""
    from ..config.validators import redacted

    problems = []
    if config.dataset.sink == "postgres" and config.dataset.dsn:
        import psycopg

        from ..dataset import postgres

        try:
            postgres.connect(config.dataset.dsn).close()
        except psycopg.Error as exc:
            problems.append(f"dataset.dsn: cannot use PostgreSQL at {redacted(config.dataset.dsn)}: {str(exc).strip()}")
    if redis and config.state is not None:
        import redis as redis_sync

        try:
            redis_sync.Redis.from_url(config.state, socket_connect_timeout=2, socket_timeout=2).ping()
        except (redis_sync.RedisError, OSError) as exc:
            problems.append(f"state: Redis at {redacted(config.state)} does not answer ({exc}); the proxy would run on local state "
                            "until it does")
    if problems:
        raise ConfigError(problems)


def _keygen(args: argparse.Namespace) -> int:
    from ..guard.keys import new_key

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
