"""The run lock's edges, on real files: a requeued SLURM job takes over its own lock from
another host, a different job is refused, a takeover never steals a live lock that replaced
the stale one, and the holder keeps beating through transient errors and notices a theft."""
import json
import os
import time

import pytest

from dcsp_dist import runlock


def _holder(path, **fields):
    base = {"host": "node-elsewhere", "pid": 4242, "started": "2026-12-03 10:00:00", "token": "t-old"}
    path.write_text(json.dumps({**base, **fields}))


def test_a_requeued_slurm_job_resumes_past_its_own_lock_from_another_host(tmp_path, monkeypatch):
    _holder(tmp_path / ".lock", slurm_job_id="77", slurm_restart=0)
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    warnings = []
    lock = runlock.RunLock(str(tmp_path))
    lock.acquire(warnings.append)
    try:
        held = json.loads((tmp_path / ".lock").read_text())
        assert held["slurm_job_id"] == "77" and held["slurm_restart"] == 1 and held["token"] == lock.token
        assert len(warnings) == 1 and "left by SLURM job 77 before its requeue 1" in warnings[0]
    finally:
        lock.release()
    assert not (tmp_path / ".lock").exists()


@pytest.mark.parametrize("job,restart", [("78", "1"), ("77", "0")])
def test_another_job_or_the_same_run_of_it_is_refused(tmp_path, monkeypatch, job, restart):
    _holder(tmp_path / ".lock", slurm_job_id="77", slurm_restart=0)
    monkeypatch.setenv("SLURM_JOB_ID", job)
    monkeypatch.setenv("SLURM_RESTART_COUNT", restart)
    with pytest.raises(runlock.RunLocked, match="in use by host node-elsewhere pid 4242 .*SLURM job 77"):
        runlock.RunLock(str(tmp_path)).acquire()
    assert json.loads((tmp_path / ".lock").read_text())["token"] == "t-old"     # untouched


def test_a_takeover_puts_back_a_live_lock_that_replaced_the_stale_one(tmp_path, monkeypatch):
    """Between the look (stale: no heartbeat for long) and the rename, another job took the
    lock over and wrote its own: the rename moves the live one, which goes back."""
    path = tmp_path / ".lock"
    _holder(path, token="t-stale")
    old = time.time() - 2 * runlock.LOCK_STALE_SECONDS
    os.utime(path, (old, old))
    lock = runlock.RunLock(str(tmp_path))
    real_holder = lock._holder

    def holder_then_replaced():
        seen = real_holder()                     # judged stale ...
        _holder(path, host="winner", token="t-live")   # ... then another job wins the lock
        return seen
    monkeypatch.setattr(lock, "_holder", holder_then_replaced)
    lock._take_over_if_stale(print)
    assert json.loads(path.read_text())["token"] == "t-live"
    assert [p.name for p in tmp_path.iterdir()] == [".lock"]


def test_the_heartbeat_survives_transient_errors_and_notices_a_theft(tmp_path, monkeypatch):
    monkeypatch.setattr(runlock, "LOCK_HEARTBEAT_SECONDS", 0.05)
    monkeypatch.setattr(runlock, "HEARTBEAT_RETRIES", 3)
    warnings = []
    lock = runlock.RunLock(str(tmp_path))
    lock.acquire(warnings.append)
    real_utime, failures = os.utime, {"left": 4}

    def flaky_utime(path, *args, **kwargs):
        if failures["left"]:
            failures["left"] -= 1
            raise OSError(116, "Stale file handle")
        return real_utime(path, *args, **kwargs)
    monkeypatch.setattr(runlock.os, "utime", flaky_utime)
    deadline = time.time() + 5
    while failures["left"] and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    assert any("failed 3 times" in w and "still trying" in w for w in warnings), warnings
    before = os.path.getmtime(tmp_path / ".lock")
    time.sleep(0.3)
    assert os.path.getmtime(tmp_path / ".lock") > before                      # beating again
    _holder(tmp_path / ".lock", token="t-thief")
    deadline = time.time() + 5
    while lock.lost is None and time.time() < deadline:
        time.sleep(0.05)
    assert lock.lost and any("taken from this job" in w for w in warnings)
    lock.release()
    assert json.loads((tmp_path / ".lock").read_text())["token"] == "t-thief"  # not ours to remove


def test_the_lock_is_released_when_recording_changed_settings_fails(tmp_path):
    """A full disk (here: config_changes.json cannot be written) while a resume records its
    changed settings: one OSError, and the run lock is not left behind."""
    from dcsp_dist import config, distributed
    from dcsp_dist.world import FixedWorld
    ctx = distributed.init()
    cfg = config.make_config("tiny_test")
    (tmp_path / "attention").mkdir()
    (tmp_path / "attention" / "config.json").write_text(cfg.replace(attention_steps=99).to_json())
    (tmp_path / "config_changes.json").mkdir()                 # writing it fails with an OSError
    with pytest.raises(OSError, match="config_changes.json"):
        FixedWorld(ctx).hold_run(str(tmp_path), cfg.flat(), allow_changed=True)
    assert not (tmp_path / ".lock").exists()
