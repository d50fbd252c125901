"""A rank that stops (SIGSTOP in the middle of a stage) ends the job within the stated bound,
with one line naming the rank, its host and pid (dcsp_dist.watchdog)."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.hvd import HOROVODRUN, ROOT

TIMEOUT = 10


def _heartbeat(workdir, rank):
    try:
        return json.load(open(workdir / "attention" / "heartbeat" / f"rank-{rank}.json"))
    except (OSError, ValueError):
        return None


@pytest.mark.parametrize("controller", ["mpi", "gloo"])
def test_a_stopped_rank_ends_the_job_naming_it(controller, synth_records, tmp_path):
    """Under MPI a stopped rank otherwise hangs the job for ever (Horovod's stall inspector is
    silent too: its negotiation waits for the stopped rank); under Gloo, its 30 s receive
    timeout ends the job without naming anyone."""
    workdir = tmp_path / "run"
    cmd = [HOROVODRUN, f"--{controller}", "-np", "2", "-H", "localhost:2", sys.executable, "-m", "dcsp_dist.train",
           "--stage", "attention", "--config", "tiny_test", "--data", str(synth_records), "--workdir", str(workdir),
           "--set", "attention_steps=100000", "--set", "checkpoint_every=100000", "--set", f"stall_timeout={TIMEOUT}",
           "--set", "image_summary_every=100000", "--set", "require_gpu=false"]
    env = dict(os.environ, DCSP_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2", HOROVOD_CYCLE_TIME="1",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    job = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    pid = None
    try:
        deadline = time.time() + 300
        while time.time() < deadline and job.poll() is None:
            beat = _heartbeat(workdir, 1)
            if beat and beat["progress"] >= 20:          # ten steps done
                pid = beat["pid"]
                break
            time.sleep(0.2)
        assert pid, f"rank 1 never reached step 10: {job.communicate(timeout=60) if job.poll() is not None else ''}"
        os.kill(pid, signal.SIGSTOP)
        stopped = time.time()
        out, err = job.communicate(timeout=TIMEOUT + 120)
        elapsed = time.time() - stopped
    finally:
        if pid:
            for sig in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    lines = [line for line in (out + err).splitlines() if "stalled" in line or "no heartbeat" in line]
    assert job.returncode != 0, out[-3000:] + err[-3000:]
    assert len(lines) == 1, out[-3000:] + err[-3000:]
    assert f"rank 1 (host {socket.gethostname()}, pid {pid}) stalled: no heartbeat for" in lines[0], lines[0]
    assert "exit 76" in lines[0]
    # the bound: stall_timeout + two heartbeat intervals, plus the launcher's teardown
    assert elapsed < TIMEOUT + 2 * 1.0 + 30, elapsed
    print(f"stall ({controller}): the job ended {elapsed:.1f} s after SIGSTOP on rank 1 (stall_timeout {TIMEOUT} s): {lines[0]}")
