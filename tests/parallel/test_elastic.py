"""Elastic training through launch/elastic.sh: a real worker process is killed mid-stage,
the survivor rolls back to the last commit and finishes; the lost worker's host comes
back after its cool-down and a new worker joins. Real horovodrun --gloo elastic jobs."""
import os
import re
import signal
import subprocess
import sys
import threading
import time

from tests.support.hvd import ROOT

STEPS, COMMIT = 300, 5


def _worker_pids(workdir, rank):
    """Processes of this job whose Horovod rank is ``rank`` (from their environment)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read().split(b"\0")
            with open(f"/proc/{pid}/environ", "rb") as fh:
                env = dict(e.split(b"=", 1) for e in fh.read().split(b"\0") if b"=" in e)
        except OSError:
            continue
        if b"dcsp_dist.train" in cmd and str(workdir).encode() in cmd and env.get(b"HOROVOD_RANK") == str(rank).encode():
            pids.append(int(pid))
    return pids


def _last_step(lines) -> int:
    steps = [int(m.group(1)) for m in (re.search(r"\[attention\] step (\d+)/", l) for l in list(lines)) if m]
    return steps[-1] if steps else 0


def _watch(proc, at_step: int, action) -> str:
    """Stream ``proc``'s output; once it logs step ``at_step``, call ``action(step)`` once;
    wait for the job and return its output (the job is killed if the test fails)."""
    lines, done = [], []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.time() + 600
        while not done and time.time() < deadline and proc.poll() is None:
            step = _last_step(lines)
            if step >= at_step:
                action(step)
                done.append(step)
            time.sleep(0.05)
        proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        reader.join(timeout=10)
    assert done, "".join(lines)[-4000:]
    return "".join(lines)


def _launch(synth_records, workdir, *extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", HOROVOD_CYCLE_TIME="1", DCSP_THREADS="1",
               PYTHONPATH=ROOT, PYTHON=sys.executable)
    # Two "hosts" that are both this machine (localhost and 127.0.0.1), one slot each: a
    # failed worker blacklists only its own host, as on a real cluster.
    cmd = ["bash", "launch/elastic.sh", "--min-np", "1", "--max-np", "2", "-H", "localhost:1,127.0.0.1:1",
           "--elastic-timeout", "120",
           *extra, "--stage", "attention", "--config", "tiny_test", "--data", str(synth_records),
           "--workdir", str(workdir), "--", "--set", f"attention_steps={STEPS}", "--set", "log_every=1",
           "--set", f"elastic_commit_every={COMMIT}", "--set", "checkpoint_every=1000"]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def test_worker_lost_mid_stage_then_back(synth_records, tmp_path):
    workdir = tmp_path / "run"
    proc = _launch(synth_records, workdir, "--blacklist-cooldown-range", "1", "2")
    killed_after = []

    def kill_rank_1(step):
        pids = _worker_pids(workdir, 1)
        assert pids, "rank 1's process not found"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        killed_after.append(step)

    out = _watch(proc, 23, kill_rank_1)
    assert killed_after, out[-4000:]
    assert proc.returncode == 0, out[-6000:]
    assert f"[attention] step {STEPS}/{STEPS}" in out and "[attention] done:" in out, out[-4000:]
    resumed = [int(m) for m in re.findall(r"\[attention\] elastic: 1 rank\(s\) from step (\d+)", out)]
    assert resumed, out[-4000:]
    before = out[:out.index("elastic: 1 rank(s)")]
    reached = max(int(m) for m in re.findall(r"\[attention\] step (\d+)/", before))
    # The survivor rolled back to the last commit: at most one commit interval is redone
    # (the step in flight when the peer died never completed, so +1 at most).
    redone = reached - resumed[0]
    assert resumed[0] % COMMIT == 0 and 0 <= redone <= COMMIT, (reached, resumed)
    print(f"\nelastic: rank 1 killed after step {reached}; the survivor resumed at step {resumed[0]} "
          f"({redone} step(s) redone, commit every {COMMIT})")
    # The host came back after its cool-down and a new worker joined the job.
    assert re.search(r"\[attention\] elastic: 2 rank\(s\) from step \d+", out), out[-4000:]
    assert (workdir / "attention" / "done.json").is_file()


def test_joining_worker_with_a_global_batch_that_does_not_divide_stops_with_one_line(synth_records, tmp_path):
    """Global batch 3 on one worker; mid-stage a second host appears in the discovery
    script, its worker joins, 3 does not divide over 2, and every rank stops with the one
    line that says so."""
    workdir, flag = tmp_path / "run", tmp_path / "second_host_up"
    discover = tmp_path / "discover.sh"
    discover.write_text(f"#!/bin/sh\necho localhost:1\n[ -f {flag} ] && echo 127.0.0.1:1\nexit 0\n")
    discover.chmod(0o755)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", HOROVOD_CYCLE_TIME="1", DCSP_THREADS="1", PYTHONPATH=ROOT)
    proc = subprocess.Popen(
        ["bash", "launch/elastic.sh", "-n", "1", "--min-np", "1", "--max-np", "2", "--host-discovery-script",
         str(discover), "--network-interface", "lo", "--elastic-timeout", "60", "--python", sys.executable,
         "--stage", "attention", "--config", "tiny_test", "--data",
         str(synth_records), "--workdir", str(workdir), "--", "--set", "global_batch=3", "--set",
         f"attention_steps={STEPS}", "--set", f"elastic_commit_every={COMMIT}", "--set", "log_every=1"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    out = _watch(proc, 20, lambda step: flag.touch())
    assert flag.exists() and proc.returncode != 0, out[-3000:]
    errors = [l for l in out.splitlines() if "error: global_batch=3 does not divide over 2 ranks" in l]
    assert len(errors) == 2, out[-3000:]   # one line from each rank
    assert not any("Traceback" in l for l in out.splitlines() if l.startswith("[")), out[-3000:]
    assert not (workdir / "attention" / "done.json").exists()


def test_elastic_runs_training_stages_only(synth_records, tmp_path):
    for stage in ("all", "cues"):
        proc = subprocess.run(
            ["bash", "launch/elastic.sh", "--min-np", "1", "--max-np", "1", "-H", "localhost:1", "--stage", stage,
             "--config", "tiny_test", "--data", str(synth_records), "--workdir", str(tmp_path / "run")],
            cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and "elastic jobs run one training stage at a time" in proc.stderr
        assert proc.stdout == ""
