"""The ``llmsup`` command: serve, submit, status, kill, engines."""

from __future__ import annotations

import json
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from llmsup.supervisor.client import Client, LlmsupError, ServerUnreachable

app = typer.Typer(add_completion=False, no_args_is_help=True, help="LLM job supervisor on IPyParallel.")

UrlOpt = Annotated[str | None, typer.Option("--url", help="server URL (default: LLMSUP_URL, else the run dir)")]
RunDirOpt = Annotated[Path | None, typer.Option("--run-dir", help="run directory (default: LLMSUP_RUN_DIR or ./.llmsup)")]


@app.command()
def serve(
    engines: Annotated[int | None, typer.Option(help="engines in the local cluster [2]")] = None,
    standby: Annotated[int | None, typer.Option(help="warm standby engines (default: per backend and device)")] = None,
    backend: Annotated[str | None, typer.Option(help="sim | transformers | vllm | auto")] = None,
    model: Annotated[str | None, typer.Option(help="model path or id (default: a tiny local model)")] = None,
    host: Annotated[str | None, typer.Option(help="bind address [127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="port [8000]")] = None,
    run_dir: RunDirOpt = None,
    deadline: Annotated[float | None, typer.Option("--deadline", help="default job deadline, seconds")] = None,
    cluster_file: Annotated[Path | None, typer.Option(help="join an existing IPyParallel cluster")] = None,
    slots_per_engine: Annotated[int | None, typer.Option(help="jobs at once per engine")] = None,
    gpus_per_engine: Annotated[int | None, typer.Option(help="GPUs per engine (tensor parallel)")] = None,
    interrupt_grace: Annotated[float | None, typer.Option(help="SIGINT -> probe, seconds [0.25]")] = None,
    kill_grace: Annotated[float | None, typer.Option(help="SIGINT -> SIGKILL, seconds [1.0]")] = None,
    max_attempts: Annotated[int | None, typer.Option(help="runs per job before it fails [3]")] = None,
    queue_max: Annotated[int | None, typer.Option(help="queued jobs before 429 [10000]")] = None,
    cluster_ip: Annotated[str | None, typer.Option(help="address the controller and engine channels listen on; "
                                                   "engines on other hosts join there [127.0.0.1]")] = None,
    engine_launcher: Annotated[str | None, typer.Option(help="IPyParallel launcher of this server's engines: "
                                                        "local | ssh | mpi | slurm | ... [local]")] = None,
    hosts: Annotated[str | None, typer.Option(help="hosts of the ssh launcher, comma-separated")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="TOML settings file (or LLMSUP_CONFIG)")] = None,
    log_level: Annotated[str, typer.Option(help="logging level")] = "INFO",
) -> None:
    """Start a local cluster (controller + engines) and the web app; Ctrl-C or SIGTERM stops everything."""
    import uvicorn
    from llmsup.supervisor.settings import load_settings
    from llmsup.web.app import create_app
    from pydantic import ValidationError

    given: dict[str, Any] = {
        "engines": engines, "standby": standby, "backend": backend, "model": model, "host": host, "port": port, "run_dir": run_dir,
        "deadline_s": deadline, "cluster_file": cluster_file, "slots_per_engine": slots_per_engine,
        "gpus_per_engine": gpus_per_engine, "interrupt_grace_s": interrupt_grace, "kill_grace_s": kill_grace,
        "max_attempts": max_attempts, "queue_max": queue_max, "cluster_ip": cluster_ip,
        "engine_launcher": engine_launcher, "hosts": hosts,
    }
    try:
        settings = load_settings(config, **given)
    except (ValidationError, ValueError, OSError) as exc:
        typer.echo(f"invalid settings:\n{exc}", err=True)
        raise typer.Exit(2) from None
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # A shell that started us in the background may have left SIGINT ignored; Ctrl-C must still work.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=log_level.lower(),
                timeout_graceful_shutdown=5)


def _answer(url: str | None, run_dir: Path | None, call: Callable[[Client], dict[str, Any]]) -> dict[str, Any]:
    """One call of the Python client (the API key goes to job routes, the admin token to admin routes only);
    its JSON answer printed. An error answer, or no answer: the message on stderr, exit status 1."""
    try:
        with Client(url=url, run_dir=run_dir) as client:
            data = call(client)
    except ServerUnreachable as exc:
        typer.echo(f"cannot reach the server: {exc}", err=True)
        raise typer.Exit(1) from None
    except LlmsupError as exc:
        typer.echo(f"error {exc.status_code}: {exc.message}" if exc.status_code else f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(data, indent=2))
    return data


@app.command()
def submit(
    prompt: str,
    deadline: Annotated[float | None, typer.Option("--deadline", help="run-time limit, seconds")] = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens")] = None,
    priority: Annotated[int, typer.Option()] = 0,
    idempotency_key: Annotated[str | None, typer.Option("--idempotency-key")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="wait for the job to end")] = False,
    url: UrlOpt = None,
    run_dir: RunDirOpt = None,
) -> None:
    """Submit a prompt as a job (with --wait: print it once it has ended; exit status 3 unless it succeeded)."""

    def call(client: Client) -> dict[str, Any]:
        job = client.submit(prompt, deadline_s=deadline, max_tokens=max_tokens, priority=priority,
                            idempotency_key=idempotency_key)
        return job.wait().data if wait else job.data  # wait: server long-polls until the job ends

    job = _answer(url, run_dir, call)
    if wait and job["status"] != "succeeded":
        raise typer.Exit(3)


@app.command()
def status(job_id: Annotated[str | None, typer.Argument()] = None, url: UrlOpt = None, run_dir: RunDirOpt = None) -> None:
    """Show one job, or the latest jobs."""

    def call(client: Client) -> dict[str, Any]:
        if job_id:
            return client.job(job_id).data
        jobs = [h.data for h in client.jobs()]
        return {"jobs": jobs, "count": len(jobs)}

    _answer(url, run_dir, call)


@app.command()
def kill(job_id: str, url: UrlOpt = None, run_dir: RunDirOpt = None) -> None:
    """Admin: kill a job (queued: at once; running: interrupt, then escalate)."""
    _answer(url, run_dir, lambda client: client.kill(job_id).data)


@app.command()
def engines(url: UrlOpt = None, run_dir: RunDirOpt = None) -> None:
    """Admin: list the engines and what they run."""
    _answer(url, run_dir, lambda client: client.engine_list())


@app.command()
def join(
    join_file: Annotated[Path, typer.Argument(help="the server's <run-dir>/join.json")],
    engines: Annotated[int, typer.Option(min=0, max=512, help="engines to run on this host")] = 1,
    standby: Annotated[int, typer.Option(min=0, max=64, help="warm standby engines besides")] = 0,
    work_dir: Annotated[Path | None, typer.Option(help="engine logs and caches [./.llmsup-join]")] = None,
    log_level: Annotated[str, typer.Option(help="logging level")] = "INFO",
) -> None:
    """Run engines on this host for the server that wrote JOIN_FILE; keep them alive until SIGTERM or the server
    says stop."""
    from llmsup.supervisor.join import run_agent
    from llmsup.supervisor.joinfile import JoinFileError

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run_agent(join_file, engines, standby, work_dir)
    except JoinFileError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None


def main() -> None:
    app(prog_name="llmsup")


if __name__ == "__main__":
    sys.exit(main())
