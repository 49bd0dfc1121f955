"""Settings of the engines: how many, where they run (hosts, GPUs), what they load and how (vLLM's names for the
model's settings). :class:`EngineFields` is a base of :class:`~llmsup.supervisor.settings.Settings`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode

from llmsup.supervisor.settings_meta import ENGINES, MODEL, cli, split_list

# an ssh destination and nothing else: [user@]host[:port], neither part starting with "-" (an ssh option)
SSH_HOST = re.compile(r"(?:[A-Za-z0-9_][A-Za-z0-9._-]{0,63}@)?"
                      r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?")
BackendName = Literal["auto", "sim", "transformers", "vllm", "python"]
DType = Literal["auto", "half", "float16", "bfloat16", "float", "float32"]


def _default_engines(data: dict[str, Any]) -> int:
    from llmsup.engines.placement import default_engines, detect_gpu_count

    return default_engines(detect_gpu_count(), int(data.get("gpus_per_engine") or 1))


class EngineFields(BaseSettings):
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
        description="jobs at once per engine (above 1: batched engines; vLLM's max_num_seqs); default: vLLM's own "
        "for the engine's device, as vllm serve (256; 1024 on GPUs of 70 GiB or more; 128 on CPU), else 1",
        json_schema_extra=cli(ENGINES, "--max-num-seqs", aliases=("max_num_seqs",)),
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

    @field_validator("hosts", mode="before")
    @classmethod
    def _split_engine_hosts(cls, value: Any) -> Any:
        return split_list(value) if isinstance(value, str) else value

    @field_validator("hosts")
    @classmethod
    def _check_hosts(cls, value: list[str]) -> list[str]:
        for host in value:
            if not SSH_HOST.fullmatch(host):
                raise ValueError(f"hosts: {host!r} is not [user@]host[:port] (a name or address; nothing ssh would "
                                 "read as an option)")
        return value

    @field_validator("chat_template")
    @classmethod
    def _template_exists(cls, value: str | None) -> str | None:
        if value is not None and not is_inline_template(value) and not Path(value).expanduser().is_file():
            raise ValueError(f"no chat template file {value!r} (give a file's path, or the Jinja template itself)")
        return value

    @model_validator(mode="after")
    def _check_engines(self) -> "EngineFields":
        if self.engine_launcher == "ssh" and not self.hosts:
            raise ValueError("engine_launcher ssh needs hosts (--hosts h1,h2)")
        return self

    @property
    def host_loss_timeout_s(self) -> float:
        """How long a host may stay silent before it is taken as lost (derived from the heartbeat when unset)."""
        if self.host_loss_s is not None:
            return self.host_loss_s
        return min(10.0, max(2.0, 10 * self.heartbeat_ms / 1000))

    def resolved_backend(self) -> str:
        if self.backend != "auto":
            return self.backend
        from llmsup.supervisor.backends import pick_backend

        return pick_backend()

    def chat_template_text(self) -> str | None:
        """The chat template itself (read from its file when a path was given)."""
        if self.chat_template is None or is_inline_template(self.chat_template):
            return self.chat_template
        return Path(self.chat_template).expanduser().read_text()


def is_inline_template(value: str) -> bool:
    return "{{" in value or "{%" in value
