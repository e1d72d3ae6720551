"""The original mooltiproxy's config.yaml: recognised (``system:``, ``cerbere:``, targets with ``mapping:``),
and turned into this version's equivalent by ``mooltiproxy migrate OLD NEW``.

What it knows of the old format: ``system`` (``port``, ``timeout``, ``ssl`` with the pair in
``certificates/``, ``debug``, a literal ``masterkey``), ``cerbere`` (``max_tries``, ``whitelist``,
``blacklist``), targets with ``url`` (often ending in ``/v1``), ``key`` (literal) or ``envkey``,
``preserveMethod``, and a ``mapping`` of the client's paths, each passed through, renamed (a string) or
translated (``path``, ``in``, ``out``, ``prompter``, ``template``), and ``templates`` (or ``prompts``) of
``preprompt``/``start``/``system``/``user``/``assistant`` strings. Clients of the original called the
proxy's root (``/chat/completions``); the new config keeps those paths working, beside the ``/v1`` ones a
target's type gives. A secret is never written to the new file: it becomes an environment variable to set.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

LEGACY_SECTIONS = ("system", "cerbere")

# The original's mapper functions that have a built-in equivalent: (its translation, the route kind).
TGI_CHAT = {"chatReqOpenAItoTGI", "chatAnsTGItoOpenAI"}
TGI_COMPLETION = {"textReqOpenAItoTGI", "textAnsTGItoOpenAI"}
KNOWN_MAPPERS = TGI_CHAT | TGI_COMPLETION | {"identity"}
PROMPTERS = {"llama2_chat": "llama2-chat"}  # its prompter functions with a preset of the same layout
_GET_PATHS = {"/models", "/health", "/info", "/metrics"}  # served with GET (the original took GET and POST alike)


def looks_legacy(data: Any) -> bool:
    """Whether loaded YAML data is a config of the original mooltiproxy."""
    if not isinstance(data, dict):
        return False
    if any(key in data for key in LEGACY_SECTIONS):
        return True
    targets = data.get("targets")
    return isinstance(targets, dict) and any(isinstance(t, dict) and ("mapping" in t or "envkey" in t) for t in targets.values())


def problem(source: str) -> str:
    return (f"(top level): this is a config of the original mooltiproxy (system:, cerbere:, targets with mapping:), which this "
            f"version does not read. Run: mooltiproxy migrate {source} config.new.yaml — it writes the equivalent config and "
            f"lists what is left to do by hand")


def migrate(data: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The equivalent config, and the notes on what the user must do (variables to export, mappers to port)."""
    notes: list[str] = []
    out: dict[str, Any] = {}
    system = data.get("system") or {}
    server: dict[str, Any] = {}
    if "port" in system:
        server["port"] = system["port"]
    if "timeout" in system:
        server["timeout"] = system["timeout"]
    if system.get("ssl"):
        server["tls"] = {"certfile": "certificates/cert.pem", "keyfile": "certificates/key.pem"}
    if system.get("debug"):
        notes.append("system.debug: run `mooltiproxy serve --log-level debug` for the same")
    if server:
        out["server"] = server
    auth: dict[str, Any] = {}
    if system.get("masterkey"):
        notes.append("system.masterkey: the master key lives in the environment now; export MOOLTIPROXY_KEY with the value of "
                     "system.masterkey from the old file (or a new one: `mooltiproxy keygen`) before `mooltiproxy serve`")
    else:
        notes.append("the master key: export MOOLTIPROXY_KEY with the key your clients send (as the original read it)")
    cerbere = data.get("cerbere") or {}
    if "max_tries" in cerbere:
        auth["max_failures"] = cerbere["max_tries"]
    for key in ("whitelist", "blacklist"):
        if cerbere.get(key):
            auth[key] = list(cerbere[key])
    if cerbere:
        notes.append("cerbere: a ban now lasts auth.ban seconds (3600 by default), not until a restart, and is kept across "
                     "restarts in datasets/state.db; a request with no key is refused without counting")
    if auth:
        out["auth"] = auth
    templates = data.get("templates") or data.get("prompts") or {}
    targets: dict[str, Any] = {}
    for name, spec in (data.get("targets") or {}).items():
        if name == "default":
            targets["default"] = spec
            continue
        targets[name] = _target(str(name), spec or {}, templates, notes)
    if targets:
        out["targets"] = targets
    notes.append("clients: the original answered at its root (base URL http://host:port); the routes above keep those "
                 "paths, and the OpenAI SDK's usual base URL http://host:port/v1 works too")
    return out, notes


def _target(name: str, spec: Mapping[str, Any], templates: Mapping[str, Any], notes: list[str]) -> dict[str, Any]:
    at = f"targets.{name}"
    parts = urlsplit(str(spec.get("url") or ""))
    base = f"{parts.scheme}://{parts.netloc}"
    prefix = parts.path.rstrip("/")  # e.g. /v1: the original joined it with every mapped path
    target: dict[str, Any] = {"url": base}
    if spec.get("key"):
        variable = re.sub(r"[^A-Z0-9]+", "_", name.upper()).strip("_") + "_API_KEY"
        target["api_key_env"] = variable
        notes.append(f"{at}.key: the upstream's key lives in the environment now; export {variable} with the value of "
                     f"{at}.key from the old file")
    elif spec.get("envkey"):
        target["api_key_env"] = spec["envkey"]
    if "preserveMethod" in spec:
        notes.append(f"{at}.preserveMethod: dropped; the proxy follows no redirect, so a POST is never turned into a GET")
    mapping = spec.get("mapping") or {}
    uses = {str(m.get(k)) for m in mapping.values() if isinstance(m, dict) for k in ("in", "out") if m.get(k)}
    if uses & (TGI_CHAT | TGI_COMPLETION):
        target["type"] = "tgi"
    routes: dict[str, Any] = {}
    for path, entry in mapping.items():
        routes[str(path)] = _route(at, str(path), prefix, entry, target, templates, notes)
    if target.get("type") == "tgi" and "prompter" not in target:
        target["prompter"] = "llama2-chat"
        notes.append(f"{at}.prompter: a TGI target needs one to lay chats out; llama2-chat is set, change it to your model's")
    if routes:
        target["routes"] = routes
    return target


def _route(at: str, path: str, prefix: str, entry: Any, target: dict[str, Any], templates: Mapping[str, Any],
           notes: list[str]) -> dict[str, Any]:
    """One mapping entry as a route: the client's old path, going to the same upstream path as before."""
    route: dict[str, Any] = {"path": prefix + path}
    if isinstance(entry, str):
        route["path"] = prefix + entry
    elif isinstance(entry, dict):
        if entry.get("path"):
            route["path"] = prefix + str(entry["path"])
        names = {k: str(entry[k]) for k in ("in", "out") if entry.get(k)}
        kinds = set(names.values())
        if kinds & TGI_CHAT or kinds & TGI_COMPLETION:
            kind = "chat" if kinds & TGI_CHAT else "completion"
            route.update({"request": f"tgi.{kind}_request", "answer": f"tgi.{kind}_answer", "stream": f"tgi.{kind}_stream",
                          "error": "tgi.error", "stream_path": prefix + "/generate_stream"})
        for key, value in names.items():
            if value not in KNOWN_MAPPERS:
                kind = "request" if key == "in" else "answer"
                notes.append(f"{at}.mapping.{path}.{key}: the mapper {value} has no built-in equivalent; write it as a mapper "
                             f"(README, 'Write your own mapper') and name it under {at}.routes.{path}.{kind}")
        prompter = entry.get("prompter") or entry.get("prompt")
        if prompter:
            _prompter(at, path, str(prompter), entry.get("template"), target, templates, notes)
    if path in _GET_PATHS:
        route["method"] = "GET"
    return route


def _prompter(at: str, path: str, name: str, template: Any, target: dict[str, Any], templates: Mapping[str, Any],
              notes: list[str]) -> None:
    if name in PROMPTERS:
        target["prompter"] = PROMPTERS[name]
        notes.append(f"{at}.mapping.{path}.prompter: the original put a default system prompt into chats that had none; "
                     f"{PROMPTERS[name]} adds none (send one from the client if the model needs it)")
        return
    if name == "fromTemplate" and isinstance(templates.get(template), dict):
        target["prompter"] = _inline(templates[template])
        notes.append(f"{at}.mapping.{path}: template {template} is the target's inline prompter now; the original put a default "
                     f"system prompt into chats that had none, this one puts none")
        return
    notes.append(f"{at}.mapping.{path}.prompter: {name} has no built-in equivalent; pick a preset (mooltiproxy render shows the "
                 f"result) or write the layout as a .jinja template")


def _inline(template: Mapping[str, Any]) -> dict[str, Any]:
    """An original template (its strings around each turn) as an inline Jinja prompter laying chats out the same way."""
    def text(key: str) -> str:
        value = str(template.get(key) or "")
        return "{% raw %}" + value + "{% endraw %}" if value else ""

    body = (text("preprompt")
            + "{% if messages and messages[0].role == 'system' %}{{ messages[0].content }}{% set rest = messages[1:] %}"
              "{% else %}{% set rest = messages %}{% endif %}"
            + text("start")
            + "{% for m in rest %}{% if m.role == 'user' %}" + text("user") + "{% elif m.role == 'assistant' %}" + text("assistant")
            + "{% else %}" + text("system") + "{% endif %}{{ m.content }}{% endfor %}"
            + "{% if add_generation_prompt %}" + text("assistant") + "{% endif %}")
    out: dict[str, Any] = {"template": body}
    if template.get("user"):
        out["stop"] = [str(template["user"])]
    return out
