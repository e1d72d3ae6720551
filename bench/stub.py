"""The streaming and failure stand-in upstream: an OpenAI-compatible server with knobs.

    python -m bench.stub --port 9100 [--ttft 0.05] [--tokens 50] [--token-delay 0.02] [--status 200]
                         [--drop-after N] [--size BYTES]

Non-stream requests are answered after ``ttft`` seconds; with ``size``, by a chat completion of that many
bytes whose text counts up (a piece lost, doubled or moved shows in its hash), written 64 KiB at a time as
the reader takes it. ``"stream": true`` requests get ``tokens`` chunks, the first after ``ttft`` and then
one every ``token-delay`` seconds, then ``[DONE]``
(``/generate`` and ``/generate_stream`` answer in TGI's framing instead). Each knob can be overridden
per request in the query string (``?tokens=100000&token_delay=0``), which the proxy forwards, so one
stub serves every scenario. ``GET /_stats`` counts active (and the most at once), finished and
cancelled requests with the cancel times (``time.monotonic``), so a benchmark can see that a dropped
client's upstream request was cancelled and when.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from aiohttp import web

CHAT: dict[str, Any] = {
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": "bench",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "The quick brown fox jumps over the lazy dog."},
                 "finish_reason": "stop", "logprobs": None}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 10, "total_tokens": 22},
}


class Stats:
    def __init__(self) -> None:
        self.active = 0
        self.finished = 0
        self.cancelled = 0
        self.total = 0
        self.peak_active = 0
        self.cancel_times: list[float] = []


def build(args: argparse.Namespace) -> web.Application:
    stats = Stats()
    chat_body = json.dumps(CHAT).encode()

    def chunk(i: int) -> bytes:
        delta = {"role": "assistant", "content": f" tok{i}"} if i == 0 else {"content": f" tok{i}"}
        event = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000, "model": "bench",
                 "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
        return b"data: " + json.dumps(event).encode() + b"\n\n"

    final = b"data: " + json.dumps({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000,
                                   "model": "bench", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}).encode()
    final += b"\n\n"

    def tgi_token(i: int, tokens: int) -> bytes:
        event = {"index": i + 1, "token": {"id": 100 + i, "text": f" tok{i}", "logprob": -0.1, "special": False},
                 "generated_text": None, "details": None}
        if i == tokens - 1:
            event["generated_text"] = "".join(f" tok{j}" for j in range(tokens))
            event["details"] = {"finish_reason": "length", "generated_tokens": tokens, "seed": None, "input_length": 12}
        return b"data:" + json.dumps(event).encode() + b"\n\n"

    big: dict[int, bytes] = {}

    def big_answer(size: int) -> bytes:
        """A chat completion of exactly ``size`` bytes (or the smallest one, if larger): its text counts up in
        fixed-width numbers, so a piece lost, doubled or moved shows in the hash. Built once per size."""
        if size not in big:
            shell = json.dumps({**CHAT, "choices": [{**CHAT["choices"][0], "message": {"role": "assistant", "content": ""}}]})
            room = max(0, size - len(shell.encode()))
            text = "".join(f"{i:09d} " for i in range(room // 10 + 1))[:room]
            body = json.dumps({**CHAT, "choices": [{**CHAT["choices"][0], "message": {"role": "assistant", "content": text}}]})
            big[size] = body.encode()
        return big[size]

    async def write_big(request: web.Request, size: int) -> web.StreamResponse:
        body = memoryview(big_answer(size))
        resp = web.StreamResponse(headers={"content-type": "application/json"})
        resp.content_length = len(body)
        await resp.prepare(request)
        for start in range(0, len(body), 65536):
            await resp.write(body[start:start + 65536])  # waits while the reader's side is full: nothing piles up here
        await resp.write_eof()
        return resp

    def knobs(request: web.Request) -> argparse.Namespace:
        if not request.query:
            return args
        k = argparse.Namespace(**vars(args))
        for name, value in request.query.items():
            if name in ("ttft", "token_delay"):
                setattr(k, name, float(value))
            elif name in ("tokens", "status", "drop_after", "size"):
                setattr(k, name, int(value))
        return k

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        k = knobs(request)
        stats.total += 1
        stats.active += 1
        stats.peak_active = max(stats.peak_active, stats.active)
        try:
            if k.status != 200:
                await asyncio.sleep(k.ttft)
                return web.json_response({"error": {"message": "stub failure", "type": "server_error"}}, status=k.status)
            stream = b'"stream":true' in body or b'"stream": true' in body or request.path == "/generate_stream"
            if not stream:
                if k.ttft:
                    await asyncio.sleep(k.ttft)
                if k.size:
                    resp = await write_big(request, k.size)
                    stats.finished += 1
                    return resp
                stats.finished += 1
                if request.path == "/generate":
                    text = "".join(f" tok{j}" for j in range(k.tokens))
                    answer = {"generated_text": text, "details": {"finish_reason": "length", "generated_tokens": k.tokens,
                                                                  "seed": None, "prefill": [], "tokens": []}}
                    return web.json_response(answer, headers={"x-prompt-tokens": "12"})
                return web.Response(body=chat_body, content_type="application/json")
            resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
            await resp.prepare(request)
            tgi = request.path == "/generate_stream"
            await asyncio.sleep(k.ttft)
            for i in range(k.tokens):
                if k.drop_after is not None and i == k.drop_after:
                    request.transport.close()  # type: ignore[union-attr]
                    return resp
                await resp.write(tgi_token(i, k.tokens) if tgi else chunk(i))
                if k.token_delay and i < k.tokens - 1:
                    await asyncio.sleep(k.token_delay)
            if not tgi:
                await resp.write(final + b"data: [DONE]\n\n")
            await resp.write_eof()
            stats.finished += 1
            return resp
        except (asyncio.CancelledError, ConnectionResetError):
            stats.cancelled += 1
            stats.cancel_times.append(time.monotonic())
            raise
        finally:
            stats.active -= 1

    async def stat(request: web.Request) -> web.Response:
        return web.json_response({"active": stats.active, "peak_active": stats.peak_active, "finished": stats.finished,
                                  "cancelled": stats.cancelled, "total": stats.total, "cancel_times": stats.cancel_times,
                                  "last_cancel": max(stats.cancel_times, default=0.0)})

    async def reset(request: web.Request) -> web.Response:
        stats.__init__()  # type: ignore[misc]
        return web.json_response({})

    app = web.Application(client_max_size=64 * 1024 * 1024, handler_args={"max_field_size": 65536})
    app.router.add_get("/_stats", stat)
    app.router.add_post("/_reset", reset)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ttft", type=float, default=0.0)
    p.add_argument("--tokens", type=int, default=50)
    p.add_argument("--token-delay", type=float, default=0.0)
    p.add_argument("--status", type=int, default=200)
    p.add_argument("--drop-after", type=int, default=None)
    p.add_argument("--size", type=int, default=0, help="bytes of a non-stream answer (0: the small fixed one)")
    args = p.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    # A deep backlog: 256 clients connecting at once must not wait for SYN retries (the default is 128).
    web.run_app(build(args), host=args.host, port=args.port, access_log=None, print=None, handler_cancellation=True, backlog=4096)


if __name__ == "__main__":
    main()
