"""The near-free upstream: nginx answering every POST with one fixed chat completion (or TGI answer).

With ``return 200 '…'`` nginx neither runs a handler nor touches a disk, so a direct connection to it
measures little more than the loopback and the load generator, and whatever a proxy adds stands out.
One process (``master_process off``), in the foreground, bound to 127.0.0.1, everything under a
temporary prefix.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .procs import LOAD_CORE, PROXY_CORE, Proc, Procs, free_port, wait_listening

CHAT = {
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": "bench",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "The quick brown fox jumps over the lazy dog."},
                 "finish_reason": "stop", "logprobs": None}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 10, "total_tokens": 22},
}
TGI = {"generated_text": " The quick brown fox jumps over the lazy dog.",
       "details": {"finish_reason": "eos_token", "generated_tokens": 10, "seed": None, "prefill": [], "tokens": []}}


def binary() -> str | None:
    """nginx's path (Debian's ``nginx-light`` puts it in /usr/sbin, which a user's PATH may lack), or None."""
    return shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


def _literal(doc: object) -> str:
    text = json.dumps(doc, separators=(",", ":"))
    # Inside nginx's single-quoted string, $ would start a variable and ' would end the string.
    assert "'" not in text and "$" not in text
    return text


def _head(prefix: Path) -> str:
    """What both configs share: one worker in the foreground, no access log, connections kept alive for a whole run,
    files under ``prefix``; the ``http`` block is left open for the rest."""
    return f"""daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/body;
  proxy_temp_path {prefix}/proxy;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
"""


def config(prefix: Path, port: int) -> str:
    return _head(prefix) + f"""  client_body_buffer_size 64k;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    default_type application/json;
    location /generate {{ return 200 '{_literal(TGI)}'; }}
    location / {{ return 200 '{_literal(CHAT)}'; }}
  }}
}}
"""


def relay_config(prefix: Path, port: int, upstream: str) -> str:
    """nginx as a keep-alive reverse proxy: the floor any proxy on this layout pays for the extra hop."""
    return _head(prefix) + f"""  upstream up {{ server {upstream.removeprefix("http://")}; keepalive 256; keepalive_requests 10000000; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off; }}
  }}
}}
"""


def _run(procs: Procs, prefix: Path, name: str, text: str, port: int, core: int) -> tuple[Proc, str]:
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(text)
    nginx = binary()
    if nginx is None:
        raise RuntimeError("nginx is not installed: apt-get install nginx-light")
    proc = procs.start(name, [nginx, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")], core=core)
    wait_listening(proc, port)
    return proc, f"http://127.0.0.1:{port}"


def start(procs: Procs, workdir: Path) -> tuple[Proc, str]:
    port = free_port()
    return _run(procs, workdir / "nginx", "nginx", config(workdir / "nginx", port), port, LOAD_CORE)


def start_relay(procs: Procs, workdir: Path, upstream: str) -> tuple[Proc, str]:
    """The floor relay, on the proxy's core."""
    port = free_port()
    return _run(procs, workdir / "nginx-relay", "nginx-relay", relay_config(workdir / "nginx-relay", port, upstream), port, PROXY_CORE)
