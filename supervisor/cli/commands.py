"""The ``llmsup`` command: serve, submit, status, kill, engines.

``llmsup serve [MODEL]`` takes one option per setting (generated from ``Settings`` by ``cli_options``; vLLM's
names where they mean the same). The client commands print for people by default and the API's JSON with
``--json``.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from llmsup.supervisor.cli import options as cli_options
from llmsup.supervisor.cli import output as cli_output
from llmsup.supervisor.client import Client, JobHandle, LlmsupError, ServerUnreachable

app = typer.Typer(add_completion=False, no_args_is_help=True, help="LLM job supervisor on IPyParallel.")
log = logging.getLogger("llmsup.cli")
T = TypeVar("T")

UrlOpt = Annotated[str | None, typer.Option("--url", help="server URL (default: LLMSUP_URL, else the run dir)")]
RunDirOpt = Annotated[Path | None, typer.Option("--run-dir", help="run directory (default: LLMSUP_RUN_DIR or ./.llmsup)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the server's JSON answer")]


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("llmsup")
    except PackageNotFoundError:
        from llmsup.supervisor import __version__

        return __version__


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"llmsup {version()}")
        raise typer.Exit()


@app.callback()
def main_options(
    show_version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                               help="print the version and exit")] = False,
) -> None:
    """LLM job supervisor on IPyParallel."""


# serve -----------------------------------------------------------------------------------------------------------
SETTING_OPTIONS = cli_options.setting_options()
SERVE_LEADING = [
    inspect.Parameter("model_arg", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        str | None, typer.Argument(metavar="MODEL", show_default=False,
                                   help="model path or Hugging Face id (the same as --model)")]),
    inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        Path | None, typer.Option("--config", help="TOML settings file (or LLMSUP_CONFIG); keys are the setting names",
                                  rich_help_panel="Server")]),
]


def serve(model_arg: str | None = None, config: Path | None = None, **values: Any) -> None:
    """Start a local cluster (controller + engines) and the web app; Ctrl-C or SIGTERM stops everything.

    Every setting is an option here, an LLMSUP_<NAME> environment variable and a key of the --config file
    (options win over the environment, which wins over the file).
    """
    import uvicorn
    from pydantic import ValidationError

    from llmsup.supervisor.cli import logsetup
    from llmsup.supervisor.rundir import RunDirError, prepare_run_dir
    from llmsup.supervisor.service import Supervisor
    from llmsup.supervisor.settings import load_settings, unknown_variables
    from llmsup.web.app import create_app

    given = cli_options.given_settings(SETTING_OPTIONS, values)
    if model_arg is not None:
        if given.get("model", model_arg) != model_arg:
            typer.echo(f"two models named: {model_arg!r} and --model {given['model']!r}", err=True)
            raise typer.Exit(2)
        given["model"] = model_arg
    try:
        settings = load_settings(config, **given)
    except (ValidationError, ValueError, OSError) as exc:
        typer.echo(f"invalid settings:\n{exc}", err=True)
        raise typer.Exit(2) from None
    try:
        prepare_run_dir(settings.run_dir)  # 0700, ours: refused with one message before anything starts
    except RunDirError as exc:
        typer.echo(f"llmsup: {exc}", err=True)
        raise typer.Exit(2) from None
    logsetup.configure(settings.log_level, settings.log_format)
    for warning in unknown_variables(os.environ):
        log.warning("%s", warning)
    # A shell that started us in the background may have left SIGINT ignored; Ctrl-C must still work.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    uvicorn.run(create_app(settings, make=Supervisor), host=settings.host, port=settings.port, log_level=settings.log_level,
                log_config=None, timeout_graceful_shutdown=5, limit_concurrency=settings.http_limit_concurrency,
                backlog=settings.http_backlog)


app.command("serve")(cli_options.command(serve, SETTING_OPTIONS, SERVE_LEADING))


# client commands ---------------------------------------------------------------------------------------------------
def _call(url: str | None, run_dir: Path | None, call: Callable[[Client], T]) -> T:
    """One call of the Python client (the API key goes to job routes, the admin token to admin routes only).
    An error answer, or no answer: the message on stderr, exit status 1."""
    try:
        with Client(url=url, run_dir=run_dir) as client:
            return call(client)
    except ServerUnreachable as exc:
        typer.echo(f"cannot reach the server: {exc}", err=True)
        raise typer.Exit(1) from None
    except LlmsupError as exc:
        typer.echo(f"error {exc.status_code}: {exc.message}" if exc.status_code else f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


def _console() -> Console:
    return Console(highlight=False)


@app.command()
def submit(
    prompt: str,
    deadline: Annotated[float | None, typer.Option("--deadline", help="run-time limit, seconds")] = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens")] = None,
    priority: Annotated[int, typer.Option()] = 0,
    idempotency_key: Annotated[str | None, typer.Option("--idempotency-key")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="stream the text as it comes, until the job ends")] = False,
    as_json: JsonOpt = False,
    url: UrlOpt = None,
    run_dir: RunDirOpt = None,
) -> None:
    """Submit a prompt as a job. With --wait: the text on stdout as it is generated, a summary on stderr at the
    end, exit status 3 unless it succeeded (with --json: the ended job's JSON)."""

    def call(client: Client) -> dict[str, Any]:
        job = client.submit(prompt, deadline_s=deadline, max_tokens=max_tokens, priority=priority,
                            idempotency_key=idempotency_key)
        if not wait:
            return job.data
        if as_json:
            return job.wait().data  # the server long-polls until the job ends
        return _stream(job)

    job = _call(url, run_dir, call)
    if as_json:
        _print_json(job)
    elif not wait:
        typer.echo(cli_output.job_summary(job))
    if wait and job["status"] != "succeeded":
        raise typer.Exit(3)


def _stream(job: JobHandle) -> dict[str, Any]:
    """Print the job's text as it is generated; its summary on stderr once it has ended."""
    typer.echo(cli_output.job_summary(job.data), err=True)
    last = ""
    for piece in job.stream():
        typer.echo(piece, nl=False)
        last = piece or last
    data = job.wait().data
    if last and not last.endswith("\n"):
        typer.echo()
    typer.echo(cli_output.job_summary(data), err=True)
    return data


@app.command()
def status(
    job_id: Annotated[str | None, typer.Argument(help="one job (default: the latest jobs)")] = None,
    state: Annotated[str | None, typer.Option("--status", help="only jobs in this status (e.g. running)")] = None,
    limit: Annotated[int, typer.Option("--limit", help="at most this many jobs")] = 100,
    as_json: JsonOpt = False,
    url: UrlOpt = None,
    run_dir: RunDirOpt = None,
) -> None:
    """Show one job, or the latest jobs."""

    def call(client: Client) -> dict[str, Any]:
        if job_id:
            return client.job(job_id).data
        jobs = [h.data for h in client.jobs(state, limit)]
        return {"jobs": jobs, "count": len(jobs)}

    data = _call(url, run_dir, call)
    if as_json:
        _print_json(data)
    elif job_id:
        cli_output.print_job(_console(), data)
    else:
        cli_output.print_jobs(_console(), data["jobs"])


@app.command()
def kill(job_id: str, as_json: JsonOpt = False, url: UrlOpt = None, run_dir: RunDirOpt = None) -> None:
    """Admin: kill a job (queued: at once; running: interrupt, then escalate)."""
    data = _call(url, run_dir, lambda client: client.kill(job_id).data)
    if as_json:
        _print_json(data)
    else:
        typer.echo(f"kill asked: {cli_output.job_summary(data)}")


@app.command()
def engines(as_json: JsonOpt = False, url: UrlOpt = None, run_dir: RunDirOpt = None) -> None:
    """Admin: list the engines, their state, pid, GPU, current jobs and log file."""
    data = _call(url, run_dir, lambda client: client.engine_list())
    if as_json:
        _print_json(data)
    else:
        cli_output.print_engines(_console(), data)


@app.command()
def join(
    join_file: Annotated[Path, typer.Argument(help="the server's <run-dir>/join.json")],
    engines: Annotated[int, typer.Option(min=0, max=512, help="engines to run on this host")] = 1,
    standby: Annotated[int, typer.Option(min=0, max=64, help="warm standby engines besides")] = 0,
    work_dir: Annotated[Path | None, typer.Option(help="engine logs and caches [./.llmsup-join]")] = None,
    log_level: Annotated[str, typer.Option(help="debug | info | warning | error")] = "info",
) -> None:
    """Run engines on this host for the server that wrote JOIN_FILE; keep them alive until SIGTERM or the server
    says stop."""
    from llmsup.supervisor.cli import logsetup
    from llmsup.supervisor.cli.join import run_agent
    from llmsup.supervisor.cluster.joinfile import JoinFileError

    logsetup.configure(log_level, "text")
    try:
        run_agent(join_file, engines, standby, work_dir)
    except JoinFileError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None


def main() -> None:
    app(prog_name="llmsup")


if __name__ == "__main__":
    main()
