"""The pooling routes' checks that never need a pooling engine: validation (400), an unknown model (404), a
model that does not pool (404, vLLM's message), no engine up yet (503). The real pooling runner: ``test_openai_pooling.py``."""

from __future__ import annotations

import httpx
import openai
import pytest

from support.inprocess import InProcessApp
from support.inprocess_server import Server

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize(("path", "body", "words"), [
    ("/v1/embeddings", {"input": 3}, "input"),
    ("/v1/embeddings", {"input": "x", "encoding_format": "bytes"}, "encoding_format"),
    ("/v1/embeddings", {"input": []}, "input"),
    ("/v1/embeddings", {"input": [[-1]]}, "input"),
    ("/pooling", {"input": "x", "task": "generate"}, "task"),
    ("/score", {"text_1": "a"}, "text_1 and text_2"),
    ("/rerank", {"documents": ["a"]}, "query"),
    ("/v1/embeddings", {"input": "x", "deadline_s": 1, "timeout": 1}, "not both"),
])
async def test_invalid_bodies_are_400(web: InProcessApp, path: str, body: dict, words: str) -> None:
    resp = await web.http.post(path, json=body)
    assert resp.status_code == 400, resp.text
    assert words in resp.text and resp.json()["error"]["type"] == "invalid_request_error"


async def test_unknown_model_and_no_engine_yet(web: InProcessApp) -> None:
    unknown = await web.http.post("/v1/embeddings", json={"model": "nope", "input": "x"})
    waiting = await web.http.post("/v1/embeddings", json={"input": "x"})
    assert unknown.status_code == 404 and "does not exist" in unknown.json()["error"]["message"]
    assert waiting.status_code == 503 and waiting.headers["retry-after"] == "5"


def test_a_generative_model_does_not_pool(server: Server) -> None:
    with openai.OpenAI(base_url=server.url + "/v1", api_key=server.api_key, max_retries=0, timeout=30) as oai:
        with pytest.raises(openai.APIStatusError) as err:
            oai.embeddings.create(model="sim", input="alpha")
    assert err.value.status_code == 404 and err.value.body["message"] == "The model does not support Embeddings API"
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.api_key}"}) as client:
        for path, body in (("/classify", {"input": "a"}), ("/score", {"text_1": "a", "text_2": "b"}),
                           ("/rerank", {"query": "a", "documents": ["b"]}), ("/pooling", {"input": "a"})):
            assert client.post(path, json=body).status_code == 404, path
