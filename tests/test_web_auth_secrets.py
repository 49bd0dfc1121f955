"""Secrets: the admin token and API keys from files readable by their owner only, a minimum length refused with a
clear message at start, and the back-off after a failed authentication (per client address, off the loop)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from llmsup.supervisor import cli
from llmsup.supervisor.settings import Settings
from llmsup.web import auth
from llmsup.web.auth_backoff import FORGET_S, MAX_ADDRESSES, MAX_WAIT_S, FailedAuth
from test_web_guards import ALICE, open_app

pytestmark = pytest.mark.timeout(60)
LONG = "sk-file-key-0123456789"


def private(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_the_admin_token_and_keys_come_from_private_files(tmp_path: Path) -> None:
    token = private(tmp_path / "token", "admin-token-from-a-file\n")
    keys = private(tmp_path / "keys", f"# the team\nalice:{LONG}\n")
    a = auth.Auth.from_settings(Settings(run_dir=tmp_path / "run", admin_token_file=token, api_keys_file=keys))
    assert a.is_admin("admin-token-from-a-file") and a.owner_of(LONG) == "alice"
    assert not (tmp_path / "run" / "admin_token").exists()  # given: nothing generated
    os.chmod(keys, 0o644)
    with pytest.raises(auth.SecretError, match=r"api_keys_file .* open to group or others .*chmod 600"):
        auth.check_secrets(Settings(run_dir=tmp_path / "run", api_keys_file=keys))
    os.chmod(token, 0o640)
    with pytest.raises(auth.SecretError, match=r"admin_token_file .* \(mode 0640\)"):
        auth.Auth.from_settings(Settings(run_dir=tmp_path / "run", admin_token_file=token))
    with pytest.raises(auth.SecretError, match="No such file"):
        auth.check_secrets(Settings(run_dir=tmp_path / "run", admin_token_file=tmp_path / "missing"))
    with pytest.raises(ValidationError, match="admin_token or admin_token_file"):
        Settings(admin_token="x" * 20, admin_token_file=token)


def test_a_short_key_or_token_is_refused_beyond_loopback_naming_the_minimum(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    wide = {"run_dir": tmp_path, "host": "0.0.0.0"}
    with pytest.raises(auth.SecretError, match=r"API key of 'alice' is 5 characters long: at least 16 .*min_key_length"):
        auth.check_secrets(Settings(**wide, api_keys="alice:short"))
    with pytest.raises(auth.SecretError, match="admin token is 3 characters long"):
        auth.Auth.from_settings(Settings(**wide, admin_token="adm"))
    short = private(tmp_path / "keys", "tiny-key\n")
    with pytest.raises(auth.SecretError, match="8 characters"):
        auth.check_secrets(Settings(**wide, api_keys_file=short))
    auth.check_secrets(Settings(**wide, api_keys_file=short, min_key_length=8))  # the minimum is a setting
    with caplog.at_level("WARNING", logger="llmsup.web.auth"):  # loopback: a vllm serve line's short key runs, warned
        auth.check_secrets(Settings(run_dir=tmp_path, api_keys="alice:short"))
    assert "5 characters long" in caplog.text and "binds 127.0.0.1 only" in caplog.text


def test_llmsup_serve_refuses_a_short_key_before_anything_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from llmsup.supervisor.cli import serving

    started: list[Settings] = []
    monkeypatch.setattr(serving, "main", lambda settings, make_app: started.append(settings))
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("LLMSUP_")]:
        monkeypatch.delenv(name)
    res = CliRunner().invoke(cli.app, ["serve", "m", "--backend", "sim", "--host", "0.0.0.0", "--api-key", "sk-mine"])
    assert res.exit_code == 2 and not started
    assert "API key" in res.output and "7 characters long: at least 16" in res.output
    assert "Traceback" not in res.output
    keys = private(tmp_path / "keys", f"{LONG}\n")
    ok = CliRunner().invoke(cli.app, ["serve", "m", "--backend", "sim", "--host", "0.0.0.0", "--api-keys-file", str(keys)])
    assert ok.exit_code == 0, ok.output
    assert started and started[0].api_keys_file == keys
    loopback = CliRunner().invoke(cli.app, ["serve", "m", "--backend", "sim", "--api-key", "sk-mine"])  # vllm's line
    assert loopback.exit_code == 0, loopback.output


# back-off after a failed authentication -----------------------------------------------------------------------------


def test_failures_push_the_next_check_of_that_address_only() -> None:
    f = FailedAuth(0.5)
    assert f.wait("10.0.0.1", 100.0) == 0
    f.failed("10.0.0.1", 100.0)
    assert f.wait("10.0.0.1", 100.0) == 0.5 and f.wait("10.0.0.2", 100.0) == 0  # per address
    assert f.wait("10.0.0.1", 100.6) == 0  # short: over once it has passed
    f.failed("10.0.0.1", 100.6)
    f.failed("10.0.0.1", 101.7)
    assert f.wait("10.0.0.1", 101.7) == pytest.approx(2.0)  # doubling with each further failure
    for i in range(20):
        f.failed("10.0.0.1", 102.0 + i)
    assert f.wait("10.0.0.1", 121.0) == pytest.approx(MAX_WAIT_S)  # capped
    assert f.wait("10.0.0.1", 121.0 + FORGET_S + 1) == 0 and len(f) == 0  # forgotten after a quiet minute
    f.failed("10.0.0.1", 500.0)
    assert f.wait("10.0.0.1", 500.0) == 0.5  # and starts short again
    for i in range(MAX_ADDRESSES + 10):
        f.failed(f"a{i}", 600.0)
    assert len(f) == MAX_ADDRESSES and f.wait("a0", 600.0) == 0  # bounded: the oldest went first
    off = FailedAuth(0.0)
    off.failed("10.0.0.1", 1.0)
    assert off.wait("10.0.0.1", 1.0) == 0 and len(off) == 0


async def test_a_wrong_key_slows_the_next_attempts_of_its_address_not_others(tmp_path: Path) -> None:
    async for a in open_app(tmp_path / "run", auth_backoff_s=0.2):
        wrong = {"Authorization": "Bearer key-alice-012345678X"}
        assert (await a.http.get("/v1/jobs", headers=wrong)).status_code == 401
        other = httpx.AsyncClient(transport=httpx.ASGITransport(app=a.app, client=("10.9.9.9", 4000)),
                                  base_url="http://127.0.0.1:8000")
        async with other:
            begun = time.monotonic()
            assert (await other.get("/v1/jobs", headers=ALICE)).status_code == 200
            assert (await a.http.get("/healthz")).status_code == 200  # no credential, no wait: the loop is free
            elsewhere = time.monotonic() - begun
        begun = time.monotonic()
        assert (await a.http.get("/v1/jobs", headers=ALICE)).status_code == 200  # the right key, after the wait
        assert time.monotonic() - begun >= 0.15 > elsewhere
        await a.http.get("/v1/jobs", headers=wrong)
        begun = time.monotonic()
        guesses = await asyncio.gather(*(a.http.get("/v1/jobs", headers=wrong) for _ in range(2)))
        assert [r.status_code for r in guesses] == [401, 401]
        assert time.monotonic() - begun >= 0.4 + 0.8 - 0.05  # concurrent guesses: one per slot, each slot longer
        admin_guess = await a.http.get("/admin/engines", headers=ALICE)  # a key is not the admin token: a failure
        assert admin_guess.status_code == 403 and len(a.app.state.auth.failed) == 1
