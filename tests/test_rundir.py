"""The run directory is private: 0700, files 0600, secrets never written through a planted symlink, and a
directory that others own or may write is refused with one clear message."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmsup.supervisor.cli import commands as cli
from llmsup.supervisor.cluster.leftovers import ProcessLedger
from llmsup.supervisor.rundir import RunDirError, create_private, prepare_run_dir, write_private
from llmsup.supervisor.settings import Settings
from llmsup.web.auth import Auth

pytestmark = pytest.mark.timeout(30)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def loose_umask() -> object:
    old = os.umask(0o022)  # what a login shell usually has: 0755 directories, 0644 files
    yield
    os.umask(old)


def test_a_new_run_dir_is_0700_and_an_old_one_of_ours_is_tightened(tmp_path: Path, loose_umask: object) -> None:
    run = prepare_run_dir(tmp_path / "a" / "run")
    assert mode(run) == 0o700
    old = tmp_path / "old"
    old.mkdir(mode=0o755)
    os.chmod(old, 0o755)
    prepare_run_dir(old)
    assert mode(old) == 0o700


@pytest.mark.parametrize("loose", [0o775, 0o757, 0o777])
def test_a_group_or_world_writable_run_dir_is_refused(tmp_path: Path, loose: int) -> None:
    run = tmp_path / "run"
    run.mkdir()
    os.chmod(run, loose)
    with pytest.raises(RunDirError, match="writable by group or others"):
        prepare_run_dir(run)
    assert mode(run) == loose  # left as it was


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
def test_a_run_dir_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    os.chown(run, 65534, 65534)
    with pytest.raises(RunDirError, match="owned by uid 65534"):
        prepare_run_dir(run)


def test_write_private_is_0600_and_never_follows_a_planted_symlink(tmp_path: Path, loose_umask: object) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    os.chmod(victim, 0o644)
    secret = tmp_path / "admin_token"
    secret.symlink_to(victim)
    write_private(secret, "s3cret")
    assert victim.read_text() == "precious" and mode(victim) == 0o644
    assert not secret.is_symlink() and secret.read_text() == "s3cret" and mode(secret) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["admin_token", "victim"]  # no temporary file left


def test_create_private_tightens_ours_and_refuses_a_symlink(tmp_path: Path, loose_umask: object) -> None:
    db = tmp_path / "jobs.sqlite"
    db.write_text("")
    os.chmod(db, 0o644)
    create_private(db)
    assert mode(db) == 0o600
    link = tmp_path / "link.sqlite"
    link.symlink_to(db)
    with pytest.raises(RunDirError, match="not a regular file"):
        create_private(link)


def test_ledger_claim_makes_the_run_dir_private(tmp_path: Path, loose_umask: object) -> None:
    run = tmp_path / "run"
    run.mkdir(mode=0o755)
    os.chmod(run, 0o755)
    ledger = ProcessLedger(run / "processes.json")
    ledger.claim()
    assert mode(run) == 0o700 and mode(run / "processes.json") == 0o600
    assert json.loads((run / "processes.json").read_text())["owner"]["pid"] == os.getpid()
    os.chmod(run, 0o777)
    with pytest.raises(RunDirError):
        ledger.claim()


def test_generated_tokens_are_0600_and_not_written_through_symlinks(tmp_path: Path, loose_umask: object) -> None:
    run = prepare_run_dir(tmp_path / "run")
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (run / "admin_token").symlink_to(victim)
    (run / "api_key").symlink_to(victim)
    Auth.from_settings(Settings(run_dir=run, require_api_keys="on"))
    assert victim.read_text() == "precious"
    for name in ("admin_token", "api_key"):
        assert not (run / name).is_symlink() and mode(run / name) == 0o600


def test_serve_refuses_a_shared_run_dir_with_one_message(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    os.chmod(run, 0o777)
    result = CliRunner().invoke(cli.app, ["serve", "--run-dir", str(run), "--backend", "sim"])
    assert result.exit_code == 2
    assert "writable by group or others" in result.output and "Traceback" not in result.output


def test_serve_passes_connection_limits_to_uvicorn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from llmsup.supervisor.cli import serving

    seen: dict[str, object] = {}
    monkeypatch.setattr(serving, "main", lambda settings, make_app: seen.update(serving.uvicorn_options(settings)))
    result = CliRunner().invoke(cli.app, ["serve", "--run-dir", str(tmp_path / "run"), "--backend", "sim",
                                          "--http-limit-concurrency", "77", "--http-backlog", "33"])
    assert result.exit_code == 0, result.output
    assert seen["limit_concurrency"] == 77 and seen["backlog"] == 33
    assert mode(tmp_path / "run") == 0o700


def test_ledger_sweep_at_stop_kills_what_is_still_alive_and_forgets_all(tmp_path: Path) -> None:
    run = prepare_run_dir(tmp_path / "run")
    ledger = ProcessLedger(run / "processes.json")
    ledger.claim()
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        ledger.record("nanny:e0", proc.pid)
        ledger.record("gone", os.getpid() + 10_000_000)  # not a live process: not recorded at all
        assert ledger.sweep() == [f"nanny:e0:{proc.pid}"]
        assert proc.wait(timeout=10) == -signal.SIGKILL
        assert ledger.entries == {} and json.loads((run / "processes.json").read_text())["processes"] == {}
        assert ledger.sweep() == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
