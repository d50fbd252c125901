"""Checkpoints that survive damage: found from the files themselves, read back before use.

tf.train.CheckpointManager trusts its index file (``ckpt/checkpoint``). When the index is
lost, it sees no checkpoint, and a relaunch would start from scratch and overwrite
``ckpt-N``; when the newest ``ckpt-N.data-*`` is truncated, restoring it ends in a raw
``IndexError: Read less bytes than requested``. Here the candidates come from the
``ckpt-N.index`` files on disk, newest first, and each is read in full before it is trusted.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import time

from dcsp_dist.core import atomic, preemption
from dcsp_dist.core.errors import UserError, first_line
from dcsp_dist.rundir import layout

_NAME = re.compile(r"^ckpt-(\d+)\.index$")


class CheckpointError(UserError):
    """An unreadable or missing checkpoint; the message is one line naming it."""


def on_disk(ckpt_dir: str) -> list[str]:
    """Checkpoint prefixes in ``ckpt_dir`` from the files themselves, newest step first."""
    if not os.path.isdir(ckpt_dir):
        return []
    found = [(int(m.group(1)), os.path.join(ckpt_dir, m.group(0)[: -len(".index")]))
             for m in map(_NAME.match, os.listdir(ckpt_dir)) if m]
    return [prefix for _, prefix in sorted(found, reverse=True)]


def _fingerprint(prefix: str) -> tuple:
    """(name, size, mtime) of a checkpoint's files: changes whenever they are rewritten."""
    directory, base = os.path.split(prefix)
    try:
        names = sorted(n for n in os.listdir(directory or ".") if n.startswith(base + "."))
        return tuple((n, *_stat(os.path.join(directory, n))) for n in names)
    except OSError:
        return ()


def _stat(path: str) -> tuple:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


# Checkpoints this process has read in full, by their files' fingerprint: a stage start
# checks the previous stage's checkpoint (done.json), then restores it; the second look
# must not read hundreds of MB again.
_VERIFIED: dict[str, tuple] = {}


def _remember(prefix: str) -> None:
    _VERIFIED[prefix] = _fingerprint(prefix)


def problem(prefix: str) -> str | None:
    """None if every tensor of the checkpoint reads back, else why not (one line)."""
    import tensorflow as tf
    if _VERIFIED.get(prefix) == _fingerprint(prefix) != ():
        return None
    try:
        reader = tf.train.load_checkpoint(prefix)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except (tf.errors.OpError, IndexError, ValueError, OSError) as exc:
        return first_line(exc)
    _remember(prefix)
    return None


def check(prefix: str, what: str = "--checkpoint") -> None:
    """Raise CheckpointError naming ``prefix`` when it cannot be read in full."""
    why = problem(prefix)
    if why:
        raise CheckpointError(_unreadable(prefix, what, why))


def _unreadable(prefix: str, what: str, why: str) -> str:
    return (f"{what} {prefix} is unreadable (damaged or truncated: {why}); "
            f"use an earlier checkpoint of the stage or retrain it")


def restore_model(model, prefix: str, what: str) -> None:
    """Load ``model``'s weights from ``prefix``, or raise CheckpointError naming it. The read
    is the check (one read, of the weights only: the optimizer's slots are not needed, and
    every tensor read is checksummed); a failed read may leave some weights assigned, and
    the error ends the job."""
    import tensorflow as tf
    try:
        tf.train.Checkpoint(model=model).read(prefix).expect_partial()
    except (tf.errors.OpError, IndexError, ValueError, OSError) as exc:
        raise CheckpointError(_unreadable(prefix, what, first_line(exc))) from None


def newest_readable(ckpt_dir: str, warn=print, probe=problem) -> str | None:
    """The newest checkpoint in ``ckpt_dir`` that reads back in full, or None when there are none.

    Damaged newer ones are skipped with a warning naming them. When checkpoints exist but
    none is readable, raises CheckpointError rather than let training start from scratch
    over them. The index file is rewritten to list the readable checkpoints, so
    CheckpointManager keeps and rotates them as its own. ``probe(prefix)`` reads one
    candidate in full and says why it failed, or None (default ``problem``; a resume
    passes its restore, so that the checkpoint it resumes from is read once).
    """
    candidates = on_disk(ckpt_dir)
    skipped = {}
    for prefix in candidates:
        why = probe(prefix)
        if why is None:
            if skipped:
                listed = ", ".join(f"{p} ({w})" for p, w in skipped.items())
                warn(f"warning: skipped unreadable checkpoint(s) {listed}; resuming from {prefix}")
            # Older candidates are not read here; a damaged one among them is met (and
            # skipped) only if a later resume falls back that far.
            write_index(ckpt_dir, prefix, candidates[candidates.index(prefix):])   # newest first: the skipped are newer
            return prefix
        skipped[prefix] = why
    if candidates:
        listed = "; ".join(f"{p} ({w})" for p, w in skipped.items())
        raise CheckpointError(f"{ckpt_dir}: no readable checkpoint ({listed}); refusing to start "
                              f"from scratch over them: move {ckpt_dir} away to retrain the stage")
    return None


def write_index(ckpt_dir: str, latest: str, kept: list[str]) -> None:
    """Rewrite CheckpointManager's index so that it owns ``kept`` (newest first on input).

    The manager deletes only checkpoints whose recorded timestamp is newer than the index's
    ``last_preserved_timestamp``; an index without timestamps makes every listed checkpoint
    "preserved" forever, and rotation stops after the first resume. Each checkpoint gets its
    files' time, and the preserved mark lies before all of them.
    """

    # What CheckpointManager itself calls to write its index; the public
    # tf.compat.v1.train.update_checkpoint_state wraps it with a deprecation warning that
    # would be printed at every resume (TensorFlow is pinned exactly, so the name holds).
    from tensorflow.python.checkpoint.checkpoint_management import update_checkpoint_state_internal
    oldest_first = list(reversed(kept))
    stamps = [min(os.path.getmtime(p + ".index"), time.time()) for p in oldest_first]
    update_checkpoint_state_internal(
        ckpt_dir, latest, all_model_checkpoint_paths=oldest_first, save_relative_paths=True,
        all_model_checkpoint_timestamps=stamps, last_preserved_timestamp=min(stamps, default=time.time()) - 1.0)


def save(manager, step: int) -> str:
    """manager.save, or one clear error (e.g. a full disk) that leaves the earlier
    checkpoints as they were and no partial one behind."""

    import tensorflow as tf

    atomic.check_writes(os.path.join(manager.directory, f"ckpt-{step}"))   # e.g. the run lock was lost
    try:
        with preemption.critical(f"checkpoint {step}"):   # a signal never cuts a checkpoint short
            path = manager.save(checkpoint_number=step)
    except (tf.errors.OpError, OSError) as exc:
        prefix = os.path.join(manager.directory, f"ckpt-{step}")
        for partial in glob.glob(prefix + ".*") + glob.glob(prefix + "_temp*"):
            shutil.rmtree(partial) if os.path.isdir(partial) else os.remove(partial)
        kept = ", ".join(os.path.basename(p) for p in manager.checkpoints) or "none"
        why = first_line(exc, 160)
        raise OSError(f"saving checkpoint {prefix} failed ({why}); earlier checkpoints kept: {kept}") from None
    _remember(path)   # written from the weights in memory: read back in full needs no re-check
    return path


class StageCheckpoints:
    """A training stage's checkpoints (``<stage>/ckpt``): resume-or-initialise, save,
    and the newest one, around ``tf.train.CheckpointManager``."""

    def __init__(self, model, optimizer, directory: str, keep: int, extra: dict | None = None):
        """``extra``: more variables to save by name (a checkpoint without them restores
        and leaves them as they are)."""
        self.directory = layout.checkpoint_dir(directory)
        self.checkpoint = _tf().train.Checkpoint(model=model, optimizer=optimizer, **(extra or {}))
        self.keep = keep
        self.manager = None

    def resume_or_initialise(self, reads: bool, agree, initialise, warn) -> str | None:
        """Restore the newest readable checkpoint, else ``initialise()`` (which returns a
        description); on ranks where ``reads`` is False nothing is read (their state comes
        from the broadcast that follows). ``agree(failure)`` makes a failure every rank's
        (one CheckpointError on all of them). Returns a line saying where the weights came
        from (None where nothing was read)."""
        failure, origin = None, None
        if reads:
            try:
                latest = newest_readable(self.directory, warn=warn, probe=self._restore)
                origin = f"resuming from {latest}" if latest else initialise()
            except CheckpointError as exc:
                failure = str(exc)
        failure = agree(failure)
        if failure:
            raise CheckpointError(failure)
        self.manager = _tf().train.CheckpointManager(self.checkpoint, self.directory, max_to_keep=self.keep)
        return origin

    def _restore(self, prefix: str) -> str | None:
        """Restore model and optimizer from ``prefix``; None, or why it failed. (A failed
        restore may leave some variables assigned: the next candidate, or the error that
        ends the job, replaces them.)"""
        tf = _tf()
        try:
            self.checkpoint.restore(prefix).expect_partial()
        except (tf.errors.OpError, IndexError, ValueError, OSError) as exc:
            return first_line(exc)
        _remember(prefix)
        return None

    @property
    def latest(self) -> str | None:
        return self.manager.latest_checkpoint

    def save(self, step: int) -> str:
        return save(self.manager, step)


def _tf():
    import tensorflow as tf
    return tf
