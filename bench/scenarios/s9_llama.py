"""S9: a real upstream, llama.cpp's ``llama-server`` with the tiny random-weight model the tests build: several
concurrent streams direct, through the proxy's pass-through (``/v1/chat/completions`` relayed) and through the
``llamacpp`` translation (chat → ``/completion`` with the chatml prompter, answered as OpenAI chunks).

Generation is CPU work here, so the cores are shared differently from the other scenarios: llama-server (one
thread) has the load core to itself and the SSE client runs on the proxy's core. With the client beside the model
instead, every event the proxy forwards wakes the client on the model's core mid-step, and generation itself
slowed by a tenth (measured: 0.90 of direct through the proxy that way, 0.99 this way) — a cost of sharing two
cores, not of the proxy; the client needs about 3 % of a core, which this way is taken from the proxy, not given
to it. Generation is greedy with a fixed ``max_tokens`` and the same prompt, so every path asks for the same work.
Tokens per second count the stream's events (one per token, plus the few framing events each path adds), so
the ratio to direct is the figure BENCHMARKS.md asks for; the events per stream are printed beside it to show
the paths did the same work.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from ..configs import MASTER_KEY, Variant
from ..harness import CHAT_PATH, Check, Harness, Result, at_least, at_most, fmt_spread
from ..procs import LOAD_CORE, PROXY_CORE, free_port
from ..stats import paired, spread
from .s3_slow import col

STREAMS = 4  # concurrent streams, one llama-server slot each
TOKENS = 64
BODY = json.dumps({"model": "tiny", "messages": [{"role": "system", "content": "You are terse."},
                                                 {"role": "user", "content": "Say something short."}],
                   "max_tokens": TOKENS, "temperature": 0, "stream": True}, separators=(",", ":"))
BUILD = "python3 tests/backends/llama_server.py"


def _server(h: Harness) -> str | None:
    """llama-server on the load core, or None when the tests' build script has not built it here."""
    from tests.backends import llama_server

    if not llama_server.ready():
        return None
    port = free_port()
    argv = [str(llama_server.server_binary()), "-m", str(llama_server.model("qwen2")), "--host", "127.0.0.1", "--port", str(port),
            "-c", str(STREAMS * 512), "-np", str(STREAMS), "-t", "1"]
    proc = h.procs.start("llama-server", argv, core=LOAD_CORE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:  # the port opens before the model is loaded; /health answers 503 until then
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return url
        except (urllib.error.URLError, OSError):
            pass
        if not proc.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"llama-server did not become ready:\n{proc.tail()}")
        time.sleep(0.1)


def tokens_per_s(rounds: list[dict[str, Any]]) -> list[float]:
    return [r["events"]["mean"] * r["completed"] / r["elapsed_s"] if r["elapsed_s"] else 0.0 for r in rounds]


def run(h: Harness) -> Result:
    res = Result("S9", f"a real upstream: llama-server, tiny model, {STREAMS} concurrent streams of {TOKENS} tokens")
    upstream = _server(h)
    if upstream is None:
        res.lines.append(f"skipped: llama-server is not built here; `{BUILD}` builds it (about 5 min on 2 cores, once)")
        return res
    # Proxies of their own (fresh): named like the stub's, they would share its config file, which a running proxy
    # reloads when it changes, and PEER's slow-upstream proxy would then talk to llama-server.
    urls = {"direct": upstream, "passthrough": h.proxy(Variant("passthrough", h.recording.available), upstream, fresh="s9").url,
            "llamacpp": h.proxy(Variant("llamacpp", h.recording.available), upstream, fresh="s9").url}
    duration = max(h.s.sse_s * 2, 3.0)
    measures = {name: (lambda d, url=url: h.sse(url + CHAT_PATH, MASTER_KEY, STREAMS, d, body=BODY, core=PROXY_CORE))
                for name, url in urls.items()}
    data = h.rounds(measures, duration)
    direct = data["direct"]
    for name, rounds in data.items():
        res.lines.append(f"{name:<11} tokens/s {fmt_spread(spread(tokens_per_s(rounds)), '', 0)} · events/stream "
                         f"{fmt_spread(spread(col(rounds, 'events', 'mean')), '', 1)} · first token p50/p99 "
                         f"{fmt_spread(spread(col(rounds, 'first_event_ms', 'p50')), '', 1)} / "
                         f"{fmt_spread(spread(col(rounds, 'first_event_ms', 'p99')), ' ms', 1)}")
    for name in ("passthrough", "llamacpp"):
        rounds = data[name]
        res.checks.append(at_least(f"{name} tokens/s / direct", paired(tokens_per_s(rounds), tokens_per_s(direct), "/"), 0.97, "", 3))
        first = paired(col(rounds, "first_event_ms", "p50"), col(direct, "first_event_ms", "p50"), "-")
        res.checks.append(at_most(f"{name} first-token Δp50", first, 5, " ms", 1))
        missing = sum(r["missing_done"] for r in rounds)
        failed = sum(sum(r["errors"].values()) + sum(v for k, v in r["statuses"].items() if k != "200") for r in rounds)
        res.checks.append(Check(f"{name} missing [DONE] / failed streams", f"{missing} / {failed}", "0 / 0", missing == 0 and failed == 0))
    res.data = {"rounds": data}
    return res
