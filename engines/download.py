"""Fetching a Hugging Face model into the cache before the backend loads it, with progress while bytes arrive.

The backend would download the model itself, silently, inside its load; done here first, the engine reports
how far the download is (so a download of any length never looks like a stuck start) and the backend then loads
from the cache. Only what a backend loads is fetched: config, tokenizer and generation files, and the weights in
one format (safetensors where the repository has them), not ``original/`` checkpoints, GGUF or ONNX exports.
A local directory, an offline hub (``HF_HUB_OFFLINE``) or a repository that cannot be listed: nothing is done
here, and the backend's own load reports what is wrong.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmsup.engines.modelpath import looks_like_path

log = logging.getLogger("llmsup.engine")
SKIPPED = ("original/*", "*.gguf", "*.onnx", "onnx/*", "*.msgpack", "*.h5", "*.ot", "*.tflite", "coreml/*",
           "openvino/*", "*.mlmodel", "*.onnx_data")
OTHER_WEIGHTS = ("*.bin", "*.pt", "*.pth")  # skipped when the repository has safetensors
KEEPALIVE_S = 30.0  # progress is reported at least this often while the download runs, bytes or not
POLL_S = 2.0
Report = Callable[[str], None]


def wanted(filenames: list[str]) -> list[str]:
    """The files of a repository a backend loads."""
    skipped = SKIPPED + (OTHER_WEIGHTS if any(f.endswith(".safetensors") for f in filenames) else ())
    return [f for f in filenames if not any(fnmatch.fnmatch(f, pattern) for pattern in skipped)]


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def fetch(model: str | None, report: Report, hub: Any = None) -> None:
    """Download ``model`` (a hub id) into the Hugging Face cache, calling ``report`` with the progress.
    ``hub``: the ``snapshot_download`` function (a stand-in in tests)."""
    if not model or os.path.isdir(model) or looks_like_path(model) or offline():
        return  # a path that is not there: the backend's load says so
    if hub is None:
        try:
            from huggingface_hub import snapshot_download as hub
        except ImportError:
            return
    try:
        listing = hub(model, dry_run=True)
    except Exception as exc:  # not on the hub, gated, no network: the backend's load says what is wrong
        log.warning("download: cannot list %s on the Hugging Face hub (%s: %s); the backend loads it as it can",
                    model, type(exc).__name__, exc)
        return
    files = wanted([f.filename for f in listing])
    missing = [f for f in listing if f.filename in files and f.will_download]
    if not missing:
        report(f"{model}: in the cache")
        return
    total = sum(f.file_size or 0 for f in missing)
    report(f"{model}: {len(missing)} files, {_gb(total)} to fetch")
    _run_with_progress(lambda: hub(model, allow_patterns=files), model, total, report)


def _run_with_progress(download: Callable[[], Any], model: str, total: int, report: Report) -> None:
    """Run the download in a thread; report from this (the main) thread as the cache grows."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            download()
        except BaseException as exc:  # handed to the main thread, raised there
            failure.append(exc)

    before = cache_bytes(model)
    worker = threading.Thread(target=run, name="llmsup-download", daemon=True)
    worker.start()
    reported_at, reported_bytes, t0 = time.monotonic(), 0, time.monotonic()
    while worker.is_alive():
        worker.join(POLL_S)
        done = max(0, cache_bytes(model) - before)
        if worker.is_alive() and (done != reported_bytes or time.monotonic() - reported_at >= KEEPALIVE_S):
            report(f"{model}: {_gb(done)} of {_gb(total)}")
            reported_at, reported_bytes = time.monotonic(), done
    if failure:
        raise failure[0]
    report(f"{model}: fetched in {time.monotonic() - t0:.1f}s")


def cache_bytes(model: str) -> int:
    """Bytes under the model's folder of the hub cache and under the Xet chunk cache (where bytes land first)."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return 0
    folders = [Path(constants.HF_HUB_CACHE) / f"models--{model.replace('/', '--')}"]
    xet = getattr(constants, "HF_XET_CACHE", None)
    if xet:
        folders.append(Path(xet))
    total = 0
    for folder in folders:
        for path in folder.rglob("*") if folder.is_dir() else ():
            try:
                if path.is_file() and not path.is_symlink():
                    total += path.stat().st_size
            except OSError:  # a file renamed or removed while counting
                continue
    return total


def _gb(size: int) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e8 else f"{size / 1e6:.1f} MB"
