"""Settings: CLI flags > environment (``LLMSUP_<NAME>``) > config file > defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

BackendName = Literal["auto", "sim", "transformers", "vllm"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMSUP_", extra="ignore", validate_default=True)

    # cluster
    engines: int = Field(2, ge=0, le=512, description="engines to start for a local cluster")
    standby: int | None = Field(
        None, ge=0, le=64,
        description="warm standby engines (loaded, given no jobs) that take a killed engine's place at once; "
        "default: per backend and device (0 for sim and vLLM on CPU, 1 for transformers on CPU, 1 on a spare GPU)",
    )
    backend: BackendName = Field(
        "auto", description="model backend every engine loads; auto: vLLM with a GPU, else transformers, else sim"
    )
    model: str | None = Field(None, description="model path or id; None: a tiny local model")
    cluster_file: Path | None = Field(None, description="connect to this existing IPyParallel cluster file")
    heartbeat_ms: int = Field(500, ge=50, le=30_000, description="controller heartbeat period")
    # cluster: several hosts
    cluster_ip: str = Field(
        "127.0.0.1",
        description="address the IPyParallel controller and llmsup's engine channels listen on; another host's "
        "engines connect there (see <run-dir>/join.json); 0.0.0.0: every interface, advertised by this host's name",
    )
    engine_launcher: str = Field(
        "local",
        description="IPyParallel launcher that starts (and replaces) this server's engines: local, ssh, mpi, slurm, "
        "pbs, sge, lsf, htcondor, or a launcher class; configured further in IPyParallel's own "
        "<run-dir>/ipython/profile_llmsup/ipcluster_config.py",
    )
    hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="hosts the ssh launcher starts engines on, comma-separated ([user@]host[:port]); the engines "
        "are spread over them in turn",
    )
    host_loss_s: float | None = Field(
        None, gt=0, le=300,
        description="a host none of whose engines (nor its join agent) is heard from for this long is lost: its jobs "
        "go back to the queue uncharged; default: 10 heartbeats, between 2 and 10 s",
    )
    engine_start_timeout_s: float = Field(180.0, gt=0)
    gpus_per_engine: int = Field(1, ge=1, le=64)
    engine_threads: int | None = Field(None, ge=1, le=256, description="torch threads per engine")
    slots_per_engine: int | None = Field(None, ge=1, le=1024, description="jobs at once per engine")
    engine_options: dict[str, Any] = Field(
        default_factory=dict, description="backend options as JSON, e.g. {\"multiprocessing\": true} for vLLM"
    )
    engine_nice: int = Field(
        10, ge=0, le=19,
        description="engines (and the processes they start) run this much nicer than the supervisor: its timers and "
        "signals win the CPU from the jobs they interrupt (0: same priority)",
    )
    engine_test_hooks: bool = Field(False, description="honour [llmsup:stall] test directives in batched engines")
    sim_token_s: float = Field(0.005, ge=0, le=60, description="sim backend seconds per token")
    # jobs
    deadline_s: float = Field(60.0, gt=0, description="default run-time limit of a job")
    max_deadline_s: float = Field(3600.0, gt=0)
    queue_timeout_s: float = Field(600.0, gt=0, description="a queued job expires after this wait")
    default_max_tokens: int = Field(64, ge=1)
    max_tokens_limit: int = Field(100_000, ge=1)
    max_prompt_chars: int = Field(200_000, ge=1)
    queue_max: int = Field(10_000, ge=1, description="queued jobs accepted before 429")
    max_attempts: int = Field(3, ge=1, le=100)
    retry_backoff_s: float = Field(0.2, ge=0, description="first retry delay; doubles per attempt")
    # watchdog
    interrupt_grace_s: float = Field(0.25, gt=0, description="SIGINT -> no-op probe")
    kill_grace_s: float = Field(1.0, gt=0, description="SIGINT -> SIGKILL of the engine")
    signal_path: Literal["auto", "direct", "ipp"] = Field(
        "auto", description="auto: os.kill for engines on this host, Client.send_signal for others"
    )
    engine_relaunch_s: float = Field(
        5.0, gt=0, description="at most one launch this often to make up a short engine count (a failed launch)"
    )
    engine_beat_timeout_s: float = Field(
        10.0, gt=0, description="a batched engine whose serving loop sends no heartbeat for this long is replaced"
    )
    max_jobs_per_engine: int = Field(0, ge=0, description="recycle an engine after N jobs (0: never)")
    max_engine_rss_mb: float = Field(0, ge=0, description="recycle an engine above this RSS (0: never)")
    # web
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    run_dir: Path = Field(Path(".llmsup"), description="SQLite store, IPyParallel files, caches, tokens")
    stream_bind: str = Field("tcp://127.0.0.1", description="where engines send tokens (an address engines reach)")
    # web: security and limits (issue 4)
    admin_token: SecretStr | None = Field(
        None, description="admin bearer token; unset: a new one is generated at start into <run-dir>/admin_token"
    )
    api_keys: SecretStr | None = Field(None, description="API keys for job routes, comma-separated 'key' or 'owner:key'")
    api_keys_file: Path | None = Field(None, description="file of API keys, one 'key' or 'owner:key' a line")
    require_api_keys: Literal["auto", "on", "off"] = Field(
        "auto", description="job routes need an API key: auto = only when bound to a non-loopback address"
    )
    max_body_bytes: int = Field(2_000_000, ge=1024, description="request bodies above this get 413")
    cancel_on_disconnect: bool = Field(True, description="OpenAI routes: a client that goes away cancels its job")
    served_model_name: str | None = Field(None, description="model name on the OpenAI routes (default: model/backend)")
    sse_ping_s: float = Field(15.0, gt=0, le=300, description="keep-alive comment interval of SSE streams")

    @field_validator("hosts", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str) and value.lstrip().startswith("["):  # a JSON list (LLMSUP_HOSTS, TOML)
            import json

            return json.loads(value)
        if isinstance(value, str):  # "h1,h2" from a flag, or LLMSUP_HOSTS
            return [h.strip() for h in value.split(",") if h.strip()]
        return value

    @model_validator(mode="after")
    def _check(self) -> "Settings":
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
        return self.run_dir / "jobs.sqlite"

    @property
    def ipython_dir(self) -> Path:
        return self.run_dir / "ipython"

    def resolved_backend(self) -> str:
        if self.backend != "auto":
            return self.backend
        from llmsup.supervisor.backends import pick_backend

        return pick_backend()

    def for_engines(self) -> dict[str, Any]:
        return {
            "backend": self.resolved_backend(),
            "model": self.model,
            "run_dir": str(self.run_dir.resolve()),
            "threads": self.engine_threads,
            "sim_token_s": self.sim_token_s,
            "nice": self.engine_nice,
            "options": dict(self.engine_options),
            "engines_on_host": self.engines if self.cluster_file is None else 1,
        }


def load_settings(config_file: Path | None = None, **given: Any) -> Settings:
    """Settings from CLI values (``given``, None = not given) > ``LLMSUP_*`` environment > TOML file > defaults.

    The file is ``config_file``, else ``$LLMSUP_CONFIG``; its keys are the setting names
    (e.g. ``engines = 4``), at the top level or under ``[llmsup]``.
    """
    import os
    import tomllib

    from pydantic_settings import InitSettingsSource, PydanticBaseSettingsSource

    path = config_file or (Path(os.environ["LLMSUP_CONFIG"]) if os.environ.get("LLMSUP_CONFIG") else None)
    file_values: dict[str, Any] = {}
    if path is not None:
        with open(path, "rb") as f:
            data = tomllib.load(f)
        file_values = data.get("llmsup", data)
        unknown = set(file_values) - set(Settings.model_fields)
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
            return init_settings, env_settings, InitSettingsSource(settings_cls, init_kwargs=file_values)

    values = _FromFile(**{k: v for k, v in given.items() if v is not None})
    return Settings.model_construct(**values.model_dump())
