"""Settings: CLI flags > environment (``LLMSUP_<NAME>``) > config file > defaults.

Each field is one setting, reachable three ways, all derived from this class: the flag ``--<name-with-dashes>``
(``supervisor/cli/options.py`` generates the options of ``llmsup serve`` from the fields), the environment variable
``LLMSUP_<NAME>`` and the TOML key ``<name>``. A field's ``json_schema_extra`` (built by :func:`cli`) names its help
panel, extra flag names (vLLM's, or older ones) and other names its variable and key also accept.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from llmsup.supervisor import runfiles
from llmsup.supervisor.pools import PoolFields
from llmsup.supervisor.settings_meta import ENGINES as ENGINES
from llmsup.supervisor.settings_meta import FRONTEND as FRONTEND
from llmsup.supervisor.settings_meta import JOBS as JOBS
from llmsup.supervisor.settings_meta import MODEL as MODEL
from llmsup.supervisor.settings_meta import SECURITY as SECURITY
from llmsup.supervisor.settings_meta import SERVER as SERVER
from llmsup.supervisor.settings_meta import cli as cli
from llmsup.supervisor.settings_secrets import SecretSettings
from llmsup.supervisor.settings_serving import ServingFeatures

BackendName = Literal["auto", "sim", "transformers", "vllm", "python"]
DType = Literal["auto", "half", "float16", "bfloat16", "float", "float32"]
LogLevel = Literal["debug", "info", "warning", "error", "critical"]
ENV_PREFIX = "LLMSUP_"
# an ssh destination and nothing else: [user@]host[:port], neither part starting with "-" (an ssh option)
SSH_HOST = re.compile(r"(?:[A-Za-z0-9_][A-Za-z0-9._-]{0,63}@)?"
                      r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?")

# LLMSUP_* variables read elsewhere than by Settings (not misspelt settings)
OTHER_VARIABLES = {
    "LLMSUP_CONFIG": "the TOML settings file",
    "LLMSUP_URL": "the server the client and CLI talk to",
    "LLMSUP_API_KEY": "the API key the client sends",
    "LLMSUP_ENGINE_SET": "set by the supervisor in engine processes",
    "LLMSUP_KEEP_TORCH_EXTENSIONS": "read by engines (torch extension check)",
}


def _default_engines(data: dict[str, Any]) -> int:
    from llmsup.engines.placement import default_engines, detect_gpu_count

    return default_engines(detect_gpu_count(), int(data.get("gpus_per_engine") or 1))


class Settings(ServingFeatures, PoolFields, SecretSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", validate_default=True)

    # cluster
    gpus_per_engine: int = Field(
        1, ge=1, le=64, description="GPUs per engine (vLLM's tensor parallelism)",
        json_schema_extra=cli(ENGINES, "--tensor-parallel-size", "-tp", aliases=("tensor_parallel_size",)),
    )
    engines: int = Field(
        default_factory=_default_engines, ge=0, le=512,
        description="engines to start for a local cluster; default: with GPUs visible one per gpus_per_engine "
        "GPUs, else 2",
        json_schema_extra=cli(ENGINES),
    )
    standby: int | None = Field(
        None, ge=0, le=64,
        description="warm standby engines (loaded, given no jobs) that take a killed engine's place at once; "
        "default: per backend and device (0 for sim and vLLM on CPU, 1 for transformers on CPU, 1 on a spare GPU)",
        json_schema_extra=cli(ENGINES),
    )
    backend: BackendName = Field(
        "auto", description="model backend every engine loads; auto: vLLM with a GPU, else transformers, else sim",
        json_schema_extra=cli(MODEL),
    )
    model: str | None = Field(None, description="model path or Hugging Face id; unset: a tiny local model",
                              json_schema_extra=cli(MODEL))
    cluster_file: Path | None = Field(None, description="connect to this existing IPyParallel cluster file",
                                      json_schema_extra=cli(ENGINES))
    heartbeat_ms: int = Field(500, ge=50, le=30_000, description="controller heartbeat period",
                              json_schema_extra=cli(ENGINES))
    # several hosts
    cluster_ip: str = Field(
        "127.0.0.1",
        description="address the IPyParallel controller and llmsup's engine channels listen on; another host's "
        "engines connect there (see <run-dir>/join.json); 0.0.0.0: every interface, advertised by this host's name",
        json_schema_extra=cli(ENGINES),
    )
    engine_launcher: str = Field(
        "local",
        description="IPyParallel launcher that starts (and replaces) this server's engines: local, ssh, mpi, slurm, "
        "pbs, sge, lsf, htcondor, or a launcher class; configured further in IPyParallel's own "
        "<run-dir>/ipython/profile_llmsup/ipcluster_config.py",
        json_schema_extra=cli(ENGINES),
    )
    hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="hosts the ssh launcher starts engines on, comma-separated ([user@]host[:port]); the engines "
        "are spread over them in turn",
        json_schema_extra=cli(ENGINES),
    )
    host_loss_s: float | None = Field(
        None, gt=0, le=300,
        description="a host none of whose engines (nor its join agent) is heard from for this long is lost: its jobs "
        "go back to the queue uncharged; default: 10 heartbeats, between 2 and 10 s",
        json_schema_extra=cli(ENGINES),
    )
    engine_start_timeout_s: float = Field(
        180.0, gt=0, description="an engine that shows no start progress (download, load, warm-up) for this long "
        "is replaced; a download that goes on never trips it", json_schema_extra=cli(ENGINES),
    )
    engine_threads: int | None = Field(None, ge=1, le=256, description="torch threads per engine",
                                       json_schema_extra=cli(ENGINES))
    slots_per_engine: int | None = Field(
        None, ge=1, le=1024,
        description="jobs at once per engine (above 1: batched engines; vLLM's max_num_seqs); default: 32 for vLLM, "
        "else 1", json_schema_extra=cli(ENGINES, "--max-num-seqs", aliases=("max_num_seqs",)),
    )
    engine_options: dict[str, Any] = Field(
        default_factory=dict, description="backend options as JSON, e.g. {\"multiprocessing\": true} for vLLM",
        json_schema_extra=cli(MODEL),
    )
    engine_args: dict[str, Any] = Field(
        default_factory=dict,
        description="vllm.LLM arguments llmsup does not name, as KEY=VALUE (repeatable; VALUE read as JSON when it "
        "parses, else a string), e.g. --engine-arg kv_cache_dtype=fp8",
        json_schema_extra=cli(MODEL, "--engine-arg", pairs=True),
    )
    engine_nice: int = Field(
        10, ge=0, le=19,
        description="engines (and the processes they start) run this much nicer than the supervisor: its timers and "
        "signals win the CPU from the jobs they interrupt (0: same priority)",
        json_schema_extra=cli(ENGINES),
    )
    engine_test_hooks: bool = Field(False, description="honour [llmsup:stall] test directives in batched engines",
                                    json_schema_extra=cli(ENGINES))
    sim_token_s: float = Field(0.005, ge=0, le=60, description="sim backend seconds per token",
                               json_schema_extra=cli(MODEL))
    # model (vLLM's names; unset: the backend's default for the device)
    max_model_len: int | None = Field(
        None, ge=16, description="context length (prompt + output tokens); default: the model's (2048 for vLLM on CPU)",
        json_schema_extra=cli(MODEL),
    )
    dtype: DType | None = Field(
        None, description="weights and activations type; default: auto (float32 on CPU, the model's on GPU)",
        json_schema_extra=cli(MODEL),
    )
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1,
        description="fraction of each GPU's memory vLLM may take; engines that share a GPU split it; default 0.9",
        json_schema_extra=cli(MODEL),
    )
    enforce_eager: bool | None = Field(
        None, description="vLLM without CUDA graphs / torch.compile; default: on for CPU, off for GPU",
        json_schema_extra=cli(MODEL),
    )
    trust_remote_code: bool = Field(False, description="run the model repository's own Python code",
                                    json_schema_extra=cli(MODEL))
    seed: int | None = Field(None, description="vLLM's engine seed (default 0)", json_schema_extra=cli(MODEL))
    chat_template: str | None = Field(
        None, description="chat template for /v1/chat/completions: a Jinja file's path, or the template itself; "
        "default: the model's own", json_schema_extra=cli(MODEL),
    )
    hf_home: Path | None = Field(
        None, description="Hugging Face home for the engines (model cache and hub token), e.g. .llmsup/huggingface "
        "to keep downloads in the run directory; unset: the user's own (HF_HOME, else ~/.cache/huggingface)",
        json_schema_extra=cli(MODEL),
    )
    # jobs
    deadline_s: float = Field(60.0, gt=0, description="default run-time limit of a job",
                              json_schema_extra=cli(JOBS, "--deadline"))
    max_deadline_s: float = Field(3600.0, gt=0, description="longest deadline a job may ask",
                                  json_schema_extra=cli(JOBS))
    queue_timeout_s: float = Field(600.0, gt=0, description="a queued job expires after this wait",
                                   json_schema_extra=cli(JOBS))
    default_max_tokens: int = Field(64, ge=1, description="max_tokens of a job that names none",
                                    json_schema_extra=cli(JOBS))
    max_tokens_limit: int = Field(100_000, ge=1, description="largest max_tokens a job may ask",
                                  json_schema_extra=cli(JOBS))
    max_prompt_chars: int = Field(200_000, ge=1, description="longest prompt accepted, in characters",
                                  json_schema_extra=cli(JOBS))
    max_request_job_bytes: int = Field(
        16_000_000, ge=1, description="most bytes of prompts and parameters one request's jobs may hold together "
        "(a copy per job: n x prompts), else 400", json_schema_extra=cli(JOBS))
    max_request_logprobs: int = Field(
        4_000_000, ge=1, description="most logprob records one request may ask for (jobs x tokens x alternatives)",
        json_schema_extra=cli(JOBS))
    queue_max: int = Field(10_000, ge=1, description="queued jobs accepted before 429", json_schema_extra=cli(JOBS))
    max_attempts: int = Field(3, ge=1, le=100, description="runs per job before it fails (an engine lost mid-job "
                              "costs one)", json_schema_extra=cli(JOBS))
    retry_backoff_s: float = Field(0.2, ge=0, description="first retry delay; doubles per attempt",
                                   json_schema_extra=cli(JOBS))
    # watchdog
    interrupt_grace_s: float = Field(0.25, gt=0, description="SIGINT -> no-op probe",
                                     json_schema_extra=cli(JOBS, "--interrupt-grace"))
    kill_grace_s: float = Field(1.0, gt=0, description="SIGINT -> SIGKILL of the engine",
                                json_schema_extra=cli(JOBS, "--kill-grace"))
    signal_path: Literal["auto", "direct", "ipp"] = Field(
        "auto", description="auto: os.kill for engines on this host, Client.send_signal for others",
        json_schema_extra=cli(JOBS),
    )
    engine_relaunch_s: float = Field(
        5.0, gt=0, description="at most one launch this often to make up a short engine count (a failed launch)",
        json_schema_extra=cli(ENGINES),
    )
    engine_beat_timeout_s: float = Field(
        10.0, gt=0, description="a batched engine whose serving loop sends no heartbeat for this long is replaced",
        json_schema_extra=cli(ENGINES),
    )
    max_jobs_per_engine: int = Field(0, ge=0, description="recycle an engine after N jobs (0: never)",
                                     json_schema_extra=cli(ENGINES))
    max_engine_rss_mb: float = Field(0, ge=0, description="recycle an engine above this RSS (0: never)",
                                     json_schema_extra=cli(ENGINES))
    # web
    host: str = Field("127.0.0.1", description="address the web app binds", json_schema_extra=cli(SERVER))
    port: int = Field(8000, ge=0, le=65535, description="port of the web app", json_schema_extra=cli(SERVER))
    run_dir: Path = Field(Path(runfiles.DEFAULT_RUN_DIR), description="SQLite store, IPyParallel files, caches, tokens, logs",
                          json_schema_extra=cli(SERVER))
    stream_bind: str = Field("tcp://127.0.0.1", description="where engines send tokens (an address engines reach); "
                             "with a cluster_ip other than loopback, that address",
                             json_schema_extra=cli(ENGINES))
    log_level: LogLevel = Field("info", description="logging level of the server (engine log files too)",
                                json_schema_extra=cli(SERVER))
    log_format: Literal["text", "json"] = Field(
        "text", description="text lines, or one JSON object per line (job_id, engine, host, pid, gpu as keys)",
        json_schema_extra=cli(SERVER),
    )
    # web: security and limits
    max_body_bytes: int = Field(2_000_000, ge=1024, description="request bodies above this get 413",
                                json_schema_extra=cli(SERVER))
    cancel_on_disconnect: bool = Field(True, description="OpenAI routes: a client that goes away cancels its job",
                                       json_schema_extra=cli(SERVER))
    served_model_name: str | None = Field(None, description="model name(s) on the OpenAI routes, comma-separated "
                                          "aliases (default: model/backend)", json_schema_extra=cli(MODEL))
    sse_ping_s: float = Field(15.0, gt=0, le=300, description="keep-alive comment interval of SSE streams",
                              json_schema_extra=cli(SERVER))
    # web: safe by default on loopback
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host header names accepted besides localhost names and the bound address (comma-separated; "
        "'*': any). Other names get 400 (DNS rebinding)",
        json_schema_extra=cli(SECURITY),
    )
    metrics_open: bool = Field(False, description="/metrics answers without an API key even when keys are on",
                               json_schema_extra=cli(SECURITY, "--metrics-open/--metrics-need-key"))
    http_limit_concurrency: int = Field(
        1000, ge=1, le=1_000_000, description="connections + requests at once before uvicorn answers 503",
        json_schema_extra=cli(SERVER),
    )
    http_backlog: int = Field(2048, ge=1, le=65_535, description="TCP listen backlog of the web server",
                              json_schema_extra=cli(SERVER))
    # quotas per owner (an API key's owner; keys off: every caller together is one owner, 'keyless')
    owner_queue_max: int = Field(
        1000, ge=0, description="queued jobs per owner before 429: an API key's owner; with keys off, every caller "
        "together as one owner (0: no limit; the admin is exempt)",
        json_schema_extra=cli(SECURITY),
    )
    max_user_priority: int = Field(
        100, ge=-1000, le=1000, description="highest priority a caller without the admin token may ask (above: 403)",
        json_schema_extra=cli(SECURITY),
    )
    sse_max_per_owner: int = Field(32, ge=1, description="open event streams per owner (the admin: no own limit)",
                                   json_schema_extra=cli(SECURITY))
    sse_max_total: int = Field(512, ge=1, description="open event streams in all", json_schema_extra=cli(SERVER))
    # retention of finished jobs (queued and running jobs are never deleted)
    retain_s: float = Field(0.0, ge=0, description="delete finished jobs this long after they ended (0: keep)",
                            json_schema_extra=cli(JOBS))
    retain_jobs: int = Field(0, ge=0, description="keep at most this many finished jobs, newest first (0: all)",
                             json_schema_extra=cli(JOBS))

    # vLLM's API server flags, same names and meanings (the rest of vLLM's flags: supervisor/cli/vllm_flags.py)
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="CORS: origins a browser page may call from, as a JSON list (vLLM's "
        "form, e.g. '[\"*\"]') or comma-separated; none: no CORS headers", json_schema_extra=cli(FRONTEND),
    )
    allowed_methods: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["*"], description="CORS: methods allowed (with allowed_origins)",
        json_schema_extra=cli(FRONTEND),
    )
    allowed_headers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["*"], description="CORS: request headers allowed (with allowed_origins)",
        json_schema_extra=cli(FRONTEND),
    )
    allow_credentials: bool = Field(False, description="CORS: allow credentials (with allowed_origins)",
                                    json_schema_extra=cli(FRONTEND))
    ssl_keyfile: Path | None = Field(None, description="TLS: the private key file (with ssl_certfile: HTTPS)",
                                     json_schema_extra=cli(FRONTEND))
    ssl_certfile: Path | None = Field(None, description="TLS: the certificate file", json_schema_extra=cli(FRONTEND))
    ssl_ca_certs: Path | None = Field(None, description="TLS: CA certificates to verify clients with",
                                      json_schema_extra=cli(FRONTEND))
    ssl_cert_reqs: int = Field(0, ge=0, le=2, description="TLS: client certificates (0 none, 1 optional, 2 required; "
                               "Python's ssl.CERT_*)", json_schema_extra=cli(FRONTEND))
    root_path: str = Field("", description="path prefix the server is reached under behind a proxy (ASGI root_path)",
                           json_schema_extra=cli(FRONTEND))
    uvicorn_log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] | None = Field(
        None, description="uvicorn's log level; default: log_level", json_schema_extra=cli(FRONTEND),
    )
    disable_uvicorn_access_log: bool = Field(False, description="no access log line per HTTP request",
                                             json_schema_extra=cli(FRONTEND))
    enable_request_id_headers: bool = Field(
        False, description="answers carry X-Request-Id (the request's own, else a new one)",
        json_schema_extra=cli(FRONTEND),
    )
    enable_log_requests: bool = Field(
        False, description="log each job's prompt and sampling parameters when it is submitted (off: only its id, "
        "deadline and size)",
        json_schema_extra=cli(FRONTEND, "--enable-log-requests/--disable-log-requests", " /--no-enable-log-requests"),
    )
    max_log_len: int | None = Field(None, ge=0, description="characters of a prompt logged by enable_log_requests "
                                    "(default: all)", json_schema_extra=cli(FRONTEND))
    disable_fastapi_docs: bool = Field(False, description="no /docs (a plain page of the operations, nothing loaded "
                                       "from elsewhere) nor /openapi.json",
                                       json_schema_extra=cli(FRONTEND))

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, AliasEnvironment(settings_cls)

    @field_validator("allowed_hosts", "hosts", "allowed_origins", "allowed_methods", "allowed_headers", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        if isinstance(value, str):
            return split_list(value)
        return value

    @field_validator("hosts")
    @classmethod
    def _check_hosts(cls, value: list[str]) -> list[str]:
        for host in value:
            if not SSH_HOST.fullmatch(host):
                raise ValueError(f"hosts: {host!r} is not [user@]host[:port] (a name or address; nothing ssh would "
                                 "read as an option)")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_level(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("chat_template")
    @classmethod
    def _template_exists(cls, value: str | None) -> str | None:
        if value is not None and not _is_inline_template(value) and not Path(value).expanduser().is_file():
            raise ValueError(f"no chat template file {value!r} (give a file's path, or the Jinja template itself)")
        return value

    @model_validator(mode="after")
    def _check(self) -> "Settings":
        if (self.ssl_keyfile is None) != (self.ssl_certfile is None):
            raise ValueError("TLS needs both ssl_keyfile and ssl_certfile")
        if self.kill_grace_s < self.interrupt_grace_s:
            raise ValueError("kill_grace_s must be >= interrupt_grace_s")
        if self.deadline_s > self.max_deadline_s:
            raise ValueError("deadline_s must be <= max_deadline_s")
        if self.engine_launcher == "ssh" and not self.hosts:
            raise ValueError("engine_launcher ssh needs hosts (--hosts h1,h2)")
        return self

    @property
    def host_loss_timeout_s(self) -> float:
        """How long a host may stay silent before it is taken as lost (derived from the heartbeat when unset)."""
        if self.host_loss_s is not None:
            return self.host_loss_s
        return min(10.0, max(2.0, 10 * self.heartbeat_ms / 1000))

    @property
    def db_path(self) -> Path:
        return self.run_dir / runfiles.JOB_STORE

    @property
    def ipython_dir(self) -> Path:
        return self.run_dir / runfiles.IPYTHON_DIR

    @property
    def log_dir(self) -> Path:
        return self.run_dir / runfiles.LOG_DIR

    # files in the run directory (all 0600, the directory 0700: supervisor/rundir.py)
    @property
    def admin_token_path(self) -> Path:
        return self.run_dir / runfiles.ADMIN_TOKEN

    @property
    def api_key_path(self) -> Path:
        return self.run_dir / runfiles.API_KEY

    @property
    def server_file(self) -> Path:
        return self.run_dir / runfiles.SERVER_FILE

    @property
    def ledger_path(self) -> Path:
        return self.run_dir / runfiles.PROCESSES

    def resolved_backend(self) -> str:
        if self.backend != "auto":
            return self.backend
        from llmsup.supervisor.backends import pick_backend

        return pick_backend()

    def chat_template_text(self) -> str | None:
        """The chat template itself (read from its file when a path was given)."""
        if self.chat_template is None or _is_inline_template(self.chat_template):
            return self.chat_template
        return Path(self.chat_template).expanduser().read_text()

    def model_options(self) -> dict[str, Any]:
        """What the backends get as ``options``: ``engine_options``, with the named model settings that are set
        (they win over the same key there) and ``engine_args`` merged into its ``engine_args``."""
        options = dict(self.engine_options)
        named = {"max_model_len": self.max_model_len, "dtype": self.dtype, "enforce_eager": self.enforce_eager,
                 "gpu_memory_utilization": self.gpu_memory_utilization, "seed": self.seed,
                 "max_num_seqs": self.slots_per_engine, "trust_remote_code": self.trust_remote_code or None}
        options.update({key: value for key, value in named.items() if value is not None})
        lora = {"enable_lora": True, "max_loras": self.max_loras, "max_lora_rank": self.max_lora_rank}
        if self.engine_args or self.lora_modules:
            options["engine_args"] = {**(lora if self.lora_modules else {}), **(options.get("engine_args") or {}),
                                      **self.engine_args}
        return options

    def for_engines(self) -> dict[str, Any]:
        return {
            "backend": self.resolved_backend(),
            "model": self.model,
            "run_dir": str(self.run_dir.resolve()),
            "threads": self.engine_threads,
            "sim_token_s": self.sim_token_s,
            "nice": self.engine_nice,
            "options": self.model_options(),
            "engines_on_host": self.engines if self.cluster_file is None else 1,
            "hf_home": str(self.hf_home.expanduser().resolve()) if self.hf_home else None,
            "chat_template": self.chat_template_text(),
            "log_dir": str(self.log_dir.resolve()),
            "log_level": self.log_level,
            "log_format": self.log_format,
        }


def split_list(text: str) -> list[str]:
    """A list setting's text: a JSON list (vLLM's form, ``'["a", "b"]'``), else comma-separated."""
    import json

    if text.strip().startswith("["):
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if isinstance(value, list):
            return [str(item) for item in value]
    return [name.strip() for name in text.split(",") if name.strip()]


def _is_inline_template(value: str) -> bool:
    return "{{" in value or "{%" in value


def cli_meta(field: FieldInfo) -> dict[str, Any]:
    """The field's :func:`cli` metadata ({} when it declares none)."""
    extra = field.json_schema_extra
    meta = extra.get("cli") if isinstance(extra, dict) else None
    return meta if isinstance(meta, dict) else {}


def setting_aliases() -> dict[str, str]:
    """Other names a setting answers to (alias -> field name), e.g. ``tensor_parallel_size`` -> ``gpus_per_engine``."""
    return {alias: name for name, field in Settings.model_fields.items() for alias in cli_meta(field).get("aliases", ())}


class AliasEnvironment(PydanticBaseSettingsSource):
    """``LLMSUP_<ALIAS>`` variables of the settings that declare aliases (``LLMSUP_<NAME>`` wins over them)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for alias, name in setting_aliases().items():
            raw = os.environ.get(ENV_PREFIX + alias.upper())
            if raw is not None:
                values.setdefault(name, raw)
        return values


def known_variables() -> set[str]:
    """Every ``LLMSUP_*`` environment variable llmsup reads."""
    names = set(Settings.model_fields) | set(setting_aliases())
    return {ENV_PREFIX + name.upper() for name in names} | set(OTHER_VARIABLES)


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One warning per ``LLMSUP_*`` variable that no setting reads (a misspelling is otherwise silently ignored),
    naming the closest known variable."""
    known = known_variables()
    suffixes = {name.removeprefix(ENV_PREFIX): name for name in known}  # the shared prefix would make all alike
    warnings = []
    for name in sorted(environ):
        if not name.upper().startswith(ENV_PREFIX) or name.upper() in known:
            continue
        close = difflib.get_close_matches(name.upper().removeprefix(ENV_PREFIX), sorted(suffixes), n=1, cutoff=0.6)
        hint = f" (did you mean {suffixes[close[0]]}?)" if close else ""
        warnings.append(f"environment variable {name} is not an llmsup setting{hint}: ignored")
    return warnings


def config_path(config_file: Path | None = None) -> Path | None:
    """The settings file: ``config_file``, else ``$LLMSUP_CONFIG``, else none."""
    return config_file or (Path(os.environ["LLMSUP_CONFIG"]) if os.environ.get("LLMSUP_CONFIG") else None)


def read_config(path: Path) -> dict[str, Any]:
    """A settings file's values, keys with underscores: TOML (top level or ``[llmsup]``), or YAML as ``vllm serve
    --config`` reads it (``.yaml`` / ``.yml``, or a file that is not TOML); keys may be written with dashes."""
    import tomllib

    import yaml

    text = path.read_text()
    data: Any
    if path.suffix.lower() in (".yaml", ".yml"):
        data = yaml.safe_load(text)
    else:
        try:
            data = tomllib.loads(text)
            data = data.get("llmsup", data)
        except tomllib.TOMLDecodeError as toml_error:
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError:
                raise ValueError(f"{path}: neither TOML ({toml_error}) nor YAML") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a table of settings (KEY = VALUE, or KEY: VALUE)")
    return {str(key).replace("-", "_"): value for key, value in data.items()}


def load_settings(config_file: Path | None = None, file_values: dict[str, Any] | None = None,
                  **given: Any) -> Settings:
    """Settings from CLI values (``given``, None = not given) > ``LLMSUP_*`` environment > config file > defaults.

    The file is ``config_file``, else ``$LLMSUP_CONFIG`` (:func:`read_config`: TOML or YAML); its keys are the setting
    names (or their aliases, e.g. ``tensor_parallel_size``). ``file_values``: the file's values read already.
    """
    from pydantic_settings import InitSettingsSource

    path = config_path(config_file)
    if file_values is None:
        file_values = read_config(path) if path is not None else {}
    aliases = setting_aliases()
    from_file = {aliases.get(key, key): value for key, value in file_values.items()}
    unknown = set(from_file) - set(Settings.model_fields)
    if unknown:
        raise ValueError(f"{path}: unknown settings {sorted(unknown)}")

    class _FromFile(Settings):
        model_config = SettingsConfigDict(title="llmsup settings")

        @classmethod
        def settings_customise_sources(
            cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings, env_settings, AliasEnvironment(settings_cls),
                    InitSettingsSource(settings_cls, init_kwargs=from_file))

    values = _FromFile(**{k: v for k, v in given.items() if v is not None})
    return Settings.model_construct(**values.model_dump())
