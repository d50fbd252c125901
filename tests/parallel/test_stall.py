"""A rank that stops (SIGSTOP in the middle of a stage) ends the job within the stated bound,
with one line naming the rank, its host and pid (dcsp_dist.training.watchdog)."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.support.hvd import HOROVODRUN, ROOT

TIMEOUT = 10


def _heartbeat(workdir, rank):
    try:
        return json.load(open(workdir / "attention" / "heartbeat" / f"rank-{rank}.json"))
    except (OSError, ValueError):
        return None


def _job(controller, synth_records, workdir, *settings):
    cmd = [*HOROVODRUN, f"--{controller}", "-np", "2", "-H", "localhost:2", sys.executable, "-m", "dcsp_dist.train",
           "--stage", "attention", "--config", "tiny_test", "--data", str(synth_records), "--workdir", str(workdir),
           "--set", "checkpoint_every=100000", "--set", "image_summary_every=100000", "--set", "require_gpu=false",
           *[a for s in settings for a in ("--set", s)]]
    env = dict(os.environ, DCSP_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2", HOROVOD_CYCLE_TIME="1",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _wait_for_progress(job, workdir, progress, ranks=(0, 1)):
    """The ranks' pids once each has reached ``progress`` (2 * steps done)."""
    deadline = time.time() + 300
    while time.time() < deadline and job.poll() is None:
        beats = [_heartbeat(workdir, r) for r in ranks]
        if all(b and b["progress"] >= progress for b in beats):
            return [b["pid"] for b in beats]
        time.sleep(0.2)
    raise AssertionError(f"the ranks never reached {progress}: {job.communicate(timeout=60) if job.poll() is not None else ''}")


def test_a_suspended_job_is_not_a_stall(synth_records, tmp_path):
    """Every rank stopped for twice stall_timeout (as scontrol suspend does), then continued:
    each watchdog sees its own gap, starts its view afresh, and the job finishes."""
    workdir = tmp_path / "run"
    job = _job("gloo", synth_records, workdir, "attention_steps=600", "stall_timeout=4")
    pids = []
    try:
        pids = _wait_for_progress(job, workdir, 20)
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        time.sleep(9)
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
        out, err = job.communicate(timeout=300)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    assert job.returncode == 0 and "stalled" not in out + err, out[-3000:] + err[-3000:]
    assert (workdir / "attention" / "done.json").exists()


@pytest.mark.parametrize("controller,timeout", [("mpi", TIMEOUT), ("gloo", None)])
def test_a_stopped_rank_ends_the_job_naming_it(controller, timeout, synth_records, tmp_path):
    """Under MPI a stopped rank otherwise hangs the job for ever (Horovod's stall inspector is
    silent too: its negotiation waits for the stopped rank): the watchdog ends it. Under Gloo
    with the default settings its 30 s receive timeout fires first, and the rank whose
    collective failed names the stopped rank from the heartbeats."""
    workdir = tmp_path / "run"
    settings = ["attention_steps=100000"] + ([f"stall_timeout={timeout}"] if timeout else [])
    job = _job(controller, synth_records, workdir, *settings)
    pid = None
    try:
        pid = _wait_for_progress(job, workdir, 20, ranks=(1,))[0]     # ten steps done
        os.kill(pid, signal.SIGSTOP)
        stopped = time.time()
        out, err = job.communicate(timeout=(timeout or 30) + 120)
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
    assert "error line is above" not in out + err
    # what the heartbeats knew: the step the rank had reported (it was stopped after step 10),
    # not a record of the first interval (a finished step is written at once when the file is
    # over a second old)
    reported = re.search(r"its last heartbeat reported step (\d+)", lines[0])
    assert reported and int(reported.group(1)) >= 10, lines[0]
    if timeout:
        assert f"rank 1 (host {socket.gethostname()}, pid {pid}) stalled: no heartbeat for" in lines[0], lines[0]
        assert "exit 76" in lines[0]
        # the bound: stall_timeout + two heartbeat intervals, plus the launcher's teardown
        assert elapsed < TIMEOUT + 2 * 1.0 + 30, elapsed
    else:
        assert "a collective failed" in lines[0] and "by the heartbeats" in lines[0], lines[0]
        assert f"rank 1 (host {socket.gethostname()}, pid {pid}) no heartbeat for" in lines[0], lines[0]
        assert elapsed < 30 + 60, elapsed      # Gloo's 30 s timeout, then the launcher's teardown
    print(f"stall ({controller}): the job ended {elapsed:.1f} s after SIGSTOP on rank 1 (stall_timeout "
          f"{timeout or 'default'}): {lines[0]}")
