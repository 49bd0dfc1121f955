"""The VLM check of ``bench/gpu_check.py``: a vision-language model served by ``llmsup serve --backend vllm`` answers a
chat whose user message carries an ``image_url`` data-URL part, and the image counts in the prompt's tokens (as
vLLM's processor counted them: the same chat without the image has at least ``MIN_IMAGE_TOKENS`` fewer)."""

from __future__ import annotations

import base64
import os
import struct
import zlib
from pathlib import Path

from bench.gpu_check_serve import FAIL, PASS, ROOT, Check
from tests.support import live

MIN_IMAGE_TOKENS = 16  # a 224x224 image is 64 tokens to Qwen2-VL, 576 to LLaVA-1.5: its placeholder alone is fewer


def png(width: int = 64, height: int = 64, rgb: tuple[int, int, int] = (220, 30, 30)) -> bytes:
    """A plain PNG of one colour (no imaging library needed)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def data_url(image: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(image).decode()


def image_chat(model: str, work: Path, start_timeout: float) -> Check:
    """Start the server on ``model``, ask with and without the image, stop it."""
    work.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("LLMSUP_URL", "LLMSUP_RUN_DIR", "LLMSUP_ADMIN_TOKEN")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1", IPYTHONDIR=str(work / "ipython"),
               LLMSUP_ENGINE_START_TIMEOUT_S=str(int(start_timeout)))
    server = live.start_llmsup(work / "run", work, env, engines=1, backend="vllm",
                               args=["--model", model, "--max-model-len", "4096", "--gpu-memory-utilization", "0.5",
                                     "--log-level", "warning"], cwd=ROOT, timeout=start_timeout, log_name="vlm-serve")
    try:
        with server.client(timeout=300) as http:
            text = {"type": "text", "text": "What colour is this picture? One word."}
            image = {"type": "image_url", "image_url": {"url": data_url(png(224, 224))}}
            answers = []
            for content in ([text], [image, text]):
                resp = http.post("/v1/chat/completions", json={
                    "model": http.get("/v1/models").json()["data"][0]["id"], "max_tokens": 16, "temperature": 0,
                    "messages": [{"role": "user", "content": content}]})
                if resp.status_code != 200:
                    return Check("VLM image_url", FAIL, f"HTTP {resp.status_code}", resp.text[:300])
                answers.append(resp.json())
    finally:
        survivors = live.stop(server)
    plain, seen = (a["usage"]["prompt_tokens"] for a in answers)
    said = answers[1]["choices"][0]["message"]["content"]
    ok = seen - plain >= MIN_IMAGE_TOKENS and not survivors
    detail = (f"prompt tokens {plain} without the image, {seen} with it; answer {said!r}"
              + (f"; left after stop: {survivors}" if survivors else ""))
    return Check("VLM image_url", PASS if ok else FAIL, f"{seen - plain} image tokens, answered", detail)
