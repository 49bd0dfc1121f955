"""``python -m bench.gpu_check`` in its CPU mode, as a user runs it: the checks that mean something without a GPU
pass, the GPU-only ones are skipped with their reason, the markdown file is written, and nothing it started is left."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest

from fixtures_models import models_run_dir_fixture, tiny_model_fixture  # noqa: F401
from support.waiting import eventually

ROOT = Path(__file__).resolve().parent.parent
MARK = "LLMSUP_GPU_CHECK_TEST"


def left_behind(mark: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(MARK) == mark and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def rows(markdown: str) -> dict[str, list[str]]:
    """The check table's rows by check name: [result, figure, detail]."""
    out = {}
    for line in markdown.split("\n\n", 2)[1].splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        out[cells[0]] = cells[1:]
    return out


@pytest.mark.real
@pytest.mark.timeout(120)
def test_cpu_mode_runs_the_checks_and_cleans_up(tmp_path: Path, tiny_model: str) -> None:  # noqa: F811
    mark = uuid.uuid4().hex
    out = tmp_path / "gpu-check.md"
    argv = [sys.executable, "-m", "bench.gpu_check", "--device", "cpu", "--model", tiny_model, "--deadline-rounds",
            "1", "--start-timeout", "60", "--out", str(out), "--work-dir", str(tmp_path / "work")]
    proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, MARK: mark}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, process_group=0)
    try:
        stdout, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        for p in left_behind(mark):  # none expected (asserted below); never leave one
            p.kill()
    text = stdout.decode(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    table = rows(out.read_text())
    for name in ("deadlines", "standby promotion", "stop (no process left)", "decode tok/s"):
        assert table[name][0] == "pass", (name, table[name])
    assert "ms after the deadline" in table["deadlines"][1]
    assert "16: " in table["decode tok/s"][1] and "64: " in table["decode tok/s"][1]
    assert table["placement"][0] == "skipped" and "no GPU" in table["placement"][2]
    for name in ("vLLM vs vllm serve", "VLM image_url"):
        assert table[name][0] == "skipped" and table[name][2], table[name]
    assert "plain generate tok/s" in out.read_text()  # the decode table below the checks
    assert not left_behind(mark)


@pytest.mark.real
@pytest.mark.timeout(120)
def test_sigterm_stops_the_servers_it_started(tmp_path: Path, tiny_model: str) -> None:  # noqa: F811
    mark = uuid.uuid4().hex
    argv = [sys.executable, "-m", "bench.gpu_check", "--device", "cpu", "--model", tiny_model, "--only", "deadlines",
            "--deadline-rounds", "1000", "--start-timeout", "60", "--work-dir", str(tmp_path / "work")]
    proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, MARK: mark}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, process_group=0)
    try:
        eventually(lambda: any("serve" in cmdline(p) for p in left_behind(mark)), 60, "llmsup serve to start",
                   interval=0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 128 + signal.SIGTERM
        assert not left_behind(mark)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        for p in left_behind(mark):
            p.kill()


def test_unknown_check_is_refused() -> None:
    from bench.gpu_check import parse

    with pytest.raises(SystemExit) as info:
        parse(["--only", "placement,warp-drive"])
    assert info.value.code == 2
    assert parse(["--skip", "vllm,vlm"]).skip == {"vllm", "vlm"}


def test_placement_names_match_nvidia_smi_rows() -> None:
    from bench.gpu_check_serve import Gpu, same_gpu

    gpu = Gpu("2", "GPU-8f3a2b1c-0000-1111-2222-333344445555", 0.0)
    assert same_gpu("2", gpu) and same_gpu("GPU-8f3a2b1c", gpu) and same_gpu(gpu.uuid, gpu)
    assert not same_gpu("0", gpu) and not same_gpu("GPU-ffff", gpu)


def test_the_check_image_is_a_png() -> None:
    from PIL import Image

    from bench.gpu_check_vlm import png

    image = Image.open(io.BytesIO(png(8, 4, (1, 2, 3))))
    assert image.size == (8, 4) and image.getpixel((7, 3)) == (1, 2, 3)


SMI = """#!/bin/sh
case "$1" in
  --query-gpu=index,uuid,memory.used) printf '0, GPU-aaa0, 500\\n1, GPU-aaa1, 0\\n2, GPU-aaa2, 1870\\n3, GPU-aaa3, 1870\\n' ;;
  --query-compute-apps=pid,gpu_uuid,used_memory) printf '101, GPU-aaa2, 1800\\n102, GPU-aaa3, 1800\\n7, GPU-aaa0, [N/A]\\n' ;;
esac
"""


def test_gpu_placement_is_judged_against_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU host (here: a stand-in nvidia-smi on PATH): engines within CUDA_VISIBLE_DEVICES, each pid on its GPU."""
    from bench.gpu_check_serve import FAIL, PASS, gpu_apps, gpus, judge_placement

    (tmp_path / "nvidia-smi").write_text(SMI)
    (tmp_path / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    devices, apps = gpus(), gpu_apps()
    assert [(g.index, g.uuid, g.used_mib) for g in devices][2] == ("2", "GPU-aaa2", 1870.0)
    assert apps == {101: ("GPU-aaa2", 1800.0), 102: ("GPU-aaa3", 1800.0), 7: ("GPU-aaa0", 0.0)}

    def engine(i: int, gpu: str, pid: int, state: str = "idle") -> dict:
        return {"id": i, "gpu": gpu, "pid": pid, "state": state}

    good = judge_placement([engine(0, "2", 101), engine(1, "3", 102)], ["2", "3"], devices, apps)
    assert good.status == PASS and good.figure == "e0->2, e1->3" and "pid 101 on GPU 2" in good.detail
    swapped = judge_placement([engine(0, "3", 101), engine(1, "2", 102)], ["2", "3"], devices, apps)
    assert swapped.status == FAIL and "nvidia-smi has its pid on GPU 2" in swapped.detail
    outside = judge_placement([engine(0, "0", 7)], ["2", "3"], devices, apps)
    assert outside.status == FAIL and "not within the visible ['2', '3']" in outside.detail
    shared = judge_placement([engine(0, "2", 101), engine(1, "2", 5)], ["2", "3"], devices, apps)
    assert shared.status == FAIL and "share a GPU" in shared.detail
    by_uuid = judge_placement([engine(0, "GPU-aaa2", 101), engine(1, "3", 9, "standby")], ["GPU-aaa2", "3"],
                              devices, apps)
    assert by_uuid.status == PASS, by_uuid.detail
