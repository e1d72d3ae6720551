"""A stub Text Embeddings Inference server: ``/embed``, ``/rerank``, ``/tokenize`` and ``/info`` answered in TEI's shapes,
with its timing headers (``x-compute-tokens`` among them) and its errors as ``{"error", "error_type"}`` with the status
TEI gives each type: 400 ``empty`` (an empty batch), 413 ``validation`` (more inputs than ``max_client_batch_size``, an
input over ``max_input_length`` tokens without ``truncate``, an empty string), 424 ``backend`` (reranking on an
embedding model), 429 ``overloaded``.

Like TEI it serves one model, an embedder or a reranker (``model_type``). Its tokenizer counts each word as a token and
adds two special ones, as a BERT model's does. A vector is derived from a hash of the text (after the ``prompt_name``'s
prompt), cut to ``dimensions`` and then normalized, in that order, as TEI does; a rerank score is the share of the
query's words found in the text.

It is stricter than TEI in one way that catches translation bugs: a field TEI would ignore (a misspelt name) or a value
of the wrong type is refused with 422 and a plain-text message, as TEI's JSON extractor refuses a body it cannot read.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

EMBED_FIELDS = {"inputs": (str, list), "normalize": bool, "truncate": bool, "truncation_direction": str, "prompt_name": str,
                "dimensions": int}
RERANK_FIELDS = {"query": str, "texts": list, "raw_scores": bool, "return_text": bool, "truncate": bool, "truncation_direction": str}
PROMPTS = {"query": "query: ", "passage": "passage: "}  # a sentence-transformers model's named prompts
STATUS = {"empty": 400, "validation": 413, "tokenizer": 422, "backend": 424, "overloaded": 429}


class Refused(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Unreadable(Exception):
    """A body TEI's JSON extractor would not read."""


def words(text: str) -> list[str]:
    return text.lower().replace(",", " ").replace(".", " ").replace("?", " ").split()


@dataclass
class TEIStub:
    model_id: str = "stub/bge-small"
    model_type: str = "embedding"  # or "reranker"
    hidden: int = 16  # the model's vector width
    max_client_batch_size: int = 4
    max_input_length: int = 32
    fail: tuple[str, str] | None = None  # (error_type, message) for every request while set, with that type's status
    seen: list[dict[str, Any]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/embed", self.embed, methods=["POST"]),
            Route("/rerank", self.rerank, methods=["POST"]),
            Route("/tokenize", self.tokenize, methods=["POST"]),
            Route("/info", self.info, methods=["GET"]),
        ])

    # ------------------------------------------------------------------ what the model computes

    def tokens(self, text: str) -> int:
        return len(text.split()) + 2

    def vector(self, text: str, *, normalize: bool = True, dimensions: int | None = None, prompt_name: str | None = None) -> list[float]:
        """What ``/embed`` answers for ``text``."""
        digest = hashlib.sha256((PROMPTS.get(prompt_name or "", "") + text).encode()).digest()
        raw = [(digest[i % len(digest)] - 127.5) / 64 for i in range(self.hidden)][:dimensions]
        if not normalize:
            return raw
        norm = math.sqrt(sum(x * x for x in raw)) or 1.0
        return [x / norm for x in raw]

    def score(self, query: str, text: str) -> float:
        """What ``/rerank`` answers for ``text``: the share of the query's words it holds."""
        asked = set(words(query))
        return len(asked & set(words(text))) / len(asked) if asked else 0.0

    # ------------------------------------------------------------------------------ the routes

    async def info(self, request: Request) -> Response:
        model_type: dict[str, Any] = ({"embedding": {"pooling": "cls"}} if self.model_type == "embedding"
                                      else {"reranker": {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}})
        return JSONResponse({"model_id": self.model_id, "model_sha": None, "model_dtype": "float32", "model_type": model_type,
                             "max_concurrent_requests": 512, "max_input_length": self.max_input_length, "max_batch_tokens": 16384,
                             "max_batch_requests": None, "max_client_batch_size": self.max_client_batch_size, "auto_truncate": False,
                             "tokenization_workers": 2, "version": "1.8.0", "sha": None, "docker_label": None})

    async def embed(self, request: Request) -> Response:
        try:
            body = await self._read(request, EMBED_FIELDS)
            inputs = body["inputs"]
            batch = [inputs] if isinstance(inputs, str) else inputs
            if not all(isinstance(i, str) for i in batch):
                raise Unreadable("inputs: data did not match any variant of untagged enum Input")
            if not batch:
                raise Refused("empty", "`inputs` cannot be empty")
            self._check(batch, truncate=body.get("truncate", False))
            vectors = [self.vector(text, normalize=body.get("normalize", True), dimensions=body.get("dimensions"),
                                   prompt_name=body.get("prompt_name")) for text in batch]
        except Unreadable as exc:
            return PlainTextResponse(f"Failed to deserialize the JSON body into the target type: {exc}", status_code=422)
        except Refused as exc:
            return _error(exc.kind, str(exc))
        return JSONResponse(vectors, headers=_headers(batch, sum(min(self.tokens(t), self.max_input_length) for t in batch)))

    async def rerank(self, request: Request) -> Response:
        try:
            body = await self._read(request, RERANK_FIELDS)
            if "query" not in body or "texts" not in body:
                raise Unreadable("missing field `query` or `texts`")
            texts = body["texts"]
            if not all(isinstance(t, str) for t in texts):
                raise Unreadable("texts: invalid type, expected a string")
            if not texts:
                raise Refused("empty", "`texts` cannot be empty")
            if self.model_type != "reranker":
                raise Refused("backend", "Backend error: model is not a re-ranker model")
            pairs = [body["query"] + " " + t for t in texts]
            self._check(pairs, truncate=body.get("truncate", False))
        except Unreadable as exc:
            return PlainTextResponse(f"Failed to deserialize the JSON body into the target type: {exc}", status_code=422)
        except Refused as exc:
            return _error(exc.kind, str(exc))
        ranks = []
        for index, text in enumerate(texts):
            score = self.score(body["query"], text)
            rank: dict[str, Any] = {"index": index, "score": score if not body.get("raw_scores") else math.log(score + 1e-3)}
            if body.get("return_text"):
                rank["text"] = text
            ranks.append(rank)
        # TEI sorts ascending, then reverses: ties come out last index first.
        ranks.sort(key=lambda r: r["score"])
        ranks.reverse()
        return JSONResponse(ranks, headers=_headers(pairs, sum(self.tokens(p) + 1 for p in pairs)))

    async def tokenize(self, request: Request) -> Response:
        try:
            body = await self._read(request, {"inputs": (str, list), "add_special_tokens": bool, "prompt_name": str})
        except Unreadable as exc:
            return PlainTextResponse(f"Failed to deserialize the JSON body into the target type: {exc}", status_code=422)
        inputs = body.get("inputs")
        batch = [inputs] if isinstance(inputs, str) else list(inputs or [])
        out = []
        for text in batch:
            tokens, at = [{"id": 101, "text": "[CLS]", "special": True, "start": None, "stop": None}], 0
            for word in str(text).split():
                start = str(text).index(word, at)
                at = start + len(word)
                tokens.append({"id": 1000 + len(tokens), "text": word, "special": False, "start": start, "stop": at})
            tokens.append({"id": 102, "text": "[SEP]", "special": True, "start": None, "stop": None})
            out.append(tokens)
        return JSONResponse(out)

    # ------------------------------------------------------------------------------ checking

    async def _read(self, request: Request, fields: dict[str, Any]) -> dict[str, Any]:
        self.paths.append(request.url.path)
        try:
            body = json.loads(await request.body())
        except ValueError as exc:
            raise Unreadable(str(exc)) from None
        if not isinstance(body, dict):
            raise Unreadable("invalid type: expected a map")
        self.seen.append(body)
        for key, value in body.items():
            if key not in fields:
                raise Unreadable(f"unknown field `{key}`")
            kind = fields[key]
            if value is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
                raise Unreadable(f"{key}: invalid type: {value!r}")
        if body.get("truncation_direction") not in (None, "Right", "Left"):
            raise Unreadable("truncation_direction: unknown variant, expected `Left` or `Right`")
        if self.fail:
            raise Refused(*self.fail)
        return body

    def _check(self, batch: list[str], *, truncate: bool) -> None:
        if len(batch) > self.max_client_batch_size:
            raise Refused("validation", f"batch size {len(batch)} > maximum allowed batch size {self.max_client_batch_size}")
        for text in batch:
            if not text:
                raise Refused("validation", "Input validation error: `inputs` cannot be empty")
            if self.tokens(text) > self.max_input_length and not truncate:
                raise Refused("validation", f"Input validation error: `inputs` must have less than {self.max_input_length} tokens. "
                                            f"Given: {self.tokens(text)}")


def _error(kind: str, message: str) -> Response:
    return JSONResponse({"error": message, "error_type": kind}, status_code=STATUS[kind])


def _headers(batch: list[str], tokens: int) -> dict[str, str]:
    """TEI's timing headers, as its ResponseMetadata writes them (times in milliseconds)."""
    return {"x-compute-type": "cpu", "x-compute-time": "1", "x-compute-characters": str(sum(len(t) for t in batch)),
            "x-compute-tokens": str(tokens), "x-total-time": "1", "x-tokenization-time": "0", "x-queue-time": "0",
            "x-inference-time": "1"}
