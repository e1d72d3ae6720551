"""A stub Text Generation Inference server that validates requests as TGI does and streams real
``/generate_stream`` framing (``data:{json}``, no ``[DONE]``, the last event carrying the text).

Its "model" replays ``reply`` token by token, and stops as TGI would: at a stop sequence (kept in the
text), at ``max_new_tokens`` (``length``), or at the end of the reply with an EOS token
(``eos_token``, a special token that is not part of the text).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

PARAMETERS = {
    "adapter_id", "best_of", "decoder_input_details", "details", "do_sample", "frequency_penalty", "grammar", "max_new_tokens",
    "repetition_penalty", "return_full_text", "seed", "stop", "temperature", "top_k", "top_n_tokens", "top_p", "truncate",
    "typical_p", "watermark",
}


class Invalid(Exception):
    pass


@dataclass
class TGIStub:
    reply: list[str] = field(default_factory=lambda: ["Hello", " there", ",", " friend", "."])
    max_stop_sequences: int = 4
    max_best_of: int = 2
    eos: str = "</s>"
    delay: float = 0.0
    fail: tuple[int, str, str] | None = None  # (status, error_type, message) for the next requests
    stream_error_after: int | None = None
    replies: list[list[str]] = field(default_factory=list)  # one reply per request, in turn, before falling back on `reply`
    seen: list[dict[str, Any]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/generate", self.generate, methods=["POST"]),
            Route("/generate_stream", self.generate_stream, methods=["POST"]),
            Route("/info", self.info, methods=["GET"]),
            Route("/", self.compat, methods=["POST"]),
            Route("/tokenize", self.tokenize, methods=["POST"]),
        ])

    async def tokenize(self, request: Request) -> Response:
        """TGI's /tokenize: the prompt's tokens (here one per word), with where each lies in it."""
        body = await self._read(request)
        tokens, at = [], 0
        for i, word in enumerate(str(body.get("inputs", "")).split()):
            start = str(body["inputs"]).index(word, at)
            at = start + len(word)
            tokens.append({"id": i, "text": word, "start": start, "stop": at})
        return JSONResponse(tokens)

    async def compat(self, request: Request) -> Response:
        """TGI's compat route (what the text-generation client posts to): ``stream`` picks the answer's kind; a
        plain answer comes as a list of one."""
        try:
            stream = json.loads(await request.body()).get("stream") is True
        except (ValueError, AttributeError):
            stream = False
        if stream:
            return await self.generate_stream(request)
        answer = await self.generate(request)
        if answer.status_code != 200:
            return answer
        return JSONResponse([json.loads(bytes(answer.body))], headers={k: v for k, v in answer.headers.items() if k.startswith("x-")})

    async def info(self, request: Request) -> Response:
        return JSONResponse({"model_id": "stub/llama", "max_concurrent_requests": 128, "max_best_of": self.max_best_of,
                             "max_stop_sequences": self.max_stop_sequences, "max_input_tokens": 1024, "max_total_tokens": 2048,
                             "validation_workers": 2, "max_client_batch_size": 4, "router": "text-generation-router",
                             "version": "3.3.6"})

    async def _read(self, request: Request) -> dict[str, Any]:
        raw = await request.body()
        self.paths.append(request.url.path)
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise Invalid(f"bad json: {exc}") from None
        self.seen.append(body)
        return body  # type: ignore[no-any-return]

    def _validate(self, body: dict[str, Any], stream: bool) -> dict[str, Any]:
        """router/src/validation.rs, as far as these tests need it."""
        if set(body) - {"inputs", "parameters", "stream"}:
            raise Invalid(f"unknown field `{sorted(set(body) - {'inputs', 'parameters', 'stream'})[0]}`")
        if not isinstance(body.get("inputs"), str):
            raise Invalid("missing field `inputs`")
        if not body["inputs"]:
            raise Invalid("`inputs` cannot be empty")
        p = body.get("parameters") or {}
        unknown = set(p) - PARAMETERS
        if unknown:
            raise Invalid(f"unknown field `{sorted(unknown)[0]}`")
        if "temperature" in p and p["temperature"] is not None and p["temperature"] <= 0:
            raise Invalid("`temperature` must be strictly positive")
        if "top_p" in p and p["top_p"] is not None and not 0 < p["top_p"] < 1:
            raise Invalid("`top_p` must be > 0.0 and < 1.0")
        if "top_k" in p and p["top_k"] is not None and p["top_k"] <= 0:
            raise Invalid("`top_k` must be strictly positive")
        if p.get("repetition_penalty") is not None and p["repetition_penalty"] <= 0:
            raise Invalid("`repetition_penalty` must be strictly positive")
        if p.get("frequency_penalty") is not None and not -2 <= p["frequency_penalty"] <= 2:
            raise Invalid("`frequency_penalty` must be >= -2.0 and <= 2.0")
        if p.get("max_new_tokens") is not None and p["max_new_tokens"] <= 0:
            raise Invalid("`max_new_tokens` must be strictly positive")
        if len(p.get("stop") or []) > self.max_stop_sequences:
            raise Invalid(f"`stop` supports up to {self.max_stop_sequences} stop sequences. Given: {len(p['stop'])}")
        if p.get("seed") is not None and p["seed"] < 0:
            raise Invalid("seed must be unsigned")
        best_of = p.get("best_of")
        if best_of is not None and best_of != 1:
            if stream:
                raise Invalid("`best_of` != 1 is not supported when streaming tokens")
            if best_of > self.max_best_of:
                raise Invalid(f"`best_of` must be > 0 and <= {self.max_best_of}. Given: {best_of}")
            sampling = p.get("do_sample") or any(p.get(k) is not None for k in ("temperature", "top_k", "top_p", "typical_p"))
            if not sampling:
                raise Invalid("you must use sampling when `best_of` is > 1")
            if p.get("seed") is not None:
                raise Invalid("`seed` must not be set when `best_of` > 1")
        return p

    def _tokens(self, p: dict[str, Any], variant: int = 0) -> tuple[list[tuple[str, bool]], str]:
        """The tokens generated and the finish reason, as TGI's stopping criteria would decide."""
        if variant == 0 and self.replies:
            self.reply = self.replies.pop(0)
        reply = list(self.reply) if variant == 0 else [f"Alt{variant}", " answer"]
        limit = p.get("max_new_tokens") or 100
        stops = p.get("stop") or []
        out: list[tuple[str, bool]] = []
        text = ""
        for piece in reply:
            if len(out) == limit:
                return out, "length"
            out.append((piece, False))
            text += piece
            if any(text.endswith(s) for s in stops):
                return out, "stop_sequence"
        if len(out) == limit:
            return out, "length"
        out.append((self.eos, True))
        return out, "eos_token"

    def _error(self, status: int, kind: str, message: str) -> Response:
        return JSONResponse({"error": message, "error_type": kind}, status_code=status)

    async def generate(self, request: Request) -> Response:
        try:
            body = await self._read(request)
            p = self._validate(body, stream=False)
        except Invalid as exc:
            return self._error(422, "validation", f"Input validation error: {exc}")
        if self.fail:
            return self._error(*self.fail)
        tokens, reason = self._tokens(p)
        text = "".join(t for t, special in tokens if not special)
        answer: dict[str, Any] = {"generated_text": text}
        if p.get("details"):
            answer["details"] = {"finish_reason": reason, "generated_tokens": len(tokens), "seed": p.get("seed"), "prefill": [],
                                 "tokens": [{"id": i, "text": t, "logprob": -0.5, "special": s} for i, (t, s) in enumerate(tokens)]}
            if p.get("top_n_tokens"):  # TGI: the most likely tokens of each step, the chosen one among them
                answer["details"]["top_tokens"] = [_top(i, t, s, p["top_n_tokens"]) for i, (t, s) in enumerate(tokens)]
            if (p.get("best_of") or 1) > 1:
                seqs = []
                for v in range(1, p["best_of"]):
                    t2, r2 = self._tokens(p, v)
                    seqs.append({"generated_text": "".join(t for t, s in t2 if not s), "finish_reason": r2,
                                 "generated_tokens": len(t2), "seed": 7, "prefill": [], "tokens": []})
                answer["details"]["best_of_sequences"] = seqs
        return JSONResponse(answer, headers={"x-prompt-tokens": str(len(body["inputs"].split())),
                                             "x-generated-tokens": str(len(tokens))})

    async def generate_stream(self, request: Request) -> Response:
        try:
            body = await self._read(request)
        except Invalid as exc:
            return PlainTextResponse(str(exc), status_code=400)

        async def events() -> Any:
            try:
                p = self._validate(body, stream=True)
            except Invalid as exc:
                # TGI reports validation errors of a stream inside it, with HTTP 200.
                yield "data:" + json.dumps({"error": f"Input validation error: {exc}", "error_type": "validation"}) + "\n\n"
                return
            tokens, reason = self._tokens(p)
            text = ""
            for i, (piece, special) in enumerate(tokens):
                if self.stream_error_after is not None and i == self.stream_error_after:
                    yield "data:" + json.dumps({"error": "Request failed during generation: CUDA out of memory",
                                                "error_type": "generation"}) + "\n\n"
                    return
                if not special:
                    text += piece
                last = i == len(tokens) - 1
                event = {"index": i + 1, "token": {"id": i, "text": piece, "logprob": -0.5, "special": special},
                         "generated_text": text if last else None, "details": None}
                if p.get("top_n_tokens"):
                    event["top_tokens"] = _top(i, piece, special, p["top_n_tokens"])
                if last and p.get("details"):
                    event["details"] = {"finish_reason": reason, "generated_tokens": len(tokens), "seed": p.get("seed"),
                                        "input_length": len(body["inputs"].split())}
                yield "data:" + json.dumps(event) + "\n\n"
                if self.delay:
                    await asyncio.sleep(self.delay)

        return StreamingResponse(events(), media_type="text/event-stream", headers={"x-accel-buffering": "no"})


def _top(i: int, text: str, special: bool, n: int) -> list[dict[str, Any]]:
    """A step's most likely tokens as TGI lists them: the chosen one, then another."""
    chosen = {"id": i, "text": text, "logprob": -0.5, "special": special}
    return [chosen, {"id": 9999, "text": " else", "logprob": -2.25, "special": False}][:n]
