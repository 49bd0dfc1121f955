"""``llmsup run-batch`` against a real ``llmsup serve`` (sim): every line accounted for, in order, each line's deadline."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from support import live

pytestmark = [pytest.mark.timeout(300)]


@pytest.mark.real
def test_run_batch_answers_every_line_in_order(tmp_path: Path) -> None:
    lines = [json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/completions",
                         "body": {"prompt": f"p{i}", "max_tokens": 2}}) for i in range(300)]
    lines[10] = json.dumps({"custom_id": "chat", "method": "POST", "url": "/v1/chat/completions",
                            "body": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}})
    lines[20] = json.dumps({"custom_id": "runaway", "method": "POST", "url": "/v1/completions",
                            "body": {"prompt": "runaway [sim:hang]", "max_tokens": 50, "deadline_s": 0.5}})
    lines[30] = "{not json"
    lines[40] = json.dumps({"custom_id": "embed", "method": "POST", "url": "/v1/embeddings", "body": {}})
    lines[50] = json.dumps({"custom_id": "bad", "method": "POST", "url": "/v1/completions",
                            "body": {"prompt": "x", "max_tokens": -1}})
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("\n".join(lines) + "\n")
    with live.serving(tmp_path / "srv") as server:
        done = subprocess.run([*live.LLMSUP, "run-batch", "-i", str(source), "-o", str(target), "--url", server.url,
                               "--run-dir", str(server.run_dir)], capture_output=True, text=True, timeout=240,
                              env=live.sim_environment(tmp_path))
    assert done.returncode == 3, done.stderr  # some lines failed (on purpose)
    assert "300 lines: 297 answered, 3 failed" in done.stderr, done.stderr
    out = [json.loads(t) for t in target.read_text().splitlines()]
    assert len(out) == 300 and len({o["id"] for o in out}) == 300
    for i, o in enumerate(out):
        if i not in (10, 20, 30, 40, 50):
            assert o["custom_id"] == f"c{i}" and o["error"] is None, o
            assert o["response"]["status_code"] == 200 and o["response"]["body"]["choices"][0]["text"], o
    assert out[10]["custom_id"] == "chat" and out[10]["response"]["status_code"] == 200
    assert out[10]["response"]["body"]["object"] == "chat.completion"
    runaway = out[20]["response"]["body"]
    assert out[20]["response"]["status_code"] == 200 and runaway["choices"][0]["finish_reason"] == "timeout", runaway
    assert out[30]["response"] is None and out[30]["error"]["code"] == "invalid_json"
    assert out[40]["custom_id"] == "embed" and out[40]["error"]["code"] == "invalid_request"
    assert out[50]["custom_id"] == "bad" and out[50]["response"]["status_code"] == 400 and out[50]["error"] is None


@pytest.mark.timeout(120)
async def test_run_batch_in_process_accounts_for_every_line(tmp_path: Path) -> None:
    """The same file shape on the in-process supervisor (sim driver on the loop): 1,000 lines, each answered."""
    import httpx

    from llmsup.supervisor.cli.run_batch import run_batch
    from llmsup.supervisor.client.base import Endpoint
    from llmsup.supervisor.inprocess import InProcessSupervisor
    from llmsup.supervisor.settings import Settings
    from llmsup.web.app import create_app

    settings = Settings(run_dir=tmp_path / "run", backend="sim", sim_token_s=0.0, engines=2, require_api_keys="off",
                        queue_max=10_000)
    sup = InProcessSupervisor(settings)
    app = create_app(settings, sup)
    await sup.start()
    try:
        async with app.router.lifespan_context(app):
            lines = [json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/completions",
                                 "body": {"prompt": f"p{i}", "max_tokens": 1, "deadline_s": 30}}) for i in range(1000)]
            source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
            source.write_text("\n".join(lines) + "\n\n")
            endpoint = Endpoint.resolve("http://127.0.0.1", tmp_path / "run", None, "unused")
            outcome = await run_batch(endpoint, source, target, concurrency=64,
                                      transport=httpx.ASGITransport(app=app))
    finally:
        await sup.stop()
    assert (outcome.lines, outcome.answered, outcome.failed) == (1000, 1000, 0)
    out = [json.loads(t) for t in target.read_text().splitlines()]
    assert [o["custom_id"] for o in out] == [f"c{i}" for i in range(1000)]
    assert all(o["response"]["status_code"] == 200 and o["response"]["body"]["choices"][0]["finish_reason"] == "length"
               for o in out)
