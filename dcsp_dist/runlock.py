"""The run lock: one job per run directory (``<workdir>/.lock``)."""
from __future__ import annotations

import json
import os

LOCK_NAME = ".lock"
LOCK_HEARTBEAT_SECONDS = 30     # the holder touches the lock this often
LOCK_STALE_SECONDS = 300        # a lock untouched this long (holder stopped or gone) is taken over


class RunLocked(ValueError):
    """Another live job holds the run directory."""


class RunLock:
    """``<workdir>/.lock``: one job per run directory.

    Rank 0 creates it exclusively (O_CREAT|O_EXCL) with its holder (host, pid, start time,
    a token) and touches it every ``LOCK_HEARTBEAT_SECONDS`` from a daemon thread. A second
    job refuses with one line naming the holder. A stale lock (its process dead on this
    host, or no heartbeat for ``LOCK_STALE_SECONDS``) is taken over with a warning: it is
    renamed away first, so of two jobs taking it over at once only one succeeds.
    """

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK_NAME)
        self.token = None
        self._stop = None

    def acquire(self, warn=print) -> None:
        import socket
        import threading
        import time
        import uuid
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        holder = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "token": uuid.uuid4().hex}
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
            threading.Thread(target=self._heartbeat, daemon=True, name="dcsp-run-lock").start()
            return
        raise RunLocked(f"--workdir {os.path.dirname(self.path)}: could not take {self.path} (another job keeps "
                        f"taking it)")

    def _take_over_if_stale(self, warn) -> None:
        holder, age = self._holder()
        why = _stale_because(holder, age)
        if why is None:
            who = (f"host {holder.get('host')} pid {holder.get('pid')} since {holder.get('started')}"
                   if holder else "a job that is starting")
            raise RunLocked(f"--workdir {os.path.dirname(self.path)} is in use by {who} (lock {self.path}, "
                            f"touched {age:.0f} s ago); wait for that job or stop it (a lock untouched for "
                            f"{LOCK_STALE_SECONDS} s is taken over)")
        aside = f"{self.path}.stale-{os.getpid()}"
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return      # another job took it over first; try again
        os.remove(aside)
        warn(f"warning: took over the stale lock of host {holder.get('host')} pid {holder.get('pid')} "
             f"({why}): {self.path}")

    def _holder(self) -> tuple[dict, float]:
        import time
        try:
            age = time.time() - os.path.getmtime(self.path)
            with open(self.path) as fh:
                return json.loads(fh.read() or "{}"), age
        except FileNotFoundError:
            return {}, 0.0
        except ValueError:
            return {}, age

    def _heartbeat(self) -> None:
        while not self._stop.wait(LOCK_HEARTBEAT_SECONDS):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        """Remove the lock if it is still ours."""
        if self.token is None:
            return
        self._stop.set()
        holder, _ = self._holder()
        if holder.get("token") == self.token:
            os.remove(self.path)
        self.token = None


def _stale_because(holder: dict, age: float) -> str | None:
    """Why a lock with ``holder`` touched ``age`` seconds ago is stale, or None if it is live."""
    import socket
    if age > LOCK_STALE_SECONDS:
        return f"no heartbeat for {age:.0f} s"
    if not holder and age > LOCK_HEARTBEAT_SECONDS:
        return f"an empty lock, {age:.0f} s old"
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return f"process {holder['pid']} is gone"
        except PermissionError:
            return None
    return None
