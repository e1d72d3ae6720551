"""OpenAI clients embedding and reranking through a Text Embeddings Inference server behind the proxy: the OpenAI SDK
(sync and async), LangChain's OpenAIEmbeddings and plain HTTP for ``/v1/rerank``; the stub TEI answers as TEI does."""

from __future__ import annotations

import asyncio
import base64
import struct
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from langchain_openai import OpenAIEmbeddings

from .conftest import KEY, ProxyFactory, http
from .dataset_kit import records
from .servers import serve
from .stubs.openai_upstream import OpenAIStub
from .stubs.tei_upstream import TEIStub
from .test_custom_mappers import readme_example

DOCS = ["Paris is the capital of France.", "Berlin is in Germany.", "The Louvre is in France.", "Cats sleep a lot."]
QUERY = "capital of France"


def message(exc: openai.APIStatusError) -> str:
    """The error's own message, without the SDK's "Error code: N - " before it."""
    body: Any = exc.body
    return str(body["message"])


def f32(vector: list[float]) -> list[float]:
    """The vector as float32 values: what OpenAI's base64 carries, and what the SDK decodes."""
    return list(struct.unpack(f"<{len(vector)}f", struct.pack(f"<{len(vector)}f", *vector)))


@pytest.fixture
def embedder(stack: ExitStack) -> tuple[TEIStub, str]:
    stub = TEIStub()
    return stub, stack.enter_context(serve(stub.app())).url


@pytest.fixture
def reranker(stack: ExitStack) -> tuple[TEIStub, str]:
    stub = TEIStub(model_id="stub/bge-reranker", model_type="reranker")
    return stub, stack.enter_context(serve(stub.app())).url


@pytest.fixture
def proxy(embedder: tuple[TEIStub, str], reranker: tuple[TEIStub, str], openai_stub: tuple[OpenAIStub, str],
          start_proxy: ProxyFactory) -> str:
    # TEI serves one model a server, so an embedder and a reranker are two targets; the model names pick them.
    return start_proxy({"targets": {"default": "emb", "emb": {"type": "tei", "url": embedder[1]},
                                    "rerank": {"type": "tei", "url": reranker[1]}, "chat": {"url": openai_stub[1]}},
                        "models": {"bge-reranker": "rerank", "gpt": "chat"}}).url


@pytest.fixture
def client(proxy: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy + "/v1", api_key=KEY, max_retries=0)


# ------------------------------------------------------------------------------------------ embeddings


def test_a_string_is_embedded_with_the_sdks_default_base64(embedder: tuple[TEIStub, str], client: openai.OpenAI) -> None:
    stub = embedder[0]
    answer = client.embeddings.create(model="bge-small", input="Hello there world")
    assert stub.paths[-1] == "/embed"
    # The SDK asks for base64 when the caller names no format, and decodes it: the proxy made it from TEI's floats.
    assert stub.seen[-1] == {"inputs": "Hello there world", "normalize": True}
    assert len(answer.data) == 1 and answer.data[0].index == 0 and answer.data[0].object == "embedding"
    assert answer.data[0].embedding == f32(stub.vector("Hello there world"))
    assert answer.object == "list" and answer.model == "bge-small"
    assert (answer.usage.prompt_tokens, answer.usage.total_tokens) == (5, 5)  # TEI's x-compute-tokens: 3 words + 2 special


def test_a_list_floats_and_dimensions(embedder: tuple[TEIStub, str], client: openai.OpenAI) -> None:
    stub = embedder[0]
    answer = client.embeddings.create(model="bge-small", input=DOCS[:3], encoding_format="float")
    assert stub.seen[-1]["inputs"] == DOCS[:3]
    assert [d.index for d in answer.data] == [0, 1, 2]
    assert [d.embedding for d in answer.data] == [stub.vector(d) for d in DOCS[:3]]  # as TEI sent them, not rounded
    assert answer.usage.prompt_tokens == sum(stub.tokens(d) for d in DOCS[:3])
    short = client.embeddings.create(model="bge-small", input=DOCS[0], dimensions=4, encoding_format="float")
    assert stub.seen[-1] == {"inputs": DOCS[0], "normalize": True, "dimensions": 4}
    assert short.data[0].embedding == stub.vector(DOCS[0], dimensions=4)
    assert len(short.data[0].embedding) == 4 and sum(x * x for x in short.data[0].embedding) == pytest.approx(1.0)


def test_base64_asked_for_is_float32_little_endian(embedder: tuple[TEIStub, str], client: openai.OpenAI) -> None:
    stub = embedder[0]
    answer = client.embeddings.create(model="bge-small", input=["one", "two"], encoding_format="base64")
    for text, item in zip(["one", "two"], answer.data, strict=True):
        assert isinstance(item.embedding, str)  # asked for by name, the SDK leaves it as it came
        raw = base64.b64decode(item.embedding)
        assert len(raw) == 4 * stub.hidden
        assert list(struct.unpack(f"<{stub.hidden}f", raw)) == f32(stub.vector(text))


def test_teis_own_fields_pass_and_the_option_sets_normalize(embedder: tuple[TEIStub, str], client: openai.OpenAI,
                                                           start_proxy: ProxyFactory) -> None:
    stub = embedder[0]
    answer = client.embeddings.create(model="bge-small", input="find me", encoding_format="float",
                                      extra_body={"prompt_name": "query", "truncate": True, "truncation_direction": "Left"})
    assert stub.seen[-1] == {"inputs": "find me", "normalize": True, "prompt_name": "query", "truncate": True,
                             "truncation_direction": "Left"}
    assert answer.data[0].embedding == stub.vector("find me", prompt_name="query")
    raw = start_proxy({"targets": {"default": "t", "t": {"type": "tei", "url": embedder[1], "options": {"normalize": False}}}}).url
    unnormalized = openai.OpenAI(base_url=raw + "/v1", api_key=KEY, max_retries=0)
    got = unnormalized.embeddings.create(model="m", input="x", encoding_format="float")
    assert stub.seen[-1]["normalize"] is False and got.data[0].embedding == stub.vector("x", normalize=False)
    got = unnormalized.embeddings.create(model="m", input="x", encoding_format="float", extra_body={"normalize": True})
    assert stub.seen[-1]["normalize"] is True  # the request's own wins
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="m", input="x", extra_body={"truncation_direction": "up"})
    assert info.value.status_code == 400 and "'truncation_direction' must be 'Right' or 'Left'" in info.value.message


def test_the_async_sdk(embedder: tuple[TEIStub, str], reranker: tuple[TEIStub, str], proxy: str) -> None:
    stub = embedder[0]

    async def embed() -> tuple[Any, Any]:
        async with openai.AsyncOpenAI(base_url=proxy + "/v1", api_key=KEY, max_retries=0) as aclient:
            return await asyncio.gather(aclient.embeddings.create(model="bge-small", input=["a b", "c"]),
                                        aclient.embeddings.create(model="bge-small", input="d", encoding_format="float"))

    many, one = asyncio.run(embed())
    assert [d.embedding for d in many.data] == [f32(stub.vector("a b")), f32(stub.vector("c"))]
    assert one.data[0].embedding == stub.vector("d") and one.usage.prompt_tokens == 3


def test_token_ids_and_other_inputs_are_refused_naming_the_field(embedder: tuple[TEIStub, str], client: openai.OpenAI) -> None:
    for ids in ([15339, 1917], [[15339, 1917], [9906]]):
        with pytest.raises(openai.BadRequestError) as info:
            client.embeddings.create(model="bge-small", input=ids)
        assert info.value.status_code == 400
        assert "'input' holds token ids" in info.value.message and "target 'emb'" in info.value.message
        assert info.value.param == "input"
    for body in ({"model": "m"}, {"model": "m", "input": {"text": "x"}}, {"model": "m", "input": ["x", 1]},
                 {"model": "m", "input": "x", "encoding_format": "int8"}, {"model": "m", "input": "x", "dimensions": 0},
                 {"model": "m", "input": "x", "normalize": "yes"}):
        r = http.post(client.base_url.join("embeddings").__str__(), json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] in ("input", "encoding_format", "dimensions", "normalize"), r.text
    assert embedder[0].seen == []  # none of them reached TEI


# ------------------------------------------------------------------------------------------- reranking


def test_rerank_best_first_cut_to_top_n(reranker: tuple[TEIStub, str], proxy: str) -> None:
    stub = reranker[0]
    r = http.post(proxy + "/v1/rerank", json={"model": "bge-reranker", "query": QUERY, "documents": DOCS, "top_n": 2})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert stub.paths[-1] == "/rerank" and stub.seen[-1] == {"query": QUERY, "texts": DOCS}
    assert [x["index"] for x in answer["results"]] == [0, 2]
    assert [x["relevance_score"] for x in answer["results"]] == [stub.score(QUERY, DOCS[0]), stub.score(QUERY, DOCS[2])]
    assert [x["document"] for x in answer["results"]] == [{"text": DOCS[0]}, {"text": DOCS[2]}]  # returned unless asked not to
    assert answer["model"] == "bge-reranker" and answer["id"].startswith("rerank-")
    assert answer["usage"] == {"total_tokens": sum(stub.tokens(QUERY + " " + d) + 1 for d in DOCS)}


def test_rerank_every_document_objects_and_no_documents_back(reranker: tuple[TEIStub, str], proxy: str) -> None:
    stub = reranker[0]
    r = http.post(proxy + "/v1/rerank", json={"model": "bge-reranker", "query": QUERY, "documents": [{"text": d} for d in DOCS],
                                              "return_documents": False})
    results = r.json()["results"]
    assert stub.seen[-1]["texts"] == DOCS
    assert sorted(x["index"] for x in results) == [0, 1, 2, 3] and all("document" not in x for x in results)
    scores = [x["relevance_score"] for x in results]
    assert scores == sorted(scores, reverse=True)
    # vLLM's top_n 0 is every document, as leaving it out is.
    r = http.post(proxy + "/v1/rerank", json={"model": "bge-reranker", "query": QUERY, "documents": DOCS, "top_n": 0})
    assert len(r.json()["results"]) == 4
    for body, param in (({"query": QUERY, "documents": "a"}, "documents"), ({"documents": DOCS}, "query"),
                        ({"query": QUERY, "documents": [{"title": "x"}]}, "documents[0]"),
                        ({"query": QUERY, "documents": DOCS, "top_n": -1}, "top_n"),
                        ({"query": QUERY, "documents": DOCS, "return_documents": "no"}, "return_documents")):
        r = http.post(proxy + "/v1/rerank", json={"model": "bge-reranker", **body})
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


# ------------------------------------------------------------------------------- models, errors, routes


def test_models_are_teis_model_id(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["stub/bge-small"]
    rerank = openai.OpenAI(base_url=str(client.base_url), api_key=KEY, max_retries=0, default_headers={"target": "rerank"})
    assert [m.id for m in rerank.models.list()] == ["stub/bge-reranker"]


def test_teis_errors_reach_the_client_with_its_status_and_message(embedder: tuple[TEIStub, str], client: openai.OpenAI,
                                                                  proxy: str) -> None:
    stub = embedder[0]
    with pytest.raises(openai.APIStatusError) as info:
        client.embeddings.create(model="bge-small", input=["a", "b", "c", "d", "e"])
    assert info.value.status_code == 413
    assert message(info.value) == "batch size 5 > maximum allowed batch size 4"
    assert info.value.body == {"message": "batch size 5 > maximum allowed batch size 4", "type": "upstream_error", "param": None,
                               "code": "validation"}
    with pytest.raises(openai.APIStatusError) as info:
        client.embeddings.create(model="bge-small", input=" ".join(["word"] * 40))
    assert info.value.status_code == 413 and "`inputs` must have less than 32 tokens. Given: 42" in info.value.message
    with pytest.raises(openai.BadRequestError) as bad:
        client.embeddings.create(model="bge-small", input=[])
    assert message(bad.value) == "`inputs` cannot be empty" and bad.value.code == "empty"
    stub.fail = ("overloaded", "Model is overloaded")
    with pytest.raises(openai.RateLimitError) as busy:
        client.embeddings.create(model="bge-small", input="x")
    assert busy.value.status_code == 429 and message(busy.value) == "Model is overloaded"
    stub.fail = None
    # An embedding model asked to rerank: TEI's 424, its message kept.
    r = http.post(proxy + "/v1/rerank", json={"model": "bge-small", "query": QUERY, "documents": DOCS})
    assert r.status_code == 424 and r.json()["error"]["message"] == "Backend error: model is not a re-ranker model"


def test_chat_and_completions_are_no_routes_of_a_tei_target(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="bge-small", messages=[{"role": "user", "content": "Hi"}])
    assert message(info.value) == ("Target 'emb' has no route for /v1/chat/completions. Its routes: /embed, /info, /rerank, "
                                   "/tokenize, /v1/embeddings, /v1/models, /v1/rerank.")
    with pytest.raises(openai.NotFoundError) as info:
        client.completions.create(model="bge-small", prompt="Hi")
    assert "Target 'emb' has no route for /v1/completions" in info.value.message


def test_teis_own_api_is_relayed(embedder: tuple[TEIStub, str], proxy: str) -> None:
    stub = embedder[0]
    assert http.post(proxy + "/embed", json={"inputs": "hi"}).json() == [stub.vector("hi")]
    assert http.get(proxy + "/info").json()["model_id"] == "stub/bge-small"
    tokens = http.post(proxy + "/tokenize", json={"inputs": "hi there"}).json()
    assert [t["text"] for t in tokens[0]] == ["[CLS]", "hi", "there", "[SEP]"]


def test_embeddings_and_reranking_are_not_recorded(client: openai.OpenAI, proxy: str, tmp_path: Path) -> None:
    client.embeddings.create(model="bge-small", input=["a", "b"])
    assert http.post(proxy + "/v1/rerank", json={"model": "bge-reranker", "query": "q", "documents": ["q"]}).status_code == 200
    client.chat.completions.create(model="gpt", messages=[{"role": "user", "content": "Hi"}])
    found = records(tmp_path / "datasets", 1)
    time.sleep(0.3)  # anything else would have been written by now
    assert [r["meta"]["endpoint"] for r in records(tmp_path / "datasets", 1)] == ["/v1/chat/completions"] == [
        r["meta"]["endpoint"] for r in found]


def test_the_readmes_example(embedder: tuple[TEIStub, str], reranker: tuple[TEIStub, str], start_proxy: ProxyFactory) -> None:
    text = readme_example("config.yaml (tei type)")
    url = start_proxy(yaml.safe_load(text.replace("http://127.0.0.1:8081", embedder[1]).replace("http://127.0.0.1:8082", reranker[1]))).url
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    assert client.embeddings.create(model="bge-small-en-v1.5", input="hi").data[0].embedding == f32(embedder[0].vector("hi"))
    r = http.post(url + "/v1/rerank", json={"model": "bge-reranker", "query": QUERY, "documents": DOCS, "top_n": 1})
    assert r.json()["results"] == [{"index": 0, "relevance_score": 1.0, "document": {"text": DOCS[0]}}]


# ------------------------------------------------------------------------------------------- LangChain


def test_langchain_embeds_documents_and_queries(embedder: tuple[TEIStub, str], proxy: str) -> None:
    stub = embedder[0]
    # Text, not tiktoken's ids (which would be other tokens to TEI's model); chunks within TEI's max_client_batch_size.
    embeddings = OpenAIEmbeddings(model="bge-small", base_url=proxy + "/v1", api_key=KEY, max_retries=0,  # type: ignore[arg-type]
                                  check_embedding_ctx_length=False, chunk_size=stub.max_client_batch_size)
    texts = [*DOCS, "Dogs bark.", "Birds sing."]
    assert embeddings.embed_documents(texts) == [f32(stub.vector(t)) for t in texts]
    assert [len(s["inputs"]) for s in stub.seen] == [4, 2]
    assert embeddings.embed_query(QUERY) == f32(stub.vector(QUERY))
    assert asyncio.run(embeddings.aembed_documents(["x", "y"])) == [f32(stub.vector("x")), f32(stub.vector("y"))]
