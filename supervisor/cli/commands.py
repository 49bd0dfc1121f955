"""The ``llmsup`` command: serve, submit, status, kill, engines, hosts, join, run-batch.

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
from typer.core import TyperCommand

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
    inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context),
    inspect.Parameter("model_arg", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        str | None, typer.Argument(metavar="MODEL", show_default=False,
                                   help="model path or Hugging Face id (the same as --model)")]),
    inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        Path | None, typer.Option("--config", help="settings file (or LLMSUP_CONFIG): TOML, or YAML as vllm serve "
                                  "reads it; keys are setting names or vLLM flags", rich_help_panel="Server")]),
    inspect.Parameter("help_vllm", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Annotated[
        bool, typer.Option("--help-vllm", help="list the flags of vllm serve that llmsup serve takes, and exit",
                           rich_help_panel="Server")]),
]
OWN_FLAGS = {**cli_options.flag_names(SETTING_OPTIONS), "--config": True, "--help": False, "--help-vllm": False}


class ServeCommand(TyperCommand):
    """``llmsup serve``: vLLM's flags (``vllm_flags``) are taken off the arguments before typer reads its own."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        from llmsup.supervisor.cli.vllm_flags import FlagError, split

        try:
            parts = split(list(args), OWN_FLAGS)
        except FlagError as exc:
            ctx.fail(str(exc))
        ctx.meta["vllm_tokens"] = parts.vllm
        result: list[str] = super().parse_args(ctx, parts.own)
        return result


def serve(ctx: typer.Context, model_arg: str | None = None, config: Path | None = None, help_vllm: bool = False,
          **values: Any) -> None:
    """Start a local cluster (controller + engines) and the web app; Ctrl-C or SIGTERM stops everything.

    Every setting is an option here, an LLMSUP_<NAME> environment variable and a key of the --config file
    (options win over the environment, which wins over the file). Every flag of vllm serve works too (vLLM's engine
    flags go to the engines): llmsup serve --help-vllm lists them.
    """
    from llmsup.supervisor.cli import logsetup, serving, vllm_flags
    from llmsup.supervisor.rundir import RunDirError, prepare_run_dir
    from llmsup.supervisor.settings import unknown_variables
    from llmsup.web.app import create_app
    from llmsup.web.auth import check_secrets

    if help_vllm:
        typer.echo(vllm_flags.help_text())
        return
    given = cli_options.given_settings(SETTING_OPTIONS, values)
    if model_arg is not None:
        if given.get("model", model_arg) != model_arg:
            typer.echo(f"two models named: {model_arg!r} and --model {given['model']!r}", err=True)
            raise typer.Exit(2)
        given["model"] = model_arg
    settings = _serve_settings(config, given, ctx.meta.get("vllm_tokens", []))
    try:
        prepare_run_dir(settings.run_dir)  # 0700, ours: refused with one message before anything starts
        check_secrets(settings)  # a key too short, a key file others may read: refused before engines start
    except (RunDirError, ValueError) as exc:
        typer.echo(f"llmsup: {exc}", err=True)
        raise typer.Exit(2) from None
    logsetup.configure(settings.log_level, settings.log_format)
    for warning in unknown_variables(os.environ):
        log.warning("%s", warning)
    # A shell that started us in the background may have left SIGINT ignored; Ctrl-C must still work (the runner
    # handles it from its loop on; this covers the moments before).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    serving.main(settings, lambda s, sup: create_app(s, sup))


def _serve_settings(config: Path | None, given: dict[str, Any], vllm_tokens: list[str]) -> Any:
    """The settings of ``llmsup serve``: options, environment, the config file's llmsup settings; vLLM's engine flags
    (given, or keys of the file) as engine arguments. Anything wrong: the message, exit status 2."""
    from pydantic import ValidationError

    from llmsup.supervisor.cli import vllm_flags
    from llmsup.supervisor.settings import Settings, config_path, load_settings, read_config, setting_aliases

    try:
        path = config_path(config)
        file_values = read_config(path) if path is not None else {}
        own = set(Settings.model_fields) | set(setting_aliases())
        file_tokens = vllm_flags.tokens_of({k: v for k, v in file_values.items() if k not in own}) if set(
            file_values) - own else []
        flags = vllm_flags.interpret(file_tokens + vllm_tokens)  # the command line's last: they win
        if flags.engine_args:
            given["engine_args"] = {**flags.engine_args, **given.get("engine_args", {})}
        settings = load_settings(path, {k: v for k, v in file_values.items() if k in own}, **given)
        if (flags.engine_args or settings.engine_args) and settings.backend == "auto" and vllm_flags.installed():
            settings = settings.model_copy(update={"backend": "vllm"})  # vLLM's engine arguments: the user wants vLLM
        vllm_flags.check_backend(flags, settings.resolved_backend())
        if settings.engine_args and settings.resolved_backend() != "vllm" and not flags.engine_args:
            raise vllm_flags.FlagError(f"--engine-arg: vllm.LLM arguments that the {settings.resolved_backend()} "
                                       "backend cannot apply (it is not vLLM); use --backend vllm")
    except vllm_flags.FlagError as exc:
        typer.echo(f"llmsup serve: {exc}", err=True)
        raise typer.Exit(2) from None
    except (ValidationError, ValueError, OSError) as exc:
        typer.echo(f"invalid settings:\n{exc}", err=True)
        raise typer.Exit(2) from None
    return settings


app.command("serve", cls=ServeCommand)(cli_options.command(serve, SETTING_OPTIONS, SERVE_LEADING))


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


hosts_app = typer.Typer(no_args_is_help=True, help="Admin: the hosts engines run on (list, revoke).")
app.add_typer(hosts_app, name="hosts")


@hosts_app.command("list")
def hosts_list(as_json: JsonOpt = False, url: UrlOpt = None, run_dir: RunDirOpt = None) -> None:
    """Admin: every host, up, lost or revoked, with its engines."""
    data = _call(url, run_dir, lambda client: client.hosts())
    if as_json:
        _print_json({"hosts": data})
        return
    for host in data:
        typer.echo(f"{host['host']}  {host['state']}  engines {host['engines']}  key {host['host_key']}"
                   f"{'  (this server)' if host['local'] else ''}")


@hosts_app.command("revoke")
def hosts_revoke(
    host: Annotated[str, typer.Argument(help="its name, or its host_key (llmsup hosts list)")],
    as_json: JsonOpt = False, url: UrlOpt = None, run_dir: RunDirOpt = None,
) -> None:
    """Admin: revoke a host. Its engines leave (their jobs run again elsewhere), its join agent is told to stop,
    its and its engines' keys are revoked, and it is not admitted again (not even with a new agent)."""
    data = _call(url, run_dir, lambda client: client.revoke_host(host))
    if as_json:
        _print_json(data)
    else:
        typer.echo(f"revoked {data['host']} ({data['host_key']}): engines {data['engines']} taken out, "
                   f"{len(data['jobs'])} running jobs run again elsewhere")


@app.command()
def join(
    join_file: Annotated[Path, typer.Argument(help="the server's <run-dir>/join.json")],
    engines: Annotated[int, typer.Option(min=0, max=512, help="engines to run on this host")] = 1,
    standby: Annotated[int, typer.Option(min=0, max=64, help="warm standby engines besides")] = 0,
    work_dir: Annotated[Path | None, typer.Option(help="engine logs and caches [./.llmsup-join]")] = None,
    pool: Annotated[str, typer.Option(help="the server's engine pool to run engines of [its first]")] = "",
    log_level: Annotated[str, typer.Option(help="debug | info | warning | error")] = "info",
) -> None:
    """Run engines on this host for the server that wrote JOIN_FILE; keep them alive until SIGTERM or the server
    says stop."""
    from llmsup.supervisor.cli import logsetup
    from llmsup.supervisor.cli.join import run_agent
    from llmsup.supervisor.cluster.joinfile import JoinFileError

    logsetup.configure(log_level, "text")
    try:
        run_agent(join_file, engines, standby, work_dir, pool)
    except JoinFileError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None


@app.command("run-batch")
def run_batch(
    input_file: Annotated[Path, typer.Option("-i", "--input-file", help="JSONL of OpenAI Batch API requests")],
    output_file: Annotated[Path, typer.Option("-o", "--output-file", help="JSONL of results, one a line, in order")],
    concurrency: Annotated[int, typer.Option(min=1, max=4096, help="requests in flight at once")] = 64,
    url: UrlOpt = None,
    run_dir: RunDirOpt = None,
) -> None:
    """Run a file of OpenAI Batch API requests (/v1/completions, /v1/chat/completions) on the server, as vLLM's
    run-batch reads it; every line is accounted for in the output. Exit status 3 if any line failed."""
    import asyncio

    from llmsup.supervisor.cli.run_batch import run_batch as run
    from llmsup.supervisor.client.base import Endpoint

    if not input_file.is_file():
        typer.echo(f"no input file {input_file}", err=True)
        raise typer.Exit(2)
    outcome = asyncio.run(run(Endpoint.resolve(url, run_dir, None), input_file, output_file, concurrency))
    typer.echo(f"{outcome.lines} lines: {outcome.answered} answered, {outcome.failed} failed -> {output_file}",
               err=True)
    if outcome.failed:
        raise typer.Exit(3)


def main() -> None:
    app(prog_name="llmsup")


if __name__ == "__main__":
    main()
