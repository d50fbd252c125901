"""Launch real multi-process Horovod jobs from tests (horovodrun with Gloo, on this CPU)."""
from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Horovod's own launcher, minus its per-launch build check (tests/support/horovodrun.py says why).
HOROVODRUN = [sys.executable, "-m", "tests.support.horovodrun"]


def run_ranks(num_ranks: int, *args: str, timeout: int = 900, check: bool = True,
              env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python ARGS...`` as ``num_ranks`` Horovod processes on localhost.

    One TensorFlow thread per rank (DCSP_THREADS=1), so oversubscribed runs (3 or 4 ranks on
    2 cores) stay sane, and Horovod's 1 ms cycle: the tests' tiny steps take milliseconds.
    Returns the completed process; with ``check`` a non-zero exit fails with the job's output.
    """
    cmd = [*HOROVODRUN, "--gloo", "-np", str(num_ranks), "-H", f"localhost:{num_ranks}",
           sys.executable, *args]
    full_env = dict(os.environ, DCSP_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2", HOROVOD_CYCLE_TIME="1",
                    PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    full_env.update(env or {})
    proc = subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited with {proc.returncode}\n"
                             f"--- stdout ---\n{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-6000:]}")
    return proc


def run_python(*args: str, timeout: int = 900, check: bool = True, env: dict | None = None):
    """Run ``python ARGS...`` as one plain process from the repository root."""
    full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", HOROVOD_CYCLE_TIME="1",
                    PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=full_env, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"python {' '.join(args)} exited with {proc.returncode}\n"
                             f"--- stdout ---\n{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-6000:]}")
    return proc


def child_pids(pid: int) -> list[int]:
    """The pids of the live children of process ``pid``, whichever of its threads started them
    ([] once ``pid`` is gone)."""
    found = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                found += [int(c) for c in fh.read().split()]
        except OSError:
            pass
    return found


def spawned_workers(pid: int) -> list[int]:
    """The pids of process ``pid``'s spawned multiprocessing workers (a CRF pool's), not its
    other children: multiprocessing's resource tracker, or the ``orted`` Open MPI starts for a
    process launched without mpirun."""
    found = []
    for child in child_pids(pid):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as fh:
                cmdline = fh.read()
        except OSError:
            continue
        if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
            found.append(child)
    return found
