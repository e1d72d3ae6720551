"""Hugging Face Text Embeddings Inference: OpenAI embeddings onto ``/embed`` and Jina / Cohere style reranking onto
``/rerank``.

TEI serves one model, an embedder or a reranker, and generates no text: a target of this type has no chat or
completions route. ``/embed`` always answers a list of vectors (one for a single string too); OpenAI's
``encoding_format: "base64"``, which the OpenAI SDK asks for by default, is made here from them, as float32
little-endian bytes as OpenAI sends it. Token counts come from TEI's ``x-compute-tokens`` header. Errors
(``{"error", "error_type"}``, the same shape as TGI's) keep TEI's status and message.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

from mooltiproxy import MapContext, MappingError, UpstreamError
from mooltiproxy import helpers as oa
from mooltiproxy.backends import Backend, Option, RouteSpec, boolean

from . import tgi

# TEI's own fields a client may send beside OpenAI's (e.g. with extra_body): sent as they are once their type is
# checked, so a mistake is a 400 naming the field rather than TEI's bare deserialization text.
_BOOLEAN = ("normalize", "truncate", "raw_scores")
_DIRECTIONS = ("Right", "Left")
EMBED_EXTRAS = ("normalize", "truncate", "truncation_direction", "prompt_name")
RERANK_EXTRAS = ("truncate", "truncation_direction", "raw_scores")


# ------------------------------------------------------------------------------------------ embeddings


def embeddings_request(body: dict[str, Any], ctx: MapContext) -> dict[str, Any]:
    """``/v1/embeddings`` → ``/embed``: ``input`` → ``inputs``, ``dimensions`` as it is (TEI cuts Matryoshka vectors
    to it before normalizing); ``model`` and ``user`` change nothing TEI computes."""
    fmt = body.get("encoding_format")
    if fmt not in (None, "float", "base64"):
        raise MappingError(f"'encoding_format' must be 'float' or 'base64', not {fmt!r}.", param="encoding_format")
    ctx.state["base64"] = fmt == "base64"
    out: dict[str, Any] = {"inputs": _inputs(body.get("input"), ctx), "normalize": bool(ctx.target.options.get("normalize", True))}
    dimensions = oa.integer(body, "dimensions", 1)
    if dimensions is not None:
        out["dimensions"] = dimensions
    out.update(_extras(body, EMBED_EXTRAS))
    return out


def _inputs(value: Any, ctx: MapContext) -> str | list[str]:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    if _token_ids(value) or (isinstance(value, list) and value and all(_token_ids(v) for v in value)):
        # The ids an OpenAI client sends are its own tokenizer's (LangChain's are tiktoken's): to the model behind
        # TEI they would be other tokens, and the vectors silently wrong.
        raise MappingError(f"'input' holds token ids, which target '{ctx.target.name}' cannot take: its TEI server embeds text, "
                           "and ids from an OpenAI tokenizer mean other tokens to its model. Send the text instead (LangChain's "
                           "OpenAIEmbeddings: check_embedding_ctx_length=False).", param="input")
    raise MappingError("'input' must be a string or a list of strings.", param="input")


def _token_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def _extras(body: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if name in _BOOLEAN and not isinstance(value, bool):
            raise MappingError(f"'{name}' must be true or false, not {value!r}.", param=name)
        if name == "truncation_direction" and value not in _DIRECTIONS:
            raise MappingError(f"'truncation_direction' must be 'Right' or 'Left', not {value!r}.", param=name)
        if name == "prompt_name" and not isinstance(value, str):
            raise MappingError(f"'prompt_name' must be a string, not {value!r}.", param=name)
        out[name] = value
    return out


def embeddings_answer(body: Any, ctx: MapContext) -> dict[str, Any]:
    """TEI's ``[[float, ...], ...]`` → OpenAI's embedding list, each vector as floats or base64 as the client asked."""
    if not isinstance(body, list) or not all(isinstance(v, list) for v in body):
        raise UpstreamError(f"The upstream of target '{ctx.target.name}' answered /embed without a list of vectors: is it a TEI server?")
    encode = _base64 if ctx.state.get("base64") else None
    try:
        data = [{"object": "embedding", "index": i, "embedding": encode(v) if encode else v} for i, v in enumerate(body)]
    except (struct.error, OverflowError):
        raise UpstreamError(f"The upstream of target '{ctx.target.name}' answered /embed with a vector that is not all float32 "
                            "numbers.") from None
    tokens = _tokens(ctx)
    return {"object": "list", "data": data, "model": oa.model_of(ctx), "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def _base64(vector: list[Any]) -> str:
    """OpenAI's base64 embedding: the vector's float32 values, little-endian, end to end."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def _tokens(ctx: MapContext) -> int:
    """The tokens TEI computed over, from its ``x-compute-tokens`` header (0 when a server does not send it)."""
    value = ctx.upstream_headers.get("x-compute-tokens")
    return int(value) if value is not None and value.strip().isdigit() else 0


# ------------------------------------------------------------------------------------------- reranking


def rerank_request(body: dict[str, Any], ctx: MapContext) -> dict[str, Any]:
    """``/v1/rerank`` (``{query, documents: [str | {text}], top_n, return_documents}``, as Jina, Cohere and vLLM take
    it) → ``/rerank``. The documents stay here for the answer: TEI need not send them back."""
    query = body.get("query")
    if not isinstance(query, str):
        raise MappingError("'query' must be a string.", param="query")
    documents = body.get("documents")
    if not isinstance(documents, list):
        raise MappingError("'documents' must be a list of strings or of {\"text\": ...} objects.", param="documents")
    texts = []
    for i, doc in enumerate(documents):
        text = doc.get("text") if isinstance(doc, dict) else doc
        if not isinstance(text, str):
            raise MappingError(f"documents[{i}] must be a string or an object with a 'text' string.", param=f"documents[{i}]")
        texts.append(text)
    # vLLM's top_n 0 means every document, as leaving it out does.
    top_n = oa.integer(body, "top_n", 0)
    returned = body.get("return_documents", True)  # Jina's and vLLM's default; Cohere clients send false to leave them out
    if not isinstance(returned, bool):
        raise MappingError(f"'return_documents' must be true or false, not {returned!r}.", param="return_documents")
    ctx.state.update(texts=texts, top_n=top_n or None, return_documents=returned)
    return {"query": query, "texts": texts, **_extras(body, RERANK_EXTRAS)}


def rerank_answer(body: Any, ctx: MapContext) -> dict[str, Any]:
    """TEI's ``[{index, score}, ...]`` → ``{id, model, results: [{index, relevance_score, document?}], usage}``, best
    first and cut to ``top_n``."""
    texts: list[str] = ctx.state.get("texts", [])
    if not isinstance(body, list) or not all(isinstance(r, dict) and isinstance(r.get("index"), int) and 0 <= r["index"] < len(texts)
                                             and isinstance(r.get("score"), int | float) for r in body):
        raise UpstreamError(f"The upstream of target '{ctx.target.name}' answered /rerank without a score for each document: is it a "
                            "TEI server?")
    # TEI sorts already; sorting again costs nothing and holds for any server answering in its shape.
    ranks = sorted(body, key=lambda r: r["score"], reverse=True)[:ctx.state.get("top_n")]
    results = [{"index": r["index"], "relevance_score": r["score"],
                **({"document": {"text": texts[r["index"]]}} if ctx.state.get("return_documents") else {})} for r in ranks]
    return {"id": oa.new_id("rerank"), "model": oa.model_of(ctx), "results": results, "usage": {"total_tokens": _tokens(ctx)}}


# ------------------------------------------------------------------------------------- the declaration

BACKEND = Backend(
    name="tei",
    doc="Hugging Face Text Embeddings Inference: embeddings onto /embed, reranking onto /rerank",
    routes={
        "/v1/embeddings": RouteSpec("/embed", request=embeddings_request, answer=embeddings_answer, error=tgi.error),
        "/v1/rerank": RouteSpec("/rerank", request=rerank_request, answer=rerank_answer, error=tgi.error),
        # /info names the one model the server serves, as TGI's does.
        "/v1/models": RouteSpec(path="/info", method="GET", answer=tgi.models_answer),
        # TEI's own API, relayed for its own clients.
        "/embed": RouteSpec(),
        "/rerank": RouteSpec(),
        "/tokenize": RouteSpec(),
        "/info": RouteSpec.get(),
    },
    options={
        "normalize": Option(boolean, True, "ask TEI for unit-length vectors (OpenAI's are); a request's own normalize wins"),
    },
)
