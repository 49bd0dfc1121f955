"""Every notebook in notebooks/ runs top to bottom against a live server and cluster; notebooks are stored
without outputs and pass ``nbqa ruff``.

Each notebook gets its own ``llmsup serve`` (sim backend, 2 engines) and its own kernel: a kernelspec written
to a temporary directory that runs this interpreter (the venv's python) with ``ipykernel_launcher``. The
kernel's IPython and Jupyter directories are temporary too, and it finds the server from ``LLMSUP_URL`` /
``LLMSUP_RUN_DIR`` as a user's notebook would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import psutil
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from support.live import finish_server, sim_environment, start_llmsup, start_server

pytestmark = pytest.mark.real  # real processes (see tests/conftest.py)

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
KERNEL = "llmsup-test-python"
CELL_TIMEOUT_S = 120
FUNCTIONS = "llmsup.engines.example_functions"
SERVER_ARGS = {  # notebooks that need more than the default server: its engines and flags
    "03_pipelines.ipynb": (4, ["--pool", "name=io,backend=python,engines=1",
                               "--pool", "name=small,backend=sim,engines=2", "--pool", "name=big,backend=sim,engines=1",
                               "--function", f"fetch={FUNCTIONS}:fetch", "--function", f"split={FUNCTIONS}:split"]),
}


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kernelspec for this very interpreter (not whatever ``python3`` kernel a machine happens to have)."""
    kernels = tmp_path_factory.mktemp("kernels")
    spec = kernels / KERNEL
    spec.mkdir()
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "llmsup test (venv python)",
        "language": "python",
    }))
    return kernels


def test_there_are_notebooks() -> None:
    assert {p.name for p in NOTEBOOKS} >= {"01_quickstart.ipynb", "02_cluster_tour.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name} cell {i} has outputs"


@pytest.mark.timeout(120)
def test_notebooks_pass_nbqa_ruff() -> None:
    res = subprocess.run([sys.executable, "-m", "nbqa", "ruff", "notebooks"], cwd=ROOT, capture_output=True,
                         text=True, timeout=100, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.timeout(420)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_top_to_bottom(path: Path, tmp_path: Path, kernel_dir: Path) -> None:
    if path.name in SERVER_ARGS:
        engines, args = SERVER_ARGS[path.name]
        base = tmp_path / "server"
        base.mkdir()
        server = start_llmsup(base / "run", base, sim_environment(base), engines=engines, args=args, cwd=base)
    else:
        server = start_server(tmp_path / "server")
    try:
        home = tmp_path / "kernel"
        env = {
            **os.environ, **server.client_env,
            "IPYTHONDIR": str(home / "ipython"), "JUPYTER_CONFIG_DIR": str(home / "config"),
            "JUPYTER_DATA_DIR": str(home / "data"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
            "MPLBACKEND": "agg", "PYDEVD_DISABLE_FILE_VALIDATION": "1",
        }
        env.pop("LLMSUP_ADMIN_TOKEN", None)  # the notebook reads it from the run directory
        executed = run_notebook(path, env, kernel_dir, home)
        (tmp_path / path.name).write_text(nbformat.writes(executed))  # kept for a look after a failure
        errors = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
        assert not errors, errors
    finally:
        finish_server(server)


def run_notebook(path: Path, env: dict[str, str], kernel_dir: Path, home: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(path, as_version=4)
    home.mkdir(parents=True, exist_ok=True)
    km = KernelManager(kernel_name=KERNEL, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernel_dir)]))
    km.connection_file = str(home / "kernel-connection.json")
    km.start_kernel(env=env, cwd=str(home))  # cwd without a .llmsup: the environment must find the server
    kernel = psutil.Process(km.provisioner.process.pid)
    client = NotebookClient(nb, km=km, timeout=CELL_TIMEOUT_S, kernel_name=KERNEL, allow_errors=False)
    try:
        client.execute()
    finally:
        if client.kc is not None:  # the client does not own km: its channels are ours to close
            client.kc.stop_channels()
        km.shutdown_kernel(now=False)
        try:
            kernel.wait(timeout=15)
        except psutil.TimeoutExpired:
            kernel.kill()
            raise AssertionError(f"kernel pid {kernel.pid} still running after shutdown") from None
        except psutil.NoSuchProcess:
            pass
    return nb
