"""The run lock: one job per run directory (``<workdir>/.lock``)."""
from __future__ import annotations

import json
import os

LOCK_NAME = ".lock"
LOCK_HEARTBEAT_SECONDS = 30     # the holder touches the lock this often
LOCK_STALE_SECONDS = 300        # a lock untouched this long (holder stopped or gone) is taken over
HEARTBEAT_RETRIES = 5           # failed touches in a row (a transient NFS error) before the holder says so


class RunLocked(ValueError):
    """Another live job holds the run directory."""


def scheduler_job() -> dict:
    """This process's scheduler job, as the lock records it: SLURM's job id and restart count,
    or the Kubernetes job's uid (``DCSP_K8S_JOB_UID``, set from the pod's metadata)."""
    env = os.environ
    job = {}
    if env.get("SLURM_JOB_ID"):
        job["slurm_job_id"] = env["SLURM_JOB_ID"]
        job["slurm_restart"] = int(env.get("SLURM_RESTART_COUNT", 0) or 0)
    if env.get("DCSP_K8S_JOB_UID"):
        job["k8s_job_uid"] = env["DCSP_K8S_JOB_UID"]
    return job


class RunLock:
    """``<workdir>/.lock``: one job per run directory.

    Rank 0 creates it exclusively (O_CREAT|O_EXCL) with its holder (host, pid, start time,
    a token, the scheduler's job) and touches it every ``LOCK_HEARTBEAT_SECONDS`` from a
    daemon thread, checking on each beat that the lock still carries its token. A second job
    refuses with one line naming the holder. A stale lock is taken over with a warning: its
    process is gone on this host, it has had no heartbeat for ``LOCK_STALE_SECONDS``, or it
    was left by an earlier run of this same scheduler job (SLURM requeued it, maybe onto
    another node: same job id, an earlier restart count). A takeover renames the lock aside,
    checks that what it moved is the lock it judged (its token), and puts it back otherwise,
    so of two jobs taking it over at once only one succeeds.
    """

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK_NAME)
        self.token = None
        self._stop = None
        self.lost = None           # set by the heartbeat when the lock no longer carries our token

    def acquire(self, warn=print) -> None:
        import socket
        import threading
        import time
        import uuid
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        holder = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "token": uuid.uuid4().hex, **scheduler_job()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale(warn)
                continue
            try:
                with os.fdopen(fd, "w") as fh:
                    json.dump(holder, fh)
                    fh.flush()
                    os.fsync(fh.fileno())
            except OSError as exc:   # e.g. a full disk: no empty lock left behind
                os.remove(self.path)
                raise OSError(exc.errno, f"writing the run lock {self.path} failed: {exc.strerror}") from None
            self.token = holder["token"]
            self._stop = threading.Event()
            threading.Thread(target=self._heartbeat, args=(warn,), daemon=True, name="dcsp-run-lock").start()
            return
        raise RunLocked(f"--workdir {os.path.dirname(self.path)}: could not take {self.path} (another job keeps "
                        f"taking it)")

    def _take_over_if_stale(self, warn) -> None:
        holder, age = self._holder()
        why = _stale_because(holder, age)
        if why is None:
            who = (f"host {holder.get('host')} pid {holder.get('pid')} since {holder.get('started')}"
                   + (f" (SLURM job {holder['slurm_job_id']})" if holder.get("slurm_job_id") else "")
                   if holder else "a job that is starting")
            raise RunLocked(f"--workdir {os.path.dirname(self.path)} is in use by {who} (lock {self.path}, "
                            f"touched {age:.0f} s ago); wait for that job or stop it (a lock untouched for "
                            f"{LOCK_STALE_SECONDS} s is taken over)")
        aside = f"{self.path}.stale-{os.getpid()}"
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return      # another job took it over first; try again
        moved = _read(aside)
        if moved.get("token") != holder.get("token"):
            # Between our look and our rename another job took the lock over and wrote its own:
            # that one is live. Put it back (unless yet another lock appeared meanwhile).
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
            os.remove(aside)
            return
        os.remove(aside)
        warn(f"warning: took over the stale lock of host {holder.get('host')} pid {holder.get('pid')} "
             f"({why}): {self.path}")

    def _holder(self) -> tuple[dict, float]:
        import time
        try:
            age = time.time() - os.path.getmtime(self.path)
        except FileNotFoundError:
            return {}, 0.0
        return _read(self.path), age

    def _heartbeat(self, warn) -> None:
        failures = 0
        while not self._stop.wait(LOCK_HEARTBEAT_SECONDS):
            try:
                if _read(self.path).get("token") != self.token:
                    self.lost = f"{self.path} no longer carries this job's token (another job took it over)"
                    warn(f"warning: the run lock was taken from this job: {self.lost}; two jobs may now write "
                         f"{os.path.dirname(self.path)}")
                    return
                os.utime(self.path)
                failures = 0
            except OSError as exc:     # a transient error (NFS): keep trying, say so if it lasts
                failures += 1
                if failures == HEARTBEAT_RETRIES:
                    warn(f"warning: touching the run lock {self.path} failed {failures} times ({exc.strerror}); "
                         f"still trying (another job may take it over after {LOCK_STALE_SECONDS} s)")

    def release(self) -> None:
        """Remove the lock if it is still ours."""
        if self.token is None:
            return
        self._stop.set()
        holder, _ = self._holder()
        if holder.get("token") == self.token:
            os.remove(self.path)
        self.token = None


def _read(path: str) -> dict:
    """A lock's holder, {} when it is gone, empty or unreadable."""
    try:
        with open(path) as fh:
            return json.loads(fh.read() or "{}")
    except (OSError, ValueError):
        return {}


def _stale_because(holder: dict, age: float) -> str | None:
    """Why a lock with ``holder`` touched ``age`` seconds ago is stale, or None if it is live."""
    import socket
    if age > LOCK_STALE_SECONDS:
        return f"no heartbeat for {age:.0f} s"
    if not holder and age > LOCK_HEARTBEAT_SECONDS:
        return f"an empty lock, {age:.0f} s old"
    mine = scheduler_job()
    if holder.get("slurm_job_id") and holder["slurm_job_id"] == mine.get("slurm_job_id") \
            and holder.get("slurm_restart", 0) < mine.get("slurm_restart", 0):
        return f"left by SLURM job {holder['slurm_job_id']} before its requeue {mine['slurm_restart']}"
    if holder.get("k8s_job_uid") and holder["k8s_job_uid"] == mine.get("k8s_job_uid") \
            and holder.get("host") != socket.gethostname():
        return f"left by an earlier pod of Kubernetes job {holder['k8s_job_uid']}"
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return f"process {holder['pid']} is gone"
        except PermissionError:
            return None
    return None
