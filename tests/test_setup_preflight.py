"""The GPU set-up's preflight (scripts/setup.sh with GPU=1): one clear line, before any download.

The toolkits here are directories with a ``bin/nvcc`` that prints what NVIDIA's nvcc prints
for a given release; the preflight reads nothing else. Where this machine has a real CUDA
toolkit, it is checked too.
"""
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETUP = os.path.join(ROOT, "scripts", "setup.sh")


def _toolkit(tmp_path, release: str | None):
    home = tmp_path / f"cuda-{release}"
    (home / "bin").mkdir(parents=True)
    text = f"Cuda compilation tools, release {release}, V{release}.1" if release else "nvcc: something else"
    nvcc = home / "bin" / "nvcc"
    nvcc.write_text(f"#!/bin/sh\necho 'nvcc: NVIDIA (R) Cuda compiler driver'\necho '{text}'\n")
    nvcc.chmod(0o755)
    return home


def _preflight(tmp_path, **env):
    venv = tmp_path / "venv"
    base = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "GPU": "1", "DCSP_PREFLIGHT_ONLY": "1",
            "DCSP_VENV": str(venv), "DCSP_CUDA_DEFAULT": str(tmp_path / "no-default-cuda")}
    base.update({k: str(v) for k, v in env.items()})
    proc = subprocess.run(["bash", SETUP], env=base, capture_output=True, text=True, timeout=60)
    assert not venv.exists(), "the preflight must stop before anything is installed"
    return proc


def _one_error_line(proc) -> str:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("[setup] ERROR: GPU=1"), proc.stderr
    return errors[0]


def test_no_toolkit_says_what_is_needed_and_how_to_get_it(tmp_path):
    line = _one_error_line(_preflight(tmp_path))
    assert "no CUDA toolkit found" in line and "CUDA 12.x" in line
    assert "CUDA_HOME" in line and "container" in line


@pytest.mark.parametrize("release", ["11.8", "13.0"])
def test_toolkit_of_another_major_version_is_refused(tmp_path, release):
    home = _toolkit(tmp_path, release)
    line = _one_error_line(_preflight(tmp_path, CUDA_HOME=home))
    assert f"{home} is {release}" in line and "needs CUDA 12.x" in line


def test_toolkit_on_the_path_is_found(tmp_path):
    home = _toolkit(tmp_path, "11.8")
    line = _one_error_line(_preflight(tmp_path, PATH=f"{home}/bin:/usr/bin:/bin"))
    assert f"{home} is 11.8" in line


def test_nvcc_without_a_release_is_one_clear_line(tmp_path):
    home = _toolkit(tmp_path, None)
    line = _one_error_line(_preflight(tmp_path, CUDA_HOME=home))
    assert "does not print a CUDA release" in line


def test_cuda_12_passes(tmp_path):
    home = _toolkit(tmp_path, "12.9")
    proc = _preflight(tmp_path, CUDA_HOME=home)
    assert proc.returncode == 0, proc.stderr
    assert f"CUDA toolkit: {home} (CUDA 12.9)" in proc.stdout and "preflight passed" in proc.stdout


def test_major_override_is_for_the_build_check_and_says_so(tmp_path):
    home = _toolkit(tmp_path, "13.0")
    proc = _preflight(tmp_path, CUDA_HOME=home, DCSP_ALLOW_CUDA_MAJOR=13)
    assert proc.returncode == 0, proc.stderr
    assert "WARNING: building with CUDA 13.0" in proc.stdout and "build check only" in proc.stdout


def test_bad_nccl_home_is_refused(tmp_path):
    home = _toolkit(tmp_path, "12.9")
    proc = _preflight(tmp_path, CUDA_HOME=home, NCCL_HOME=tmp_path / "nccl")
    assert proc.returncode == 1 and "NCCL_HOME" in proc.stderr and "nccl.h" in proc.stderr


def test_system_nccl_is_used_when_present(tmp_path):
    home = _toolkit(tmp_path, "12.9")
    nccl = tmp_path / "nccl"
    (nccl / "include").mkdir(parents=True)
    (nccl / "lib").mkdir()
    (nccl / "include" / "nccl.h").write_text("#define NCCL_MAJOR 2\n")
    (nccl / "lib" / "libnccl.so.2").write_bytes(b"")
    proc = _preflight(tmp_path, CUDA_HOME=home, NCCL_HOME=nccl)
    assert proc.returncode == 0, proc.stderr
    assert f"NCCL: system ({nccl}/include, {nccl}/lib)" in proc.stdout


@pytest.mark.skipif(not os.path.exists("/usr/local/cuda/bin/nvcc"), reason="no CUDA toolkit at /usr/local/cuda")
def test_the_machines_own_toolkit_is_judged_by_its_version(tmp_path):
    version = subprocess.run(["/usr/local/cuda/bin/nvcc", "--version"], capture_output=True, text=True).stdout
    proc = _preflight(tmp_path, DCSP_CUDA_DEFAULT="/usr/local/cuda")
    if "release 12." in version:
        assert proc.returncode == 0, proc.stderr
    else:
        assert "needs CUDA 12.x" in _one_error_line(proc)
