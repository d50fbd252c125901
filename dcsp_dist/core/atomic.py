"""Files that are whole or absent: atomic and durable writes (temporary name, fsync,
rename), JSON state files read with a clear error, and output directories staged beside
their final place and renamed into it when complete (``evaluate``, ``predict``).

Standard library only: the data tools import it too.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
import uuid

from dcsp_dist.core.errors import UserError, first_line


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
        raise UserError(f"{what} {path} is unreadable ({first_line(exc, 120)}); "
                         f"delete it to redo what it records") from None


def file_digest(path: str, algorithm: str = "sha256") -> str:
    """The hex digest of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def temp_name(path: str) -> str:
    """A temporary name beside ``path`` unique across hosts and processes (PIDs repeat
    across hosts and pods on a shared filesystem)."""
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


_WRITE_GUARDS: list = []


def guard_writes(guard) -> None:
    """Call ``guard(path)`` before every file this process publishes (and before every
    checkpoint, ``check_writes``): it raises to stop a write, e.g. ``runlock`` when this job
    lost its run directory to another. ``unguard_writes`` removes it."""
    _WRITE_GUARDS.append(guard)


def unguard_writes(guard) -> None:
    if guard in _WRITE_GUARDS:
        _WRITE_GUARDS.remove(guard)


def check_writes(path: str) -> None:
    """Raise if a write guard refuses ``path``."""
    for guard in list(_WRITE_GUARDS):
        guard(path)


def publish(tmp: str, path: str) -> None:
    """fsync ``tmp``, rename it to ``path``, fsync the directory: after a crash, ``path`` is
    either the old file or the whole new one. A write guard's refusal removes ``tmp``."""
    try:
        check_writes(path)
    except BaseException:
        os.remove(tmp)
        raise
    fsync_file(tmp)
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path))


def check_writable_dir(path: str, flag: str) -> None:
    """Raise ValueError (one line naming ``flag``) unless ``path`` is, or can become, a
    writable directory. Creates nothing: a probe file in the nearest existing directory is
    written and removed (as root, permission bits say nothing about read-only mounts or
    immutable directories; a real write does)."""
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{flag} {path} exists and is not a directory")
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UserError(f"{flag} {path}: {existing} is not a directory")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".dcsp-write-probe-"):
            pass
    except OSError as exc:
        raise UserError(f"{flag} {path}: cannot write in {existing} ({exc.strerror})") from None


# ----------------------------------------------------------------------------- output directories
def check_replaceable(out: str, marker: str, flag: str = "--out") -> None:
    """``out`` will be replaced as a whole when the job completes: refuse (one line) a
    non-empty directory that this kind of job did not write (it has no ``marker``)."""
    if os.path.isdir(out) and os.listdir(out) and not os.path.exists(os.path.join(out, marker)):
        raise UserError(f"{flag} {out} holds files this job did not write (no {marker}); it would be replaced "
                         f"as a whole: give a new or empty directory")


def staging_dir(out: str) -> str:
    """A fresh directory beside ``out`` for this job's outputs (renamed to ``out`` when complete)."""
    path = temp_name(os.path.abspath(out).rstrip(os.sep)) + ".partial"
    os.makedirs(path)
    return path


def publish_dir(staging: str, out: str) -> None:
    """Replace ``out`` by the completed ``staging`` directory: the old one is renamed aside,
    the new one into place, then the old one is removed. Nothing of an earlier run stays."""
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
    if staging and os.path.isdir(staging):
        shutil.rmtree(staging, ignore_errors=True)
