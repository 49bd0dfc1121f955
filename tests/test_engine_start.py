"""An engine's start: its log file, its progress (published while init runs, read by the supervisor), the start
timeout counted from the latest progress, the Hugging Face download with progress (a stand-in hub), the user's
Hugging Face home kept, the server's chat template published; and the same on a real local cluster (a vLLM engine's
own log: tests/test_backends_cluster.py, on the vLLM engine its tests share)."""

from __future__ import annotations

import asyncio
import json
import logging
import logging.config
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from llmsup.engines import download, runtime, startup
from llmsup.engines.protocol import Generation, GenParams, TokenCallback
from llmsup.supervisor.cluster import engine_start
from llmsup.supervisor.cluster.engine_start import Progress
from llmsup.supervisor.service import Supervisor
from llmsup.web.chat import ChatInput, template_for
from llmsup.web.openai_schemas import ChatMessage

pytestmark = pytest.mark.timeout(60)
TEMPLATE = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}[assistant]"


# the start timeout counts from the latest progress ------------------------------------------------------------------
class Notes:
    """What an engine published so far: each read shows the next note until ``stop_after`` notes."""

    def __init__(self, stop_after: int) -> None:
        self.seq, self.stop_after = 0, stop_after

    def read(self) -> dict[str, Any]:
        self.seq = min(self.seq + 1, self.stop_after)
        return {"progress": {"seq": self.seq, "phase": "download", "detail": f"{self.seq} MB", "log_file": "/l"}}


async def test_progress_keeps_a_long_start_going_and_silence_ends_it() -> None:
    loop = asyncio.get_running_loop()
    seen: list[Progress] = []
    done: asyncio.Future[str] = loop.create_future()
    notes = Notes(stop_after=1000)

    def read() -> dict[str, Any]:
        data = notes.read()
        if notes.seq == 40:  # 40 polls, longer than the quiet timeout below: the download went on
            done.set_result("loaded")
        return data

    assert await engine_start.wait_started(done, read, quiet_timeout=0.1, on_progress=seen.append,
                                           poll_s=0.01) == "loaded"
    assert [p.seq for p in seen] == list(range(1, 41)) and seen[0] == Progress(1, "download", "1 MB", "/l")

    stuck: asyncio.Future[str] = loop.create_future()
    with pytest.raises(TimeoutError, match=r"no start progress for 0.1s \(last: download: 3 MB\)"):
        await engine_start.wait_started(stuck, Notes(stop_after=3).read, 0.1, seen.append, poll_s=0.01)
    assert stuck.cancelled()


def test_progress_read_ignores_what_is_not_progress() -> None:
    assert Progress.read(None) is None and Progress.read({"other": 1}) is None
    assert Progress.read({"progress": {"seq": "1"}}) is None
    assert engine_start.published(object())() is None  # a plain future publishes nothing


# the engine side ------------------------------------------------------------------------------------------------------
@pytest.fixture
def engine_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    for name in ("VLLM_LOGGING_CONFIG_PATH", "VLLM_CONFIGURE_LOGGING"):
        monkeypatch.delenv(name, raising=False)
    yield tmp_path / "logs"
    os.environ.pop("VLLM_LOGGING_CONFIG_PATH", None)
    if startup._handler is not None:
        startup._close(startup._handler)
        startup._handler = None


def test_engine_log_file_collects_llmsup_and_library_records(engine_log: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMSUP_ENGINE_SET", "e7")
    path = startup.open_log_file({"log_dir": str(engine_log), "log_format": "json", "log_level": "info"})
    assert path == str(engine_log / "engine-e7.log")
    assert startup.open_log_file({"log_dir": str(engine_log)}) == path  # again: the same handler, no doubled lines
    startup.StartProgress(path).report("load", "sim backend")  # outside an engine: logged, nothing published
    logging.getLogger("transformers.modeling_utils").warning("weights not initialised")
    vllm_logger = logging.getLogger("vllm")
    config = Path(os.environ["VLLM_LOGGING_CONFIG_PATH"])
    assert config.stat().st_mode & 0o777 == 0o600
    logging.config.dictConfig(json.loads(config.read_text()))  # what vLLM does with it, here and in its children
    try:
        logging.getLogger("vllm.engine").info("KV cache 1 GiB")
    finally:
        for handler in list(vllm_logger.handlers):
            vllm_logger.removeHandler(handler)
            handler.close()
        vllm_logger.propagate = True
    lines = [json.loads(line) for line in Path(path).read_text().splitlines()]
    assert [(r["logger"], r["level"]) for r in lines] == [
        ("llmsup.engine", "INFO"), ("transformers.modeling_utils", "WARNING"), ("vllm.engine", "INFO")]
    assert lines[0]["message"].startswith("engine start, load: sim backend")


def test_no_log_file_where_the_directory_cannot_be_made(tmp_path: Path, engine_log: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert startup.open_log_file({"log_dir": str(blocker / "logs"), "engine_id": 3}) == ""


def test_hugging_face_home_is_the_users_unless_a_setting_names_one(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", "/home/me/hf")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    runtime.prepare_environment({"run_dir": str(tmp_path), "gpu": ""})
    assert os.environ["HF_HOME"] == "/home/me/hf"
    runtime.prepare_environment({"run_dir": str(tmp_path), "gpu": "", "hf_home": str(tmp_path / "hf")})
    assert os.environ["HF_HOME"] == str(tmp_path / "hf")


class OneTokenBackend:
    name = "transformers"

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[GenParams] = []
        self.aborted = 0
        self.fail = fail

    def generate(self, prompt: str, params: GenParams, on_token: TokenCallback) -> Generation:
        self.calls.append(params)
        if self.fail:
            raise RuntimeError("no GPU memory left")
        on_token("x")
        return Generation("x", 1, "length", 1)

    def abort(self) -> None:
        self.aborted += 1


def test_warm_up_runs_one_token_and_survives_a_failure(caplog: pytest.LogCaptureFixture) -> None:
    ok, failing = OneTokenBackend(), OneTokenBackend(fail=True)
    runtime.warm_up(ok, startup.StartProgress())  # type: ignore[arg-type]
    runtime.warm_up(failing, startup.StartProgress())  # type: ignore[arg-type]
    assert [p.max_tokens for p in ok.calls] == [1] and ok.aborted == failing.aborted == 1
    assert "warm-up failed: RuntimeError: no GPU memory left" in caplog.text


# the download -----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Listed:
    filename: str
    will_download: bool
    file_size: int


class StandInHub:
    """``snapshot_download`` as the engine calls it: a dry run lists files, a real run writes them into the hub
    cache one by one, each after the engine reported the bytes written so far (events, no sleeps)."""

    def __init__(self, cache: Path, files: dict[str, int], cached: tuple[str, ...] = ()) -> None:
        self.cache, self.files, self.cached = cache, files, cached
        self.fetched: list[str] = []
        self.reported = threading.Event()

    def __call__(self, model: str, dry_run: bool = False, allow_patterns: list[str] | None = None) -> Any:
        if dry_run:
            return [Listed(name, name not in self.cached, size) for name, size in self.files.items()]
        blobs = self.cache / f"models--{model.replace('/', '--')}" / "blobs"
        blobs.mkdir(parents=True, exist_ok=True)
        for name in allow_patterns or []:
            if name in self.cached:
                continue
            self.reported.clear()
            (blobs / name.replace("/", "_")).write_bytes(b"w" * self.files[name])
            self.fetched.append(name)
            assert self.reported.wait(10), "no progress reported while downloading"
        return str(blobs)


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_XET_CACHE", str(tmp_path / "xet"), raising=False)
    monkeypatch.setattr(download, "POLL_S", 0.01)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return tmp_path / "hub"


def test_download_reports_bytes_as_they_arrive_and_only_what_backends_load(hub_cache: Path) -> None:
    files = {"config.json": 500, "tokenizer.json": 2000, "model-00001.safetensors": 300_000,
             "model-00002.safetensors": 200_000, "pytorch_model.bin": 500_000, "original/consolidated.pth": 900_000,
             "model.gguf": 100_000, "generation_config.json": 100}
    hub = StandInHub(hub_cache, files, cached=("generation_config.json",))
    notes: list[str] = []

    def report(detail: str) -> None:
        notes.append(detail)
        if " of " in detail:
            hub.reported.set()

    download.fetch("org/model", report, hub=hub)
    assert hub.fetched == ["config.json", "tokenizer.json", "model-00001.safetensors", "model-00002.safetensors"]
    assert notes[0] == "org/model: 4 files, 0.5 MB to fetch"
    assert "org/model: 0.5 MB of 0.5 MB" in notes and notes[-1].startswith("org/model: fetched in ")


def test_no_download_for_local_dirs_offline_hubs_or_cached_models(hub_cache: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    notes: list[str] = []
    hub = StandInHub(hub_cache, {"config.json": 10, "model.safetensors": 10}, cached=("config.json", "model.safetensors"))
    download.fetch(str(tmp_path), notes.append, hub=hub)
    download.fetch(None, notes.append, hub=hub)
    download.fetch("org/model", notes.append, hub=hub)
    assert notes == ["org/model: in the cache"] and not hub.fetched

    def unreachable(model: str, **kwargs: Any) -> Any:
        raise OSError("no network")

    download.fetch("org/other", notes.append, hub=unreachable)
    assert "cannot list org/other" in caplog.text and notes == ["org/model: in the cache"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    download.fetch("org/model", notes.append, hub=unreachable)  # not even listed


def test_a_failed_download_fails_the_start(hub_cache: Path) -> None:
    def listing_then_failure(model: str, dry_run: bool = False, **kwargs: Any) -> Any:
        if dry_run:
            return [Listed("model.safetensors", True, 10)]
        raise PermissionError("gated repository: log in with `hf auth login`")

    with pytest.raises(PermissionError, match="gated"):
        download.fetch("org/gated", lambda detail: None, hub=listing_then_failure)


# on a real local cluster -------------------------------------------------------------------------------------------------
def publishing_start() -> bool:
    """Runs on an engine: three phases, as init_engine reports them (imports inside: shipped by value)."""
    import threading

    from llmsup.engines.startup import StartProgress

    progress = StartProgress("/run/logs/engine-x.log")
    for phase in ("download", "load", "warm-up"):
        progress.report(phase, "step")
        threading.Event().wait(0.5)  # the task stays busy while the supervisor polls its data
    return True


publishing_start.__module__ = "__main__"  # shipped by value: engines cannot import this test module


@pytest.mark.settings(engines=1, chat_template=TEMPLATE, log_format="json")
async def test_engines_log_to_their_files_publish_progress_and_the_chat_template(sup: Supervisor) -> None:
    engine = next(iter(sup.pool))
    log_file = Path(engine.log_file)
    assert log_file.parent == (sup.settings.run_dir / "logs").resolve() and log_file.name == f"engine-{engine.set_id}.log"
    records = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert [r["message"].split(":")[0] for r in records if r["message"].startswith("engine start")] == [
        "engine start, start", "engine start, load", "engine start, ready"]
    assert next(v for v in sup.engine_views() if v["id"] == engine.id)["log_file"] == str(log_file)

    prompt = template_for(sup).render(ChatInput([ChatMessage(role="user", content="hi")]))
    assert prompt == "[user] hi\n[assistant]"

    seen: list[Progress] = []
    task = sup.cluster.apply(engine.id, publishing_start)
    assert await engine_start.wait_started(asyncio.wrap_future(task), engine_start.published(task), 10, seen.append)
    assert [p.phase for p in seen] == ["download", "load", "warm-up"] and seen[0].log_file == "/run/logs/engine-x.log"
