"""The run lock's edges, on real files and real processes: a lock of another host is judged by
watching it (not by comparing clocks), a live pid on this host wins, a requeued SLURM job
takes over only its own silent lock, a takeover never steals a live lock that replaced the
stale one, the holder keeps beating through transient errors, and a job that lost its lock
writes nothing more."""
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from dcsp_dist.core import atomic
from dcsp_dist.rundir import lock as runlock


def _holder(path, **fields):
    base = {"host": "node-elsewhere", "pid": 4242, "started": "2026-12-03 10:00:00", "token": "t-old", "beat": 0.3}
    path.write_text(json.dumps({**base, **fields}))


@pytest.fixture
def beating(tmp_path):
    """A real process that holds ``<tmp_path>/.lock`` as another host would: it rewrites the
    lock's time every 0.2 s (its recorded beat is 0.3 s)."""
    procs = []

    def start(**fields):
        _holder(tmp_path / ".lock", **fields)
        code = textwrap.dedent(f"""
            import os, time
            while True:
                time.sleep(0.2)
                try:
                    os.utime({str(tmp_path / '.lock')!r})
                except OSError:
                    pass
        """)
        procs.append(subprocess.Popen([sys.executable, "-c", code]))
        time.sleep(0.3)
    yield start
    for p in procs:
        p.kill()
        p.wait()


def test_a_requeued_slurm_job_takes_over_its_own_silent_lock_from_another_host(tmp_path, monkeypatch):
    _holder(tmp_path / ".lock", slurm_job_id="77", slurm_restart=0)
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    warnings = []
    lock = runlock.RunLock(str(tmp_path))
    t0 = time.monotonic()
    lock.acquire(warnings.append)
    try:
        assert time.monotonic() - t0 >= 2 * 0.3                  # watched for two of its beats first
        held = json.loads((tmp_path / ".lock").read_text())
        assert held["slurm_job_id"] == "77" and held["slurm_restart"] == 1 and held["token"] == lock.token
        assert "watching it for" in warnings[0]
        assert "left by SLURM job 77 before its requeue 1, unchanged for" in warnings[-1]
    finally:
        lock.release()
    assert not (tmp_path / ".lock").exists()


@pytest.mark.parametrize("case", ["another job", "the same SLURM job, requeued while the old run still beats",
                                  "a taker whose clock runs 400 s ahead"])
def test_a_beating_lock_of_another_host_is_refused(tmp_path, monkeypatch, beating, case):
    beating(slurm_job_id="77", slurm_restart=0)
    monkeypatch.setenv("SLURM_JOB_ID", "78" if case == "another job" else "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    if "clock" in case:
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + 400)
        old = real() - 400        # and the holder's host stamps the lock 400 s behind
        os.utime(tmp_path / ".lock", (old, old))
    with pytest.raises(runlock.RunLocked, match="in use by host node-elsewhere pid 4242 .*SLURM job 77.*alive"):
        runlock.RunLock(str(tmp_path)).acquire(lambda m: None)
    assert json.loads((tmp_path / ".lock").read_text())["token"] == "t-old"     # untouched


def test_a_live_pid_on_this_host_wins_whatever_the_lock_s_age(tmp_path):
    import socket
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _holder(tmp_path / ".lock", host=socket.gethostname(), pid=sleeper.pid, pidns=runlock.pid_namespace())
        os.utime(tmp_path / ".lock", (1, 1))                       # untouched "since 1970"
        t0 = time.monotonic()
        with pytest.raises(runlock.RunLocked, match=f"pid {sleeper.pid} .*alive on this host"):
            runlock.RunLock(str(tmp_path)).acquire()
        assert time.monotonic() - t0 < 0.3                        # no watching needed
    finally:
        sleeper.kill()
        sleeper.wait()
    warnings = []                                                  # now it is gone: taken at once
    lock = runlock.RunLock(str(tmp_path))
    lock.acquire(warnings.append)
    lock.release()
    assert warnings == [f"warning: took over the stale lock of host {socket.gethostname()} pid {sleeper.pid} "
                        f"(process {sleeper.pid} is gone): {tmp_path / '.lock'}"]


def test_a_holder_in_another_pid_namespace_is_watched_not_asked(tmp_path):
    """Same hostname (docker --network host), another PID namespace: its pid means nothing
    here, so a beating lock is refused although no such pid exists in this namespace."""
    import socket
    code = textwrap.dedent(f"""
        import os, time
        while True:
            time.sleep(0.2)
            os.utime({str(tmp_path / '.lock')!r})
    """)
    _holder(tmp_path / ".lock", host=socket.gethostname(), pid=2 ** 22 + 7, pidns="pid:[1]")
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        with pytest.raises(runlock.RunLocked, match="changed while watched"):
            runlock.RunLock(str(tmp_path)).acquire(lambda m: None)
    finally:
        proc.kill()
        proc.wait()


def test_a_takeover_puts_back_a_live_lock_that_replaced_the_stale_one(tmp_path, monkeypatch):
    """Between the look (stale: silent for two beats) and the rename, another job took the
    lock over and wrote its own: the rename moves the live one, which goes back."""
    path = tmp_path / ".lock"
    _holder(path, token="t-stale")
    lock = runlock.RunLock(str(tmp_path))
    real_judge = lock._judge

    def judged_then_replaced(*args):
        why = real_judge(*args)                              # judged stale ...
        _holder(path, host="winner", token="t-live")         # ... then another job wins the lock
        return why
    monkeypatch.setattr(lock, "_judge", judged_then_replaced)
    lock._take_over_if_stale(print)
    assert json.loads(path.read_text())["token"] == "t-live"
    assert [p.name for p in tmp_path.iterdir()] == [".lock"]


def test_the_heartbeat_survives_transient_errors_and_a_lost_lock_stops_every_write(tmp_path, monkeypatch):
    monkeypatch.setattr(runlock, "LOCK_HEARTBEAT_SECONDS", 0.1)
    monkeypatch.setattr(runlock, "RETRY_SECONDS", 0.05)
    monkeypatch.setattr(runlock, "HEARTBEAT_RETRIES", 3)
    warnings = []
    path = tmp_path / ".lock"
    lock = runlock.RunLock(str(tmp_path))
    lock.acquire(warnings.append)
    try:
        # 1. the lock renamed away for half a second (NFS's silly rename, an admin) and back
        os.rename(path, tmp_path / "away")
        time.sleep(0.5)
        os.rename(tmp_path / "away", path)
        assert any("heartbeats in a row failed" in w and "still trying" in w for w in warnings), warnings
        # 2. touches failing (a stale NFS handle)
        real_utime, failures = os.utime, {"left": 4}

        def flaky_utime(p, *args, **kwargs):
            if failures["left"]:
                failures["left"] -= 1
                raise OSError(116, "Stale file handle")
            return real_utime(p, *args, **kwargs)
        monkeypatch.setattr(runlock.os, "utime", flaky_utime)
        deadline = time.time() + 5
        while failures["left"] and time.time() < deadline:
            time.sleep(0.05)
        before = os.stat(path).st_mtime_ns
        time.sleep(0.4)
        assert os.stat(path).st_mtime_ns > before and lock.lost is None        # beating again
        atomic.write_json(str(tmp_path / "stage" / "done.json"), {"ok": 1})  # and writing
        # 3. a real theft: another job's lock, whole, with its own token
        _holder(path, host="thief-host", pid=99, token="t-thief")
        deadline = time.time() + 5
        while lock.lost is None and time.time() < deadline:
            time.sleep(0.05)
        assert any("was taken over by host thief-host pid 99" in w for w in warnings), warnings
        with pytest.raises(runlock.RunLocked, match="taken over by host thief-host pid 99.*without writing more"):
            atomic.write_json(str(tmp_path / "stage" / "done.json"), {"ok": 2})
        assert json.loads((tmp_path / "stage" / "done.json").read_text()) == {"ok": 1}
        assert sorted(p.name for p in (tmp_path / "stage").iterdir()) == ["done.json"]   # no temporary left
        atomic.write_json(str(tmp_path.parent / f"{tmp_path.name}-elsewhere.json"), {})  # outside: not its business
    finally:
        lock.release()
    assert json.loads(path.read_text())["token"] == "t-thief"  # not ours to remove


def test_the_lock_is_released_when_recording_changed_settings_fails(tmp_path):
    """A full disk (here: config_changes.json cannot be written) while a resume records its
    changed settings: one OSError, and the run lock is not left behind."""
    from dcsp_dist import config, distributed
    from dcsp_dist.training.world import FixedWorld
    ctx = distributed.init()
    cfg = config.make_config("tiny_test")
    (tmp_path / "attention").mkdir()
    (tmp_path / "attention" / "config.json").write_text(cfg.replace(attention_steps=99).to_json())
    (tmp_path / "config_changes.json").mkdir()                 # writing it fails with an OSError
    with pytest.raises(OSError, match="config_changes.json"):
        FixedWorld(ctx, stall_timeout=cfg.run.stall_timeout).hold_run(str(tmp_path), cfg.flat(), allow_changed=True)
    assert not (tmp_path / ".lock").exists()
