"""The run lock: one job per run directory (``<workdir>/.lock``)."""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

from dcsp_dist.core import atomic
from dcsp_dist.core.errors import UserError

LOCK_NAME = ".lock"
LOCK_HEARTBEAT_SECONDS = 30     # the holder touches the lock this often (recorded in it as "beat")
SILENT_BEATS = 2                # a lock of another host unchanged for this many of its beats is stale
RETRY_SECONDS = 5               # after a failed beat (a transient NFS error) the holder retries this soon
HEARTBEAT_RETRIES = 5           # failed beats in a row before the holder says so


class RunLocked(UserError):
    """Another live job holds the run directory, or took it from this one."""


def scheduler_job() -> dict:
    """This process's scheduler job, as the lock records it: SLURM's job id and restart count."""
    env = os.environ
    job = {}
    if env.get("SLURM_JOB_ID"):
        job["slurm_job_id"] = env["SLURM_JOB_ID"]
        job["slurm_restart"] = int(env.get("SLURM_RESTART_COUNT", 0) or 0)
    return job


def pid_namespace() -> str | None:
    """This process's PID namespace (a pid names a process only within one)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def describe(holder: dict) -> str:
    if not holder:
        return "a job that is starting"
    return (f"host {holder.get('host')} pid {holder.get('pid')} since {holder.get('started')}"
            + (f" (SLURM job {holder['slurm_job_id']})" if holder.get("slurm_job_id") else ""))


class RunLock:
    """``<workdir>/.lock``: one job per run directory.

    Rank 0 creates it exclusively (O_CREAT|O_EXCL) with its holder (host, PID namespace, pid,
    start time, a token, its heartbeat interval, the SLURM job) and touches it every
    ``LOCK_HEARTBEAT_SECONDS`` from a daemon thread. Each beat reads the lock first: a read
    that fails (NFS) is a failed beat, retried after ``RETRY_SECONDS``; a lock that reads
    whole and carries another token was taken over, and this job stops before its next write
    to the run directory (``check``, and a write guard on every file it publishes).

    A second job judges a lock it finds without comparing clocks: a holder on this host (same
    PID namespace) is live while its pid is, gone when it is not; any other holder is live
    unless the lock stays unchanged for ``SILENT_BEATS`` of its heartbeats, watched on this
    process's monotonic clock (a host whose clock runs ahead, or an NFS server's mtimes, do not
    matter). A live lock is refused with one line naming the holder; a stale one is taken over
    with a warning (a SLURM requeue of the same job finds its earlier run's lock this way). A
    takeover renames the lock aside, checks that what it moved is the lock it judged (its
    token), and puts it back otherwise, so of two jobs taking it over at once only one wins.
    """

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK_NAME)
        self.workdir = os.path.abspath(workdir)
        self.token = None
        self._stop = None
        self.lost: dict | None = None       # the holder that took the lock from this job

    def acquire(self, warn=print) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        holder = {"host": socket.gethostname(), "pidns": pid_namespace(), "pid": os.getpid(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S"), "token": uuid.uuid4().hex,
                  "beat": LOCK_HEARTBEAT_SECONDS, **scheduler_job()}
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
            atomic.guard_writes(self._guard)
            threading.Thread(target=self._heartbeat, args=(warn,), daemon=True, name="dcsp-run-lock").start()
            return
        raise RunLocked(f"--workdir {os.path.dirname(self.path)}: could not take {self.path} (another job keeps "
                        f"taking it)")

    # -- taking a lock over ------------------------------------------------------------
    def _take_over_if_stale(self, warn) -> None:
        holder, stamp = self._look()
        if stamp is None:
            return      # gone meanwhile: try again
        why = self._judge(holder, stamp, warn)
        aside = f"{self.path}.stale-{socket.gethostname()}-{os.getpid()}"
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

    def _look(self) -> tuple[dict, tuple | None]:
        """The lock's holder ({} when empty or unreadable) and its stamp (None when gone)."""
        return _read(self.path), _stamp(self.path)

    def _judge(self, holder: dict, stamp: tuple, warn) -> str:
        """Why the lock is stale; RunLocked (one line naming the holder) when it is live."""
        busy = (f"--workdir {os.path.dirname(self.path)} is in use by {describe(holder)} (lock {self.path}); "
                f"wait for that job or stop it")
        if _same_process_space(holder):
            try:
                os.kill(holder["pid"], 0)
            except ProcessLookupError:
                return f"process {holder['pid']} is gone"
            except PermissionError:
                pass
            raise RunLocked(busy + " (its process is alive on this host)")
        beat = holder.get("beat", LOCK_HEARTBEAT_SECONDS)
        beat = beat if isinstance(beat, (int, float)) and 0 < beat <= 3600 else LOCK_HEARTBEAT_SECONDS
        window = SILENT_BEATS * beat
        warn(f"{self.path} is held by {describe(holder)} on another host; watching it for {window:.0f} s "
             f"({SILENT_BEATS} of its heartbeats) to see whether that job is alive")
        deadline = time.monotonic() + window
        while time.monotonic() < deadline:
            time.sleep(min(1.0, beat / 4))
            if _stamp(self.path) != stamp:
                raise RunLocked(busy + f" (its lock changed while watched: the job is alive; a lock unchanged for "
                                       f"{SILENT_BEATS} heartbeats is taken over)")
        mine = scheduler_job()
        if holder.get("slurm_job_id") and holder["slurm_job_id"] == mine.get("slurm_job_id") \
                and holder.get("slurm_restart", 0) < mine.get("slurm_restart", 0):
            return f"left by SLURM job {holder['slurm_job_id']} before its requeue {mine['slurm_restart']}, " \
                   f"unchanged for {window:.0f} s"
        if not holder:
            return f"an empty lock, unchanged for {window:.0f} s"
        return f"no heartbeat for {window:.0f} s"

    # -- holding it ---------------------------------------------------------------------
    def _heartbeat(self, warn) -> None:
        failures = 0
        while not self._stop.wait(LOCK_HEARTBEAT_SECONDS if not failures else min(RETRY_SECONDS,
                                                                                 LOCK_HEARTBEAT_SECONDS)):
            try:
                holder = _read_whole(self.path)
                if holder.get("token") != self.token:
                    self.lost = holder
                    warn(f"warning: the run lock {self.path} was taken over by {describe(holder)}; this job stops "
                         f"before its next write to {os.path.dirname(self.path)}")
                    return
                os.utime(self.path)
                failures = 0
            except (OSError, ValueError) as exc:   # unreadable or gone for now (NFS): a failed beat
                failures += 1
                if failures == HEARTBEAT_RETRIES:
                    why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                    warn(f"warning: the run lock {self.path}: {failures} heartbeats in a row failed ({why}); still "
                         f"trying (another job may take the lock after {SILENT_BEATS * LOCK_HEARTBEAT_SECONDS} s "
                         f"without one)")

    def check(self) -> None:
        """Raise RunLocked, naming the new holder, if another job took the lock from this one."""
        if self.lost is not None:
            raise RunLocked(f"--workdir {os.path.dirname(self.path)}: the run lock was taken over by "
                            f"{describe(self.lost)}; this job stopped without writing more (its last checkpoint "
                            f"stays for the job that holds the lock now)")

    def _guard(self, path: str) -> None:
        if os.path.abspath(path).startswith(self.workdir + os.sep):
            self.check()

    def release(self) -> None:
        """Remove the lock if it is still ours."""
        if self.token is None:
            return
        self._stop.set()
        atomic.unguard_writes(self._guard)
        if _read(self.path).get("token") == self.token:
            os.remove(self.path)
        self.token = None


def _same_process_space(holder: dict) -> bool:
    """Whether the holder's pid can be asked about from here: same host and PID namespace (a
    lock written without a namespace is taken as this one's)."""
    return (holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int)
            and holder.get("pidns", pid_namespace()) == pid_namespace())


def _stamp(path: str) -> tuple | None:
    """What changes when the lock is touched or replaced; None when it is gone (or cannot be
    looked at now)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def _read_whole(path: str) -> dict:
    """A lock's holder; OSError when it cannot be read now, ValueError when it is not whole."""
    with open(path) as fh:
        text = fh.read()
    holder = json.loads(text)
    if not isinstance(holder, dict):
        raise ValueError("not a lock")
    return holder


def _read(path: str) -> dict:
    """A lock's holder, {} when it is gone, empty or unreadable."""
    try:
        return _read_whole(path)
    except (OSError, ValueError):
        return {}
