from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from llmsup.supervisor.settings import Settings, load_settings

pytestmark = pytest.mark.timeout(10)


def test_cli_beats_env_beats_file_beats_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "llmsup.toml"
    cfg.write_text("engines = 5\nport = 9001\ndeadline_s = 12.5\n")
    monkeypatch.setenv("LLMSUP_PORT", "9002")
    s = load_settings(cfg, engines=3, host=None)
    assert (s.engines, s.port, s.deadline_s, s.host) == (3, 9002, 12.5, "127.0.0.1")
    assert isinstance(s, Settings)


def test_file_under_section_and_env_pointer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[llmsup]\nbackend = 'sim'\nmax_attempts = 7\n")
    monkeypatch.setenv("LLMSUP_CONFIG", str(cfg))
    assert load_settings().max_attempts == 7


def test_invalid_values_are_rejected_with_the_field_named(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="engines"):
        Settings(engines=-1)
    with pytest.raises(ValidationError, match="kill_grace_s"):
        Settings(interrupt_grace_s=2, kill_grace_s=1)
    cfg = tmp_path / "bad.toml"
    cfg.write_text("enginez = 2\n")
    with pytest.raises(ValueError, match="enginez"):
        load_settings(cfg)


def test_every_setting_reads_its_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMSUP_RUN_DIR", "/tmp/elsewhere")
    monkeypatch.setenv("LLMSUP_ENGINES", "4")
    s = Settings()
    assert s.run_dir == Path("/tmp/elsewhere") and s.engines == 4


def test_security_settings_from_flags_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "llmsup.toml"
    cfg.write_text("allowed_hosts = ['api.example', 'llm.internal']\nretain_jobs = 500\nmetrics_open = true\n")
    monkeypatch.setenv("LLMSUP_OWNER_QUEUE_MAX", "7")
    monkeypatch.setenv("LLMSUP_ALLOWED_HOSTS", "a.example, b.example")  # comma-separated, no JSON needed
    s = load_settings(cfg, retain_s=3600.0, sse_max_per_owner=None)
    assert s.allowed_hosts == ["a.example", "b.example"] and s.retain_jobs == 500 and s.metrics_open
    assert (s.owner_queue_max, s.retain_s, s.sse_max_per_owner, s.max_user_priority) == (7, 3600.0, 32, 100)
    monkeypatch.delenv("LLMSUP_ALLOWED_HOSTS")
    assert load_settings(cfg).allowed_hosts == ["api.example", "llm.internal"]
    assert load_settings(allowed_hosts="*").allowed_hosts == ["*"]
    with pytest.raises(ValidationError, match="http_limit_concurrency"):
        Settings(http_limit_concurrency=0)


def test_host_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LLMSUP_HOSTS", "gpu1, root@gpu2:2222")
    s = Settings(engine_launcher="ssh", cluster_ip="10.0.0.1")
    assert s.hosts == ["gpu1", "root@gpu2:2222"] and s.cluster_ip == "10.0.0.1"
    assert Settings().host_loss_timeout_s == 5.0  # 10 heartbeats of the default 500 ms
    assert Settings(heartbeat_ms=50).host_loss_timeout_s == 2.0 and Settings(heartbeat_ms=5000).host_loss_timeout_s == 10
    assert Settings(host_loss_s=3).host_loss_timeout_s == 3
    monkeypatch.delenv("LLMSUP_HOSTS")
    with pytest.raises(ValidationError, match="hosts"):
        Settings(engine_launcher="ssh")
    cfg = tmp_path / "c.toml"
    cfg.write_text('hosts = ["a", "b"]\nengine_launcher = "ssh"\n')
    assert load_settings(cfg).hosts == ["a", "b"]
