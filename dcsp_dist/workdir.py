"""The layout of a run directory: one sub-directory per stage.

    <workdir>/attention/            ckpt/  tb/  config.json  done.json
    <workdir>/cues/                 train-0000i-of-0000N.cues.tfrecord  cues.json  done.json
    <workdir>/segmentation/         ckpt/  tb/  config.json  done.json
    <workdir>/adapt/                adapted cue shards  cues.json  done.json
    <workdir>/segmentation_adapted/ ckpt/  tb/  config.json  done.json
    <workdir>/eval/                 results.json  confusion.png  tb/
"""
from __future__ import annotations

import json
import os

from dcsp_dist.config import flatten
from dcsp_dist.stages import SCHEDULE, TRAINING_STAGES  # noqa: F401  (the stage table's names)


def stage_dir(workdir: str, stage: str) -> str:
    return os.path.join(workdir, stage)


def done_path(workdir: str, stage: str) -> str:
    return os.path.join(stage_dir(workdir, stage), "done.json")


def is_done(workdir: str, stage: str) -> bool:
    return os.path.isfile(done_path(workdir, stage))


def read_done(workdir: str, stage: str) -> dict:
    return read_json(done_path(workdir, stage), "done-marker")


def write_json(path: str, obj) -> None:
    """Write JSON atomically and durably (temporary name, fsync, rename)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = temp_name(path)
    try:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=2, default=float)
        publish(tmp, path)
    except OSError as exc:   # e.g. a full disk: the previous file stays, no half-written one
        if os.path.exists(tmp):
            os.remove(tmp)
        raise OSError(exc.errno, f"writing {path} failed: {exc.strerror}") from None


def check_writable_dir(path: str, flag: str) -> None:
    """Raise ValueError (one line naming ``flag``) unless ``path`` is, or can become, a
    writable directory. Creates nothing: a probe file in the nearest existing directory is
    written and removed (as root, permission bits say nothing about read-only mounts or
    immutable directories; a real write does)."""
    import tempfile
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{flag} {path} exists and is not a directory")
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"{flag} {path}: {existing} is not a directory")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".dcsp-write-probe-"):
            pass
    except OSError as exc:
        raise ValueError(f"{flag} {path}: cannot write in {existing} ({exc.strerror})") from None


def final_checkpoint(path: str) -> tuple[str, str]:
    """Resolve ``--checkpoint`` (a run directory, a stage directory or a checkpoint prefix)
    to (checkpoint prefix, config.json path). Raises FileNotFoundError with the reason."""
    import tensorflow as tf

    if os.path.isdir(path):
        candidates = [path] + [stage_dir(path, s) for s in reversed(TRAINING_STAGES)]
        for directory in candidates:
            done = os.path.join(directory, "done.json")
            if os.path.isfile(done):
                info = read_json(done, "done-marker")
                if "checkpoint" in info:  # stored relative to the stage directory
                    return os.path.join(directory, info["checkpoint"]), os.path.join(directory, "config.json")
        for directory in candidates:
            latest = tf.train.latest_checkpoint(os.path.join(directory, "ckpt"))
            if latest:
                return latest, os.path.join(directory, "config.json")
        raise FileNotFoundError(f"--checkpoint {path}: no finished training stage or checkpoint in it")
    if os.path.isfile(path + ".index"):
        config = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(path))), "config.json")
        return path, config
    raise FileNotFoundError(f"--checkpoint {path}: no such run directory or checkpoint")


def stage_checkpoint(workdir: str, stage: str) -> str:
    """The checkpoint prefix a finished training stage's done.json names."""
    return os.path.join(stage_dir(workdir, stage), read_done(workdir, stage)["checkpoint"])


def read_json(path: str, what: str = "state file") -> dict:
    """A JSON state file, or ValueError naming it when it is empty or unparsable (e.g. after
    a node crash between a write and its flush)."""
    try:
        with open(path) as fh:
            text = fh.read()
        if not text.strip():
            raise ValueError("empty")
        return json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{what} {path} is unreadable ({str(exc).splitlines()[0][:120]}); "
                         f"delete it to redo what it records") from None


def temp_name(path: str) -> str:
    """A temporary name beside ``path`` unique across hosts and processes (PIDs repeat
    across hosts and pods on a shared filesystem)."""
    import socket
    import uuid
    return f"{path}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def fsync_file(path: str) -> None:
    """Flush ``path``'s data to disk (before it is renamed into place)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory: str) -> None:
    """Make a rename in ``directory`` durable."""
    try:
        fd = os.open(directory or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def publish(tmp: str, path: str) -> None:
    """fsync ``tmp``, rename it to ``path``, fsync the directory: after a crash, ``path`` is
    either the old file or the whole new one."""
    fsync_file(tmp)
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path))


# ----------------------------------------------------------------------------- one job per run
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


# ----------------------------------------------------------------------------- settings on resume
# Settings that change only what is logged or kept, never what is computed: a resume may change them.
BOOKKEEPING = ("log_every", "image_summary_every", "checkpoint_every", "keep_checkpoints", "elastic_commit_every",
               "stall_timeout", "preempt_signals", "require_gpu")


def config_differences(workdir: str, settings: dict) -> list[str]:
    """``key: saved -> now`` for every setting that differs from the run's saved config.json
    files (one per training stage started), bookkeeping settings aside."""
    diffs = []
    for stage in TRAINING_STAGES:
        path = os.path.join(stage_dir(workdir, stage), "config.json")
        if not os.path.isfile(path) or os.path.islink(stage_dir(workdir, stage)):
            continue
        saved = flatten(read_json(path, "saved config"))   # in sections, or flat as older runs saved it
        for key in sorted(set(saved) & set(settings)):   # a setting added since keeps its default
            if key in BOOKKEEPING or saved[key] == settings[key]:
                continue
            line = f"{key}: {saved[key]!r} -> {settings[key]!r}"
            if line not in diffs:
                diffs.append(line)
    return diffs


def check_config_unchanged(workdir: str, settings: dict, allow: bool, warn=print) -> None:
    """Refuse (ValueError, one line listing the differences) a resume whose settings differ
    from the run's; with ``allow``, record the differences in ``<workdir>/config_changes.json``."""
    import time
    diffs = config_differences(workdir, settings)
    if not diffs:
        return
    if not allow:
        raise ValueError(f"--workdir {workdir} was run with other settings ({'; '.join(diffs)}); relaunch with "
                         f"the same ones, or pass --allow-changed-config to go on with these (recorded in "
                         f"{os.path.join(workdir, 'config_changes.json')})")
    log_path = os.path.join(workdir, "config_changes.json")
    history = read_json(log_path, "config change log") if os.path.isfile(log_path) else []
    history.append({"time": time.strftime("%Y-%m-%d %H:%M:%S"), "changes": diffs})
    write_json(log_path, history)
    warn(f"warning: settings differ from the run's ({'; '.join(diffs)}); recorded in {log_path}")


# ----------------------------------------------------------------------------- output directories
def check_replaceable(out: str, marker: str, flag: str = "--out") -> None:
    """``out`` will be replaced as a whole when the job completes: refuse (one line) a
    non-empty directory that this kind of job did not write (it has no ``marker``)."""
    if os.path.isdir(out) and os.listdir(out) and not os.path.exists(os.path.join(out, marker)):
        raise ValueError(f"{flag} {out} holds files this job did not write (no {marker}); it would be replaced "
                         f"as a whole: give a new or empty directory")


def staging_dir(out: str) -> str:
    """A fresh directory beside ``out`` for this job's outputs (renamed to ``out`` when complete)."""
    path = temp_name(os.path.abspath(out).rstrip(os.sep)) + ".partial"
    os.makedirs(path)
    return path


def publish_dir(staging: str, out: str) -> None:
    """Replace ``out`` by the completed ``staging`` directory: the old one is renamed aside,
    the new one into place, then the old one is removed. Nothing of an earlier run stays."""
    import shutil
    out = os.path.abspath(out).rstrip(os.sep)
    fsync_dir(staging)
    old = None
    if os.path.exists(out):
        old = temp_name(out) + ".old"
        os.replace(out, old)
    os.replace(staging, out)
    fsync_dir(os.path.dirname(out))
    if old:
        shutil.rmtree(old, ignore_errors=True)


def discard_dir(staging: str | None) -> None:
    import shutil
    if staging and os.path.isdir(staging):
        shutil.rmtree(staging, ignore_errors=True)
