"""Engine-local state and the functions the supervisor runs on an engine.

The supervisor calls these through a view of one engine:

- :func:`init_engine` once, right after the engine registers: installs the
  SIGINT handler, pins the GPU, loads the backend, opens the token stream;
- :func:`run_job` for each job: generates, streams, and turns a
  ``KeyboardInterrupt`` into an ordinary result carrying the partial output;
- :func:`ping` as the no-op probe of the escalation ladder;
- :func:`release_engine` before the engine is stopped.

Every argument and result is plain data (the typed messages of ``engines/messages.py``
as dicts), errors included.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
import traceback
from dataclasses import dataclass, field, replace
from typing import Any

from llmsup.engines import messages
from llmsup.engines.gpu_memory import gpu_memory_mb
from llmsup.engines.heartbeat import Heartbeat
from llmsup.engines.messages import EngineBeat, JobResult, JobSpec, ProtocolError, TaskStarted
from llmsup.engines.protocol import Backend, GenParams
from llmsup.engines.startup import StartProgress, open_log_file
from llmsup.engines.stream import JobEmitter, TokenStream

log = logging.getLogger("llmsup.engine")


@dataclass
class EngineRuntime:
    engine_id: int
    backend: Backend
    stream: TokenStream | None
    gpu: str
    jobs_done: int = 0
    started_at: float = field(default_factory=time.time)
    log_file: str = ""  # this engine's log file ("" when it has none)
    chat_template: str | None = None  # the server's chat template, published in place of the model's
    running: bool = False  # a job runs now
    heartbeat: Heartbeat | None = None

    def describe(self) -> dict[str, Any]:
        info = self.backend.describe()
        return {**info, "chat_template": self.chat_template} if self.chat_template else info

    def tag(self) -> str:
        return f"engine={self.engine_id} host={socket.gethostname()} pid={os.getpid()} gpu={self.gpu or 'cpu'}"

    def beat(self) -> EngineBeat:
        return EngineBeat(self.engine_id, int(self.running), self.jobs_done, round(rss_mb(), 1),
                          gpu_mem_mb=gpu_memory_mb(self.gpu))


_RUNTIME: EngineRuntime | None = None


def current() -> EngineRuntime:
    """This engine's runtime; raises if :func:`init_engine` has not run."""
    if _RUNTIME is None:
        raise RuntimeError("engine not initialised")
    return _RUNTIME


def host_key() -> str:
    """Identifies the machine (hostname + boot id): equal keys mean os.kill reaches the pid."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = "?"
    return f"{socket.gethostname()}|{boot}"


def rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)
    except (OSError, ValueError, IndexError):
        return 0.0


def make_backend(config: dict[str, Any]) -> Backend:
    kind = config.get("backend", "sim")
    if kind == "sim":
        from llmsup.engines.sim import SimBackend

        return SimBackend(token_s=float(config.get("sim_token_s", 0.005)))
    if kind == "transformers":
        from llmsup.engines.transformers_backend import TransformersBackend

        return TransformersBackend(config)
    if kind == "vllm":
        from llmsup.engines.vllm_backend import VLLMBackend

        return VLLMBackend(config)
    if kind == "python":
        from llmsup.engines.python_backend import PythonBackend

        return PythonBackend(dict(config.get("functions") or {}))
    raise ValueError(f"unknown backend {kind!r}")


def prepare_environment(config: dict[str, Any]) -> str:
    """Pin the GPU and keep compile caches in the run directory; before any CUDA import. The Hugging Face home
    (downloaded models, the hub token) stays the user's unless the config names one (``hf_home``)."""
    gpu = config.get("gpu")
    if gpu is None:
        gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    run_dir = config.get("run_dir")
    if run_dir:
        cache = os.path.join(run_dir, "cache")
        os.environ.setdefault("VLLM_CACHE_ROOT", os.path.join(cache, "vllm"))
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(cache, "torchinductor"))
        os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(cache, "triton"))
    if config.get("hf_home"):
        os.environ["HF_HOME"] = str(config["hf_home"])
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    return gpu


def lower_priority(nice: int) -> None:
    """Run this engine's work (and every process it starts) at a lower CPU priority than the supervisor, so
    that on CPU backends the supervisor's timers and signals win the CPU from the engines they interrupt.
    Linux nice values are per thread: this lowers the main thread, where jobs run, and what it starts after."""
    if nice <= 0:
        return
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) < nice:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError as exc:  # not allowed here: run at the inherited priority
        log.warning("cannot lower the engine's CPU priority: %s", exc)


def host_overrides(config: dict[str, Any]) -> dict[str, Any]:
    """What the host that started this engine says about itself overrides the supervisor's view of its own host:
    the run directory for caches (``LLMSUP_ENGINE_RUN_DIR``) and the engines sharing this host's CPUs
    (``LLMSUP_ENGINES_ON_HOST``), both set by ``llmsup join`` for the engines it starts."""
    config = dict(config)
    if os.environ.get("LLMSUP_ENGINE_RUN_DIR"):
        config["run_dir"] = os.environ["LLMSUP_ENGINE_RUN_DIR"]
    if os.environ.get("LLMSUP_ENGINES_ON_HOST", "").isdigit():
        config["engines_on_host"] = int(os.environ["LLMSUP_ENGINES_ON_HOST"])
    return config


def init_engine(config: dict[str, Any]) -> dict[str, Any]:
    """Initialise this engine once; later calls only refresh the identity.

    The engine's log records go to its log file from the start; each phase (download, load, warm-up) is a log
    line and a progress note the supervisor reads while this runs (``engines/startup.py``).
    """
    global _RUNTIME
    # An engine started in the background may inherit SIGINT=SIG_IGN, which
    # would silently disable every interrupt: install Python's handler.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if _RUNTIME is None:
        config = host_overrides(config)
        log_file = open_log_file(config)
        progress = StartProgress(log_file)
        progress.report("start", f"pid {os.getpid()} on {socket.gethostname()}, log file {log_file or '-'}")
        lower_priority(int(config.get("nice") or 0))
        if config.get("backend") in ("transformers", "vllm"):
            from llmsup.engines.modelpath import check_model_path

            check_model_path(config.get("model"))  # before the backend's imports: a wrong path is said in a moment
        gpu = prepare_environment(config)
        backend = make_backend(config)
        t0 = time.monotonic()
        if config.get("backend") in ("transformers", "vllm"):
            from llmsup.engines.download import fetch

            fetch(config.get("model"), lambda detail: progress.report("download", detail))
        progress.report("load", f"{config.get('backend', 'sim')} backend, model {config.get('model') or 'default'}")
        backend.load()
        warm_up(backend, progress)
        address, keys = config.get("stream_address"), config.get("channel_keys")
        stream = TokenStream(address, keys) if address else None
        rt = EngineRuntime(int(config.get("engine_id", -1)), backend, stream, gpu, log_file=log_file,
                           chat_template=config.get("chat_template") or None)
        if address and config.get("beat"):  # one-job engines: a thread says the process lives while jobs run
            rt.heartbeat = Heartbeat(address, keys, rt.beat)
            rt.heartbeat.start()
        _RUNTIME = rt
        log.info("%s backend loaded in %.2fs: %s", rt.tag(), time.monotonic() - t0, backend.describe())
        progress.report("ready", f"in {time.monotonic() - progress.started:.1f}s")
    return identity()


def warm_up(backend: Backend, progress: StartProgress) -> None:
    """One token through the model before the first job (first-call costs: kernels, caches, allocations);
    a failure is logged, and jobs then say what is wrong."""
    if backend.name in ("sim", "python"):  # nothing to warm: no model (a function step imports at load)
        return
    progress.report("warm-up", "one token")
    try:
        params = getattr(backend, "warm_up_params", None) or GenParams(max_tokens=1)  # a pooling model: its task
        backend.generate("Hello", params, lambda *token: None)
    except Exception as exc:  # the engine still serves; each job reports its own error
        log.warning("warm-up failed: %s: %s", type(exc).__name__, exc)
    finally:
        backend.abort()


def identity() -> dict[str, Any]:
    rt = _RUNTIME
    gpu = rt.gpu if rt else os.environ.get("CUDA_VISIBLE_DEVICES", "")
    return {
        "pid": os.getpid(),
        "pgid": os.getpgid(0),
        "host": socket.gethostname(),
        "host_key": host_key(),
        "gpu": gpu,
        "rss_mb": round(rss_mb(), 1),
        "gpu_mem_mb": gpu_memory_mb(gpu, fresh=True),  # at registration and after the model loaded
        "jobs_done": rt.jobs_done if rt else 0,
        "backend": rt.describe() if rt else None,
        "engine_set": os.environ.get("LLMSUP_ENGINE_SET", ""),
        "pool": os.environ.get("LLMSUP_POOL", ""),  # set by a join agent of one pool (llmsup join --pool)
        "nanny_pid": nanny_pid(),
        "pid_started": process_started(),
        "log_file": rt.log_file if rt else "",
    }


def process_started() -> float | None:
    """This process's start time as the kernel reports it (with the pid, it names the process for good)."""
    try:
        import psutil

        return psutil.Process().create_time()
    except Exception:  # psutil missing: the supervisor then trusts the pid alone
        return None


def nanny_pid() -> int | None:
    """The IPyParallel nanny watching this engine (a child in its own session), if any."""
    try:
        import psutil

        for child in psutil.Process().children():
            if "ipyparallel.engine.nanny" in " ".join(child.cmdline()):
                return child.pid
    except Exception:  # psutil missing or the child gone: nothing to report
        return None
    return None


def ping() -> int:
    """The no-op probe: tasks on one engine run in order, so its reply proves the engine is free."""
    return os.getpid()


def run_job(spec_data: dict[str, Any]) -> dict[str, Any]:
    """Run one job (a :class:`JobSpec` as plain data); its :class:`JobResult` comes back as plain data.

    Interrupts and errors are results too (an error carries its traceback), never a broken engine.
    """
    rt = _RUNTIME
    try:
        spec = messages.decode_for_engine(spec_data, expect=(JobSpec,))
    except ProtocolError as exc:
        return messages.plain(JobResult("error", error=f"ProtocolError: {exc}", pid=os.getpid()))
    if rt is None:
        return messages.plain(JobResult("error", error="engine not initialised", transient=True, pid=os.getpid()))
    emitter = JobEmitter(spec.key, rt.stream, want_ids=spec.params.return_token_ids,
                         want_logprobs=spec.params.logprobs is not None)
    if rt.stream is not None:  # the task is running: from now on a SIGINT reaches it (not the idle kernel)
        rt.stream.send(TaskStarted(spec.key))
    t0 = time.monotonic()
    rt.running = True
    try:
        gen = rt.backend.generate(spec.prompt, spec.params, emitter)
        result = JobResult("completed", gen.text, gen.tokens, gen.finish_reason, gen.prompt_tokens,
                           logprobs=gen.logprobs, prompt_logprobs=gen.prompt_logprobs, token_ids=gen.token_ids,
                           prompt_token_ids=gen.prompt_token_ids, pooled=gen.pooled, pooled_shape=gen.pooled_shape)
    except KeyboardInterrupt:
        rt.backend.abort()
        result = JobResult("interrupted", emitter.text, emitter.count, logprobs=tuple(emitter.logprobs),
                           token_ids=tuple(emitter.token_ids))
        log.info("%s job=%s interrupted after %d tokens", rt.tag(), spec.key, emitter.count)
    except Exception as exc:  # carried back as data; the engine stays usable
        rt.backend.abort()
        result = JobResult(
            "error", emitter.text, emitter.count,
            error=f"{type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(limit=20),
            transient=bool(getattr(exc, "transient", False)),
            engine_dead=bool(getattr(exc, "engine_dead", False) or getattr(rt.backend, "dead", False)),
        )
    rt.running = False
    rt.jobs_done += 1
    result = replace(result, elapsed_s=time.monotonic() - t0, pid=os.getpid(), rss_mb=round(rss_mb(), 1),
                     gpu_mem_mb=gpu_memory_mb(rt.gpu), jobs_done=rt.jobs_done)
    return messages.plain(result)


def release_engine() -> dict[str, Any]:
    """Free the backend (and its child processes) before this engine is stopped."""
    global _RUNTIME
    rt = _RUNTIME
    if rt is None:
        return {"released": False, "pid": os.getpid()}
    _RUNTIME = None
    if rt.heartbeat is not None:
        rt.heartbeat.stop()
    rt.backend.release()
    if rt.stream is not None:
        rt.stream.close()
    log.info("%s released", rt.tag())
    return {"released": True, "pid": os.getpid()}
