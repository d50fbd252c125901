"""Checkpoints that survive damage: found from the files themselves, read back before use.

tf.train.CheckpointManager trusts its index file (``ckpt/checkpoint``). When the index is
lost, it sees no checkpoint, and a relaunch would start from scratch and overwrite
``ckpt-N``; when the newest ``ckpt-N.data-*`` is truncated, restoring it ends in a raw
``IndexError: Read less bytes than requested``. Here the candidates come from the
``ckpt-N.index`` files on disk, newest first, and each is read in full before it is trusted.
"""
from __future__ import annotations

import os
import re

_NAME = re.compile(r"^ckpt-(\d+)\.index$")


class CheckpointError(ValueError):
    """An unreadable or missing checkpoint; the message is one line naming it."""


def on_disk(ckpt_dir: str) -> list[str]:
    """Checkpoint prefixes in ``ckpt_dir`` from the files themselves, newest step first."""
    if not os.path.isdir(ckpt_dir):
        return []
    found = [(int(m.group(1)), os.path.join(ckpt_dir, m.group(0)[: -len(".index")]))
             for m in map(_NAME.match, os.listdir(ckpt_dir)) if m]
    return [prefix for _, prefix in sorted(found, reverse=True)]


def problem(prefix: str) -> str | None:
    """None if every tensor of the checkpoint reads back, else why not (one line)."""
    import tensorflow as tf
    try:
        reader = tf.train.load_checkpoint(prefix)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except (tf.errors.OpError, IndexError, ValueError, OSError) as exc:
        return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return None


def check(prefix: str, what: str = "--checkpoint") -> None:
    """Raise CheckpointError naming ``prefix`` when it cannot be read in full."""
    why = problem(prefix)
    if why:
        raise CheckpointError(f"{what} {prefix} is unreadable (damaged or truncated: {why}); "
                              f"use an earlier checkpoint of the stage or retrain it")


def newest_readable(ckpt_dir: str, warn=print) -> str | None:
    """The newest checkpoint in ``ckpt_dir`` that reads back in full, or None when there are none.

    Damaged newer ones are skipped with a warning naming them. When checkpoints exist but
    none is readable, raises CheckpointError rather than let training start from scratch
    over them. The index file is rewritten to list the readable checkpoints, so
    CheckpointManager keeps and rotates them as its own.
    """
    import tensorflow as tf
    candidates = on_disk(ckpt_dir)
    skipped = []
    for prefix in candidates:
        why = problem(prefix)
        if why is None:
            if skipped:
                warn(f"warning: skipped unreadable checkpoint(s) {', '.join(skipped)}; resuming from {prefix}")
            readable = [p for p in candidates if p not in skipped]
            tf.compat.v1.train.update_checkpoint_state(ckpt_dir, prefix,
                                                       all_model_checkpoint_paths=list(reversed(readable)))
            return prefix
        skipped.append(f"{prefix} ({why})")
    if candidates:
        raise CheckpointError(f"{ckpt_dir}: no readable checkpoint ({'; '.join(skipped)}); refusing to start "
                              f"from scratch over them: move {ckpt_dir} away to retrain the stage")
    return None
